"""Candidates: an ad matrix packed once (see _storage) and scored against many requests
(serving), and its file format.

The query is folded in float32 and never rounded to the storage type, except for int8, where
the folded query is quantized the same way (one scale, |q| <= 127) so that the dot product is an
exact integer sum (vpdpbusd); the error is then the rounding of both sides, about 0.4% per
element. The simd backend scores every storage type directly; the array backends widen blocks
of rows to float32 first.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

from . import _api
from ._metric import _is_tensor
from ._storage import ALIGN, DTYPES, INT8_MAX_DIM, NUMPY_TYPES, Storage, stored_width

# v2: the header has its own CRC-32. v1 (no header CRC) files are refused with a word to re-save.
_MAGIC, _V1_MAGIC = b"SPLITNET-CANDIDATES\x00v2\x00", b"SPLITNET-CANDIDATES\x00v1\x00"


def _data_start(header_length: int) -> int:
    """File offset of the arrays: after the magic, the 8-byte header length, the JSON header and
    the 4-byte CRC-32 that ends the header block (it covers every byte before it)."""
    return -(-(len(_MAGIC) + 8 + header_length + 4) // ALIGN) * ALIGN


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
    dtype, specs = header.get("dtype"), header.get("arrays")
    count, dim, stored = int(header["count"]), int(header["dim"]), int(header["stored_dim"])
    if dtype not in DTYPES or count < 0 or dim < 1 or stored != stored_width(dim) or not isinstance(specs, dict) \
            or (dtype == "int8" and stored > INT8_MAX_DIM):
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


class Candidates:
    """An immutable, packed candidate set. .score / .topk follow sk.score / sk.topk."""

    def __init__(self, ads, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        self._store = Storage.pack(_api._to_numpy(_api._embeddings(ads, "ads", (2,))), dtype)

    def __len__(self) -> int:
        return len(self._store)

    dim = property(lambda self: self._store.dim, doc="Embedding dimension n.")
    dtype = property(lambda self: self._store.dtype, doc="Storage type name.")
    nbytes = property(lambda self: self._store.nbytes, doc="Bytes held: rows and scales.")

    def __repr__(self) -> str:
        return f"Candidates({len(self)} x {self.dim}, dtype={self.dtype!r}, {self.nbytes / 2**20:.1f} MiB)"

    def rows(self, begin: int = 0, end: int | None = None) -> np.ndarray:
        """Rows [begin, end) as float32 (a view for float32 storage), shape (m, dim)."""
        return self._store.rows(begin, end)

    # ---- scoring ------------------------------------------------------------------------------
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

    def _operands(self, users, metric, threads):
        users = _api._embeddings(users, "users", (1, 2))
        if users.shape[-1] != self.dim:
            raise ValueError(f"users {tuple(users.shape)} and candidates ({len(self)}, {self.dim}) differ in "
                             f"embedding dimension")
        return (users, _api.check_metric(metric, self.dim, users, self._store.data[:, :self.dim]),
                _api.check_threads(threads))

    def score(self, users, metric=None, *, sigmoid=False, backend="auto", threads=None, out=None):
        """sk.score(users, ads) for users (n,) -> (N,) or (M, n) -> (M, N)."""
        users, metric, threads = self._operands(users, metric, threads)
        return _api.score_store(users, self._store, metric, ids=None, sigmoid=sigmoid, backend=backend,
                                threads=threads, out=out)

    def topk(self, users, k, metric=None, *, allowed=None, sigmoid=False, backend="auto", threads=None):
        """sk.topk(users, ads, k) over this set; `allowed` (a boolean mask of length N, or an
        id list) restricts the candidates without copying them. Ids are candidate indices."""
        users, metric, threads = self._operands(users, metric, threads)
        return _api.topk_store(users, self._store, _api.check_k(k), metric, ids=self._allowed(allowed),
                               sigmoid=sigmoid, backend=backend, threads=threads)

    # ---- files --------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the packed set to `path`: a header, then the rows and scales, 64-byte aligned,
        with a CRC-32 of the header and of each array so that a damaged file is refused on load.

        The file is written beside `path` and renamed over it, never rewritten in place: a
        process that maps the old file (even this set, loaded with mmap=True from `path`) keeps
        reading the old bytes, and a reader opening `path` sees the old file or the new one."""
        store = self._store
        arrays = {"data": store.data} if store.scales is None else {"data": store.data, "scales": store.scales}
        header: dict = {"dtype": store.dtype, "count": len(self), "dim": store.dim, "stored_dim": int(store.data.shape[1]),
                  "arrays": {}}
        offset = 0
        for name, array in arrays.items():
            header["arrays"][name] = {"offset": offset, "nbytes": int(array.nbytes),
                                      "crc32": zlib.crc32(np.ascontiguousarray(array).view(np.uint8).data)}
            offset += -(-array.nbytes // ALIGN) * ALIGN
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
            stored = stored_width(dim)
            wanted: dict = {"data": (np.dtype(NUMPY_TYPES[dtype]), (count, stored))}
            if dtype == "int8":
                wanted["scales"] = (np.dtype(np.float32), (count,))
            arrays = {}
            for name, (item, shape) in wanted.items():
                spec = specs.get(name)
                nbytes = count * (stored if name == "data" else 1) * item.itemsize  # Python ints: no overflow
                if not isinstance(spec, dict) or not all(_is_int(spec.get(key)) for key in ("offset", "nbytes", "crc32")) \
                        or spec["nbytes"] != nbytes or spec["offset"] < 0 or spec["offset"] % ALIGN:
                    raise ValueError(f"{path}: damaged header (the entry for {name}, {nbytes} bytes, is {str(spec)[:200]})")
                if start + spec["offset"] + nbytes > size:
                    raise ValueError(f"{path}: truncated, or damaged header ({name}: {nbytes} bytes at "
                                     f"{start + spec['offset']} do not fit the {size}-byte file)")
                if mmap and nbytes:
                    array = np.memmap(f, dtype=item, mode="r", offset=start + spec["offset"], shape=shape)
                else:
                    f.seek(start + spec["offset"])
                    array = np.frombuffer(f.read(nbytes), dtype=item).reshape(shape).copy()
                if verify and zlib.crc32(np.ascontiguousarray(array).view(np.uint8).data) != spec["crc32"]:
                    raise ValueError(f"{path}: {name} fails its checksum (the file is damaged)")
                arrays[name] = array
        scales = arrays.get("scales")
        if scales is not None and not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
            raise ValueError(f"{path}: damaged scales")
        self = cls.__new__(cls)
        self._store = Storage(dtype, dim, arrays["data"], scales)
        return self
