"""Candidates: an ad matrix prepared once and scored against many requests (serving).

Storage: float32 as is; float16 (IEEE half); bfloat16 (the top 16 bits of float32, rounded to
nearest even); int8 with one float32 scale per row (row ~= scale * q, |q| <= 127). Queries are
never quantized: they are folded in float32, and reduced-precision rows are widened to float32
a block at a time, so the only error is the storage rounding of the ads.
"""

from __future__ import annotations

import numpy as np

from . import _api
from ._metric import _is_tensor

DTYPES = ("float32", "float16", "bfloat16", "int8")
_BLOCK_ROWS = 1 << 16  # rows widened per block: 16 MiB of float32 at n = 64


def _to_bfloat16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    out[nan] = np.uint16(0x7FC0)
    return out


def _from_bfloat16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.uint32) << np.uint32(16)).view(np.float32)


class Candidates:
    """An immutable, packed candidate set. Same shapes and contract as sk.score / sk.topk."""

    def __init__(self, ads, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        ads = _api._to_numpy(_api._embeddings(ads, "ads", (2,)))
        if dtype in ("bfloat16", "int8", "float16") and not np.all(np.isfinite(ads)):
            raise ValueError(f"ads: NaN or infinity cannot be stored as {dtype}")
        self._dtype = dtype
        self._scale = None
        if dtype == "float32":
            self._data = np.array(ads, dtype=np.float32, order="C")
        elif dtype == "float16":
            if np.abs(ads).max(initial=0.0) > np.finfo(np.float16).max:
                raise ValueError("ads: values exceed the float16 range (65504)")
            self._data = np.ascontiguousarray(ads, np.float16)
        elif dtype == "bfloat16":
            self._data = _to_bfloat16(ads)
        else:
            peak = np.abs(ads).max(axis=1).astype(np.float32) if ads.shape[0] else np.zeros(0, np.float32)
            self._scale = np.where(peak > 0, peak / np.float32(127.0), np.float32(1.0)).astype(np.float32)
            self._data = np.clip(np.rint(ads / self._scale[:, None]), -127, 127).astype(np.int8)
        self._data.flags.writeable = False

    def __len__(self) -> int:
        return self._data.shape[0]

    dim = property(lambda self: self._data.shape[1], doc="Embedding dimension n.")
    dtype = property(lambda self: self._dtype, doc="Storage type name.")

    @property
    def nbytes(self) -> int:
        return self._data.nbytes + (0 if self._scale is None else self._scale.nbytes)

    def __repr__(self) -> str:
        return f"Candidates({len(self)} x {self.dim}, dtype={self._dtype!r}, {self.nbytes / 2**20:.1f} MiB)"

    def rows(self, begin: int = 0, end: int | None = None) -> np.ndarray:
        """Rows [begin, end) widened to float32 (a view for float32 storage)."""
        block = self._data[begin:end]
        if self._dtype == "float32":
            return block
        if self._dtype == "float16":
            return block.astype(np.float32)
        if self._dtype == "bfloat16":
            return _from_bfloat16(block)
        return block.astype(np.float32) * self._scale[begin:end, None]

    def _blocks(self):
        step = len(self) if self._dtype == "float32" else _BLOCK_ROWS
        for begin in range(0, len(self), max(step, 1)):
            end = min(len(self), begin + step)
            yield begin, end, self.rows(begin, end)

    def score(self, users, metric=None, *, sigmoid=False, backend="auto", threads=None, out=None):
        """sk.score(users, ads) for users (n,) -> (N,) or (M, n) -> (M, N)."""
        if self._dtype == "float32" or len(self) == 0:
            return _api.score(users, self.rows(), metric, sigmoid=sigmoid, backend=backend, threads=threads, out=out)
        users = _api._embeddings(users, "users", (1, 2))
        device = users.device if _is_tensor(users) else None
        shape = (len(self),) if users.ndim == 1 else (users.shape[0], len(self))
        _api._check_out(out, shape, device is not None)
        users = _api._to_numpy(users)
        result = np.empty(shape, np.float32)
        for begin, end, block in self._blocks():
            _api.score(users, block, metric, sigmoid=sigmoid, backend=backend, threads=threads,
                       out=result[..., begin:end])
        result = _api._result_for(result, device is not None, device)
        if out is None:
            return result
        out.copy_(result) if device is not None else np.copyto(out, result)
        return out

    def topk(self, users, k, metric=None, *, sigmoid=False, backend="auto", threads=None):
        """sk.topk(users, ads, k) over this set."""
        if self._dtype == "float32" or len(self) == 0:
            return _api.topk(users, self.rows(), k, metric, sigmoid=sigmoid, backend=backend, threads=threads)
        users = _api._embeddings(users, "users", (1, 2))
        device = users.device if _is_tensor(users) else None
        users = _api._to_numpy(users)
        parts = []
        for begin, end, block in self._blocks():  # ranked by score; sigmoid only on the result
            scores, ids = _api.topk(users, block, k, metric, backend=backend, threads=threads)
            parts.append((scores, ids + begin))
        scores, ids = _api.merge_topk(parts, k)
        if sigmoid:
            _api._sigmoid_(scores)
        return _api._result_for(scores, device is not None, device), _api._result_for(ids, device is not None, device)
