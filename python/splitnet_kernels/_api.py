"""The public calls score, topk and merge_topk: check the arguments, pick a backend, convert
arrays to what it computes on and back."""

from __future__ import annotations

import numbers
import operator
import sys

import numpy as np

from . import _dispatch, _threads
from ._metric import Metric, _is_tensor, check_tensor, numpy_floats
from ._metric import host as _host
from ._objectives import _sigmoid_, check_output, dot_metric, probability
from ._order import merge_numpy, topk_by_id
from ._storage import count, is_plain


# ---- argument checks ------------------------------------------------------------------------
def _shape(x) -> tuple:
    return tuple(x.shape)


def _embeddings(x, name: str, ndims: tuple, meta: bool = False):
    """x as a float array (numpy) or float tensor with one of the allowed ndims; meta tensors
    only where meta says they may go (to the custom ops, which give meta results)."""
    if _is_tensor(x):
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
        raise ValueError(f"{name}: expected a {allowed} array, got shape {_shape(x)}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name}: the embedding dimension must be >= 1, got shape {_shape(x)}")
    return x


def check_threads(threads):
    """threads is an upper bound: more than this machine's CPUs means all of them, on every backend.
    None stays None: each backend takes it as the process-wide count (_threads.default())."""
    return None if threads is None else _threads.check(threads)


def check_k(k) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k: expected an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    return int(k)


_DEFAULT_METRICS: dict[int, Metric] = {}  # metric=None's dot_metric for each dimension met


def _default_metric_made(dim: int) -> int:
    """Makes _DEFAULT_METRICS[dim]. Dynamo runs it as the constant it is, rather than trace the
    Metric's construction (which it cannot), and then reads the metric from the dict as a global
    it can guard and look into."""
    if dim not in _DEFAULT_METRICS:
        _DEFAULT_METRICS[dim] = dot_metric(dim)
    return dim


_default_metric_made._dynamo_marked_constant = True  # type: ignore[attr-defined]  # as assume_constant_result marks


def check_metric(metric, dim: int, users, ads) -> Metric:
    if metric is None:  # operator.index fixes a dimension that dynamo holds as a symbol (dynamic=True)
        dim = _default_metric_made(operator.index(dim))
        return _DEFAULT_METRICS[dim]
    if not isinstance(metric, Metric):
        raise TypeError(f"metric: expected a splitnet_kernels.Metric or None, got {type(metric).__name__}")
    if metric.dim != dim:
        raise ValueError(f"metric has dimension {metric.dim}, but users {_shape(users)} and ads "
                         f"{_shape(ads)} have dimension {dim}")
    if not _is_tensor(users) or _ops().holds_values(users):  # else traced: the op checks when it runs
        metric.check_fold_range(users)
    return metric


def one_device(**arguments):
    """The device of the tensors among the named arguments, None when none is a tensor; tensors
    on two devices are a TypeError naming both (nothing is moved between devices unasked)."""
    device = first = None
    for name, x in arguments.items():
        if _is_tensor(x):
            if device is None:
                device, first = x.device, name
            elif x.device != device:
                raise TypeError(f"{first} and {name}: expected tensors on one device, got {first} on {device} and "
                                f"{name} on {x.device}")
    return device


def _check_pair(users, ads, pairwise: bool, meta: bool = False):
    users = _embeddings(users, "users", (2,) if pairwise else (1, 2), meta)
    ads = _embeddings(ads, "ads", (2,), meta)
    one_device(users=users, ads=ads)
    if users.shape[-1] != ads.shape[-1]:
        raise ValueError(f"users {_shape(users)} and ads {_shape(ads)} differ in embedding dimension")
    if pairwise and users.shape[0] != ads.shape[0]:
        raise ValueError(f"pairwise=True needs as many users as ads, got users {_shape(users)} and ads {_shape(ads)}")
    return users, ads


def _check_out(out, shape, torch_input: bool, device=None):
    """out checked against the result's shape and the inputs: an array for arrays, a tensor on
    their `device` (when given) for tensors."""
    if out is None:
        return None
    if torch_input != _is_tensor(out):
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
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out: expected shape {tuple(shape)}, got {_shape(out)}")
    return out


# ---- conversions between numpy and torch ----------------------------------------------------
def _to_numpy(x):
    if not _is_tensor(x):
        return x
    import torch

    x = x.detach()
    if x.dtype not in (torch.float16, torch.float32, torch.float64):
        x = x.to(torch.float32)
    return x.cpu().numpy()


