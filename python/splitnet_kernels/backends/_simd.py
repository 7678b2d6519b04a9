"""The compiled backend: the C++ kernels (kernels/) through splitnet_kernels._core, the only
module that imports it, and the only place that builds the binding's arguments. Each request is
one binding call, which folds the users through the metric's form and scores in one pass."""

from __future__ import annotations

import numpy as np

from .. import _threads as threads_
from .._checks import Mask
from .._conversions import kernel_rows
from .._storage import BOUND_BLOCK, ExactStorage

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


def known_isas() -> list:
    """Every level the kernels know (the C++ list of levels), whether this CPU runs it or not."""
    return [name for name, _ in _core.isas()]


def register_torch_ops(resolve, take_error, fold_limit: float, threads: int) -> None:
    """Registers the custom ops' C++ CPU kernels (src/torch_ops.cpp) with the dispatcher of the
    running torch: resolve(name) gives each stable-ABI function's address (see _torch_ops)."""
    _core.register_torch_ops(resolve, take_error, fold_limit, threads)


def set_torch_threads(threads: int) -> None:
    """threads=None's count for the custom ops' C++ kernels (0: their Python kernels decide)."""
    _core.set_torch_threads(threads)


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


def _target(out, shape):
    """Where the kernel writes: `out` itself when it is C-contiguous float32, else a new array."""
    if out is not None and out.flags.c_contiguous:
        return out
    return np.empty(shape, np.float32)


# bound once: W6 (a few microseconds a call) counts every lookup
_ndarray, _empty, _float32, _int64 = np.ndarray, np.empty, np.float32, np.int64
_default_threads = threads_.default


def _rows(store):
    """(data, dtype name, scales) of a candidate store for the binding: plain float32 rows as
    they are (the route made them kernel rows, or the binding refuses their layout), a packed
    Storage's own."""
    if type(store) is _ndarray:
        return store, "float32", None
    return store.data, store.dtype, store.scales


class SimdBackend:
    """The compiled kernels: one binding call per request (see backends/__init__.py), the
    metric crossing as its canonical form. It reads the request's arrays as they are: the
    binding checks their layout and shapes and raises ValueError, never reads past them."""

    name = "simd"
    native = "kernels"

    def status(self):
        if _core is None:
            return False, _IMPORT_ERROR
        return True, f"compiled kernels, ISA {_core.active_isa()} (detected {_core.detected_isa()})"

    @staticmethod
    def _threads(threads):
        return threads_.default() if threads is None else threads

    def score(self, request, out):
        users, store, metric, ids, _, _, threads = request  # one unpacking: W6 counts every attribute read
        if type(store) is _ndarray:  # plain rows (_rows, inline: the fast path's case)
            data, dtype, scales = store, "float32", None
        else:
            data, dtype, scales = store.data, store.dtype, store.scales
        count = len(data) if ids is None else len(ids)
        if out is not None and out.flags.c_contiguous:  # the kernel writes into out itself
            target = out
        else:
            target = _empty((count,) if users.ndim == 1 else (users.shape[0], count), _float32)
        diag, left, right = metric.form
        _core.score(users, data, dtype, scales, ids, diag, left, right, metric.bias, target,
                    threads or _default_threads())
        if out is not None and target is not out:
            out[...] = target
            return out
        return target

    def topk(self, request):
        users, store, metric, ids, k, _, threads = request
        scanned = len(ids) if ids is not None and type(ids) is not Mask else len(store)  # rows a scan reads
        if type(ids) is Mask:  # a dense subset: its bitmap, read beside the rows
            ids = ids.words
        shape = (k,) if users.ndim == 1 else (users.shape[0], k)
        scores, found = _empty(shape, _float32), _empty(shape, _int64)
        diag, left, right = metric.form
        threads = threads or _default_threads()
        if type(store) is _ndarray:  # plain rows (_rows, inline: the fast path's case)
            data, dtype, scales = store, "float32", None
        elif isinstance(store, ExactStorage):  # the certified scan of the reduced rows
            scan = store.scan
            rescored, refined, read = _core.topk_exact(users, scan.data, scan.dtype, scan.scales, ids, store.data,
                                                       store.norms, store.residuals, diag, left, right, metric.bias,
                                                       k, scores, found, threads, *store.block_bounds, BOUND_BLOCK,
                                                       store.kernel_levels())
            store.scanned(scanned, rescored, refined, read)
            return scores, found
        else:
            data, dtype, scales = store.data, store.dtype, store.scales
        _core.topk(users, data, dtype, scales, ids, diag, left, right, metric.bias, k, scores, found, threads)
        return scores, found

    def topk_value(self, request, bids, ids, begin: int, end: int, best):
        """Continues best = (scores, ids, counts) ((M, k), (M, k), (M,)) by value with rows
        [begin, end) of one objective (see _core.topk_value): request.users are the objective's
        folded queries (M, n), request.store its rows, request.metric a dot metric with its bias,
        request.ids the allowed rows among them; bids and ids (the candidates' own) per row.
        Returns (where to resume, rows scored)."""
        data, dtype, scales = _rows(request.store)
        queries, width = request.users, data.shape[1]
        if queries.shape[1] != width:  # the stored rows are wider (zero past dim)
            queries = np.pad(queries, ((0, 0), (0, width - queries.shape[1])))
        scores, best_ids, counts = best
        return _core.topk_value(kernel_rows(queries), data, dtype, scales, request.ids, bids, ids,
                                request.metric.bias, begin, end, scores.shape[1], scores, best_ids, counts,
                                request.threads or threads_.default())

    def score_pairs(self, request, out):
        users, ads, metric = request.users, request.store, request.metric
        target = _target(out, ads.shape[:1])
        diag, left, right = metric.form
        _core.score_pairs(users, ads, diag, left, right, metric.bias, target, request.threads or threads_.default())
        if out is not None and target is not out:
            out[...] = target
            return out
        return target
