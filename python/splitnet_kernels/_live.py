"""Live candidate sets: an inventory keyed by the user's own ad ids that changes while it serves.

A version of a live set (LiveSnapshot) is immutable: a few segments, each a packed Candidates
of rows in ascending ad id order with its ids and a deletion mask (the rows of the segment that
a later batch removed, replaced or re-bid). The first segment is the main store, the others
small ones that batches added. A batch builds the next version beside the current one, sharing
every array it does not change, and publishes it by one reference assignment (read-copy-update):
a query reads the version it started with and never waits; writers take one lock, so batches
from several threads are applied one at a time. Rows are packed once, when they arrive; merging
segments (as they grow, and compact()) copies packed rows, so a merged segment is bit for bit
the set a fresh pack of its rows would make.

Every answer is the oracle's (docs/design.md, "Live candidate sets"): what a Candidates of the
present rows in ascending id order answers, ids mapped. Each segment answers for its present
rows with the same kernels, so each row's score has the same bits as in that Candidates, and the
segments' lists merge in the package's order, where a tie goes to the lower position, which is
the lower ad id. A bid change moves the row to a new small segment packed by its new bid, so
every segment stays sorted by bid and the scan by value keeps stopping early.
"""

from __future__ import annotations

import math
import numbers
import threading

import numpy as np

from . import _route, _set_file
from ._candidates import Candidates
from ._checks import Mask, check_k, check_metric, check_threads, embeddings, host_argument, one_per_user
from ._conversions import device_of, host, is_tensor, result_for, to_numpy
from ._objectives import Grouping, ObjectiveMetrics, check_bids, check_metric_for, check_objectives, check_output
from ._order import merge_numpy, padded
from ._storage import ExactStorage, Storage, gathered, storage_type
from .backends import Request

_INT64_MAX = np.iinfo(np.int64).max
_MERGE_RATIO = 8  # a segment merges into the one before it once that one is at most this many times larger
_REFETCH = 8  # extra rows a top-k asks of a segment with deleted rows, besides its expected share of them


# ---- ad ids ---------------------------------------------------------------------------------------
def _id_array(ids, name: str) -> np.ndarray:
    """Ad ids as a 1-D integer array, as given (int64, or uint64 beyond the int64 range)."""
    values = host(ids) if is_tensor(ids) else np.asarray(ids)
    if values.shape == (0,) and values.dtype.kind == "f":  # [] reads as float64
        values = values.astype(np.int64)
    if values.dtype.kind not in "iu" or values.ndim != 1:
        raise TypeError(f"{name}: expected a 1-D array of integer ad ids, got {values.dtype} {values.shape}")
    return values


def _batch_ids(ids, name: str) -> np.ndarray:
    """A batch's ad ids as int64, each once; ids beyond int64 are refused (none can be present)."""
    values = _id_array(ids, name)
    if values.dtype == np.uint64 and values.size and values.max() > _INT64_MAX:
        raise ValueError(f"{name}: ad ids are int64, got {values.max()}")
    values = values.astype(np.int64)
    ordered = np.sort(values)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if repeated.size:
        raise ValueError(f"{name}: ad id {repeated[0]} appears more than once in one batch")
    return values


def _lookup_ids(ids, name: str) -> np.ndarray:
    """Ids to look up (contains, allowed) as int64: those beyond int64 dropped (never present)."""
    values = _id_array(ids, name)
    if values.dtype == np.uint64:
        values = values[values <= _INT64_MAX]
    return values.astype(np.int64)


def _asked(k: int, rows: int, dead: int) -> int:
    """How many to ask of `rows` of which `dead` are deleted: k, and enough more that, unless
    deleted rows crowd the top, k present ones remain."""
    return k if not dead else min(rows, k + _REFETCH + math.ceil(2 * k * dead / rows))


def _present_first(scores, ids, present, wanted: int):
    """The first `wanted` present entries of each ranked list (scores, ids) (M, k'): deleting
    entries from a ranked list leaves the rest in order, so these are the best present ones, as
    long as every list holds `wanted` of them; None where one does not (then ask again, with the
    present rows as the allowed subset)."""
    if not np.all(present.sum(axis=1) >= wanted):
        return None
    first = np.argsort(~present, axis=1, kind="stable")[:, :wanted]
    return np.take_along_axis(scores, first, 1), np.take_along_axis(ids, first, 1)