def _to_torch(x, device):
    import torch

    if _is_tensor(x):
        return x.to(device)
    x = np.ascontiguousarray(x)
    return torch.as_tensor(x if x.flags.writeable else x.copy(), device=device)


def _result_for(x, torch_input: bool, device):
    if torch_input and not _is_tensor(x):
        import torch

        return torch.from_numpy(x).to(device)
    if not torch_input and _is_tensor(x):
        return x.cpu().numpy()
    return x


def _device(users, store):
    """The device of the first tensor among the users and a plain store, or None."""
    for x in (users, store):
        if _is_tensor(x):
            return x.device
    return None


_byte_bounds = getattr(np, "byte_bounds", None) or np.lib.array_utils.byte_bounds


def _memory_range(x):
    """(device, first byte, end byte) that an array or tensor spans, whatever its type."""
    if _is_tensor(x):
        start, size = x.data_ptr(), x.element_size()
        low = start + size * sum((n - 1) * s for n, s in zip(x.shape, x.stride()) if s < 0)
        high = start + size * (1 + sum((n - 1) * s for n, s in zip(x.shape, x.stride()) if s > 0))
        return str(x.device), low, high if x.numel() else low
    x = np.asarray(x)
    low, high = _byte_bounds(x)
    return "cpu", low, high if x.size else low


def _may_share_memory(a, b) -> bool:
    """Whether a and b may overlap in memory, decided from their byte ranges (numpy arrays,
    tensors, torch.from_numpy views and any mix of them alike)."""
    device_a, low_a, high_a = _memory_range(a)
    device_b, low_b, high_b = _memory_range(b)
    return device_a == device_b and low_a < high_b and low_b < high_a


def rank_exactly(n_candidates: int, k: int, raw_topk, everything, transform):
    """Top k by transform(score) -- the quantity a call reports -- ties to the lower id.

    Ranking by the reported number is what makes per-shard lists merge into the answer of one
    call: distinct scores can round to one float32 probability (or value), which then ties by id.
    transform is monotone, so the best k by it are among the best k + 1 by score, unless the
    (k+1)-th quantity equals the k-th (or is NaN); only then is that user's every quantity formed.
    raw_topk(count) -> (scores, ids) numpy (M, count) ranked by score; transform(scores, ids) ->
    quantities; everything(u) -> (quantities, ids) over every eligible candidate of user u.
    """
    scores, ids = raw_topk(min(k + 1, n_candidates))
    quantities = transform(np.array(scores, np.float32), ids)
    best, best_ids = merge_numpy(quantities, ids, k)
    if quantities.shape[-1] > k:
        for u in np.flatnonzero(~(quantities[:, k] < quantities[:, k - 1])):
            values, candidate_ids = everything(u)
            top, top_ids = topk_by_id(values, candidate_ids, k)
            best[u], best_ids[u] = top[0], top_ids[0]
    return best, best_ids


# ---- the one route ---------------------------------------------------------------------------
# Every scoring call, Candidates' included, ends in score_store or topk_store with checked
# operands, and from there in one backend call: backend.score / topk over a candidate store (a
# plain float array of ads, or packed Storage) or backend.score_pairs; tensors under
# backend="auto" make it one custom op call instead (_torch_ops), which torch.compile can trace.
# The fast path below skips checks the binding makes anyway, never the route.
_torch_ops = None


def _ops():
    """The custom ops' module, imported (and the ops registered) on first use."""
    global _torch_ops
    if _torch_ops is None:
        from . import _torch_ops as module

        _torch_ops = module
    return _torch_ops


def _ops_take(backend) -> bool:
    """Whether tensors go to the custom ops: under backend="auto", unless the environment names a backend."""
    return backend == "auto" and _dispatch.ENV_BACKEND == "auto"


def _native(backend, x, device):
    """x (users, or a plain store) as the backend computes on it; packed Storage stays as it is."""
    if not is_plain(x):
        return x
    return _to_torch(x, device) if backend.native == "torch" else _to_numpy(x)


def _native_out(backend, out, torch_input: bool):
    """Where the backend may write: out itself, a numpy view of a CPU tensor, or None."""
    if out is None or (backend.native == "torch") == torch_input:
        return out
    if backend.native == "numpy" and out.device.type == "cpu":
        return _to_numpy(out)  # a view: the kernels write straight into the tensor
    return None  # computed apart, copied into out


