"""Candidates: an ad matrix prepared once and scored against many requests (serving).

Storage: float32; float16 (IEEE half); bfloat16 (float32 rounded to its top 16 bits, to nearest
even); int8 with one float32 scale per row (row ~= scale * q, |q| <= 127, rounded to nearest).
Rows are padded with zeros to a multiple of 64 elements and aligned to 64 bytes, so kernels
read whole vectors with no tail code. The query is folded in float32 and never rounded to the
storage type, except for int8, where the folded query is quantized the same way (one scale,
|q| <= 127) so that the dot product is an exact integer sum (vpdpbusd); the error is then the
rounding of both sides, about 0.4% per element. With the simd backend one user is scored by the
reduced-precision kernels directly; other backends, and several users, widen blocks of rows to
float32 first.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

from . import _api, _dispatch
from ._metric import _is_tensor
from .backends._simd import matmul

DTYPES = ("float32", "float16", "bfloat16", "int8")
_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int8": np.int8}
_ALIGN, _PAD = 64, 64
_BLOCK_ROWS = 1 << 16  # rows widened per block: 16 MiB of float32 at n = 64
_MAGIC = b"SPLITNET-CANDIDATES\x00v1\x00"


def _to_bfloat16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def _aligned_empty(shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class Candidates:
    """An immutable, packed candidate set. .score / .topk follow sk.score / sk.topk."""

    def __init__(self, ads, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        ads = _api._to_numpy(_api._embeddings(ads, "ads", (2,)))
        if dtype != "float32" and not np.all(np.isfinite(ads)):
            raise ValueError(f"ads: NaN or infinity cannot be stored as {dtype}")
        if dtype == "float16" and np.abs(ads).max(initial=0.0) > np.finfo(np.float16).max:
            raise ValueError("ads: values exceed the float16 range (65504)")
        count, dim = ads.shape
        data = _aligned_empty((count, -(-dim // _PAD) * _PAD), _STORAGE[dtype])
        data[:, dim:] = 0
        scales = None
        if dtype == "float32" or dtype == "float16":
            data[:, :dim] = ads
        elif dtype == "bfloat16":
            data[:, :dim] = _to_bfloat16(ads)
        else:
            peak = np.abs(ads).max(axis=1).astype(np.float32) if count else np.zeros(0, np.float32)
            scales = np.where(peak > 0, peak / np.float32(127.0), np.float32(1.0)).astype(np.float32)
            data[:, :dim] = np.clip(np.rint(ads / scales[:, None]), -127, 127)
        self._init(dtype, dim, data, scales)

    def _init(self, dtype, dim, data, scales):
        self._dtype, self._dim, self._data, self._scale = dtype, dim, data, scales
        for array in (data, scales):
            if array is not None and array.flags.writeable:
                array.flags.writeable = False

    def __len__(self) -> int:
        return self._data.shape[0]

    dim = property(lambda self: self._dim, doc="Embedding dimension n.")
    dtype = property(lambda self: self._dtype, doc="Storage type name.")

    @property
    def nbytes(self) -> int:
        return self._data.nbytes + (0 if self._scale is None else self._scale.nbytes)

    def __repr__(self) -> str:
        return f"Candidates({len(self)} x {self.dim}, dtype={self._dtype!r}, {self.nbytes / 2**20:.1f} MiB)"

    def rows(self, begin: int = 0, end: int | None = None) -> np.ndarray:
        """Rows [begin, end) as float32 (a view for float32 storage), shape (m, dim)."""
        block = self._data[begin:end, :self._dim]
        if self._dtype == "float32":
            return block
        if self._dtype == "float16":
            return block.astype(np.float32)
        if self._dtype == "bfloat16":
            return (block.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return block.astype(np.float32) * self._scale[begin:end, None]

    # ---- scoring ------------------------------------------------------------------------------
    def _direct(self, users, backend) -> bool:
        """Whether the packed kernels score this call: simd (or auto choosing it), numpy users."""
        if backend not in ("auto", "simd") or _is_tensor(users):
            return False
        if backend == "auto" and _dispatch.FAST_CORE is None:
            return False
        return _dispatch.status("simd")[0]

    def _queries(self, users, metric) -> np.ndarray:
        """The folded user (n,) or users (M, n), float32, zero-padded to the stored row width."""
        queries = np.zeros(users.shape[:-1] + (self._data.shape[1],), np.float32)
        queries[..., :self._dim] = metric.fold(np.ascontiguousarray(users, np.float32), matmul)
        return queries

    def _allowed(self, allowed):
        """The allowed subset as ascending unique int64 ids, from a mask or an id list."""
        if allowed is None:
            return None
        allowed = np.asarray(_api._to_numpy(allowed) if _is_tensor(allowed) else allowed)
        if allowed.dtype == np.bool_:
            if allowed.shape != (len(self),):
                raise ValueError(f"allowed: a mask must have shape ({len(self)},), got {allowed.shape}")
            return np.flatnonzero(allowed).astype(np.int64)
        if allowed.dtype.kind not in "iu" or allowed.ndim != 1:
            raise TypeError(f"allowed: expected a boolean mask or a 1-D integer id array, got {allowed.dtype} {allowed.shape}")
        ids = np.unique(allowed).astype(np.int64)
        if ids.size and (ids[0] < 0 or ids[-1] >= len(self)):
            raise ValueError(f"allowed: ids must be in [0, {len(self)}), got {ids[0]}..{ids[-1]}")
        return ids

    def score(self, users, metric=None, *, sigmoid=False, backend="auto", threads=None, out=None):
        """sk.score(users, ads) for users (n,) -> (N,) or (M, n) -> (M, N)."""
        users = _api._embeddings(users, "users", (1, 2))
        metric = _api.check_metric(metric, self._dim, users, self._data[:, :self._dim])
        threads = _api.check_threads(threads)
        if self._dtype == "float32" or len(self) == 0:
            return _api.score(users, self.rows(), metric, sigmoid=sigmoid, backend=backend, threads=threads, out=out)
        device = users.device if _is_tensor(users) else None
        shape = (len(self),) if users.ndim == 1 else (users.shape[0], len(self))
        _api._check_out(out, shape, device is not None)
        result = np.empty(shape, np.float32)
        if self._direct(users, backend):
            # many users: one pass over the candidates (16-bit rows widened a tile at a time)
            n_threads = _dispatch.MAX_THREADS if threads is None else threads
            _dispatch.FAST_CORE.score_packed(self._queries(users, metric), self._data, self._dtype, self._scale,
                                             None, metric.bias, result, n_threads)
            if sigmoid:
                _api._sigmoid_(result)
        else:
            numpy_users = _api._to_numpy(users)
            for begin in range(0, len(self), _BLOCK_ROWS):
                end = min(len(self), begin + _BLOCK_ROWS)
                _api.score(numpy_users, self.rows(begin, end), metric, sigmoid=sigmoid, backend=backend,
                           threads=threads, out=result[..., begin:end])
        result = _api._result_for(result, device is not None, device)
        if out is None:
            return result
        out.copy_(result) if device is not None else np.copyto(out, result)
        return out

    def topk(self, users, k, metric=None, *, allowed=None, sigmoid=False, backend="auto", threads=None):
        """sk.topk(users, ads, k) over this set; `allowed` (a boolean mask of length N, or an
        id list) restricts the candidates without copying them. Ids are candidate indices."""
        users = _api._embeddings(users, "users", (1, 2))
        metric = _api.check_metric(metric, self._dim, users, self._data[:, :self._dim])
        k, threads = _api.check_k(k), _api.check_threads(threads)
        ids = self._allowed(allowed)
        device = users.device if _is_tensor(users) else None
        if ids is None and (self._dtype == "float32" or len(self) == 0):
            return _api.topk(users, self.rows(), k, metric, sigmoid=sigmoid, backend=backend, threads=threads)
        n_users = 1 if users.ndim == 1 else users.shape[0]
        k = min(k, len(self) if ids is None else len(ids))
        scores, found = np.empty((n_users, k), np.float32), np.empty((n_users, k), np.int64)
        numpy_users = np.atleast_2d(_api._to_numpy(users))
        if self._direct(users, backend):
            n_threads = _dispatch.MAX_THREADS if threads is None else threads
            if k and ids is None and n_users > 1:  # one pass over the candidates for all users
                _dispatch.FAST_CORE.topk_packed(self._queries(numpy_users, metric), self._data, self._dtype,
                                                self._scale, None, k, metric.bias, scores, found, n_threads)
            elif k:
                for u in range(n_users):
                    _dispatch.FAST_CORE.topk_packed(self._queries(numpy_users[u], metric), self._data, self._dtype,
                                                    self._scale, ids, k, metric.bias, scores[u], found[u], n_threads)
        elif k:
            parts = []  # widened blocks, ranked by score; sigmoid only on the merged result
            for begin in range(0, len(self), _BLOCK_ROWS):
                end = min(len(self), begin + _BLOCK_ROWS)
                block_ids = np.arange(begin, end) if ids is None else ids[(ids >= begin) & (ids < end)]
                if block_ids.size == 0:
                    continue
                block = self.rows(begin, end) if ids is None else self.rows(begin, end)[block_ids - begin]
                s, local = _api.topk(numpy_users, block, k, metric, backend=backend, threads=threads)
                parts.append((s, block_ids[local]))
            scores, found = _api.merge_topk(parts, k)
        if sigmoid:
            _api._sigmoid_(scores)
        if users.ndim == 1:
            scores, found = scores[0], found[0]
        return _api._result_for(scores, device is not None, device), _api._result_for(found, device is not None, device)

    # ---- files --------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the packed set to `path`: a header, then the rows and scales, 64-byte aligned,
        with a CRC-32 of each so that a damaged file is refused on load."""
        arrays = {"data": self._data} if self._scale is None else {"data": self._data, "scales": self._scale}
        header = {"dtype": self._dtype, "count": len(self), "dim": self._dim, "stored_dim": int(self._data.shape[1]),
                  "arrays": {}}
        offset = 0
        for name, array in arrays.items():
            header["arrays"][name] = {"offset": offset, "nbytes": int(array.nbytes),
                                      "crc32": zlib.crc32(np.ascontiguousarray(array).view(np.uint8))}
            offset += -(-array.nbytes // _ALIGN) * _ALIGN
        blob = json.dumps(header).encode()
        start = -(-(len(_MAGIC) + 8 + len(blob)) // _ALIGN) * _ALIGN
        with open(path, "wb") as f:
            f.write(_MAGIC + len(blob).to_bytes(8, "little") + blob)
            for name, array in arrays.items():
                f.seek(start + header["arrays"][name]["offset"])
                f.write(np.ascontiguousarray(array).tobytes())
            f.truncate(start + offset)

    @classmethod
    def load(cls, path, mmap: bool = True, verify: bool = True) -> "Candidates":
        """Reads a set written by save(). mmap=True maps the file read-only instead of copying
        it; verify=True checks the CRC-32s (reading the file once). A truncated, damaged or
        foreign file raises ValueError."""
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC) + 8)
            if len(head) < len(_MAGIC) + 8 or head[:len(_MAGIC)] != _MAGIC:
                raise ValueError(f"{path}: not a splitnet_kernels candidate file")
            length = int.from_bytes(head[len(_MAGIC):], "little")
            if length > size:
                raise ValueError(f"{path}: truncated or damaged header")
            try:
                header = json.loads(f.read(length))
                dtype, count, dim, stored = header["dtype"], int(header["count"]), int(header["dim"]), int(header["stored_dim"])
                specs = header["arrays"]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}: damaged header ({error})") from None
        if dtype not in DTYPES or count < 0 or not 1 <= dim <= stored or stored % _PAD:
            raise ValueError(f"{path}: damaged header (dtype {dtype!r}, count {count}, dim {dim}/{stored})")
        start = -(-(len(_MAGIC) + 8 + length) // _ALIGN) * _ALIGN
        wanted = {"data": (np.dtype(_STORAGE[dtype]), (count, stored))}
        if dtype == "int8":
            wanted["scales"] = (np.dtype(np.float32), (count,))
        arrays = {}
        for name, (item, shape) in wanted.items():
            spec = specs.get(name) if isinstance(specs, dict) else None
            nbytes = int(np.prod(shape)) * item.itemsize
            if not isinstance(spec, dict) or spec.get("nbytes") != nbytes or not isinstance(spec.get("offset"), int) \
                    or spec["offset"] < 0 or start + spec["offset"] + nbytes > size:
                raise ValueError(f"{path}: truncated or damaged ({name} does not fit the file)")
            if mmap and nbytes:
                array = np.memmap(path, dtype=item, mode="r", offset=start + spec["offset"], shape=shape)
            else:
                with open(path, "rb") as f:
                    f.seek(start + spec["offset"])
                    array = np.frombuffer(f.read(nbytes), dtype=item).reshape(shape).copy()
            if verify and zlib.crc32(np.ascontiguousarray(array).view(np.uint8)) != spec.get("crc32"):
                raise ValueError(f"{path}: {name} fails its checksum (the file is damaged)")
            arrays[name] = array
        scales = arrays.get("scales")
        if scales is not None and not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
            raise ValueError(f"{path}: damaged scales")
        self = cls.__new__(cls)
        self._init(dtype, dim, arrays["data"], scales)
        return self
