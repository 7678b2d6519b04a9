"""The argument checks of the calls, one copy each, used by the public calls, Candidates and the
torch ops: each returns the argument as the call goes on with it, or raises a TypeError or
ValueError naming it with the shapes or dtypes involved. (A metric's, a storage type's and an
objective's own values are checked where they are made: _metric, _storage, _objectives.)"""

from __future__ import annotations

import numbers
import operator

import numpy as np

from . import _threads
from ._conversions import check_tensor, constant_when_compiled, holds_values, host, is_tensor, shape
from ._metric import Metric, dot_metric


def embeddings(x, name: str, ndims: tuple, meta: bool = False):
    """x as a float array (numpy) or float tensor with one of the allowed ndims; meta tensors
    only where meta says they may go (to the custom ops, which give meta results)."""
    if is_tensor(x):
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
        check_tensor(x, name, meta)
    else:
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except (ValueError, TypeError) as error:
                raise TypeError(f"{name}: cannot be read as an array: {error}") from None
        if x.dtype.kind != "f":
            raise TypeError(f"{name}: expected a floating-point array (float16/32/64), got dtype {x.dtype}")
    if x.ndim not in ndims:
        allowed = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name}: expected a {allowed} array, got shape {shape(x)}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name}: the embedding dimension must be >= 1, got shape {shape(x)}")
    return x


def check_pair(users, ads, pairwise: bool, meta: bool = False):
    """users and ads of sk.score / sk.topk: float embeddings of one dimension on one device;
    pairwise, as many users as ads."""
    users = embeddings(users, "users", (2,) if pairwise else (1, 2), meta)
    ads = embeddings(ads, "ads", (2,), meta)
    one_device(users=users, ads=ads)
    if users.shape[-1] != ads.shape[-1]:
        raise ValueError(f"users {shape(users)} and ads {shape(ads)} differ in embedding dimension")
    if pairwise and users.shape[0] != ads.shape[0]:
        raise ValueError(f"pairwise=True needs as many users as ads, got users {shape(users)} and ads {shape(ads)}")
    return users, ads


def check_threads(threads):
    """threads is an upper bound: more than this machine's CPUs means all of them, on every backend.
    None stays None: each backend takes it as the process-wide count (_threads.default())."""
    return None if threads is None else _threads.check(threads)


def at_least_one(k) -> None:
    """The rule for k's value (the ops' k is an int by their schema)."""
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")


def check_k(k) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k: expected an integer, got {type(k).__name__}")
    at_least_one(k)
    return int(k)


DEFAULT_METRICS: dict[int, Metric] = {}  # metric=None's dot_metric for each dimension met (the fast path reads it too)


@constant_when_compiled
def _default_metric_made(dim: int) -> int:
    """Makes DEFAULT_METRICS[dim]. Dynamo runs it as the constant it is, rather than trace the
    Metric's construction (which it cannot), and then reads the metric from the dict as a global
    it can guard and look into."""
    if dim not in DEFAULT_METRICS:
        DEFAULT_METRICS[dim] = dot_metric(dim)
    return dim


def check_metric(metric, dim: int, users, ads) -> Metric:
    """The Metric of a call (None: dot with bias 0) of the users' and ads' dimension, with the
    users' fold range checked where their values can be read (a traced call: the op checks)."""
    if metric is None:  # operator.index fixes a dimension that dynamo holds as a symbol (dynamic=True)
        dim = _default_metric_made(operator.index(dim))
        return DEFAULT_METRICS[dim]
    if not isinstance(metric, Metric):
        raise TypeError(f"metric: expected a splitnet_kernels.Metric or None, got {type(metric).__name__}")
    if metric.dim != dim:
        raise ValueError(f"metric has dimension {metric.dim}, but users {shape(users)} and ads "
                         f"{shape(ads)} have dimension {dim}")
    if not is_tensor(users) or holds_values(users):
        metric.check_fold_range(users)
    return metric