def _merged_lists(parts, n_users: int, width: int):
    """The segments' best-first lists [(scores (M, k_s), ad ids (M, k_s)), ...] merged into each
    user's best `width`, in the package's order, padding (score NaN, id -1) last."""
    if len(parts) <= 1:
        return parts[0] if parts else (np.empty((n_users, 0), np.float32), np.empty((n_users, 0), np.int64))
    scores, ids = np.concatenate([p[0] for p in parts], 1), np.concatenate([p[1] for p in parts], 1)
    return merge_numpy(scores, ids, width, last=(ids == -1) & np.isnan(scores))


# ---- a segment ------------------------------------------------------------------------------------
class _Segment:
    """Packed rows in ascending ad id order (`rows`, a Candidates, and their `ids`) and `dead`,
    the rows a later batch took out (None: none). Immutable once published."""

    __slots__ = ("rows", "ids", "dead", "alive", "_alive_positions", "_objectives_present", "_packed_ids", "_groups")

    def __init__(self, rows: Candidates, ids: np.ndarray, dead: np.ndarray | None = None):
        self.rows, self.ids, self.dead = rows, ids, dead
        for array in (ids, dead):
            if array is not None and array.flags.writeable:
                array.flags.writeable = False
        self.alive = len(ids) - (0 if dead is None else int(np.count_nonzero(dead)))
        self._alive_positions: np.ndarray | None = None
        self._objectives_present: int | None = None
        self._packed_ids: np.ndarray | None = None
        self._groups: list | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def alive_positions(self) -> np.ndarray:
        positions = self._alive_positions
        if positions is None:  # a race only computes it twice
            positions = np.arange(len(self.ids)) if self.dead is None else np.flatnonzero(~self.dead)
            self._alive_positions = positions
        return positions

    def objectives_present(self) -> int:
        """One more than the largest objective id of a present row (0: none, or no objectives)."""
        if self._objectives_present is None:
            g = self.rows._grouping
            if g is None or not self.alive:
                self._objectives_present = 0
            elif self.dead is None:
                self._objectives_present = g.n_objectives
            else:
                self._objectives_present = int(g.objectives[g.positions(self.alive_positions())].max()) + 1
        return self._objectives_present

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """The positions of the present rows among `ids` (ascending unique int64): ascending."""
        at = np.searchsorted(self.ids, ids)
        inside = at < len(self.ids)
        at = at[inside]
        at = at[self.ids[at] == ids[inside]]
        return at if self.dead is None else at[~self.dead[at]]

    def locate(self, ids: np.ndarray) -> np.ndarray:
        """Each id's position here, -1 where it is not present (any order, repeats allowed)."""
        at = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        found = (self.ids[at] == ids) if len(self.ids) else np.zeros(len(ids), bool)
        if self.dead is not None:
            found &= ~self.dead[at]
        return np.where(found, at, -1)

    def without(self, positions: np.ndarray) -> "_Segment":
        """This segment with the rows at positions taken out."""
        dead = np.zeros(len(self.ids), bool) if self.dead is None else self.dead.copy()
        dead[positions] = True
        return _Segment(self.rows, self.ids, dead)

    def best(self, users, k: int, metric, positions, output, sigmoid, threads):
        """The best k of users (M, n) among this segment's present rows (or those at `positions`):
        (scores (M, k'), ad ids (M, k'))."""
        rows = self.rows
        request = rows._request(users, metric, threads, output, sigmoid, k)
        if positions is None and self.dead is not None:  # deleted rows dropped, or else left out (_present_first)
            scores, found = (host(x) for x in rows._best(request._replace(k=_asked(k, len(self), len(self) - self.alive))))
            kept = _present_first(scores, found, ~self.dead[found], min(k, self.alive))
            if kept is not None:
                return kept[0], self.ids[kept[1]]
            positions = self.alive_positions()
        if positions is not None:
            request = request._replace(ids=positions)
        scores, found = (host(x) for x in rows._best(request))
        return scores, np.where(found >= 0, self.ids[found], -1)  # -1: padding (a filter per user)

    def groups(self, positions=None) -> list:
        """This segment's groups for a scan by objective (_route.groups_of), reporting ad ids:
        the rows at `positions`, or every row, deleted ones reporting id -1 (a scan drops them:
        _present_first); groups without such rows left out."""
        if positions is None and self._groups is not None:
            return self._groups
        store, grouping = self.rows._store, self.rows._grouping
        if positions is not None:
            return [g for g in _route.groups_of(store, grouping, self.packed_ids(), positions) if g.eligible]
        reported = np.where(self.dead, -1, self.ids) if self.dead is not None else self.ids
        groups = [g for g in _route.groups_of(store, grouping, reported if grouping is None else reported[grouping.order])
                  if g.eligible]
        self._groups = groups  # a race only computes it twice
        return groups

    def packed_ids(self) -> np.ndarray:
        """The ad ids in packed order (by objective and bid), made once: a filtered query by
        objective reports them."""
        packed = self._packed_ids
        if packed is None:  # a race only computes it twice
            grouping = self.rows._grouping
            packed = self.ids if grouping is None else self.ids[grouping.order]
            self._packed_ids = packed
        return packed

    def pieces(self, positions: np.ndarray):
        """(store, packed positions, ad ids, objective ids, bids) of the rows at positions."""
        store, packed, objectives, bids = self.rows._pieces(positions)
        return store, packed, self.ids[positions], objectives, bids


