"""The compiled backend: the C++ kernels (kernels/) through splitnet_kernels._core, the only
module that imports it. Each call checks in Python what the binding cannot, then makes one
binding call, which folds the users through the metric's form and scores in one pass."""

from __future__ import annotations

import numpy as np

from .. import _threads as threads_
from .._storage import BOUND_BLOCK, ExactStorage, is_plain

try:
    from .. import _core
except ImportError as error:  # the package still works on the other backends
    _core = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"compiled module not loaded: {error}"
else:
    _IMPORT_ERROR = ""


# ---- the compiled module's facts, for _dispatch, _info and the benchmarks -----------------------
def compiled() -> bool:
    return _core is not None


def set_isa(name: str) -> None:
    _core.set_isa(name)


def active_isa() -> str:
    return _core.active_isa()


def detected_isa() -> str:
    return _core.detected_isa()


def supported_isas() -> list:
    return list(_core.supported_isas())


def read_bytes(buffer, threads: int) -> int:
    """Reads a C-contiguous, 8-byte aligned buffer once across threads: the read-bandwidth floor."""
    return _core.read_bytes(buffer, threads)


# ---- the backend ----------------------------------------------------------------------------------
def probability_(x: np.ndarray) -> None:
    """In place: the kernels' sigmoid (double, rounded to float32) of a C-contiguous float32 array."""
    _core.probability(x)


def fold(users: np.ndarray, metric) -> np.ndarray:
    """users (M, n) float32 folded through the metric by the kernels' own fold (the bits that
    score and topk fold with)."""
    out = np.empty(users.shape, np.float32)
    if len(users):
        diag, left, right = metric.form
        _core.fold(kernel_rows(users), diag, left, right, out, threads_.default())
    return out


def kernel_rows(x) -> np.ndarray:
    """x as float32 whose rows are contiguous and float-aligned; copies only when it must."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] > 1 and x.strides[-1] != 4 or x.ctypes.data % 4 or (x.ndim == 2 and x.strides[0] % 4):
        x = np.array(x, order="C")  # a fresh, aligned copy (ascontiguousarray keeps misalignment)
    return x


def _target(out, shape):
    """Where the kernel writes: `out` itself when it is C-contiguous float32, else a new array."""
    if out is not None and out.flags.c_contiguous:
        return out
    return np.empty(shape, np.float32)


def _storage(store):
    """(data, dtype name, scales) of a candidate store for the binding."""
    if is_plain(store):
        return kernel_rows(store), "float32", None
    return store.data, store.dtype, store.scales


class SimdBackend:
    name = "simd"
    native = "numpy"

    def status(self):
        if _core is None:
            return False, _IMPORT_ERROR
        return True, f"compiled kernels, ISA {_core.active_isa()} (detected {_core.detected_isa()})"

    @staticmethod
    def _threads(threads):
        return threads_.default() if threads is None else threads

    def score(self, users, store, metric, *, ids, threads, out):
        data, dtype, scales = _storage(store)
        users = kernel_rows(users)
        count = data.shape[0] if ids is None else len(ids)
        target = _target(out, (count,) if users.ndim == 1 else (users.shape[0], count))
        _core.score(users, data, dtype, scales, ids, *metric.form, metric.bias, target, self._threads(threads))
        if out is not None and target is not out:
            out[...] = target
            return out
        return target

    def topk(self, users, store, k, metric, *, ids, threads):
        data, dtype, scales = _storage(store)
        users = kernel_rows(users)
        shape = (k,) if users.ndim == 1 else (users.shape[0], k)
        scores, found = np.empty(shape, np.float32), np.empty(shape, np.int64)
        if isinstance(store, ExactStorage):  # the certified scan of the reduced rows
            scan = store.scan
            store.rescored = _core.topk_exact(users, scan.data, scan.dtype, scan.scales, ids, data, store.norms,
                                              store.residuals, *metric.form, metric.bias, k, scores, found,
                                              self._threads(threads), *store.block_bounds, BOUND_BLOCK)
            return scores, found
        _core.topk(users, data, dtype, scales, ids, *metric.form, metric.bias, k, scores, found,
                   self._threads(threads))
        return scores, found

    def topk_value(self, queries, store, *, allowed, bids, ids, bias, begin, end, best, threads):
        """Continues best = (scores, ids, counts) ((M, k), (M, k), (M,)) by value with rows
        [begin, end) of one objective (see _core.topk_value); returns (where to resume, rows scored)."""
        data, dtype, scales = _storage(store)
        width = data.shape[1]
        if queries.shape[1] != width:  # the stored rows are wider (zero past dim)
            queries = np.pad(queries, ((0, 0), (0, width - queries.shape[1])))
        return _core.topk_value(kernel_rows(queries), data, dtype, scales, allowed, bids, ids, bias, begin, end,
                                best[0].shape[1], *best, self._threads(threads))

    def score_pairs(self, users, ads, metric, *, threads, out):
        target = _target(out, ads.shape[:1])
        _core.score_pairs(kernel_rows(users), kernel_rows(ads), *metric.form, metric.bias, target,
                          self._threads(threads))
        if out is not None and target is not out:
            out[...] = target
            return out
        return target

    # The fast path's calls: float32 numpy arrays whose layout the binding checks (ValueError).
    # They read the metric's slots directly: W6's whole call is a few microseconds.
    def score_plain(self, user, ads, metric, out):
        diag, left, right = metric._form
        _core.score(user, ads, "float32", None, None, diag, left, right, metric._bias, out, threads_.default())

    def topk_plain(self, user, ads, k, metric, scores, ids):
        diag, left, right = metric._form
        _core.topk(user, ads, "float32", None, None, diag, left, right, metric._bias, k, scores, ids,
                   threads_.default())
