"""Candidate storage: every storage type's facts in one place, the packed rows, and the blocks
of float rows that the array backends read.

Storage types: float32; float16 (IEEE half); bfloat16 (float32 rounded to its top 16 bits, to
nearest even); int8 with one float32 scale per row (row ~= scale * q, |q| <= 127, rounded to
nearest). Packed rows are padded with zeros to a multiple of 64 elements and aligned to 64
bytes, so kernels read whole vectors with no tail code. A plain float array of ads is candidate
storage as it is (a float32 view made without copying); Storage is the packed kind.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ._conversions import is_tensor

ALIGN, PAD = 64, 64
BLOCK_ROWS = 1 << 16  # rows widened per block: 16 MiB of float32 at n = 64


def stored_width(dim: int) -> int:
    """Row length in storage: dim zero-padded to a multiple of PAD."""
    return -(-dim // PAD) * PAD


def _to_bfloat16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


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


def _int8_values(ads: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    assert scales is not None  # int8 rows are stored with their scales
    # in float64: the quotient is not rounded to float32 first, which could carry it across .5
    return np.clip(np.rint(ads / scales[:, None].astype(np.float64)), -127, 127)


def _int8_widened(block: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    assert scales is not None  # int8 rows come with their scales
    return block.astype(np.float32) * scales[:, None]


class StorageType(NamedTuple):
    """One storage type's facts, the one record that Storage, the torch ops, the file format and
    the checks read. `numpy`: the type NumPy holds its rows in (bfloat16: its bits, as uint16);
    `torch`: the name of the torch dtype a packed tensor of it has; `max_width`: the longest
    stored row the kernels take (None: any); `scales`: ads (m, n) -> one float32 scale per row,
    for a type stored with scales (int8; None for the others); `values`: (ads, their scales or
    None) -> what to store; `widen`: (stored rows, their scales or None) -> float32 rows. (The
    C++ side has its own table, dtypes.h's kDtypes.)"""

    name: str
    numpy: type
    torch: str
    max_width: int | None
    scales: Callable[[np.ndarray], np.ndarray] | None
    values: Callable[[np.ndarray, np.ndarray | None], np.ndarray]
    widen: Callable[[np.ndarray, np.ndarray | None], np.ndarray]

    @property
    def scaled(self) -> bool:
        """Whether rows are stored with one float32 scale each."""
        return self.scales is not None

    @property
    def itemsize(self) -> int:
        """Bytes per stored element."""
        return np.dtype(self.numpy).itemsize


TYPES = {t.name: t for t in (
    StorageType("float32", np.float32, "float32", None, None,
                lambda ads, scales: ads, lambda block, scales: block),
    StorageType("float16", np.float16, "float16", None, None,
                lambda ads, scales: ads, lambda block, scales: block.astype(np.float32)),
    StorageType("bfloat16", np.uint16, "bfloat16", None, None,
                lambda ads, scales: _to_bfloat16(ads),
                lambda block, scales: (block.astype(np.uint32) << np.uint32(16)).view(np.float32)),
    # The kernels refuse longer int8 rows (src/core.cpp): int32 sums of 127 * 127 products could overflow.
    StorageType("int8", np.int8, "int8", 1 << 17, _int8_scales, _int8_values, _int8_widened),
)}
DTYPES = tuple(TYPES)  # the storage type names, float32 first


def storage_type(dtype) -> StorageType:
    """The record of a storage type by name; a ValueError naming the known ones otherwise."""
    record = TYPES.get(dtype) if isinstance(dtype, str) else None
    if record is None:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return record


def aligned_empty(shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class Storage:
    """Packed candidate rows (N, stored_width(dim)) of one storage type, read-only."""

    __slots__ = ("data", "dtype", "scales", "dim")

    def __init__(self, dtype: str, dim: int, data: np.ndarray, scales: np.ndarray | None):
        self.dtype, self.dim, self.data, self.scales = dtype, dim, data, scales
        for array in (data, scales):
            if array is not None and array.flags.writeable:
                array.flags.writeable = False

    @classmethod
    def pack(cls, ads: np.ndarray, dtype: str) -> "Storage":
        """ads (N, n), a float numpy array, packed as `dtype`; values the type cannot hold are
        a ValueError."""
        storage_type(dtype)
        if dtype != "float32" and not np.all(np.isfinite(ads)):
            raise ValueError(f"ads: NaN or infinity cannot be stored as {dtype} (exact=True takes them)")
        storage = cls._pack(ads, dtype)
        storage._refuse_overflow(ads)
        return storage

    @classmethod
    def _pack(cls, ads: np.ndarray, dtype: str) -> "Storage":
        count, dim = ads.shape
        record = TYPES[dtype]
        if record.max_width is not None and stored_width(dim) > record.max_width:
            raise ValueError(f"ads: {dtype} storage takes rows of at most {record.max_width} elements (longer int32 "
                             f"sums could overflow), got shape {ads.shape}; use float16 or bfloat16")
        data = aligned_empty((count, stored_width(dim)), record.numpy)
        data[:, dim:] = 0
        with np.errstate(over="ignore"):  # values beyond the storage range are refused just below
            scales = None if record.scales is None else record.scales(ads)
            data[:, :dim] = record.values(ads, scales)
        return cls(dtype, dim, data, scales)

    def _refuse_overflow(self, ads) -> None:
        """Refuses finite values that became infinite in storage. Checked on the stored values
        widened back, so the limit is exact for every type and rounding mode (float16 65504,
        bfloat16 3.39e38 after rounding to nearest even, float32 3.40e38, int8 127 * scale)."""
        for begin in range(0, len(self), BLOCK_ROWS):
            end = min(len(self), begin + BLOCK_ROWS)
            with np.errstate(over="ignore", invalid="ignore"):
                lost = np.isfinite(ads[begin:end]) & ~np.isfinite(self.rows(begin, end))
            if lost.any():
                row, col = (int(i) for i in np.argwhere(lost)[0])
                raise ValueError(f"ads: {float(ads[begin + row, col]):g} at [{begin + row}, {col}] (shape {ads.shape}, "
                                 f"{ads.dtype}) is beyond the {self.dtype} storage range")

    def __len__(self) -> int:
        return self.data.shape[0]

    def slice(self, begin: int, end: int) -> "Storage":
        """Rows [begin, end) as a Storage of their own, without copying."""
        return Storage(self.dtype, self.dim, self.data[begin:end], None if self.scales is None else self.scales[begin:end])

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The rows at positions as float32 (m, dim)."""
        picked = Storage(self.dtype, self.dim, self.data[positions],
                         None if self.scales is None else self.scales[positions])
        return picked.rows()

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def rows(self, begin: int = 0, end: int | None = None) -> np.ndarray:
        """Rows [begin, end) as float32 (a view for float32 storage), shape (m, dim)."""
        return TYPES[self.dtype].widen(self.data[begin:end, :self.dim],
                                       None if self.scales is None else self.scales[begin:end])


BOUND_BLOCK = 1024  # rows per stored maximum of an exact set's bounds (ExactStorage.block_bounds)
# The progressive scan (docs/design.md): an exact set of at least LEVELS_MIN_ROWS rows gets heads
# where a turn of its rows (the PCA of their second moment, fitted on at most FIT_ROWS of them)
# puts all but REST_ENERGY of their energy in the first `width` values, a multiple of 8 and at
# most half the stored row; otherwise (a flat spectrum, a small set) it scans flat.
# REST_ENERGY 0.2 %: on W9's campaign and decaying rows (n = 64) it picks 24 values, which beat
# 16 (1 %: the rest term lets 4x more rows be read whole for a Gaussian user) and 32 (bench/RESULTS.md).
LEVELS_MIN_ROWS, FIT_ROWS, REST_ENERGY = 1 << 14, 1 << 16, 0.002
MAX_ORTHOGONALITY = 2.0 ** -20  # the most ||I - R^T R||_2 a rotation may have (the kernels refuse more)
HEAD_BLOCK = 16  # rows per block of the heads' layout (score_heads_i8, isa.h)


class Levels(NamedTuple):
    """An exact set's heads for the progressive scan (kernels/splitnet_kernels/exact.h, Levels):
    the rows turned by `rotation` (n, n) float64, b = R a; each turned row's first `width`
    values as int8 with a scale of their own, and its rest norm (>= the norm of b past the head),
    in `blocks` of HEAD_BLOCK rows, (ceil(N / 16), 16 width + 128) int8, score_heads_i8's layout
    (one stream for the scan: per block, the heads' bytes by groups of four, then the 16 scales,
    then the 16 rest norms); head_residuals (N,) >= ||b1 - b1~||. +inf bounds for a row the
    heads cannot stand for."""

    rotation: np.ndarray
    blocks: np.ndarray
    head_residuals: np.ndarray

    @property
    def width(self) -> int:
        return (self.blocks.shape[1] - 8 * HEAD_BLOCK) // HEAD_BLOCK

    def floats(self) -> tuple[np.ndarray, np.ndarray]:
        """(scales (N,), rest norms (N,)) row by row, copies."""
        count, width = len(self.head_residuals), self.width
        floats = self.blocks[:, HEAD_BLOCK * width:].copy().view(np.float32)  # (blocks, 32)
        return floats[:, :HEAD_BLOCK].reshape(-1)[:count], floats[:, HEAD_BLOCK:].reshape(-1)[:count]

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(heads (N, width) int8, scales (N,), rest norms (N,)) row by row, copies."""
        count, width, n_blocks = len(self.head_residuals), self.width, len(self.blocks)
        heads = self.blocks[:, :HEAD_BLOCK * width].reshape(n_blocks, width // 4, HEAD_BLOCK, 4)
        heads = heads.transpose(0, 2, 1, 3).reshape(n_blocks * HEAD_BLOCK, width)[:count]
        return (heads, *self.floats())


def blocked_heads(heads: np.ndarray, scales: np.ndarray, rests: np.ndarray) -> np.ndarray:
    """Heads (N, width) int8, their scales and rest norms (N,) in the layout of Levels.blocks
    (zero rows padding the last block)."""
    count, width = heads.shape
    n_blocks = -(-count // HEAD_BLOCK)
    blocks = np.zeros((n_blocks, HEAD_BLOCK * (width + 8)), np.int8)
    padded = np.zeros((n_blocks * HEAD_BLOCK, width), np.int8)
    padded[:count] = heads
    blocks[:, :HEAD_BLOCK * width] = padded.reshape(n_blocks, HEAD_BLOCK, width // 4, 4).transpose(0, 2, 1, 3).reshape(
        n_blocks, -1)
    floats = np.zeros((2, n_blocks * HEAD_BLOCK), np.float32)
    floats[0, :count], floats[1, :count] = scales, rests
    blocks[:, HEAD_BLOCK * width:] = floats.reshape(2, n_blocks, HEAD_BLOCK).transpose(1, 0, 2).reshape(
        n_blocks, -1).view(np.int8)
    return blocks


def orthogonality(rotation: np.ndarray) -> float:
    """An upper bound on ||I - R^T R||_2 for R = rotation (float64): the Frobenius norm of the
    computed I - R^T R, plus what any order of the float64 sums can have lost (gamma_n |R|^T |R|,
    whose Frobenius norm is at most ||R||_F^2), raised by 1e-9 of itself for this function's own
    roundings."""
    n = rotation.shape[0]
    gamma = n * 2.0 ** -53 / (1 - n * 2.0 ** -53)
    error = np.linalg.norm(rotation.T @ rotation - np.eye(n)) + gamma * float(np.square(rotation).sum()) * (1 + 1e-9)
    return float(np.nextafter(error * (1 + 1e-9) + 1e-300, np.inf))


def fitted_rotation(rows: np.ndarray, stored: int) -> tuple[np.ndarray, int] | None:
    """(rotation, width) for the heads of rows (N, n) (zero rows count for nothing), or None
    where no turn puts all but REST_ENERGY of their energy in a half of the stored row (or
    the set is small). The rotation's rows are the eigenvectors of the second moment by falling
    eigenvalue (uncentred: a dot product's energy), fitted on at most FIT_ROWS rows spread over
    the set."""
    count, dim = rows.shape
    if count < LEVELS_MIN_ROWS or dim < 9:
        return None
    sample = np.asarray(rows[::max(1, count // FIT_ROWS)], np.float64)
    values, vectors = np.linalg.eigh(sample.T @ sample)
    values = np.clip(values[::-1], 0, None)
    if not values.sum() > 0:
        return None
    rest = 1 - np.cumsum(values) / values.sum()
    for width in range(8, min(dim - 1, stored // 2) + 1, 8):
        if rest[width - 1] <= REST_ENERGY:
            return np.ascontiguousarray(vectors[:, ::-1].T), width
    return None


def turned_heads(clean: np.ndarray, unfit: np.ndarray, rotation: np.ndarray, width: int) -> Levels:
    """The heads (Levels) of finite rows `clean` (N, n) turned by `rotation`: b = R a in
    float64, its first `width` values quantized as int8 rows are. The float64 b is within
    gamma_n ||R||_F ||a|| of the exact R a (any order of the sums; ||R||_F^2 <= n (1 + delta)):
    that slack joins each head residual and rest norm. Rows `unfit`, and rows whose head scale
    cannot stand for them in float32, get zeros and +inf bounds: they always pass the head test."""
    count, dim = clean.shape
    rows = np.empty((count, width), np.int8)
    scales, residuals, rest = (np.empty(count, np.float32) for _ in range(3))
    gamma = dim * 2.0 ** -53 / (1 - dim * 2.0 ** -53)
    spread = gamma * np.sqrt(dim * (1 + orthogonality(rotation))) * (1 + 1e-9)
    unfit = unfit.copy()
    for begin in range(0, count, BLOCK_ROWS):
        end = min(count, begin + BLOCK_ROWS)
        a = clean[begin:end].astype(np.float64)
        b = a @ rotation.T
        with np.errstate(over="ignore"):
            block_scales = _int8_scales(b[:, :width])
            unfit[begin:end] |= ~np.isfinite(block_scales * np.float32(127))
        values = _int8_values(b[:, :width], block_scales)
        rows[begin:end] = values
        scales[begin:end] = block_scales
        slack = spread * np.sqrt(np.square(a).sum(axis=1))
        residuals[begin:end] = _rounded_up(
            np.sqrt(np.square(b[:, :width] - values * block_scales[:, None].astype(np.float64)).sum(axis=1)) + slack)
        rest[begin:end] = _rounded_up(np.sqrt(np.square(b[:, width:]).sum(axis=1)) + slack)
    rows[unfit] = 0
    scales[unfit] = 1
    residuals[unfit] = rest[unfit] = np.inf
    return Levels(np.ascontiguousarray(rotation, np.float64), blocked_heads(rows, scales, rest), residuals)


class ExactStorage(Storage):
    """An exact reduced-precision set: the float32 rows as the float32 set packs them (what every
    path reads, so every result is the float32 set's) and `scan`, the same rows in a reduced
    type, which the compiled top-k scans with a bound per row, re-scoring in float32 only the rows
    that may enter. Per row: norms >= ||a||_2 and residuals >= ||a - a~||_2 (a~ the row as
    stored in `scan`), rounded up to float32; a row the reduced type cannot hold (NaN, infinity,
    beyond its range) is stored as zeros with both +inf, so it is always re-scored. Costs, per
    row of n values: 4 n bytes for the float32 rows and 8 for the bounds, besides the scan's.
    block_bounds: the largest norm and residual of each BOUND_BLOCK rows (made here, in memory
    only), with which the scan gates a block without reading its rows' bounds.

    levels: the heads of the progressive scan (Levels), or None (the scan is flat): width + 12
    bytes more a row, of which the scan reads width + 8 for every row and the whole reduced row
    only for the rows whose head can reach the k-th lower bound."""

    __slots__ = ("scan", "norms", "residuals", "block_bounds", "levels", "orthogonality", "block_head_residuals",
                 "last_scan")

    def __init__(self, rows: Storage, scan: Storage, norms: np.ndarray, residuals: np.ndarray,
                 levels: Levels | None = None):
        super().__init__("float32", rows.dim, rows.data, None)
        self.scan, self.norms, self.residuals, self.levels = scan, norms, residuals, levels
        self.block_bounds = _block_maxima(norms), _block_maxima(residuals)
        self.last_scan: dict = {}  # what the last top-k read (Candidates.last_scan)
        self.orthogonality, self.block_head_residuals = 0.0, None
        if levels is not None:
            self.orthogonality = orthogonality(levels.rotation)
            if not self.orthogonality < MAX_ORTHOGONALITY:
                raise ValueError(f"levels: the rotation is not orthogonal (||I - R^T R|| <= {self.orthogonality:.3g})")
            self.block_head_residuals = _block_maxima(levels.head_residuals)
        for array in (norms, residuals, *(levels or ())):
            if array.flags.writeable:
                array.flags.writeable = False

    @classmethod
    def pack_exact(cls, ads: np.ndarray, dtype: str, like: "ExactStorage | None" = None) -> "ExactStorage":
        """ads packed as an exact set scanning `dtype`, with heads where fitted_rotation finds a
        turn, or with the rotation and width of `like` (none where it has none) when given."""
        if dtype not in DTYPES[1:]:
            raise ValueError(f"dtype: exact=True scans a reduced type ({', '.join(DTYPES[1:])}), got {dtype!r}")
        rows = Storage.pack(ads, "float32")
        wide = rows.rows()
        with np.errstate(over="ignore", invalid="ignore"):
            unfit = ~np.isfinite(wide).all(axis=1)
            clean = np.where(unfit[:, None], np.float32(0), wide)
            scan = Storage._pack(clean, dtype)
            unfit |= ~np.isfinite(scan.rows()).all(axis=1)  # beyond the reduced type's range
        if unfit.any():  # stored as zeros, bounds +inf: always re-scored
            scan = Storage._pack(np.where(unfit[:, None], np.float32(0), clean), dtype)
        norms, residuals = np.empty(len(rows), np.float32), np.empty(len(rows), np.float32)
        for begin in range(0, len(rows), BLOCK_ROWS):
            end = min(len(rows), begin + BLOCK_ROWS)
            exact = clean[begin:end].astype(np.float64)
            norms[begin:end] = _rounded_up(np.sqrt(np.square(exact).sum(axis=1)))
            residuals[begin:end] = _rounded_up(np.sqrt(np.square(exact - _stored(scan, begin, end)).sum(axis=1)))
        norms[unfit] = residuals[unfit] = np.inf
        fit = fitted_rotation(clean, stored_width(rows.dim)) if like is None else \
            None if like.levels is None else (like.levels.rotation, like.levels.width)
        return cls(rows, scan, norms, residuals, None if fit is None else turned_heads(clean, unfit, *fit))

    def kernel_levels(self):
        """The heads as the compiled top-k takes them, or None."""
        levels = self.levels
        if levels is None:
            return None
        return levels.rotation, self.orthogonality, levels.blocks, self.block_head_residuals

    def scanned(self, rows: int, rescored: int, refined: int, read: float) -> None:
        """Records what a top-k over `rows` candidates read (Candidates.last_scan)."""
        self.last_scan = {"layout": "flat" if self.levels is None else "progressive",
                          "head": None if self.levels is None else self.levels.width, "rows": rows,
                          "refined": refined, "rescored": rescored, "bytes_per_row": read / max(rows, 1)}

    def same_layout(self, other: "ExactStorage") -> bool:
        """Whether rows of `other` may join this set's as they are stored: the same scanned type
        and heads made the same way (rotation and width)."""
        a, b = self.levels, other.levels
        if a is None or b is None:
            return self.scan.dtype == other.scan.dtype and a is b
        return self.scan.dtype == other.scan.dtype and a.width == b.width and np.array_equal(a.rotation, b.rotation)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.levels is None else sum(array.nbytes for array in self.levels)
        return self.data.nbytes + self.scan.nbytes + self.norms.nbytes + self.residuals.nbytes + extra


def _block_maxima(values: np.ndarray) -> np.ndarray:
    """The largest of each BOUND_BLOCK values (NaN-free), for the scan's gates."""
    return np.maximum.reduceat(values, np.arange(0, len(values), BOUND_BLOCK)) if len(values) else \
        np.empty(0, np.float32)


def _stored(scan: Storage, begin: int, end: int) -> np.ndarray:
    """Rows [begin, end) of a reduced store as float64, exactly: int8's scale * q in float64 (31
    bits), not the float32 product that rows() gives."""
    if scan.scales is None:
        return scan.rows(begin, end).astype(np.float64)
    return scan.data[begin:end, :scan.dim].astype(np.float64) * scan.scales[begin:end, None]


def gathered(parts, order: np.ndarray) -> Storage:
    """One new packed store of rows of several stores of one type: the rows at each part's
    positions ([(store, positions), ...]) taken in turn, then in `order` (row i of the result is
    their row order[i]). Each row is copied as it is packed, in one pass where there is one part:
    nothing is converted again, so the rows (and an exact set's bounds) are bit for bit those a
    fresh pack would make."""
    first = parts[0][0]
    if isinstance(first, ExactStorage):
        # a part stored another way (another rotation) is packed again as the first part is
        parts = [(s, p) if first.same_layout(s) else
                 (ExactStorage.pack_exact(s.data[p, :s.dim], first.scan.dtype, like=first), np.arange(len(p)))
                 for s, p in parts]
        rows = gathered([(Storage("float32", s.dim, s.data, None), p) for s, p in parts], order)
        levels = None
        if first.levels is not None:  # every part's heads row by row, then in `order`
            unpacked = [(s.levels.parts(), s.levels.head_residuals, p) for s, p in parts]
            heads, scales, rests, residuals = (np.concatenate([(*u, r)[i][p] for u, r, p in unpacked])[order]
                                               for i in range(4))
            levels = Levels(first.levels.rotation, blocked_heads(heads, scales, rests), residuals)
        return ExactStorage(rows, gathered([(s.scan, p) for s, p in parts], order),
                            np.concatenate([s.norms[p] for s, p in parts])[order],
                            np.concatenate([s.residuals[p] for s, p in parts])[order], levels)

    data = aligned_empty((len(order), first.data.shape[1]), first.data.dtype)
    starts = np.cumsum([0] + [len(p) for _, p in parts])
    part = np.searchsorted(starts, order, side="right") - 1  # the part each row comes from
    for i, (store, positions) in enumerate(parts):
        if len(parts) == 1:  # mode="clip": positions are in range, and "raise" buffers the whole copy
            np.take(store.data, positions[order], axis=0, out=data, mode="clip")
        else:
            into = np.flatnonzero(part == i)
            # [into, :]: NumPy copies whole rows that way, ten times faster than data[into] = ...
            data[into, :] = np.take(store.data, positions[order[into] - starts[i]], axis=0, mode="clip")
    scales = None if first.scales is None else np.concatenate([s.scales[p] for s, p in parts])[order]
    return Storage(first.dtype, first.dim, data, scales)


def _rounded_up(x: np.ndarray) -> np.ndarray:
    """float64 values as the nearest float32 at or above them."""
    y = x.astype(np.float32)
    return np.where(y < x, np.nextafter(y, np.float32(np.inf)), y)


def count(store) -> int:
    """Candidates in a store: a Storage, or plain float rows (numpy array or tensor)."""
    return len(store) if isinstance(store, Storage) else store.shape[0]


def is_plain(store) -> bool:
    return not isinstance(store, Storage)


def blocks(store, ids):
    """(candidate ids, float rows) blocks covering the store's candidates, or only `ids`
    (ascending int64) when given: a plain store's subset in one block, packed storage widened
    BLOCK_ROWS at a time. (A whole plain store needs no blocks: the backends read it as it is.)"""
    if is_plain(store):
        yield ids, store[_index(ids, store)]
        return
    for begin in range(0, len(store), BLOCK_ROWS):
        end = min(len(store), begin + BLOCK_ROWS)
        if ids is None:
            yield np.arange(begin, end), store.rows(begin, end)
            continue
        block_ids = ids[(ids >= begin) & (ids < end)]
        if block_ids.size:
            yield block_ids, store.rows(begin, end)[block_ids - begin]


def _index(ids, rows):
    """ids as an index for rows' own type (a tensor for tensor rows)."""
    if is_tensor(rows):
        import torch

        return torch.from_numpy(ids).to(rows.device)
    return ids