def _segment_of(parts, ids: np.ndarray, objectives=None, bids=None) -> _Segment:
    """A segment of the rows at each part's positions ([(store, positions), ...], taken in turn)
    under their ad ids (objective ids and bids, where the set has objectives), in ascending id
    order and packed by objective and bid: every packed row copied once (storage.gathered). One
    whole store already in id order, without objectives, is taken as it is."""
    by_id = np.argsort(ids, kind="stable")
    grouping = None if objectives is None else Grouping.of(objectives[by_id], bids[by_id])
    store, positions = parts[0]
    if grouping is None and len(parts) == 1 and len(positions) == len(store) \
            and np.array_equal(positions[by_id], np.arange(len(store))):
        return _Segment(Candidates.packed(store, None), ids[by_id])
    order = by_id if grouping is None else by_id[grouping.order]
    return _Segment(Candidates.packed(gathered(parts, order), grouping), ids[by_id])


def _plain(store: Storage) -> Storage:
    """A store's rows as the small segments of its set hold them: an exact store's float32 rows
    (an exact set answers as its float32 rows do), any other store as it is."""
    return Storage("float32", store.dim, store.data, None) if isinstance(store, ExactStorage) else store


def _merged(segments, objectives: bool, exact: str | None = None) -> _Segment:
    """One segment of the present rows of `segments`: an exact set's main store, packed
    exactly, where `exact` names the type it scans (float32 rows that came in a small segment are
    packed then, once, with the heads' rotation of the main store they join), else the rows as
    small segments hold them (_plain)."""
    parts = []
    pieces = [s.pieces(s.alive_positions()) for s in segments]
    main = next((store for store, *_ in pieces if isinstance(store, ExactStorage)), None)  # whose heads new rows get
    for store, packed, *_ in pieces:
        if exact is None:
            parts.append((_plain(store), packed))
        elif isinstance(store, ExactStorage):
            parts.append((store, packed))
        else:
            parts.append((ExactStorage.pack_exact(store.data[packed, :store.dim], exact, like=main),
                          np.arange(len(packed))))
    ids = np.concatenate([p[2] for p in pieces])
    if not objectives:
        return _segment_of(parts, ids)
    return _segment_of(parts, ids, np.concatenate([p[3] for p in pieces]), np.concatenate([p[4] for p in pieces]))


