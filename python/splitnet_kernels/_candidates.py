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
# v2: the header has its own CRC-32. v1 (no header CRC) files are refused with a word to re-save.
_MAGIC, _V1_MAGIC = b"SPLITNET-CANDIDATES\x00v2\x00", b"SPLITNET-CANDIDATES\x00v1\x00"
# The binding refuses longer int8 rows (src/core.cpp, packed_of): their int32 sums of
# 127 * 127 products could overflow. Refused here when a set is built or loaded.
_INT8_MAX_DIM = 1 << 17


def _stored_width(dim: int) -> int:
    """Row length in storage: dim zero-padded to a multiple of _PAD."""
    return -(-dim // _PAD) * _PAD


def _data_start(header_length: int) -> int:
    """File offset of the arrays: after the magic, the 8-byte header length, the JSON header and
    the 4-byte CRC-32 that ends the header block (it covers every byte before it)."""
    return -(-(len(_MAGIC) + 8 + header_length + 4) // _ALIGN) * _ALIGN


def _int8_scales(ads: np.ndarray) -> np.ndarray:
    """One float32 scale per row (row ~= scale * q, |q| <= 127): peak / 127 rounded down, so that
    127 * scale never exceeds the peak (a float32 peak cannot overflow when widened), and at least
    the smallest subnormal, so that a tiny row never gets scale 0 (which load refuses). All-zero
    rows get 1. A peak beyond float32 gives a scale whose rows widen to infinity: refused later."""
    peak = np.abs(ads).max(axis=1, initial=0).astype(np.float64)
    wanted = peak / 127
    scales = wanted.astype(np.float32)
    scales = np.where(scales > wanted, np.nextafter(scales, np.float32(0)), scales)
    tiny = np.finfo(np.float32).smallest_subnormal
    return np.where(peak > 0, np.maximum(scales, tiny), np.float32(1)).astype(np.float32)


def _refuse_number_constant(name: str):
    raise ValueError(f"{name} is not a number allowed in the header")


def _is_int(x) -> bool:
    return type(x) is int  # not bool, not float


def _parse_header(path, blob: bytes):
    """(dtype, count, dim, arrays) from the JSON header, each field checked for type and range;
    sizes are Python ints, so no product overflows. Anything else raises ValueError."""
    try:
        header = json.loads(blob, parse_constant=_refuse_number_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{path}: damaged header ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: damaged header (not a JSON object)")
    for key in ("count", "dim", "stored_dim"):
        if not _is_int(header.get(key)):
            raise ValueError(f"{path}: damaged header ({key} is not an integer)")
    dtype, count, dim, stored, specs = (header.get(key) for key in ("dtype", "count", "dim", "stored_dim", "arrays"))
    if dtype not in DTYPES or count < 0 or dim < 1 or stored != _stored_width(dim) or not isinstance(specs, dict) \
            or (dtype == "int8" and stored > _INT8_MAX_DIM):
        raise ValueError(f"{path}: damaged header (dtype {str(dtype)[:40]!r}, count {count}, dim {dim}/{stored})")
    return dtype, count, dim, specs


def _fsync_directory(directory: str) -> None:
    """Makes a rename in `directory` durable, where the system allows opening a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        count, dim = ads.shape
        if dtype == "int8" and _stored_width(dim) > _INT8_MAX_DIM:
            raise ValueError(f"ads: int8 storage takes rows of at most {_INT8_MAX_DIM} elements (longer int32 sums "
                             f"could overflow), got shape {ads.shape}; use float16 or bfloat16")
        data = _aligned_empty((count, _stored_width(dim)), _STORAGE[dtype])
        data[:, dim:] = 0
        scales = None
        with np.errstate(over="ignore"):  # values beyond the storage range are refused just below
            if dtype == "float32" or dtype == "float16":
                data[:, :dim] = ads
            elif dtype == "bfloat16":
                data[:, :dim] = _to_bfloat16(ads)
            else:
                scales = _int8_scales(ads)
                # in float64: the quotient is not rounded to float32 first, which could carry it across .5
                data[:, :dim] = np.clip(np.rint(ads / scales[:, None].astype(np.float64)), -127, 127)
        self._init(dtype, dim, data, scales)
        self._refuse_overflow(ads)

    def _refuse_overflow(self, ads) -> None:
        """Refuses finite values that became infinite in storage. Checked on the stored values
        widened back, so the limit is exact for every type and rounding mode (float16 65504,
        bfloat16 3.39e38 after rounding to nearest even, float32 3.40e38, int8 127 * scale)."""
        for begin in range(0, len(self), _BLOCK_ROWS):
            end = min(len(self), begin + _BLOCK_ROWS)
            with np.errstate(over="ignore", invalid="ignore"):
                lost = np.isfinite(ads[begin:end]) & ~np.isfinite(self.rows(begin, end))
            if lost.any():
                row, col = (int(i) for i in np.argwhere(lost)[0])
                raise ValueError(f"ads: {float(ads[begin + row, col]):g} at [{begin + row}, {col}] (shape {ads.shape}, "
                                 f"{ads.dtype}) is beyond the {self._dtype} storage range")

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
        if _dispatch.FAST_CORE is None:  # auto means another backend (an explicit simd widens blocks)
            return False
        return _dispatch.status("simd")[0]

    def _queries(self, users, metric) -> np.ndarray:
        """The folded user (n,) or users (M, n), float32, zero-padded to the stored row width."""
        queries = np.zeros(users.shape[:-1] + (self._data.shape[1],), np.float32)
        queries[..., :self._dim] = metric.fold(np.ascontiguousarray(users, np.float32), matmul)
        return queries

    def _allowed(self, allowed):
        """The allowed subset as ascending unique int64 ids, from a mask or an id list (an empty
        sequence allows no candidate)."""
        if allowed is None:
            return None
        if _is_tensor(allowed):
            try:  # as it is: _api._to_numpy would make masks and ids float32
                allowed = allowed.detach().cpu().numpy()
            except TypeError:  # a dtype numpy lacks (bfloat16)
                raise TypeError(f"allowed: expected a boolean mask or a 1-D integer id tensor, got {allowed.dtype} "
                                f"{tuple(allowed.shape)}") from None
        elif not isinstance(allowed, np.ndarray):
            try:
                allowed = np.asarray(allowed)
            except (ValueError, TypeError) as error:
                raise TypeError(f"allowed: cannot be read as an array: {error}") from None
            if allowed.shape == (0,):  # [] reads as float64: an empty id list
                allowed = allowed.astype(np.int64)
        if allowed.dtype == np.bool_:
            if allowed.shape != (len(self),):
                raise ValueError(f"allowed: a mask must have shape ({len(self)},), got {allowed.shape}")
            return np.flatnonzero(allowed).astype(np.int64)
        if allowed.dtype.kind not in "iu" or allowed.ndim != 1:
            raise TypeError(f"allowed: expected a boolean mask or a 1-D integer id array, got {allowed.dtype} {allowed.shape}")
        ids = np.unique(allowed)
        # in the ids' own dtype: a uint64 id >= 2**63 would wrap to a negative int64
        if ids.size and (ids[0] < 0 or ids[-1] >= len(self)):
            raise ValueError(f"allowed: ids must be in [0, {len(self)}), got {ids[0]}..{ids[-1]} ({ids.dtype})")
        return ids.astype(np.int64)

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
        numpy_users = np.atleast_2d(_api._to_numpy(users))
        eligible = len(self) if ids is None else len(ids)
        k = min(k, eligible)
        if sigmoid and k and len(numpy_users):
            def probabilities(u):
                p = self.score(numpy_users[u], metric, sigmoid=True, backend=backend, threads=threads)
                return (p, np.arange(len(self))) if ids is None else (p[ids], ids)

            scores, found = _api.rank_by_probability(
                eligible, k, lambda count: self._raw_topk(numpy_users, count, metric, ids, backend, threads),
                probabilities)
        else:
            scores, found = self._raw_topk(numpy_users, k, metric, ids, backend, threads)
        if users.ndim == 1:
            scores, found = scores[0], found[0]
        return _api._result_for(scores, device is not None, device), _api._result_for(found, device is not None, device)

    def _raw_topk(self, users, k, metric, ids, backend, threads):
        """The best k by score for numpy users (M, n) over the candidates `ids` (None: all)."""
        scores, found = np.empty((len(users), k), np.float32), np.empty((len(users), k), np.int64)
        if k == 0 or len(users) == 0:
            return scores, found
        if self._direct(users, backend):
            n_threads = _dispatch.MAX_THREADS if threads is None else threads
            if ids is None and len(users) > 1:  # one pass over the candidates for all users
                _dispatch.FAST_CORE.topk_packed(self._queries(users, metric), self._data, self._dtype,
                                                self._scale, None, k, metric.bias, scores, found, n_threads)
            else:
                for u in range(len(users)):
                    _dispatch.FAST_CORE.topk_packed(self._queries(users[u], metric), self._data, self._dtype,
                                                    self._scale, ids, k, metric.bias, scores[u], found[u], n_threads)
            return scores, found
        parts = []  # widened blocks, ranked by score
        for begin in range(0, len(self), _BLOCK_ROWS):
            end = min(len(self), begin + _BLOCK_ROWS)
            block_ids = np.arange(begin, end) if ids is None else ids[(ids >= begin) & (ids < end)]
            if block_ids.size == 0:
                continue
            block = self.rows(begin, end) if ids is None else self.rows(begin, end)[block_ids - begin]
            s, local = _api.topk(users, block, k, metric, backend=backend, threads=threads)
            parts.append((s, block_ids[local]))
        return _api.merge_topk(parts, k)

    # ---- files --------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the packed set to `path`: a header, then the rows and scales, 64-byte aligned,
        with a CRC-32 of the header and of each array so that a damaged file is refused on load.

        The file is written beside `path` and renamed over it, never rewritten in place: a
        process that maps the old file (even this set, loaded with mmap=True from `path`) keeps
        reading the old bytes, and a reader opening `path` sees the old file or the new one."""
        arrays = {"data": self._data} if self._scale is None else {"data": self._data, "scales": self._scale}
        header = {"dtype": self._dtype, "count": len(self), "dim": self._dim, "stored_dim": int(self._data.shape[1]),
                  "arrays": {}}
        offset = 0
        for name, array in arrays.items():
            header["arrays"][name] = {"offset": offset, "nbytes": int(array.nbytes),
                                      "crc32": zlib.crc32(np.ascontiguousarray(array).view(np.uint8))}
            offset += -(-array.nbytes // _ALIGN) * _ALIGN
        blob = json.dumps(header).encode()
        start = _data_start(len(blob))
        head = bytearray(start)
        head[:len(_MAGIC) + 8 + len(blob)] = _MAGIC + len(blob).to_bytes(8, "little") + blob
        head[-4:] = zlib.crc32(head[:-4]).to_bytes(4, "little")
        # through a symlink to its target, as open(path, "wb") did, rather than over the link
        path = os.path.realpath(path)
        temp = f"{path}.{os.getpid()}-{os.urandom(4).hex()}.tmp"  # same directory: the rename is atomic
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with open(fd, "wb") as f:
                f.write(head)
                for name, array in arrays.items():
                    f.seek(start + header["arrays"][name]["offset"])
                    f.write(np.ascontiguousarray(array).tobytes())
                f.truncate(start + offset)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points at it
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        _fsync_directory(os.path.dirname(path))

    @classmethod
    def load(cls, path, mmap: bool = True, verify: bool = True) -> "Candidates":
        """Reads a set written by save(). mmap=True maps the file read-only instead of copying
        it; verify=True checks the CRC-32s of the arrays (reading the file once; the header's is
        always checked). A truncated, damaged, foreign or older-format file raises ValueError."""
        with open(path, "rb") as f:  # one open file throughout: a concurrent save cannot mix two files
            size = os.fstat(f.fileno()).st_size
            head = f.read(len(_MAGIC) + 8)
            if head[:len(_V1_MAGIC)] == _V1_MAGIC:
                raise ValueError(f"{path}: an older splitnet_kernels candidate file format (v1, without a header "
                                 f"checksum); load it with the version that wrote it and save it again")
            if len(head) < len(_MAGIC) + 8 or head[:len(_MAGIC)] != _MAGIC:
                raise ValueError(f"{path}: not a splitnet_kernels candidate file")
            length = int.from_bytes(head[len(_MAGIC):], "little")
            start = _data_start(length)
            if start > size:
                raise ValueError(f"{path}: truncated or damaged header (header length {length}, file size {size})")
            block = head + f.read(start - len(head))
            if len(block) != start or zlib.crc32(block[:-4]) != int.from_bytes(block[-4:], "little"):
                raise ValueError(f"{path}: the header fails its checksum (the file is damaged)")
            dtype, count, dim, specs = _parse_header(path, block[len(head):len(head) + length])
            stored = _stored_width(dim)
            wanted = {"data": (np.dtype(_STORAGE[dtype]), (count, stored))}
            if dtype == "int8":
                wanted["scales"] = (np.dtype(np.float32), (count,))
            arrays = {}
            for name, (item, shape) in wanted.items():
                spec = specs.get(name)
                nbytes = count * (stored if name == "data" else 1) * item.itemsize  # Python ints: no overflow
                if not isinstance(spec, dict) or not all(_is_int(spec.get(key)) for key in ("offset", "nbytes", "crc32")) \
                        or spec["nbytes"] != nbytes or spec["offset"] < 0 or spec["offset"] % _ALIGN:
                    raise ValueError(f"{path}: damaged header (the entry for {name}, {nbytes} bytes, is {str(spec)[:200]})")
                if start + spec["offset"] + nbytes > size:
                    raise ValueError(f"{path}: truncated, or damaged header ({name}: {nbytes} bytes at "
                                     f"{start + spec['offset']} do not fit the {size}-byte file)")
                if mmap and nbytes:
                    array = np.memmap(f, dtype=item, mode="r", offset=start + spec["offset"], shape=shape)
                else:
                    f.seek(start + spec["offset"])
                    array = np.frombuffer(f.read(nbytes), dtype=item).reshape(shape).copy()
                if verify and zlib.crc32(np.ascontiguousarray(array).view(np.uint8)) != spec["crc32"]:
                    raise ValueError(f"{path}: {name} fails its checksum (the file is damaged)")
                arrays[name] = array
        scales = arrays.get("scales")
        if scales is not None and not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
            raise ValueError(f"{path}: damaged scales")
        self = cls.__new__(cls)
        self._init(dtype, dim, arrays["data"], scales)
        return self