def score_store(users, store, metric, *, ids, sigmoid, backend, threads, out, pairwise=False):
    """Scores checked users against a store (or pairwise against plain ads rows)."""
    device = _device(users, store)
    torch_input = device is not None
    n_candidates = count(store) if ids is None else len(ids)
    shape = (n_candidates,) if pairwise or users.ndim == 1 else (users.shape[0], n_candidates)
    out = _check_out(out, shape, torch_input, device)
    if torch_input and _ops_take(backend):
        return _ops().score_store(users, store, metric, ids=ids, sigmoid=sigmoid, threads=threads, out=out,
                                  pairwise=pairwise)
    if out is not None and any(_may_share_memory(out, x) for x in ((users, store) if is_plain(store) else (users,))):
        result = score_store(users, store, metric, ids=ids, sigmoid=sigmoid, backend=backend, threads=threads,
                             out=None, pairwise=pairwise)
        out.copy_(result) if torch_input else np.copyto(out, result)
        return out  # out overlaps an input: computed apart first, so no input is read after a write
    chosen = _dispatch.resolve(backend, torch_input and device.type != "cpu")
    if 0 in shape:
        return out if out is not None else _result_for(np.empty(shape, np.float32), torch_input, device)
    u, s, native_out = _native(chosen, users, device), _native(chosen, store, device), _native_out(chosen, out, torch_input)
    if pairwise:
        result = chosen.score_pairs(u, s, metric, threads=threads, out=native_out)
    else:
        result = chosen.score(u, s, metric, ids=ids, threads=threads, out=native_out)
    if sigmoid:
        _sigmoid_(result)
    result = _result_for(result, torch_input, device)
    if out is not None and result is not out:
        out.copy_(result) if torch_input else np.copyto(out, result)
        return out
    return result


def topk_store(users, store, k, metric, *, ids, sigmoid, backend, threads):
    """The best k of a store for checked users; sigmoid ranks by the probability."""
    device = _device(users, store)
    torch_input = device is not None
    if torch_input and _ops_take(backend):
        return _ops().topk_store(users, store, k, metric, ids=ids, sigmoid=sigmoid, threads=threads)
    chosen = _dispatch.resolve(backend, torch_input and device.type != "cpu")
    k = min(k, count(store) if ids is None else len(ids))
    n_users = 1 if users.ndim == 1 else users.shape[0]
    if k == 0 or n_users == 0:
        scores, found = np.empty((n_users, k), np.float32), np.empty((n_users, k), np.int64)
    else:
        u, s = _native(chosen, users, device), _native(chosen, store, device)
        u = u.reshape(1, -1) if u.ndim == 1 else u
        if sigmoid:
            def raw_topk(how_many):
                return tuple(_host(x) for x in chosen.topk(u, s, how_many, metric, ids=ids, threads=threads))

            def everything(i):
                raw = chosen.score(u[i], s, metric, ids=ids, threads=threads, out=None)
                return probability(_host(raw)), np.arange(count(store)) if ids is None else ids

            scores, found = rank_exactly(count(store) if ids is None else len(ids), k, raw_topk, everything,
                                         probability)
        else:
            scores, found = chosen.topk(u, s, k, metric, ids=ids, threads=threads)
    if users.ndim == 1:
        scores, found = scores[0], found[0]
    return _result_for(scores, torch_input, device), _result_for(found, torch_input, device)


# ---- the fast path --------------------------------------------------------------------------
# One user, float32 NumPy arrays, auto picking simd: the overhead-bound serving call (W6: a
# 1 x 1,000 top-10 is ~2 us of arithmetic). It checks only what it relies on and leaves every
# other case, and every error message, to the general path: the binding re-checks layout and
# shapes and raises ValueError, after which the general path runs and reports properly.
_F32 = np.dtype(np.float32)
_ndarray = np.ndarray


def _fast_metric(users, ads, metric, backend, threads):
    """The metric when the fast path may take this call, else None."""
    if (backend != "auto" or threads is not None or _dispatch.FAST is None or type(users) is not _ndarray
            or type(ads) is not _ndarray or users.dtype is not _F32 or ads.dtype is not _F32 or users.ndim != 1
            or ads.ndim != 2 or users.shape[0] != ads.shape[1]):
        return None
    if metric is None:
        return dot_metric(users.shape[0])
    if type(metric) is not Metric or metric.dim != users.shape[0]:
        return None
    metric.check_fold_range(users)
    return metric