# ---- a version -------------------------------------------------------------------------------------
class LiveSnapshot:
    """One version of a live set, frozen: the query calls of LiveCandidates (topk, score, ids,
    contains, len) answer for this version however the set changes later. No row is copied."""

    def __init__(self, segments: tuple, version: int, dim: int, dtype: str, exact: bool, objectives: bool):
        self._segments, self._version = segments, version
        self._dim, self._dtype, self._exact, self._objectives = dim, dtype, exact, objectives
        self._count = sum(s.alive for s in segments)
        self._sorted_ids: np.ndarray | None = None
        self._columns: list | None = None

    def __len__(self) -> int:
        return self._count

    version = property(lambda self: self._version, doc="Batches that changed something, since the set was made.")
    dim = property(lambda self: self._dim, doc="Embedding dimension n.")
    dtype = property(lambda self: self._dtype, doc="Storage type name (an exact set's: the type it scans).")
    exact = property(lambda self: self._exact, doc="Whether top-k is bit for bit the float32 set's (exact=True).")
    objectives = property(lambda self: self._objectives, doc="Whether rows carry objectives and bids.")

    @property
    def nbytes(self) -> int:
        """Bytes held: every segment's packed rows (as Candidates.nbytes), ad ids and masks."""
        return sum(s.rows.nbytes + s.ids.nbytes + (0 if s.dead is None else s.dead.nbytes) for s in self._segments)

    def __repr__(self) -> str:
        return self._describe("LiveSnapshot")

    def _describe(self, name: str) -> str:
        extra = (", exact" if self.exact else "") + (", objectives" if self.objectives else "")
        return (f"{name}({len(self)} x {self.dim}, dtype={self.dtype!r}{extra}, version {self.version}, "
                f"{len(self._segments)} segment{'s' * (len(self._segments) != 1)}, {self.nbytes / 2**20:.1f} MiB)")

    def ids(self) -> np.ndarray:
        """The present ad ids, ascending (int64, read-only)."""
        if self._sorted_ids is None:
            ids = np.sort(np.concatenate([s.ids[s.alive_positions()] for s in self._segments] or [np.empty(0, np.int64)]))
            ids.flags.writeable = False
            self._sorted_ids = ids
        return self._sorted_ids

    def contains(self, ids) -> np.ndarray:
        """Whether each of `ids` is present (bool, one per id; ids that cannot be present, negative
        ones included, are False)."""
        values = _id_array(ids, "ids")
        result = np.zeros(len(values), bool)
        fits = values <= _INT64_MAX if values.dtype == np.uint64 else slice(None)
        wanted = values[fits].astype(np.int64)
        result[fits] = np.any([s.locate(wanted) >= 0 for s in self._segments], axis=0) if self._segments else False
        return result

    # ---- queries ----------------------------------------------------------------------------
    def _users(self, users):
        users = embeddings(users, "users", (1, 2))
        if users.shape[-1] != self.dim:
            raise ValueError(f"users {tuple(users.shape)} and the live set ({len(self)}, {self.dim}) differ in "
                             f"embedding dimension")
        return users, np.atleast_2d(to_numpy(users))

    def _metric(self, metric, users):
        """The query's metric, checked (also where there is no row); an ObjectiveMetrics against
        the objectives of the present rows."""
        if not isinstance(metric, ObjectiveMetrics):
            return check_metric(metric, self.dim, users, np.empty((0, self.dim), np.float32))
        if not self.objectives:
            check_metric_for(metric, None, self.dim)  # refuses it: the set has no objectives
        if metric.dim != self.dim:
            raise ValueError(f"metric has dimension {metric.dim}, but the live set has dimension {self.dim}")
        for m in metric:
            m.check_fold_range(users)
        present = max((s.objectives_present() for s in self._segments), default=0)
        if present > len(metric):
            raise ValueError(f"objectives: ids must be in [0, {len(metric)}) for {len(metric)} metrics, got "
                             f"{present - 1}")
        return metric

    def _padded(self, metric):
        """The metric a segment is scored with: an ObjectiveMetrics padded with its first metric
        for the objectives beyond it that only deleted rows of a segment hold (never answered)."""
        needed = max((s.rows._grouping.n_objectives for s in self._segments if s.rows._grouping is not None), default=0)
        if isinstance(metric, ObjectiveMetrics) and needed > len(metric):
            return ObjectiveMetrics(list(metric) + [metric[0]] * (needed - len(metric)))
        return metric

    def topk(self, users, k, metric=None, *, allowed=None, output=None, sigmoid=False, threads=None):
        """The best k present rows for users (n,) or (M, n), as Candidates.topk ranks them;
        the ids returned are ad ids. allowed: ad ids (absent ones are ignored), or one such array
        per user (then each user's list may be shorter: padded with score NaN and id -1)."""
        users, plain = self._users(users)
        k = check_k(k)
        metric = self._metric(metric, plain)
        if one_per_user(allowed):
            if users.ndim == 1:
                raise TypeError("allowed: one filter per user needs users (M, n); for one user pass one id array")
            if len(allowed) != len(plain):
                raise ValueError(f"allowed: {len(allowed)} filters for {len(plain)} users (one per user)")
            wanted = [self._allowed(allowed[u], users, f"allowed[{u}]") for u in range(len(plain))]
            scores, ids = self._best_per_user(plain, k, metric, wanted, output, sigmoid, threads)
        else:
            wanted = None if allowed is None else self._allowed(allowed, users, "allowed")
            scores, ids = self._best(plain, k, metric, wanted, output, sigmoid, threads)
        if users.ndim == 1:
            scores, ids = scores[0], ids[0]
        device = device_of(users)
        scores = _route.without_gradient("live_topk", result_for(scores, device is not None, device), users)
        return scores, result_for(ids, device is not None, device)

    def _allowed(self, allowed, users, name: str) -> np.ndarray:
        allowed = host_argument(allowed, name, users)
        if (host(allowed) if is_tensor(allowed) else np.asarray(allowed)).dtype == np.bool_:
            raise TypeError(f"{name}: a live set takes ad ids, not a mask (positions move with every batch)")
        return np.unique(_lookup_ids(allowed, name))

    def _best(self, users, k: int, metric, wanted, output, sigmoid, threads):
        """(scores, ad ids) (M, k') of users (M, n) among the present rows, or those of `wanted`
        (ascending ad ids). By objective (or by value): one scan over every segment's groups,
        which carries the k-th value from segment to segment; otherwise each segment's k best,
        merged."""
        output = check_output(output, isinstance(metric, ObjectiveMetrics), sigmoid)
        if self.objectives or output == "value":
            request = Request(users, None, self._padded(metric), None, k, output, check_threads(threads))
            segments = self._segments
            if wanted is None:
                rows = sum(len(s) for s in segments)
                groups = [g for s in segments for g in s.groups()]
                scores, ids, _ = _route.topk_by_objective(request._replace(k=_asked(k, rows, rows - len(self))),
                                                          groups, "auto")
                kept = _present_first(scores, ids, ids >= 0, min(k, len(self)))
                if kept is not None:
                    return kept
                groups = [g for s in segments for g in s.groups(None if s.dead is None else s.alive_positions())]
            else:
                groups = [g for s in segments for g in s.groups(s.positions(wanted))]
            scores, ids, _ = _route.topk_by_objective(request, groups, "auto")
            return scores, ids
        parts, eligible = [], 0
        for s in self._segments:
            positions = None if wanted is None else s.positions(wanted)
            count = s.alive if positions is None else len(positions)
            if count:
                parts.append(s.best(users, k, metric, positions, output, sigmoid, threads))
                eligible += count
        return _merged_lists(parts, len(users), min(k, eligible))

    def _best_per_user(self, users, k: int, metric, wanted: list, output, sigmoid, threads):
        """Each user's best k among the present rows of its own ad ids (wanted[u], ascending),
        padded to the longest list (score NaN, id -1). Without objectives, one call per segment
        for every user (a filter per user, read beside the rows), the lists merged per user; by
        objective, one user at a time."""
        if self.objectives or check_output(output, isinstance(metric, ObjectiveMetrics), sigmoid) == "value":
            lists = [(s[0], i[0]) for s, i in (self._best(users[u:u + 1], k, metric, wanted[u], output, sigmoid,
                                                           threads) for u in range(len(users)))]
            return padded(lists, max((len(s) for s, _ in lists), default=0))
        parts, counts = [], np.zeros(len(users), np.int64)
        for s in self._segments:
            masks = np.zeros((len(users), len(s)), bool)
            for u, w in enumerate(wanted):
                masks[u, s.positions(w)] = True
            here = np.count_nonzero(masks, axis=1)
            if here.any():
                parts.append(s.best(users, k, metric, Mask(masks, here, per_user=True), output, sigmoid, threads))
                counts += here
        return _merged_lists(parts, len(users), min(k, int(counts.max()) if len(counts) else 0))

    def score(self, users, metric=None, *, ids=None, output=None, sigmoid=False, threads=None):
        """The quantity asked for (as Candidates.score) of users (n,) or (M, n) against the rows
        of `ids` (ad ids, each present, else a ValueError), in that order; by default every
        present row in ascending id order (ids())."""
        users, plain = self._users(users)
        metric = self._padded(self._metric(metric, plain))
        if ids is None:
            columns = self._every_column()
            width = len(self)
        else:
            wanted = _lookup_ids(ids, "ids")
            if len(wanted) != len(_id_array(ids, "ids")):
                raise ValueError("ids: ad ids beyond int64 are never present")
            columns, found = [], np.zeros(len(wanted), bool)
            for s in self._segments:
                at = s.locate(wanted)
                hit = np.flatnonzero(at >= 0)
                found[hit] = True
                columns.append((at[hit], hit))
            if not found.all():
                raise ValueError(f"ids: ad id {wanted[np.flatnonzero(~found)[0]]} is not in the live set")
            width = len(wanted)
        result = np.empty((len(plain), width), np.float32)
        for s, (positions, destination) in zip(self._segments, columns):
            if len(positions):
                rows = s.rows
                every = host(rows._scores(rows._request(plain, metric, threads, output, sigmoid)))
                result[:, destination] = every[:, positions]
        if users.ndim == 1:
            result = result[0]
        device = device_of(users)
        return _route.without_gradient("live_score", result_for(result, device is not None, device), users)

    def _every_column(self) -> list:
        """Per segment: (its present positions, where their columns go in ascending id order)."""
        if self._columns is None:
            present = [s.alive_positions() for s in self._segments]
            ids = np.concatenate([s.ids[p] for s, p in zip(self._segments, present)] or [np.empty(0, np.int64)])
            destination = np.empty(len(ids), np.int64)
            destination[np.argsort(ids, kind="stable")] = np.arange(len(ids))
            starts = np.cumsum([0] + [len(p) for p in present])
            self._columns = [(p, destination[b:b + len(p)]) for p, b in zip(present, starts)]
        return self._columns


