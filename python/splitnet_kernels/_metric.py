"""The learned similarity S and its algebra: every kind is one canonical form that every
backend reads, and the kind is known to the constructors alone.

score(u, a) = u^T S a + bias = fold(u) . a + bias, with fold(u) = u^T S and S = diag(w) + L R^T.
Folding happens once per user, so one user against many candidates costs a plain dot product
per candidate.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple

import numpy as np

from ._conversions import check_tensor, is_tensor, numpy_floats
from ._files import npz_entry, read_npz, writing_beside


class Part(NamedTuple):
    """One parameter of a kind: its name (the constructor's and nn's), its role in the
    canonical form S = diag(w) + L R^T, its shape ("scalar", "vector" (n,), "square" (n, n),
    "factor" (n, r)) and how a trainable head starts it ("ones", "eye", "small")."""

    name: str
    role: str
    shape: str
    init: str


# The one place that knows what each kind is made of. Everything else reads the form.
PARTS = {
    "dot": (),
    "scaled": (Part("w", "diag", "scalar", "ones"),),
    "diagonal": (Part("s", "diag", "vector", "ones"),),
    "low_rank": (Part("d", "diag", "vector", "ones"), Part("P", "left", "factor", "small"),
                 Part("Q", "right", "factor", "small")),
    "full": (Part("S", "left", "square", "eye"),),
}
KINDS = tuple(PARTS)  # the metric kinds, cheapest first: the one list the CLI, the bench and the tests read


def takes_rank(kind: str) -> bool:
    """Whether a kind has factors of a chosen rank r (and so needs `rank`)."""
    return any(part.shape == "factor" for part in PARTS[kind])


class Form(NamedTuple):
    """The canonical form every backend reads: S = diag(diag) + left right^T, float32, read-only.

    diag None: no diagonal term; left None: no factor term; right None with left: the identity,
    so left is the whole (n, n) S. dot is diag = ones, scaled diag = w ones.
    """

    diag: Any  # numpy arrays in a Metric; tensors in its torch cache and in nn's heads
    left: Any
    right: Any


def _parameter(value, name: str, ndim: int) -> np.ndarray:
    if is_tensor(value):
        value = numpy_floats(check_tensor(value, name)).detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        raise TypeError(f"{name}: expected a real numeric array, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {array.shape}")
    if 0 in array.shape:
        raise ValueError(f"{name}: every dimension must be >= 1, got shape {array.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.array(array, dtype=np.float32, order="C")  # an owned float32 copy
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN, infinity or values beyond the float32 range")
    return _frozen(array)


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only float32 copy backed by an immutable bytes object: unlike an array that owns
    its memory, it cannot be made writeable again, so a Metric (and its caches) never goes stale."""
    return np.frombuffer(np.ascontiguousarray(array, np.float32).tobytes(), np.float32).reshape(array.shape)