# ---- the public calls -----------------------------------------------------------------------
def _by_objective(metric, objectives, bids, output) -> bool:
    """Whether a call needs the candidates grouped by objective (or bids)."""
    return objectives is not None or bids is not None or output == "value" or not (metric is None or
                                                                                 isinstance(metric, Metric))


def _objective_set(ads, objectives, bids):
    from ._candidates import Candidates

    return Candidates(ads, "float32", objectives=objectives, bids=bids)


def _objective_call(users, ads, objectives, bids):
    """(the set of the ads with their objectives and bids, users, bids, the device of the tensors
    among the arguments or None) for a call with objectives or bids. When any argument is a tensor,
    the users come as one on its device, so that the results are tensors (torch in, torch out)."""
    device = one_device(users=users, ads=ads, objectives=objectives, bids=bids)
    bids = numpy_floats(check_tensor(bids, "bids"))
    cands = _objective_set(ads, check_tensor(objectives, "objectives"), bids)
    if device is not None and not _is_tensor(users):
        users = _to_torch(_embeddings(users, "users", (1, 2)), device)
    return cands, users, bids, device


def without_gradient(name: str, result, *inputs):
    """result, computed off autograd's record: where tensors among inputs ask for a gradient, its
    backward raises and says why (as the op `name`'s does), rather than leave them without one."""
    wanting = _ops().wanting_gradients(*inputs) if any(_is_tensor(x) for x in inputs) else []
    return _ops().refused(name, result, wanting) if wanting else result


def host_argument(x, name: str, users):
    """An argument that is read on the host (allowed=), refused by name where it is a tensor that
    cannot be: on another device than tensor users, not dense, or holding no values."""
    if not _is_tensor(x):
        return x
    one_device(users=users, **{name: x})
    return check_tensor(x, name)


def score(users, ads, metric=None, *, pairwise=False, sigmoid=False, backend="auto", threads=None, out=None,
          objectives=None, bids=None, output=None):
    """Scores users against ads with the metric: u^T S a + bias (sigmoid of it if sigmoid=True).

    users (n,) and ads (N, n) -> (N,); users (M, n) -> (M, N); pairwise=True with users (B, n)
    and ads (B, n) -> (B,), pair i being (users[i], ads[i]). Scores are float32; torch tensors
    in give torch tensors out. `out`, if given, receives the result and is returned. With an
    ObjectiveMetrics, objectives (N,) gives each ad's objective and bids (N,) its bid; output is
    "logit", "probability" or "value" (bid * probability, the default with objectives).
    """
    if _by_objective(metric, objectives, bids, output):
        if pairwise:
            raise ValueError("pairwise=True scores one metric per pair; objectives, bids and output='value' are for "
                             "candidate sets")
        cands, users, bids, device = _objective_call(users, ads, objectives, bids)
        if device is not None and _ops_take(backend) and _ops().wanting_gradients(users, ads, bids):
            return _ops().score_by_objective(cands, users, ads, bids, metric, output=output, sigmoid=sigmoid,
                                             threads=threads, out=out)
        return cands.score(users, metric, output=output, sigmoid=sigmoid, backend=backend, threads=threads, out=out)
    if output is not None:
        sigmoid = check_output(output, False, sigmoid) == "probability"
    fast = None if pairwise or out is not None else _fast_metric(users, ads, metric, backend, threads)
    if fast is not None and ads.shape[0]:
        result = np.empty(ads.shape[0], _F32)
        try:
            _dispatch.FAST.score_plain(users, ads, fast, result)
        except ValueError:
            pass  # a layout or shape the general path handles (or reports)
        else:
            return _sigmoid_(result) if sigmoid else result
    users, ads = _check_pair(users, ads, pairwise, meta=_ops_take(backend))
    metric = check_metric(metric, ads.shape[-1], users, ads)
    return score_store(users, ads, metric, ids=None, sigmoid=sigmoid, backend=backend,
                       threads=check_threads(threads), out=out, pairwise=pairwise)


