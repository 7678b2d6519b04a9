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

from . import _api, _dispatch
from ._metric import _is_tensor, host, open_regular, writing_beside
from ._objectives import _FIRST_BLOCK, Grouping, ObjectiveMetrics, check_metric_for, check_objectives, check_output, \
    folded, keep_best, quantity, scan_by_value
from ._storage import ALIGN, DTYPES, INT8_MAX_DIM, NUMPY_TYPES, ExactStorage, Storage, stored_width

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


class Candidates:
    """An immutable, packed candidate set. .score / .topk follow sk.score / sk.topk."""

    def __init__(self, ads, dtype: str = "float32", *, objectives=None, bids=None, exact: bool = False):
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        if not isinstance(exact, (bool, np.bool_)):
            raise TypeError(f"exact: expected True or False, got {type(exact).__name__}")
        ads = _api._to_numpy(_api._embeddings(ads, "ads", (2,)))
        self._grouping = None
        if objectives is not None or bids is not None:  # packed by objective, bids descending
            obj, bid = check_objectives(np.zeros(len(ads), np.int64) if objectives is None else objectives, bids,
                                        len(ads))
            self._grouping = Grouping.of(obj, bid)
            ads = ads[self._grouping.order]
        self._store = ExactStorage.pack_exact(ads, dtype) if exact else Storage.pack(ads, dtype)
        self._last_scan: dict = {}

    def __len__(self) -> int:
        return len(self._store)

    dim = property(lambda self: self._store.dim, doc="Embedding dimension n.")
    dtype = property(lambda self: self._store.scan.dtype if self.exact else self._store.dtype,
                     doc="Storage type name (an exact set's: the type it scans).")
    exact = property(lambda self: isinstance(self._store, ExactStorage),
                     doc="Whether top-k from the reduced type is bit for bit the float32 set's (exact=True).")

    @property
    def last_rescored(self) -> int:
        """An exact set: how many rows the last top-k of the compiled backend scored in float32
        (summed over its users; from whichever thread called last): the rows its certified scan
        could not rule out, or every row when many users went through the float32 cross tile
        (users x the reduced element size >= 4 bytes). 0 for other sets."""
        return self._store.rescored if isinstance(self._store, ExactStorage) else 0

    @property
    def nbytes(self) -> int:
        """Bytes held: rows, scales, and with objectives the order, objective ids and bids."""
        g = self._grouping
        return self._store.nbytes + (0 if g is None else g.order.nbytes + g.objectives.nbytes + g.bids.nbytes)

    @property
    def objectives(self):
        """Each candidate's objective id (int64, in the order of the ads given), or None."""
        return None if self._grouping is None else self._original(self._grouping.objectives)

    @property
    def bids(self):
        """Each candidate's bid (float32, in the order of the ads given), or None."""
        return None if self._grouping is None else self._original(self._grouping.bids)

    def _original(self, packed: np.ndarray) -> np.ndarray:
        assert self._grouping is not None  # called for sets with objectives only
        result = np.empty_like(packed)
        result[self._grouping.order] = packed
        return result

    def __repr__(self) -> str:
        extra = (", exact" if self.exact else "") + \
            ("" if self._grouping is None else f", {self._grouping.n_objectives} objectives")
        return f"Candidates({len(self)} x {self.dim}, dtype={self.dtype!r}{extra}, {self.nbytes / 2**20:.1f} MiB)"

    def rows(self, begin: int = 0, end: int | None = None) -> np.ndarray:
        """Rows [begin, end) of the ads as given, as float32 (a view for float32 storage without
        objectives), shape (m, dim)."""
        if self._grouping is None:
            return self._store.rows(begin, end)
        return self._store.take(self._grouping.positions(np.arange(len(self))[begin:end]))

    # ---- scoring ------------------------------------------------------------------------------
    def _allowed(self, allowed):
        """The allowed subset as ascending unique int64 ids, from a mask or an id list (an empty
        sequence allows no candidate)."""
        if allowed is None:
            return None
        if _is_tensor(allowed):
            try:  # as it is: _api._to_numpy would make masks and ids float32
                allowed = host(allowed)
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
        # N integers of 0 and 1 name at most two ids, or were a mask built with arithmetic: the two
        # readings always differ, so neither is taken
        if len(allowed) == len(self) and ids.size and ids[0] >= 0 and ids[-1] <= 1:
            raise ValueError(f"allowed: {len(allowed)} {allowed.dtype} values of 0 and 1 for {len(self)} candidates "
                             f"could be a mask or an id list: pass the mask as booleans (allowed.astype(bool))")
        # in the ids' own dtype: a uint64 id >= 2**63 would wrap to a negative int64
        if ids.size and (ids[0] < 0 or ids[-1] >= len(self)):
            raise ValueError(f"allowed: ids must be in [0, {len(self)}), got {ids[0]}..{ids[-1]} ({ids.dtype})")
        return ids.astype(np.int64)

    def score(self, users, metric=None, *, output=None, sigmoid=False, backend="auto", threads=None, out=None):
        """sk.score(users, ads) for users (n,) -> (N,) or (M, n) -> (M, N). metric may be an
        ObjectiveMetrics (a set with objectives); output is "logit", "probability" or "value"
        (bid * probability, the default with objectives)."""
        users, metric, threads, output = self._operands(users, metric, threads, output, sigmoid)
        if self._grouping is None and output != "value":
            return _api.score_store(users, self._store, metric, ids=None, sigmoid=output == "probability",
                                    backend=backend, threads=threads, out=out)
        device = users.device if _is_tensor(users) else None
        shape = (len(self),) if users.ndim == 1 else (users.shape[0], len(self))
        _api._check_out(out, shape, device is not None, device)
        result = np.empty(shape, np.float32)
        plain_users = _api._to_numpy(users)
        for t, begin, end, bids, ids in self._groups():
            queries, dot = folded(metric, plain_users, t)
            logits = _api._host(_api.score_store(queries, self._store.slice(begin, end), dot, ids=None, sigmoid=False,
                                                 backend=backend, threads=threads, out=None))
            result[..., ids] = quantity(logits, bids, output)
        result = _api.without_gradient("candidates_score", _api._result_for(result, device is not None, device), users)
        if out is None:
            return result
        out.copy_(result) if device is not None else np.copyto(out, result)
        return out

    def topk(self, users, k, metric=None, *, allowed=None, output=None, sigmoid=False, backend="auto",
             threads=None):
        """sk.topk(users, ads, k) over this set, ranked by the quantity returned (see score);
        `allowed` (a boolean mask of length N, or an id list) restricts the candidates without
        copying them. Ids are indices into the ads as given."""
        users, metric, threads, output = self._operands(users, metric, threads, output, sigmoid)
        k, allowed_ids = _api.check_k(k), self._allowed(_api.host_argument(allowed, "allowed", users))
        if self._grouping is None and output != "value":
            return _api.topk_store(users, self._store, k, metric, ids=allowed_ids, sigmoid=output == "probability",
                                   backend=backend, threads=threads)
        device = users.device if _is_tensor(users) else None
        many = np.atleast_2d(_api._to_numpy(users))
        mask = None
        if allowed_ids is not None:
            mask = np.zeros(len(self), bool)
            mask[allowed_ids if self._grouping is None else self._grouping.positions(allowed_ids)] = True
        best = np.empty((len(many), 0), np.float32), np.empty((len(many), 0), np.int64)
        if len(many) == 0:  # no users: (0, k) results, k capped by the eligible candidates
            eligible = len(self) if allowed_ids is None else len(allowed_ids)
            best = np.empty((0, min(k, eligible)), np.float32), np.empty((0, min(k, eligible)), np.int64)
        # Two rounds: every objective's highest bids first, so the k-th value that each scan
        # stops at comes from all objectives, then the rest of each, as far as the bids allow.
        resume: dict = {}
        self._last_scan = {}
        queries = {t: folded(metric, many, t) for t, *_ in self._groups()}
        for until in (_FIRST_BLOCK, None) if len(many) else ():
            for t, begin, end, bids, ids in self._groups():
                best = self._group_topk(*queries[t], begin, end, bids, ids, mask, k, output, backend, threads, best,
                                        resume, t, until)
        scores, found = best
        if users.ndim == 1:
            scores, found = scores[0], found[0]
        scores = _api.without_gradient("candidates_topk", _api._result_for(scores, device is not None, device), users)
        return scores, _api._result_for(found, device is not None, device)

    def _operands(self, users, metric, threads, output, sigmoid):
        users = _api._embeddings(users, "users", (1, 2))
        if users.shape[-1] != self.dim:
            raise ValueError(f"users {tuple(users.shape)} and candidates ({len(self)}, {self.dim}) differ in "
                             f"embedding dimension")
        output = check_output(output, isinstance(metric, ObjectiveMetrics), sigmoid)
        if isinstance(metric, ObjectiveMetrics):
            check_metric_for(metric, self._grouping, self.dim)
            for m in metric:
                m.check_fold_range(users)
        else:
            metric = _api.check_metric(metric, self.dim, users, self._store.data[:, :self.dim])
        return users, metric, _api.check_threads(threads), output

    def _groups(self):
        """(objective, first packed row, end, bids, ids) per objective; one group without objectives."""
        g = self._grouping
        if g is None:
            yield 0, 0, len(self), np.float32(1.0), np.arange(len(self))
            return
        for t, begin, end in g.groups():
            yield t, begin, end, g.bids[begin:end], g.order[begin:end]

    def _group_topk(self, users, metric, begin, end, bids, ids, mask, k, output, backend, threads, best, resume, t,
                    until):
        """(best, best_ids) merged with one objective's candidates by the output quantity,
        exactly (ties to the lower id): its rows up to `until` (None: all), from where the last
        call stopped (resume[t])."""
        start = resume.get(t, 0)
        local = None if mask is None else np.flatnonzero(mask[begin:end])
        eligible = end - begin if local is None else len(local)
        if start >= eligible:
            return best
        sub = self._store.slice(begin, end)
        bids = np.broadcast_to(bids, (end - begin,))
        if output != "value" or bids[0] == bids[-1]:  # the quantity is monotone in the logit here
            resume[t] = eligible  # ranked whole, in one call
            self._scanned(t, eligible)
            def raw_topk(count):
                scores, positions = (_api._host(x) for x in _api.topk_store(
                    users, sub, count, metric, ids=local, sigmoid=False, backend=backend, threads=threads))
                return scores, ids[positions]

            def everything(u):
                logits = _api._host(_api.score_store(users[u], sub, metric, ids=local, sigmoid=False,
                                                     backend=backend, threads=threads, out=None))
                rows = slice(None) if local is None else local
                return quantity(logits, bids[rows], output), ids[rows]

            group_best = _api.rank_exactly(eligible, min(k, eligible), raw_topk, everything,
                                           lambda scores, _: quantity(scores, bids[0], output))
            return keep_best(*best, *group_best, k)

        chosen = _dispatch.resolve(backend, False)
        if chosen.name == "simd":  # values formed and ranked inside the kernels' scan
            return self._fused_topk(chosen, users, metric, sub, bids, ids, local, k, threads, best, resume, t,
                                    start, eligible if until is None else min(until, eligible))

        def score_rows(first, last):
            rows = None if local is None else local[first:last]
            block = sub.slice(first, last) if local is None else sub
            return _api._host(_api.score_store(users, block, metric, ids=rows, sigmoid=False, backend=backend,
                                               threads=threads, out=None)).reshape(len(users), -1)

        *best, resume[t], scored = scan_by_value(users, bids, ids, local, k, score_rows, *best, begin=start,
                                                 until=until)
        self._scanned(t, scored)
        return tuple(best)

    def _scanned(self, t: int, rows: int) -> None:
        self._last_scan[t] = self._last_scan.get(t, 0) + rows

    @property
    def last_scan(self) -> dict:
        """The last top-k of a set with objectives (or by value): {objective: rows scored}. A scan
        by value stops at the first bid below every user's k-th value; the rest of the rows
        were never read. (From whichever thread called last.)"""
        return dict(self._last_scan)

    def _fused_topk(self, chosen, users, metric, sub, bids, ids, local, k, threads, best, resume, t, begin, end):
        """_group_topk's scan by value inside the kernels (rows [begin, end) of the objective)."""
        n_users, kept = best[0].shape
        scores, found = np.empty((n_users, k), np.float32), np.empty((n_users, k), np.int64)
        scores[:, :kept], found[:, :kept] = best
        counts = np.full(n_users, kept, np.int64)
        resume[t], scored = chosen.topk_value(users, sub, allowed=local, bids=np.ascontiguousarray(bids, np.float32),
                                              ids=np.ascontiguousarray(ids, np.int64), bias=metric.bias,
                                              begin=begin, end=end, best=(scores, found, counts), threads=threads)
        self._scanned(t, scored)
        kept = int(counts[0]) if n_users else 0
        if np.any(counts != kept):  # every user sees the same rows, so the same number of them
            raise RuntimeError(f"internal error: users kept {counts.min()}..{counts.max()} values")
        return scores[:, :kept], found[:, :kept]

    # ---- files --------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the packed set to `path`: a header, then the rows and scales, 64-byte aligned,
        with a CRC-32 of the header and of each array so that a damaged file is refused on load.

        The file is written beside `path` and renamed over it, never rewritten in place: a
        process that maps the old file (even this set, loaded with mmap=True from `path`) keeps
        reading the old bytes, and a reader opening `path` sees the old file or the new one."""
        store, grouping = self._store, self._grouping
        if isinstance(store, ExactStorage):  # the reduced rows as data, and what the re-score needs
            scan = store.scan
            arrays = {"data": scan.data} if scan.scales is None else {"data": scan.data, "scales": scan.scales}
            arrays.update(exact_rows=store.data, norms=store.norms, residuals=store.residuals)
            store = scan
        else:
            arrays = {"data": store.data} if store.scales is None else {"data": store.data, "scales": store.scales}
        if grouping is not None:  # the packing by objective travels with the rows
            arrays.update(order=grouping.order, objectives=grouping.objectives, bids=grouping.bids)
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
        with writing_beside(path) as f:
            f.write(head)
            for name, array in arrays.items():
                f.seek(start + header["arrays"][name]["offset"])
                f.write(np.ascontiguousarray(array).tobytes())
            f.truncate(start + offset)

    @classmethod
    def load(cls, path, mmap: bool = True, verify: bool = True) -> "Candidates":
        """Reads a set written by save(). mmap=True maps the file read-only instead of copying
        it; verify=True checks the CRC-32s of the arrays (reading the file once; the header's is
        always checked). A truncated, damaged, foreign or older-format file, or a path that is not
        a regular file (a FIFO, a directory, a device), raises ValueError."""
        with open_regular(path) as f:  # one open file throughout: a concurrent save cannot mix two files
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
            if "exact_rows" in specs:  # an exact set
                wanted.update(exact_rows=(np.dtype(np.float32), (count, stored)),
                              norms=(np.dtype(np.float32), (count,)), residuals=(np.dtype(np.float32), (count,)))
            if "order" in specs:  # a set with objectives
                wanted.update(order=(np.dtype(np.int64), (count,)), objectives=(np.dtype(np.int64), (count,)),
                              bids=(np.dtype(np.float32), (count,)))
            arrays = {}
            for name, (item, shape) in wanted.items():
                spec = specs.get(name)
                nbytes = count * (stored if name in ("data", "exact_rows") else 1) * item.itemsize  # Python ints
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
        self._last_scan = {}
        self._store = Storage(dtype, dim, arrays["data"], scales)
        if "exact_rows" in arrays:
            if dtype == "float32" or np.any(np.isnan(arrays["norms"])) or np.any(np.isnan(arrays["residuals"])):
                raise ValueError(f"{path}: damaged exact set")
            self._store = ExactStorage(Storage("float32", dim, arrays["exact_rows"], None), self._store,
                                       arrays["norms"], arrays["residuals"])
        self._grouping = None
        if "order" in arrays:
            self._grouping = Grouping(arrays["order"], arrays["objectives"], arrays["bids"])
            if verify:
                self._grouping.check(path)
        return self
