"""The reference backend: NumPy with float64 accumulation, always available, the tests' oracle."""

from __future__ import annotations

import functools

import numpy as np

from ._arrays import ArrayBackend
from .. import _threads
from .._order import chunked_topk


@functools.cache
def _blas():
    """NumPy's BLAS, found once (a fresh threadpool_limits looks it up for ~0.2 ms a call)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def _blas_threads(threads):
    """The BLAS thread count for one call: threads, or the package's default for None."""
    return _blas().limit(limits=_threads.default() if threads is None else threads)


class NumpyBackend(ArrayBackend):
    name = "numpy"
    native = "numpy"

    def status(self):
        return True, f"numpy {np.__version__}, float64 accumulation"

    def _scores(self, folded, ads, bias, pairwise):
        if pairwise:
            raw = np.einsum("ij,ij->i", folded, ads)
        else:
            raw = ads @ folded if folded.ndim == 1 else folded @ ads.T
        return (raw + bias).astype(np.float32)

    # IEEE arithmetic, quietly: inf * 0 is NaN and a float64 past the float32 range is inf, as
    # in the compiled kernels, without a RuntimeWarning for every such input.
    def score_rows(self, users, ads, metric, *, pairwise, threads, out):
        with _blas_threads(threads), np.errstate(invalid="ignore", over="ignore"):
            folded = metric.fold(np.asarray(users, np.float64))
            result = self._scores(folded, np.asarray(ads, np.float64), metric.bias, pairwise)
        if out is None:
            return result
        out[...] = result
        return out

    def topk_rows(self, users, ads, k, metric, *, threads):
        ads = np.asarray(ads, np.float64)
        with _blas_threads(threads), np.errstate(invalid="ignore", over="ignore"):
            folded = metric.fold(np.asarray(users, np.float64))
            return chunked_topk(lambda b, e: self._scores(folded, ads[b:e], metric.bias, False),
                                folded.shape[0], ads.shape[0], k)