# ---- the live set ------------------------------------------------------------------------------------
class LiveCandidates:
    """A candidate set keyed by int64 ad ids (>= 0) that batches change while queries run. Its
    queries answer the version current when they start (see LiveSnapshot); snapshot() pins one."""

    def __init__(self, dim, dtype: str = "float32", *, exact: bool = False, objectives: bool = False):
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise ValueError(f"dim: expected an integer >= 1, got {dim!r}")
        storage_type(dtype)
        for name, flag in (("exact", exact), ("objectives", objectives)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name}: expected True or False, got {type(flag).__name__}")
        if exact and dtype == "float32":
            raise ValueError("dtype: exact=True scans a reduced type (float16, bfloat16, int8), got 'float32'")
        self._lock = threading.Lock()  # writers only: readers take self._current as it is
        self._current = LiveSnapshot((), 0, int(dim), dtype, bool(exact), bool(objectives))

    @classmethod
    def from_arrays(cls, ids, ads, dtype: str = "float32", *, exact: bool = False, objectives=None, bids=None):
        """A live set of rows ads (N, n) under ad ids (N,), int64, unique, >= 0. objectives (an
        array of ids, or True: all 0) or bids make a set ranked by value, as Candidates."""
        ads = to_numpy(embeddings(ads, "ads", (2,)))
        with_objectives = not (objectives is None or objectives is False) or bids is not None
        self = cls(ads.shape[1], dtype, exact=exact, objectives=with_objectives)
        if with_objectives:
            objectives = np.zeros(len(ads), np.int64) if objectives is None or objectives is True else objectives
            bids = np.ones(len(ads), np.float32) if bids is None else bids
        segment = self._segment(ids, ads, objectives, bids, main=True)
        if segment is not None:
            self._current = self._version_of([segment], 0)
        return self

    # ---- the current version's answers ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self._current)

    version = property(lambda self: self._current.version, doc=LiveSnapshot.version.__doc__)
    dim = property(lambda self: self._current.dim, doc=LiveSnapshot.dim.__doc__)
    dtype = property(lambda self: self._current.dtype, doc=LiveSnapshot.dtype.__doc__)
    exact = property(lambda self: self._current.exact, doc=LiveSnapshot.exact.__doc__)
    objectives = property(lambda self: self._current.objectives, doc=LiveSnapshot.objectives.__doc__)
    nbytes = property(lambda self: self._current.nbytes, doc=LiveSnapshot.nbytes.__doc__)

    def __repr__(self) -> str:
        return self._current._describe("LiveCandidates")

    def snapshot(self) -> LiveSnapshot:
        """The current version, frozen: its answers never change. Costs nothing (no copy)."""
        return self._current

    def ids(self) -> np.ndarray:
        return self._current.ids()

    def contains(self, ids) -> np.ndarray:
        return self._current.contains(ids)

    def topk(self, users, k, metric=None, **options):
        return self._current.topk(users, k, metric, **options)

    def score(self, users, metric=None, **options):
        return self._current.score(users, metric, **options)

    ids.__doc__, contains.__doc__ = LiveSnapshot.ids.__doc__, LiveSnapshot.contains.__doc__
    topk.__doc__, score.__doc__ = LiveSnapshot.topk.__doc__, LiveSnapshot.score.__doc__

    # ---- batches ----------------------------------------------------------------------------------
    def _version_of(self, segments, version: int) -> LiveSnapshot:
        c = self._current
        return LiveSnapshot(tuple(segments), version, c.dim, c.dtype, c.exact, c.objectives)

    def _taken_out(self, ids: np.ndarray):
        """(the current segments with `ids` taken out, how many were present)."""
        segments, present = [], 0
        for s in self._current._segments:
            at = s.locate(ids)
            at = at[at >= 0]
            present += len(at)
            segments.append(s.without(at) if len(at) else s)
        return segments, present

    def _publish(self, segments: list, version: int) -> None:
        """Publishes the next version: segments merged as they grow (each one more than
        _MERGE_RATIO times the next, so there are few), empty ones dropped, a segment most of
        whose rows are gone rewritten."""
        segments = [s for s in segments if s.alive]
        segments = [self._merged([s], i == 0) if s.dead is not None and 2 * s.alive < len(s) else s
                    for i, s in enumerate(segments)]
        while len(segments) >= 2 and len(segments[-2]) <= _MERGE_RATIO * len(segments[-1]):
            segments[-2:] = [self._merged(segments[-2:], len(segments) == 2)]
        self._current = self._version_of(segments, version)

    def _merged(self, segments, main: bool) -> _Segment:
        """_merged for this set: the main store (the first segment) of an exact set packed exactly."""
        return _merged(segments, self.objectives, self.dtype if main and self.exact else None)

    def upsert(self, ids, ads, *, objectives=None, bids=None) -> None:
        """Inserts the rows of new ids and replaces those of present ones: one atomic batch. A set
        with objectives takes objectives and bids for every row."""
        segment = self._segment(ids, ads, objectives, bids, main=False)
        if segment is None:
            return
        with self._lock:
            segments, _ = self._taken_out(segment.ids)
            self._publish(segments + [segment], self._current.version + 1)

    def _segment(self, ids, ads, objectives, bids, main: bool) -> _Segment | None:
        """A segment of new rows, checked (None for none). An exact set's rows are packed
        exactly in its main store; elsewhere they wait as float32 rows (an exact set answers as
        its float32 rows do), packed exactly when they reach the main store: an upsert costs a
        float32 pack."""
        ids = _batch_ids(ids, "ids")
        if ids.size and ids.min() < 0:
            raise ValueError(f"ids: ad ids must be >= 0, got {ids.min()}")
        ads = to_numpy(embeddings(ads, "ads", (2,)))
        if ads.shape != (len(ids), self.dim):
            raise ValueError(f"ads: expected shape ({len(ids)}, {self.dim}) for {len(ids)} ids, got {ads.shape}")
        if self.objectives:
            if objectives is None or bids is None:
                raise ValueError("objectives, bids: a live set with objectives takes both for every row")
            objectives, bids = check_objectives(objectives, bids, len(ids))
        elif objectives is not None or bids is not None:
            raise ValueError("objectives, bids: this live set was made without objectives")
        if not len(ids):
            return None
        store: Storage
        if self.exact and main:
            store = ExactStorage.pack_exact(ads, self.dtype)
        else:
            store = Storage.pack(ads, "float32" if self.exact else self.dtype)
        return _segment_of([(store, np.arange(len(ids)))], ids, objectives, bids)

    def remove(self, ids) -> int:
        """Removes the rows of `ids` that are present (absent ones, negative ones included, are
        ignored): one atomic batch. Returns how many were present."""
        ids = _batch_ids(ids, "ids")
        with self._lock:
            segments, present = self._taken_out(ids)
            if present:
                self._publish(segments, self._current.version + 1)
        return present

    def set_bids(self, ids, bids) -> None:
        """Sets the bids of present ids (pacing): one atomic batch; an absent id is a ValueError
        and nothing changes. The rows move to a segment packed by their new bids."""
        if not self.objectives:
            raise ValueError("set_bids: this live set was made without objectives or bids")
        ids = _batch_ids(ids, "ids")
        bids = check_bids(bids, len(ids))
        if not len(ids):
            return
        with self._lock:
            current = self._current._segments
            at = [s.locate(ids) for s in current]
            found = np.any([a >= 0 for a in at], axis=0) if at else np.zeros(len(ids), bool)
            if not found.all():
                raise ValueError(f"ids: ad id {ids[np.flatnonzero(~found)[0]]} is not in the live set")
            pieces = [s.pieces(a[a >= 0]) for s, a in zip(current, at) if np.any(a >= 0)]
            moved = np.concatenate([p[2] for p in pieces])
            new_bids = bids[np.argsort(ids)][np.searchsorted(np.sort(ids), moved)]
            if np.array_equal(new_bids, np.concatenate([p[4] for p in pieces])):
                return  # nothing changes
            segment = _segment_of([(_plain(p[0]), p[1]) for p in pieces], moved,
                                  np.concatenate([p[3] for p in pieces]), new_bids)
            segments = [s.without(a[a >= 0]) if np.any(a >= 0) else s for s, a in zip(current, at)]
            self._publish(segments + [segment], self._current.version + 1)

    def _one_main(self, version: LiveSnapshot) -> bool:
        """Whether a version is one main store already, with nothing for compact() to fold."""
        segments = version._segments
        return len(segments) == 1 and segments[0].dead is None and \
            isinstance(segments[0].rows._store, ExactStorage) == self.exact

    def compact(self) -> None:
        """Folds every segment and deletion into one main store, built beside the current one and
        swapped in; queries keep running on the version they hold. The version stays."""
        with self._lock:
            c = self._current
            if c._segments and not self._one_main(c):
                self._current = self._version_of([self._merged(c._segments, True)], c.version)

    # ---- files ----------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the current version to `path` as one segment with its ad ids, in the format of
        Candidates.save (CRC-checked, written beside `path` and renamed over it). Writers go on
        while it writes; the file holds the version current when save began."""
        c = self._current
        if self._one_main(c):
            segment = c._segments[0]
        elif c._segments:
            segment = self._merged(c._segments, True)
        else:  # an empty set still records its type and whether it has objectives
            empty = np.empty((0, self.dim), np.float32)
            store = ExactStorage.pack_exact(empty, self.dtype) if self.exact else Storage.pack(empty, self.dtype)
            none = np.empty(0, np.int64)
            segment = _segment_of([(store, none)], none, none if self.objectives else None,
                                  np.empty(0, np.float32) if self.objectives else None)
        segment.rows._write(path, segment.ids)

    @classmethod
    def load(cls, path, mmap: bool = True, verify: bool = True) -> "LiveCandidates":
        """Reads a live set written by save() (mmap=True maps it read-only); it takes further
        batches. A file that is not a live set's, or is damaged, raises ValueError."""
        store, grouping, ids = _set_file.read(path, mmap, verify)
        if ids is None:
            raise ValueError(f"{path}: a Candidates file, without ad ids: load it with sk.Candidates.load")
        dtype = store.scan.dtype if isinstance(store, ExactStorage) else store.dtype
        self = cls(store.dim, dtype, exact=isinstance(store, ExactStorage), objectives=grouping is not None)
        if len(ids):
            self._current = self._version_of([_Segment(Candidates.packed(store, grouping), ids)], 0)
        return self