def _scalar(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    with np.errstate(over="ignore"):
        result = float(np.float32(value))
    if not np.isfinite(result):
        raise ValueError(f"{name}: must be finite (as float32), got {value!r}")
    return result


class Metric:
    """The similarity S of score = u^T S a + bias. Immutable; parameters are float32."""

    # form and bias are plain (read-only) attributes, not properties: every kernel call reads
    # them, and W6 is a few microseconds. Nothing is set after __init__ (__setattr__ refuses).
    __slots__ = {"form": "S = diag(form.diag) + form.left form.right^T (see Form): what every backend reads.",
                 "bias": "The additive bias b.", "_kind": None, "_dim": None, "_params": None, "_cache": None,
                 "_fold_gain": None}
    form: Form
    bias: float
    _kind: str
    _dim: int
    _params: dict
    _cache: dict  # the form as tensors, by (device, dtype)
    _fold_gain: Any  # fold_gain(form): the fold-range check's screen

    def __init__(self, kind: str, dim: int, bias: float, **params):
        if kind not in KINDS:
            raise ValueError(f"unknown metric kind {kind!r} (known: {', '.join(KINDS)})")
        bias = _scalar(bias, "bias")
        roles = {part.role: params[part.name] for part in PARTS[kind] if params.get(part.name) is not None}
        diag = roles.get("diag")
        if diag is None and "left" not in roles:
            diag = 1.0  # dot: the identity
        if diag is not None and np.ndim(diag) == 0:
            diag = _frozen(np.full(dim, diag, np.float32))
        form = Form(diag, roles.get("left"), roles.get("right"))
        for name, value in (("_kind", kind), ("_dim", dim), ("bias", bias), ("_params", params),
                            ("form", form), ("_cache", {}), ("_fold_gain", fold_gain(form))):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"Metric is immutable: cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"Metric is immutable: cannot delete {name!r}")

    # Immutable: a copy is the object itself, and unpickling rebuilds through the constructors'
    # checks, so no copy can carry writeable parameters.
    def __copy__(self) -> "Metric":
        return self

    def __deepcopy__(self, memo) -> "Metric":
        return self

    def __reduce__(self):
        return build, (self._kind, self._dim, self._params, self.bias)

    # ---- files: NumPy .npz, never pickle; read by read_npz, never np.load -------------------
    def arrays(self, prefix: str = "") -> dict:
        """The metric as named arrays (kind, dim, bias and its parameters), for np.savez."""
        _check_file_dim(self._kind, self._dim)
        arrays = {f"{prefix}kind": np.array(self._kind), f"{prefix}dim": np.array(self._dim),
                  f"{prefix}bias": np.array(self.bias, np.float64)}
        for name, value in self._params.items():
            if value is not None:
                arrays[f"{prefix}{name}"] = np.asarray(value, np.float32)
        return arrays

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "", source: str = "metric") -> "Metric":
        """The metric that arrays() wrote; a missing, malformed or unexpected entry (one whose
        name starts with `prefix`) is a ValueError."""
        try:
            kind = str(npz_entry(arrays, prefix + "kind", "U"))
            if kind not in KINDS:
                raise ValueError(f"unknown metric kind {kind[:40]!r}")
            names = {"kind", "dim", "bias", *(part.name for part in PARTS[kind])}
            unexpected = sorted(key for key in arrays if key.startswith(prefix) and key[len(prefix):] not in names)
            if unexpected:
                raise ValueError(f"unexpected entries {str(unexpected)[:200]}")
            dim = int(npz_entry(arrays, prefix + "dim", "iu"))
            bias = float(npz_entry(arrays, prefix + "bias", "fiu"))
            _check_file_dim(kind, dim)
            parameters = {part.name: (float(npz_entry(arrays, prefix + part.name, "fiu")) if part.shape == "scalar"
                                      else arrays[prefix + part.name])
                          for part in PARTS[kind] if prefix + part.name in arrays}
            metric = build(kind, dim, parameters, bias)
        except (KeyError, ValueError, TypeError, IndexError) as error:
            raise ValueError(f"{source}: not a saved splitnet_kernels metric ({type(error).__name__}: {error})") from None
        if metric.dim != dim:
            raise ValueError(f"{source}: the saved dim {dim} does not match the parameters ({metric.dim})")
        return metric

    def save(self, path) -> None:
        """Writes the metric to `path` as a NumPy .npz (no pickle): kind, dim, bias, parameters."""
        arrays = self.arrays()
        with writing_beside(path) as f:  # a crash while saving leaves the previous file whole
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> "Metric":
        """Reads a metric written by save(), through the constructors' checks. Anything else (not
        a regular file, damaged, foreign) is a ValueError naming `path`."""
        return cls.from_arrays(read_npz(path, "splitnet_kernels metric"), source=str(path))

    # ---- constructors ---------------------------------------------------------------------
    @classmethod
    def dot(cls, dim: int, bias: float = 0.0) -> "Metric":
        return cls("dot", _dimension(dim), bias)

    @classmethod
    def scaled(cls, dim: int, w: float, bias: float = 0.0) -> "Metric":
        return cls("scaled", _dimension(dim), bias, w=_scalar(w, "w"))

    @classmethod
    def diagonal(cls, s, bias: float = 0.0) -> "Metric":
        s = _parameter(s, "s", 1)
        return cls("diagonal", s.shape[0], bias, s=s)

    @classmethod
    def full(cls, S, bias: float = 0.0) -> "Metric":
        S = _parameter(S, "S", 2)
        if S.shape[0] != S.shape[1]:
            raise ValueError(f"S: expected a square matrix, got shape {S.shape}")
        return cls("full", S.shape[0], bias, S=S)

    @classmethod
    def low_rank(cls, P, Q, d=None, bias: float = 0.0) -> "Metric":
        """S = diag(d) + P Q^T; d=None means no diagonal term."""
        P, Q = _parameter(P, "P", 2), _parameter(Q, "Q", 2)
        if P.shape != Q.shape:
            raise ValueError(f"P and Q must have the same shape (n, r), got {P.shape} and {Q.shape}")
        if P.shape[1] == 0:
            raise ValueError(f"P, Q: rank must be >= 1, got shape {P.shape}")
        if d is not None:
            d = _parameter(d, "d", 1)
            if d.shape[0] != P.shape[0]:
                raise ValueError(f"d: expected shape ({P.shape[0]},) to match P {P.shape}, got {d.shape}")
        return cls("low_rank", P.shape[0], bias, P=P, Q=Q, d=d)

    # ---- properties -----------------------------------------------------------------------
    kind = property(lambda self: self._kind, doc="One of the KINDS: dot, scaled, diagonal, low_rank, full.")
    dim = property(lambda self: self._dim, doc="The embedding dimension n.")

    @property
    def params(self) -> dict:
        """The parameters by name (read-only float32 arrays, or a float for w)."""
        return dict(self._params)

    def __repr__(self) -> str:
        diag, left, right = self.form
        extra = f", rank={left.shape[1]}" if right is not None else ""
        return f"Metric.{self._kind}(dim={self._dim}{extra}, bias={self.bias:g})"

    def dense(self) -> np.ndarray:
        """S as a new (n, n) float32 array."""
        diag, left, right = self.form
        S = np.zeros((self._dim, self._dim), np.float64)
        if left is not None:
            S += left if right is None else left.astype(np.float64) @ right.T.astype(np.float64)
        if diag is not None:
            S[np.diag_indices(self._dim)] += diag
        return S.astype(np.float32)

    def diag_weights(self):
        """The diagonal w when S = diag(w) (the dot, scaled and diagonal kinds), float32 (n,);
        None when S has a factor term."""
        return self.form.diag if self.form.left is None else None

    def cost_per_candidate(self, folded: bool = True) -> int:
        """Multiply-adds per (user, candidate) pair: n when folded, else the form's own cost
        (the pair's dot product, plus the diagonal, plus u L and a R)."""
        n, (diag, left, right), parts = self._dim, self.form, PARTS[self._kind]
        if folded or not parts:
            return n
        diagonal = 0 if diag is None else 1 if any(p.shape == "scalar" for p in parts) else n
        factors = 0 if left is None else left.size + (0 if right is None else right.size)
        return n + diagonal + factors

    def magnitude(self) -> list:
        """|S| as float64 matrices bounding the fold's partial sums: |diag| + |L| |R|^T (n, n),
        and |L| itself (n, r) when R is given (it bounds the partial product u L)."""
        return fold_gain(self.form, always=True)[1]

    # ---- the algebra ----------------------------------------------------------------------
    def check_fold_range(self, users) -> None:
        """Raises ValueError if folding a finite user through a factor form could leave the
        float32 range.

        The policy, the same on every backend. A diagonal S folds by one product per entry,
        which float32 rounds exactly as the float64 reference rounds its own fold to float32: an
        entry beyond the range is +-inf everywhere, and the scores follow IEEE rules. A factor
        form (full, low_rank) sums products, and float32 partial sums can overflow where the
        exact fold does not; so when the bound |u|^T |S|, which bounds every partial sum in any
        order, passes the range, the call is refused rather than giving inf or NaN on the
        float32 backends and a number on the reference. Users holding NaN or infinity are not
        refused. One squared norm per user (Cauchy-Schwarz against the largest column norm of
        |S|) decides; the exact bound is formed only for users that fail it.
        """
        if self._fold_gain is None:
            return  # a diagonal form: see above
        if is_tensor(users):
            users = users.detach().cpu().numpy()  # rare: the check before a tensor call
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing norm is doubtful, checked below
            norms = np.einsum("...i,...i->...", users, users)  # float32 norms: n eps, inside the slack
            doubtful = ~(np.float64(norms) * self._fold_gain[0] <= FOLD_LIMIT_SQUARED)  # the limit is no float32
        if not np.any(doubtful):
            return
        refuse_fold_beyond_range(np.asarray(users, np.float64).reshape(-1, self._dim)[np.reshape(doubtful, -1)],
                                 self._fold_gain[1], repr(self))

    def fold(self, users):
        """users @ S for users (n,) or (M, n): numpy in, numpy out; torch in, torch out.

        float64 users are folded in float64 (the reference); everything else in float32. The
        compiled backend folds inside its kernels call instead, with the same operations.
        """
        if is_tensor(users):
            return self._fold(users, self._tensor_params(users))
        users = np.asarray(users)
        if users.dtype.kind != "f":
            raise TypeError(f"users: expected a floating-point array, got dtype {users.dtype}")
        if users.dtype != np.float64:
            users = users.astype(np.float32, copy=False)
        if users.ndim not in (1, 2) or users.shape[-1] != self._dim:
            raise ValueError(f"users: expected shape ({self._dim},) or (M, {self._dim}), got {users.shape}")
        with np.errstate(over="ignore", invalid="ignore"):  # IEEE: the fold-range policy (check_fold_range)
            if users.dtype != np.float64:
                return self._fold(users, self.form)
            folded = self._fold(users, Form(*(None if x is None else x.astype(np.float64) for x in self.form)))
            beyond = np.isinf(folded.astype(np.float32)) & np.isfinite(folded)  # overflow as float32 has it
        return np.where(beyond, np.copysign(np.inf, folded), folded) if beyond.any() else folded

    @staticmethod
    def _fold(users, form):
        """users diag + (users left) right^T, the product with diag rounded before the sum."""
        diag, left, right = form
        if diag is None and left is None:
            return users  # a trainable head's dot (a Metric's own dot has diag = ones)
        folded = None
        if left is not None:
            folded = users @ left
            if right is not None:
                folded = folded @ right.T
        if diag is None:
            return folded
        return users * diag if folded is None else folded + users * diag

    def _tensor_params(self, like) -> Form:
        """The form as tensors on like's device and dtype, made once per (device, dtype)."""
        import torch

        key = (str(like.device), like.dtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = Form(*(None if x is None else torch.tensor(x, device=like.device, dtype=like.dtype)
                            for x in self.form))
            self._cache[key] = cached
        return cached


@functools.lru_cache(maxsize=256)
def dot_metric(dim: int, bias: float = 0.0) -> Metric:
    """Metric.dot(dim, bias), made once: metric=None's metric, S = I in a form, a folded objective's."""
    return Metric.dot(dim, bias)


# The float32 range, less the rounding of a sum of up to 2^20 terms (a relative 2^20 * 2^-24).
FOLD_LIMIT = float(np.finfo(np.float32).max) * (1.0 - 2.0**-4)
FOLD_LIMIT_SQUARED = FOLD_LIMIT**2


def refuse_fold_beyond_range(users: np.ndarray, magnitudes: list, metric: str) -> None:
    """The fold-range rule itself (Metric.check_fold_range): a ValueError when some finite user
    among `users` (float64 rows) has the bound |u|^T |S| past the limit, for each of the magnitude
    matrices that fold_gain gives; `metric` names the metric in the message."""
    rows = np.abs(users)
    rows = rows[np.all(np.isfinite(rows), axis=1)]
    if rows.size:
        bound = max(float((rows @ magnitude).max()) for magnitude in magnitudes)
        if bound > FOLD_LIMIT:
            raise ValueError(f"users: folding through {metric} can leave the float32 range "
                             f"(|u|^T |S| reaches {bound:.3g} > {FOLD_LIMIT:.3g}); rescale the users or the metric")


def fold_gain(form: Form, always: bool = False):
    """None for a diagonal form (its overflow is the same on every backend), else (the
    largest squared column norm among the magnitude matrices, the matrices as float64 (n, n)):
    |diag| + |L| |R|^T, and |L| itself when R is given, which bounds the partial product u L."""
    diag, left, right = form
    if not always and left is None:
        return None
    dim = (diag if left is None else left).shape[0]
    magnitude = np.zeros((dim, dim))
    matrices = [magnitude]
    if left is not None:
        absolute = np.abs(left.astype(np.float64))
        if right is None:
            magnitude += absolute
        else:
            magnitude += absolute @ np.abs(right.astype(np.float64)).T
            matrices.append(absolute)
    if diag is not None:
        magnitude[np.diag_indices(dim)] += np.abs(diag)
    return max(float(np.square(m).sum(axis=0).max()) for m in matrices), matrices


# ---- files (read and written by _files) -------------------------------------------------------
# A dot or scaled metric holds no array of length dim that the file's size would bound, yet
# loading one allocates its dim: its files hold at most this dim (a 64 MiB diagonal).
FILE_MAX_DIM = 1 << 24
def _check_file_dim(kind: str, dim: int) -> None:
    if dim > FILE_MAX_DIM and all(part.shape == "scalar" for part in PARTS[kind]):
        raise ValueError(f"dim {dim}: a {kind} metric's file holds at most dim {FILE_MAX_DIM}")


def build(kind: str, dim: int, parameters: dict, bias: float = 0.0) -> Metric:
    """The Metric of `kind` from its parameters by name (PARTS), through the constructors'
    checks: for unpickling and for heads that export their trained parameters."""
    if kind not in KINDS:
        raise ValueError(f"unknown metric kind {kind!r} (known: {', '.join(KINDS)})")
    if kind == "dot":
        return Metric.dot(dim, bias)
    if kind == "scaled":
        return Metric.scaled(dim, float(parameters["w"]), bias)
    if kind == "diagonal":
        return Metric.diagonal(parameters["s"], bias)
    if kind == "full":
        return Metric.full(parameters["S"], bias)
    return Metric.low_rank(parameters["P"], parameters["Q"], parameters.get("d"), bias)


def _dimension(dim) -> int:
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim: expected an integer, got {type(dim).__name__}")
    if dim < 1:
        raise ValueError(f"dim: must be >= 1, got {dim}")
    return int(dim)