def topk(users, ads, k, metric=None, *, sigmoid=False, backend="auto", threads=None, objectives=None, bids=None,
         output=None):
    """The k best ads per user: (scores, ids), sorted best first, never forming all scores.

    users (n,) -> scores (k,), ids (k,) int64; users (M, n) -> (M, k) each. Equal scores: the
    lower ad index first; NaN ranks below every number; k > N returns N results; N = 0 returns
    empty results. With sigmoid=True the reported scores are sigmoid(score + bias), and the
    ranking is by them (equal probabilities: the lower index first), so that per-shard lists
    merge into the answer of one call. objectives, bids and output as in score; the ranking is
    by the quantity returned.
    """
    if _by_objective(metric, objectives, bids, output):
        cands, users, bids, _ = _objective_call(users, ads, objectives, bids)
        scores, ids = cands.topk(users, k, metric, output=output, sigmoid=sigmoid, backend=backend, threads=threads)
        return without_gradient("topk", scores, users, ads, bids), ids  # a selection, as the op says
    if output is not None:
        sigmoid = check_output(output, False, sigmoid) == "probability"
    fast = None if sigmoid else _fast_metric(users, ads, metric, backend, threads)
    if fast is not None and type(k) is int and 0 < k <= ads.shape[0]:
        scores, ids = np.empty(k, _F32), np.empty(k, np.int64)
        try:
            _dispatch.FAST.topk_plain(users, ads, k, fast, scores, ids)
        except ValueError:
            pass  # a layout or shape the general path handles (or reports)
        else:
            return scores, ids
    elif _torch_ops is not None and not sigmoid and backend == "auto" and threads is None and type(k) is int:
        plain = _torch_ops.topk_plain(users, ads, k, metric)  # the same for tensors, None if not one
        if plain is not None:
            return plain
    users, ads = _check_pair(users, ads, False, meta=_ops_take(backend))
    metric = check_metric(metric, ads.shape[-1], users, ads)
    return topk_store(users, ads, check_k(k), metric, ids=None, sigmoid=sigmoid, backend=backend,
                      threads=check_threads(threads))


def merge_topk(parts, k):
    """Merges per-shard top-k lists [(scores, ids), ...] into the best k overall.

    Each part is 1-D (k_i,) or, for M users, 2-D (M, k_i); ids are global candidate ids. The
    result equals topk over the concatenation: sorted best first, equal scores by the lower id,
    NaN below every number. Scores are compared in their own precision and come back in the
    widest type given (float64 parts stay float64); ids come back as int64, or as uint64 when
    some id is beyond the int64 range (a mix of those with negative ids is refused).
    """
    k = check_k(k)
    try:
        parts = list(parts)
    except TypeError:
        raise TypeError("parts: expected a sequence of (scores, ids) pairs") from None
    if not parts:
        raise ValueError("parts: expected at least one (scores, ids) pair")
    torch_input = any(_is_tensor(x) for part in parts for x in (part if isinstance(part, (tuple, list)) else ()))
    device = None
    all_scores, all_ids = [], []
    for i, part in enumerate(parts):
        if not isinstance(part, (tuple, list)) or len(part) != 2:
            raise TypeError(f"parts[{i}]: expected a (scores, ids) pair")
        scores, ids = part
        device = device or (scores.device if _is_tensor(scores) else None)
        scores, ids = np.asarray(_to_numpy(scores)), np.asarray(ids.cpu() if _is_tensor(ids) else ids)
        if scores.dtype.kind != "f":
            raise TypeError(f"parts[{i}] scores: expected floating point, got dtype {scores.dtype}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"parts[{i}] ids: expected integers, got dtype {ids.dtype}")
        if scores.shape != ids.shape or scores.ndim not in (1, 2):
            raise ValueError(f"parts[{i}]: scores {scores.shape} and ids {ids.shape} must have one 1-D or 2-D shape")
        if all_scores and (scores.ndim != all_scores[0].ndim or scores.shape[:-1] != all_scores[0].shape[:-1]):
            raise ValueError(f"parts[{i}]: shape {scores.shape} does not match parts[0] {all_scores[0].shape}")
        all_scores.append(scores)
        all_ids.append(ids)
    merged = merge_numpy(np.concatenate(all_scores, -1), _common_ids(all_ids), k)
    return tuple(_result_for(x, torch_input, device) for x in merged)


_INT64_MAX = np.iinfo(np.int64).max


def _common_ids(parts) -> np.ndarray:
    """The id parts concatenated as int64, or as uint64 when some id does not fit int64."""
    huge = any(p.dtype == np.uint64 and p.size and p.max() > _INT64_MAX for p in parts)
    if not huge:
        return np.concatenate([p.astype(np.int64, copy=False) for p in parts], -1)
    if any(p.dtype.kind == "i" and p.size and p.min() < 0 for p in parts):
        raise ValueError("parts: ids mix negative values with values beyond the int64 range")
    return np.concatenate([p.astype(np.uint64, copy=False) for p in parts], -1)


if "torch" in sys.modules:  # torch came first: the ops exist from the start, as torch.ops.splitnet_kernels
    _ops()