def one_device(**arguments):
    """The device of the tensors among the named arguments, None when none is a tensor; tensors
    on two devices are a TypeError naming both (nothing is moved between devices unasked)."""
    device = first = None
    for name, x in arguments.items():
        if is_tensor(x):
            if device is None:
                device, first = x.device, name
            elif x.device != device:
                raise TypeError(f"{first} and {name}: expected tensors on one device, got {first} on {device} and "
                                f"{name} on {x.device}")
    return device


def check_out(out, result_shape, torch_input: bool, device=None):
    """out checked against the result's shape and the inputs: an array for arrays, a tensor on
    their `device` (when given) for tensors."""
    if out is None:
        return None
    if torch_input != is_tensor(out):
        raise TypeError(f"out: expected a {'torch tensor' if torch_input else 'numpy array'} like the inputs, "
                        f"got {type(out).__name__}")
    if torch_input:
        import torch

        if out.dtype != torch.float32:
            raise TypeError(f"out: expected dtype torch.float32, got {out.dtype}")
        if device is not None and out.device != device:
            raise TypeError(f"out: expected a tensor on {device} like the inputs, got one on {out.device}")
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy array, got {type(out).__name__}")
        if out.dtype != np.float32:
            raise TypeError(f"out: expected dtype float32, got {out.dtype}")
        if not out.flags.writeable:
            raise ValueError("out: array is read-only")
    if tuple(out.shape) != tuple(result_shape):
        raise ValueError(f"out: expected shape {tuple(result_shape)}, got {shape(out)}")
    return out


def host_argument(x, name: str, users):
    """An argument that is read on the host (allowed=), refused by name where it is a tensor that
    cannot be: on another device than tensor users, not dense, or holding no values."""
    if not is_tensor(x):
        return x
    one_device(users=users, **{name: x})
    return check_tensor(x, name)


# A filter allowing at least 1 / DENSE of the candidates is read as a bitmap beside the rows
# (every row scored, the others left out where results are collected); a sparser one as its ids
# (only their rows gathered). bench/RESULTS.md, "Filters", has the measurements behind it.
DENSE = 8


