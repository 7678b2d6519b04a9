"""The compiled backend: float32 C++ kernels (kernels/) through splitnet_kernels._core."""

from __future__ import annotations

import functools

import numpy as np

try:
    from .. import _core
except ImportError as error:  # the package still works on the other backends
    _core = None
    _IMPORT_ERROR = f"compiled module not loaded: {error}"
else:
    _IMPORT_ERROR = ""


def kernel_rows(x) -> np.ndarray:
    """x as float32 whose rows are contiguous and float-aligned; copies only when it must."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] > 1 and x.strides[-1] != 4 or x.ctypes.data % 4 or (x.ndim == 2 and x.strides[0] % 4):
        x = np.array(x, order="C")  # a fresh, aligned copy (ascontiguousarray keeps misalignment)
    return x


def matmul(x: np.ndarray, w: np.ndarray, threads: int = 1) -> np.ndarray:
    """x @ w, x (n,) or (M, n) and w (n, c) C-contiguous float32, on the kernels' cross tile:
    Metric.fold's BLAS-free path. One user folds with the same bits as a batch."""
    rows = kernel_rows(x).reshape(-1, x.shape[-1])
    out = np.empty((rows.shape[0], w.shape[1]), np.float32)
    _core.matmul(rows, w, out, threads)
    return out.reshape(x.shape[:-1] + (w.shape[1],))


def _threads(threads):
    return _core.max_threads() if threads is None else threads


def _target(out, shape):
    """Where the kernel writes: `out` itself when it is C-contiguous float32, else a new array."""
    if out is not None and out.flags.c_contiguous:
        return out
    return np.empty(shape, np.float32)


class SimdBackend:
    name = "simd"
    native = "numpy"

    def status(self):
        if _core is None:
            return False, _IMPORT_ERROR
        return True, f"compiled kernels, ISA {_core.active_isa()} (detected {_core.detected_isa()})"

    def score(self, users, ads, metric, *, pairwise, threads, out):
        ads = kernel_rows(ads)
        bias, threads = metric.bias, _threads(threads)
        if pairwise:
            target = _target(out, ads.shape[:1])
            users = kernel_rows(users)
            p = metric.params
            if metric.kind == "full":  # U S fused with the row-wise dot, no (B, n) temporary
                _core.score_pairs_factored(users, ads, p["S"], None, None, bias, target, threads)
            elif metric.kind == "low_rank":  # (U P) . (A Q) + the diagonal, fused the same way
                _core.score_pairs_factored(users, ads, p["P"], p["Q"], p["d"], bias, target, threads)
            else:  # one streaming pass, weights applied in the kernel
                weights = None if metric.kind == "dot" else metric.diag_weights()
                _core.score_pairs(users, ads, weights, bias, target, threads)
        else:
            users = kernel_rows(users)
            if users.ndim == 1 or users.shape[0] == 1:  # one user: the candidates split across threads
                target = _target(out, ads.shape[:1] if users.ndim == 1 else (1, ads.shape[0]))
                _core.score_one(self._fold_one(metric, users), ads, bias, target.reshape(-1), threads)
            else:
                target = _target(out, (users.shape[0], ads.shape[0]))
                folded = metric.fold(users, functools.partial(matmul, threads=threads))
                _core.score_cross(kernel_rows(folded), ads, bias, target, threads)
        if out is not None and target is not out:
            out[...] = target
            return out
        return target

    @staticmethod
    def _fold_one(metric, users):
        """One user folded as a vector, the same bits for score and topk."""
        return kernel_rows(metric.fold(users.reshape(-1), matmul))

    def topk(self, users, ads, k, metric, *, threads):
        ads, users = kernel_rows(ads), kernel_rows(users)
        scores = np.empty((users.shape[0], k), np.float32)
        ids = np.empty((users.shape[0], k), np.int64)
        if users.shape[0] == 1:  # one user: the candidates split across threads
            _core.topk_one(self._fold_one(metric, users), ads, k, metric.bias, scores[0], ids[0], _threads(threads))
        else:
            threads = _threads(threads)
            folded = metric.fold(users, functools.partial(matmul, threads=threads))
            _core.topk_cross(kernel_rows(folded), ads, k, metric.bias, scores, ids, threads)
        return scores, ids
