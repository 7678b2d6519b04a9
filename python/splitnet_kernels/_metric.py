"""The learned similarity S and its algebra: every backend scores through Metric.fold.

score(u, a) = u^T S a + bias = fold(u) . a + bias, with fold(u) = u^T S. Folding happens once
per user, so one user against many candidates costs a plain dot product per candidate.
"""

from __future__ import annotations

import numbers

import numpy as np

KINDS = ("dot", "scaled", "diagonal", "low_rank", "full")


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch")


def _parameter(value, name: str, ndim: int) -> np.ndarray:
    if _is_tensor(value):
        value = value.detach().cpu().numpy()
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

    __slots__ = ("_kind", "_dim", "_bias", "_params", "_cache", "_fold_gain")

    def __init__(self, kind: str, dim: int, bias: float, **params):
        if kind not in KINDS:
            raise ValueError(f"unknown metric kind {kind!r} (known: {', '.join(KINDS)})")
        self._kind, self._dim, self._bias = kind, dim, _scalar(bias, "bias")
        self._params = params
        self._cache = {}
        self._fold_gain = _fold_gain(self)

    # Immutable: a copy is the object itself, and unpickling rebuilds through the constructors'
    # checks, so no copy can carry writeable parameters.
    def __copy__(self) -> "Metric":
        return self

    def __deepcopy__(self, memo) -> "Metric":
        return self

    def __reduce__(self):
        return _rebuild, (self._kind, self._dim, self._bias, self._params)

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
    kind = property(lambda self: self._kind, doc="One of dot, scaled, diagonal, low_rank, full.")
    dim = property(lambda self: self._dim, doc="The embedding dimension n.")
    bias = property(lambda self: self._bias, doc="The additive bias b.")

    @property
    def params(self) -> dict:
        """The parameters by name (read-only float32 arrays, or a float for w)."""
        return dict(self._params)

    def __repr__(self) -> str:
        extra = f", rank={self._params['P'].shape[1]}" if self._kind == "low_rank" else ""
        return f"Metric.{self._kind}(dim={self._dim}{extra}, bias={self._bias:g})"

    def dense(self) -> np.ndarray:
        """S as a new (n, n) float32 array."""
        n, p = self._dim, self._params
        if self._kind == "dot":
            return np.eye(n, dtype=np.float32)
        if self._kind == "scaled":
            return np.eye(n, dtype=np.float32) * np.float32(p["w"])
        if self._kind == "diagonal":
            return np.diag(p["s"]).astype(np.float32)
        if self._kind == "full":
            return p["S"].copy()
        S = (p["P"].astype(np.float64) @ p["Q"].T.astype(np.float64))
        if p["d"] is not None:
            S[np.diag_indices(n)] += p["d"]
        return S.astype(np.float32)

    def diag_weights(self):
        """The diagonal w of S = diag(w) for the dot, scaled and diagonal kinds (float32, (n,));
        None for low_rank and full, whose S is not diagonal."""
        if self._kind == "dot":
            return np.ones(self._dim, np.float32)
        if self._kind == "scaled":
            return np.full(self._dim, self._params["w"], np.float32)
        if self._kind == "diagonal":
            return self._params["s"]
        return None

    def cost_per_candidate(self, folded: bool = True) -> int:
        """Multiply-adds per (user, candidate) pair: n when folded, else the kind's own cost."""
        n = self._dim
        if folded or self._kind == "dot":
            return n
        if self._kind == "low_rank":
            return 2 * n + 2 * n * self._params["P"].shape[1]
        return {"scaled": n + 1, "diagonal": 2 * n, "full": n * n + n}[self._kind]

    # ---- the algebra ----------------------------------------------------------------------
    def check_fold_range(self, users) -> None:
        """Raises ValueError if folding a finite user could leave the float32 range.

        The policy, the same on every backend: a fold entry, or any partial sum of it in any
        order, is bounded by (|u|^T |S|)_j; when that bound passes the float32 range the call is
        refused, because float32 kernels would return inf or NaN where the float64 reference
        returns a number. Users holding NaN or infinity are not refused: their scores follow
        IEEE arithmetic. Cheap for ordinary users: one squared norm per user (Cauchy-Schwarz
        against the largest column norm of S) decides, and the exact bound is formed only for
        users that fail it.
        """
        if self._fold_gain is None:
            return  # |S| <= I on the diagonal: |fold_j| <= |u_j|, never beyond float32
        if _is_tensor(users):
            users = users.detach().cpu().numpy()  # rare: the check before a tensor call
        norms = np.einsum("...i,...i->...", users, users, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            doubtful = ~(norms * self._fold_gain[0] <= _FOLD_LIMIT**2)  # NaN norms are checked below
        if not np.any(doubtful):
            return
        rows = np.abs(np.asarray(users, np.float64).reshape(-1, self._dim)[np.reshape(doubtful, -1)])
        rows = rows[np.all(np.isfinite(rows), axis=1)]
        if rows.size:
            bound = max(float((rows @ magnitude).max()) for magnitude in self._fold_gain[1])
            if bound > _FOLD_LIMIT:
                raise ValueError(f"users: folding through {self!r} can leave the float32 range "
                                 f"(|u|^T |S| reaches {bound:.3g} > {_FOLD_LIMIT:.3g}); rescale the users or the metric")

    def fold(self, users, matmul=None):
        """users @ S for users (n,) or (M, n): numpy in, numpy out; torch in, torch out.

        float64 users are folded in float64 (the reference); everything else in float32.
        matmul(X, W) -> X @ W, if given, folds float32 users without numpy's BLAS, whose idle
        threads would spin on the cores the scoring kernels need next.
        """
        if _is_tensor(users):
            return self._fold(users, self._tensor_params(users))
        users = np.asarray(users)
        if users.dtype.kind != "f":
            raise TypeError(f"users: expected a floating-point array, got dtype {users.dtype}")
        if users.dtype != np.float64:
            users = users.astype(np.float32, copy=False)
        if users.ndim not in (1, 2) or users.shape[-1] != self._dim:
            raise ValueError(f"users: expected shape ({self._dim},) or (M, {self._dim}), got {users.shape}")
        if matmul is not None and users.dtype == np.float32 and self._kind in ("full", "low_rank"):
            p = self._params
            if self._kind == "full":
                return matmul(users, p["S"])
            folded = matmul(matmul(users, p["P"]), self._q_transposed())  # (u P) Q^T
            return folded + users * p["d"] if p["d"] is not None else folded
        params = self._params
        if users.dtype == np.float64:
            params = {k: (np.asarray(v, np.float64) if isinstance(v, np.ndarray) else v) for k, v in params.items()}
        return self._fold(users, params)

    def _q_transposed(self) -> np.ndarray:
        """Q^T, C-contiguous float32, made once."""
        if "Q.T" not in self._cache:
            self._cache["Q.T"] = np.ascontiguousarray(self._params["Q"].T)
        return self._cache["Q.T"]

    def _fold(self, users, p):
        kind = self._kind
        if kind == "dot":
            return users
        if kind == "scaled":
            return users * p["w"]
        if kind == "diagonal":
            return users * p["s"]
        if kind == "full":
            return users @ p["S"]
        folded = (users @ p["P"]) @ p["Q"].T
        return folded + users * p["d"] if p["d"] is not None else folded

    def _tensor_params(self, like) -> dict:
        """The parameters as tensors on like's device and dtype, made once per (device, dtype)."""
        import torch

        key = (str(like.device), like.dtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = {k: (torch.tensor(v, device=like.device, dtype=like.dtype) if isinstance(v, np.ndarray) else v)
                      for k, v in self._params.items()}
            self._cache[key] = cached
        return cached


# The float32 range, less the rounding of a sum of up to 2^20 terms (a relative 2^20 * 2^-24).
_FOLD_LIMIT = float(np.finfo(np.float32).max) * (1.0 - 2.0**-4)


def _fold_gain(metric: Metric):
    """None when no finite user can fold out of range (diagonal S with |s| <= 1), else
    (the largest squared column norm among the magnitude matrices, the matrices as float64):
    |S|, or for low_rank |P| |Q|^T + |diag(d)| and |P| itself, which bounds the partial u P."""
    weights = metric.diag_weights()
    if weights is not None and float(np.abs(weights).max()) <= 1.0:
        return None
    p = metric._params
    if weights is not None:
        matrices = [np.diag(np.abs(weights.astype(np.float64)))]
    elif metric.kind == "full":
        matrices = [np.abs(p["S"].astype(np.float64))]
    else:
        left, right = np.abs(p["P"].astype(np.float64)), np.abs(p["Q"].astype(np.float64))
        product = left @ right.T
        if p["d"] is not None:
            product[np.diag_indices(metric.dim)] += np.abs(p["d"])
        matrices = [product, left]
    return max(float(np.square(m).sum(axis=0).max()) for m in matrices), matrices


def _rebuild(kind: str, dim: int, bias: float, params: dict) -> Metric:
    """Metric from __reduce__'s state, through the constructors and their checks."""
    if kind == "dot":
        return Metric.dot(dim, bias)
    if kind == "scaled":
        return Metric.scaled(dim, params["w"], bias)
    if kind == "diagonal":
        return Metric.diagonal(params["s"], bias)
    if kind == "full":
        return Metric.full(params["S"], bias)
    return Metric.low_rank(params["P"], params["Q"], params["d"], bias)


def _dimension(dim) -> int:
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim: expected an integer, got {type(dim).__name__}")
    if dim < 1:
        raise ValueError(f"dim: must be >= 1, got {dim}")
    return int(dim)