class Mask:
    """A dense allowed subset as the compiled kernels take it: `mask` (bool (N,); for one filter
    per user, a sequence of M such rows), its bitmap `words` (uint64, bit c % 64 of word c // 64;
    (M, W) per user) and, as len(), the most candidates it allows a user (`counts`: each user's).
    positions() gives a shared one's ascending ids, user(u) user u's own subset, for the paths
    that take those."""

    __slots__ = ("mask", "counts", "per_user", "_words")

    def __init__(self, mask, counts, per_user: bool = False):
        self.mask, self.counts, self.per_user = mask, np.atleast_1d(counts), per_user
        self._words: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.counts.max()) if len(self.counts) else 0

    @property
    def words(self) -> np.ndarray:
        words = self._words
        if words is None:  # a race only packs it twice
            rows = self.mask if self.per_user else [self.mask]
            n = len(rows[0]) if len(rows) else 0
            words = np.zeros((len(rows), -(-n // 64)), np.uint64)
            for u, row in enumerate(rows):  # row by row: no (M, N) copy of the masks
                packed = np.packbits(row, bitorder="little")
                words[u].view(np.uint8)[:len(packed)] = packed
            words = words if self.per_user else words[0]
            self._words = words
        return words

    def positions(self) -> np.ndarray:
        assert not self.per_user  # a per-user subset goes user by user (_route.user_by_user)
        return np.flatnonzero(self.mask)

    def user(self, u: int):
        """User u's subset, in the kernels' form (subset)."""
        return subset(self.mask[u]) if self.per_user else self


def positions_of(allowed):
    """An allowed subset (check_allowed's, shared) as ascending ids, or None."""
    return allowed.positions() if isinstance(allowed, Mask) else allowed


def subset(mask: np.ndarray):
    """The kernels' form of the allowed subset `mask` (bool (N,)): a Mask where it is dense,
    else its ascending ids."""
    count = int(np.count_nonzero(mask))
    return Mask(mask, count) if count * DENSE >= len(mask) else np.flatnonzero(mask)


def one_per_user(allowed) -> bool:
    """Whether allowed= holds one filter per user: a list of masks or id arrays, or a 2-D mask."""
    if isinstance(allowed, (list, tuple)):
        return any(is_tensor(a) or np.ndim(a) > 0 for a in allowed)
    return (is_tensor(allowed) or isinstance(allowed, np.ndarray)) and len(shape(allowed)) == 2


def check_allowed(allowed, n_candidates: int, n_users=None):
    """allowed= of a top-k over n_candidates, in the kernels' form: ascending int64 ids or a
    Mask; None: all. One filter for every user: a boolean mask or an id list (an empty sequence
    allows no candidate; repeats are one). One per user, for users (n_users, n): a list of such
    filters, or a 2-D boolean mask (n_users, n_candidates); then a Mask with one row per user.
    Ids are never sorted: they mark a mask."""
    if allowed is None:
        return None
    if one_per_user(allowed):
        if n_users is None:
            raise TypeError("allowed: one filter per user needs users (M, n); for one user pass one mask or id list")
        if len(allowed) != n_users:
            raise ValueError(f"allowed: {len(allowed)} filters for {n_users} users (one per user)")
        masks = [_mask(allowed[u], n_candidates, f"allowed[{u}]") for u in range(n_users)]
        return Mask(masks, [np.count_nonzero(m) for m in masks], per_user=True)
    return subset(_mask(allowed, n_candidates, "allowed"))


def _mask(allowed, n_candidates: int, name: str) -> np.ndarray:
    """One filter (a boolean mask, or an id list) as a boolean mask of n_candidates."""
    if is_tensor(allowed):
        try:  # as it is: to_numpy would make masks and ids float32
            allowed = host(allowed)
        except TypeError:  # a dtype numpy lacks (bfloat16)
            raise TypeError(f"{name}: expected a boolean mask or a 1-D integer id tensor, got {allowed.dtype} "
                            f"{tuple(allowed.shape)}") from None
    elif not isinstance(allowed, np.ndarray):
        try:
            allowed = np.asarray(allowed)
        except (ValueError, TypeError) as error:
            raise TypeError(f"{name}: cannot be read as an array: {error}") from None
        if allowed.shape == (0,):  # [] reads as float64: an empty id list
            allowed = allowed.astype(np.int64)
    if allowed.dtype == np.bool_:
        if allowed.shape != (n_candidates,):
            raise ValueError(f"{name}: a mask must have shape ({n_candidates},), got {allowed.shape}")
        return allowed
    if allowed.dtype.kind not in "iu" or allowed.ndim != 1:
        raise TypeError(f"{name}: expected a boolean mask or a 1-D integer id array, got {allowed.dtype} {allowed.shape}")
    mask = np.zeros(n_candidates, bool)
    if allowed.size:
        low, high = allowed.min(), allowed.max()  # in the ids' own dtype: a uint64 id >= 2**63 would wrap
        # N integers of 0 and 1 name at most two ids, or were a mask built with arithmetic: the
        # two readings always differ, so neither is taken
        if len(allowed) == n_candidates and low >= 0 and high <= 1:
            raise ValueError(f"{name}: {len(allowed)} {allowed.dtype} values of 0 and 1 for {n_candidates} "
                             f"candidates could be a mask or an id list: pass the mask as booleans "
                             f"(allowed.astype(bool))")
        if low < 0 or high >= n_candidates:
            raise ValueError(f"{name}: ids must be in [0, {n_candidates}), got {low}..{high} ({allowed.dtype})")
        mask[allowed] = True
    return mask
