"""Candidates: an ad matrix packed once (see _storage) and scored against many requests
(serving). Its calls check their arguments (_checks) and take the one route (_route); its file
format is _set_file's.

The query is folded in float32 and never rounded to the storage type, except for int8, where
the folded query is quantized the same way (one scale, |q| <= 127) so that the dot product is an
exact integer sum (vpdpbusd); the error is then the rounding of both sides, about 0.4% per
element. The simd backend scores every storage type directly; the array backends widen blocks
of rows to float32 first.
"""

from __future__ import annotations

import numpy as np

from . import _route, _set_file
from ._checks import Mask, check_allowed, check_k, check_metric, check_threads, embeddings, host_argument, \
    positions_of
from ._conversions import to_numpy
from ._objectives import Grouping, ObjectiveMetrics, check_metric_for, check_objectives, check_output
from ._set_file import MAGIC as _MAGIC  # noqa: F401  (the tests forge files with it)
from ._storage import ExactStorage, Storage, storage_type
from .backends import Request


class Candidates:
    """An immutable, packed candidate set. .score / .topk follow sk.score / sk.topk."""

    def __init__(self, ads, dtype: str = "float32", *, objectives=None, bids=None, exact: bool = False):
        storage_type(dtype)
        if not isinstance(exact, (bool, np.bool_)):
            raise TypeError(f"exact: expected True or False, got {type(exact).__name__}")
        ads = to_numpy(embeddings(ads, "ads", (2,)))
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
        return self._store.last_scan.get("rescored", 0) if isinstance(self._store, ExactStorage) else 0

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
        store, extra = self._store, ""
        if isinstance(store, ExactStorage):  # and which scan it has
            extra = ", exact, " + ("flat scan" if store.levels is None else f"progressive scan (head {store.levels.width})")
        if self._grouping is not None:
            extra += f", {self._grouping.n_objectives} objectives"
        return f"Candidates({len(self)} x {self.dim}, dtype={self.dtype!r}{extra}, {self.nbytes / 2**20:.1f} MiB)"

    def rows(self, begin: int = 0, end: int | None = None) -> np.ndarray:
        """Rows [begin, end) of the ads as given, as float32 (a view for float32 storage without
        objectives), shape (m, dim)."""
        if self._grouping is None:
            return self._store.rows(begin, end)
        return self._store.take(self._grouping.positions(np.arange(len(self))[begin:end]))

    # ---- scoring ------------------------------------------------------------------------------
    def score(self, users, metric=None, *, output=None, sigmoid=False, backend="auto", threads=None, out=None):
        """sk.score(users, ads) for users (n,) -> (N,) or (M, n) -> (M, N). metric may be an
        ObjectiveMetrics (a set with objectives); output is "logit", "probability" or "value"
        (bid * probability, the default with objectives)."""
        return self._scores(self._request(users, metric, threads, output, sigmoid), backend, out)

    def _scores(self, request: Request, backend="auto", out=None):
        """score() of a checked request."""
        if self._grouping is None and request.output != "value":
            return _route.score(request, backend, out)
        return _route.score_by_objective(request, self._grouping, backend, out)

    def topk(self, users, k, metric=None, *, allowed=None, output=None, sigmoid=False, backend="auto",
             threads=None):
        """sk.topk(users, ads, k) over this set, ranked by the quantity returned (see score);
        `allowed` restricts the candidates without copying them: a boolean mask of length N or
        an id list, for every user; or, for users (M, n), one such filter per user (a list of M,
        or a boolean mask (M, N)): then each user's list is what the call with users[u] and its
        own filter gives, padded to the longest with score NaN and id -1. Ids are indices into
        the ads as given."""
        return self._best(self._request(users, metric, threads, output, sigmoid, k, allowed), backend)

    def _best(self, request: Request, backend="auto"):
        """topk() of a checked request (its ids: the allowed subset, check_allowed's form)."""
        if self._grouping is None and request.output != "value":
            return _route.topk(request, backend)
        if isinstance(request.ids, Mask) and request.ids.per_user:  # by objective: one user at a time
            return _route.user_by_user(request, lambda one: self._best(one, backend))
        groups = _route.groups_of(request.store, self._grouping, allowed=positions_of(request.ids))
        scores, ids, self._last_scan = _route.topk_by_objective(request, groups, backend)
        return scores, ids

    def _request(self, users, metric, threads, output, sigmoid, k=None, allowed=None) -> Request:
        """The request of a call on this set (a top-k when k is given), its arguments checked."""
        users = embeddings(users, "users", (1, 2))
        if users.shape[-1] != self.dim:
            raise ValueError(f"users {tuple(users.shape)} and candidates ({len(self)}, {self.dim}) differ in "
                             f"embedding dimension")
        output = check_output(output, isinstance(metric, ObjectiveMetrics), sigmoid)
        if isinstance(metric, ObjectiveMetrics):
            check_metric_for(metric, self._grouping, self.dim)
            for m in metric:
                m.check_fold_range(users)
        else:
            metric = check_metric(metric, self.dim, users, self._store.data[:, :self.dim])
        threads = check_threads(threads)
        if k is None:
            return Request(users, self._store, metric, None, 0, output, threads)
        k = check_k(k)
        allowed = check_allowed(host_argument(allowed, "allowed", users), len(self),
                                users.shape[0] if users.ndim == 2 else None)
        return Request(users, self._store, metric, allowed, k, output, threads)

    def _operands(self, users, metric, threads, output, sigmoid):
        """(users, metric, threads, output) of a call on this set, checked (see _request)."""
        request = self._request(users, metric, threads, output, sigmoid)
        return request.users, request.metric, request.threads, request.output

    @property
    def last_scan(self) -> dict:
        """What the last top-k read (from whichever thread called last).

        A set with objectives: {objective: rows scored} of its last top-k by objective. A scan
        by value stops at the first bid below every user's k-th value; the rest of the rows were
        never read.

        An exact set without objectives, after a top-k of the compiled backend: {"layout": "progressive"
        (the int8 rows turned, their heads read first) or "flat", "head": values per row read
        first (None when flat), "rows": candidates scanned, "refined": rows read whole past
        their head, "rescored": rows scored in float32, "bytes_per_row": bytes of reduced rows
        and per-row values read per candidate, users together}."""
        if isinstance(self._store, ExactStorage) and self._grouping is None:
            return dict(self._store.last_scan)
        return dict(self._last_scan)

    # ---- files --------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the packed set to `path`: a header, then the rows and scales, 64-byte aligned,
        with a CRC-32 of the header and of each array so that a damaged file is refused on load.

        The file is written beside `path` and renamed over it, never rewritten in place: a
        process that maps the old file (even this set, loaded with mmap=True from `path`) keeps
        reading the old bytes, and a reader opening `path` sees the old file or the new one."""
        self._write(path)

    def _write(self, path, external_ids=None) -> None:
        """save(), with a live set's ad ids (one per row in the order given) when given."""
        _set_file.write(path, self._store, self._grouping, len(self), external_ids)

    def _pieces(self, positions: np.ndarray):
        """(packed store, packed positions, objective ids, bids) of the rows at `positions`
        (indices into the ads as given), for storage.gathered; objective ids and bids are None
        for a set without objectives."""
        g = self._grouping
        if g is None:
            return self._store, positions, None, None
        packed = g.positions(positions)
        return self._store, packed, g.objectives[packed], g.bids[packed]

    @classmethod
    def load(cls, path, mmap: bool = True, verify: bool = True) -> "Candidates":
        """Reads a set written by save(). mmap=True maps the file read-only instead of copying
        it; verify=True checks the CRC-32s of the arrays (reading the file once; the header's is
        always checked). A truncated, damaged, foreign or older-format file, or a path that is not
        a regular file (a FIFO, a directory, a device), raises ValueError."""
        store, grouping, external_ids = _set_file.read(path, mmap, verify)
        if external_ids is not None:
            raise ValueError(f"{path}: a live candidate set (keyed by ad ids): load it with sk.LiveCandidates.load")
        return cls.packed(store, grouping)

    @classmethod
    def packed(cls, store: Storage, grouping: Grouping | None = None) -> "Candidates":
        """A set of rows already packed (by objective as `grouping` says, when given): nothing
        is packed again (the live sets assemble theirs from packed rows)."""
        self = cls.__new__(cls)
        self._store, self._grouping, self._last_scan = store, grouping, {}
        return self
