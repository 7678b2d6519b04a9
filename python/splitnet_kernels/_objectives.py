"""Campaign objectives: one metric per objective on the same embeddings, and the quantities a
light ranker ranks by.

For a candidate of objective t with bid w: logit x = u^T S_t a + b_t; probability sigmoid(x);
value w * sigmoid(x), the expected value the heavy ranker is fed by. Every quantity is float32,
the probability rounded from float64 (monotone in x) and the value the float32 product of bid and
probability, so a value never exceeds its bid.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._conversions import holds_values, host, is_tensor
from ._files import npz_entry, read_npz, writing_beside
from ._metric import Metric, dot_metric
from ._order import topk_by_id
from .backends import _simd

OUTPUTS = ("logit", "probability", "value")


class ObjectiveMetrics:
    """T metrics of one dimension, one per campaign objective; om[t] is a Metric (bias b_t)."""

    __slots__ = ("_metrics", "_names")

    def __init__(self, metrics, names=None):
        try:
            metrics = tuple(metrics)
        except TypeError:
            raise TypeError("metrics: expected a sequence of splitnet_kernels.Metric") from None
        if not metrics:
            raise ValueError("metrics: expected at least one metric")
        for t, metric in enumerate(metrics):
            if not isinstance(metric, Metric):
                raise TypeError(f"metrics[{t}]: expected a splitnet_kernels.Metric, got {type(metric).__name__}")
            if metric.dim != metrics[0].dim:
                raise ValueError(f"metrics[{t}] has dimension {metric.dim}, metrics[0] has {metrics[0].dim}: "
                                 f"the objectives share one embedding")
        if names is None:
            names = tuple(f"objective_{t}" for t in range(len(metrics)))
        else:
            names = tuple(names)
            if len(names) != len(metrics) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"names: expected {len(metrics)} strings, got {names!r}")
            if len(set(names)) != len(names):
                raise ValueError(f"names: must be distinct, got {names!r}")
        self._metrics, self._names = metrics, names

    def __len__(self) -> int:
        return len(self._metrics)

    def __getitem__(self, t) -> Metric:
        if isinstance(t, str):
            if t not in self._names:
                raise KeyError(f"no objective named {t!r} (known: {', '.join(self._names)})")
            return self._metrics[self._names.index(t)]
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral):
            raise TypeError(f"objective: expected an index or a name, got {type(t).__name__}")
        return self._metrics[t]

    def __iter__(self):
        return iter(self._metrics)

    names = property(lambda self: self._names, doc="The objectives' names, in index order.")
    dim = property(lambda self: self._metrics[0].dim, doc="The shared embedding dimension n.")

    def __repr__(self) -> str:
        kinds = ", ".join(f"{n}: {m.kind}" for n, m in zip(self._names, self._metrics))
        return f"ObjectiveMetrics(dim={self.dim}, {kinds})"

    def save(self, path) -> None:
        """Writes every metric and the names to `path` as a NumPy .npz (no pickle)."""
        arrays = {"names": np.array(self._names), "count": np.array(len(self))}
        for t, metric in enumerate(self._metrics):
            arrays.update(metric.arrays(prefix=f"{t}/"))
        with writing_beside(path) as f:  # a crash while saving leaves the previous file whole
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its allow_pickle

    @classmethod
    def load(cls, path) -> "ObjectiveMetrics":
        """Reads what save() wrote (read_npz), through the metric constructors' checks. Anything
        else (not a regular file, damaged, foreign) is a ValueError naming `path`."""
        arrays = read_npz(path, "splitnet_kernels objective metrics")
        try:
            count, names = int(npz_entry(arrays, "count", "iu")), npz_entry(arrays, "names", "U", scalar=False)
            if names.shape != (count,):
                raise ValueError(f"{count} objectives, names of shape {names.shape}")
            prefixes = {f"{t}/" for t in range(count)}  # count is bounded by the names in the file
            unexpected = sorted(key for key in arrays
                                if key not in ("count", "names") and key[:key.find("/") + 1] not in prefixes)
            if unexpected:
                raise ValueError(f"unexpected entries {str(unexpected)[:200]}")
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{path}: not saved splitnet_kernels objective metrics ({type(error).__name__}: "
                             f"{error})") from None
        metrics = [Metric.from_arrays(arrays, prefix=f"{t}/", source=str(path)) for t in range(count)]
        try:
            return cls(metrics, [str(name) for name in names])
        except ValueError as error:  # dimensions that differ, names that repeat
            raise ValueError(f"{path}: {error}") from None


def check_output(output, objectives: bool, sigmoid: bool) -> str:
    """The quantity a call returns: output= if given, else value with objectives, probability
    with sigmoid=True, logit otherwise."""
    if output is None:
        return "probability" if sigmoid else "value" if objectives else "logit"
    if output not in OUTPUTS:
        raise ValueError(f"output: expected one of {', '.join(OUTPUTS)}, got {output!r}")
    if sigmoid and output != "probability":
        raise ValueError(f"sigmoid=True asks for probabilities, but output={output!r}")
    return output


def check_objectives(objectives, bids, count: int):
    """(objective ids int64 (N,), bids float32 (N,)) checked against N candidates; bids default 1."""
    obj = np.asarray(host(objectives))
    if obj.dtype.kind not in "iu" or obj.shape != (count,):
        raise ValueError(f"objectives: expected {count} integers (one per candidate), got {obj.dtype} {obj.shape}")
    if count and (obj.min() < 0 or obj.max() > np.iinfo(np.int64).max):
        raise ValueError(f"objectives: ids must be in [0, 2**63), got {obj.min()}..{obj.max()}")
    bid_values = np.ones(count, np.float32) if bids is None else check_bids(bids, count)
    return obj.astype(np.int64), bid_values


def check_bids(bids, count: int, name: str = "bids") -> np.ndarray:
    """Bids as float32 (count,), one per candidate or pair: numbers (not bools or text), each
    finite and >= 0 once rounded to float32. The one check of bids, wherever they come from;
    `name` is what an error calls them (an argument, or a column of the input)."""
    values = np.asarray(host(bids))
    if values.dtype.kind not in "fiu" or values.shape != (count,):
        raise ValueError(f"{name}: expected {count} numbers (one per row), got {values.dtype} {values.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        bid_values = values.astype(np.float32)
    bad = ~(np.isfinite(bid_values) & (bid_values >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: must be finite and >= 0 (as float32), got {values[i].item()!r} at {i}")
    return bid_values


# ---- candidates grouped by objective ----------------------------------------------------------
class Grouping:
    """How a candidate set with objectives is packed: rows sorted by (objective, bid descending,
    id), so each objective's rows are contiguous (scanned with that objective's folded query) and
    a scan by value can stop once no bid left can enter the top k. Arrays in packed order."""

    __slots__ = ("order", "objectives", "bids", "present", "starts", "_inverse")
    _inverse: np.ndarray | None

    def __init__(self, order: np.ndarray, objectives: np.ndarray, bids: np.ndarray):
        self.order, self.objectives, self.bids = order, objectives, bids
        # the objectives present and where each one's rows start (ids may be sparse and large)
        self.present, self.starts = np.unique(objectives, return_index=True)
        self._inverse = None
        for array in (order, objectives, bids):
            if array.flags.writeable:
                array.flags.writeable = False

    @classmethod
    def of(cls, objectives: np.ndarray, bids: np.ndarray) -> "Grouping":
        if len(objectives) and objectives.max() < 2**31:  # one key, one stable sort: twice lexsort's speed
            bits = (np.asarray(bids, np.float32) + np.float32(0)).view(np.uint32)  # bids >= 0; + 0 makes -0 +0
            descending = np.uint32(0xFFFFFFFF) - bits
            key = objectives.astype(np.uint64) << np.uint64(32) | descending.astype(np.uint64)
            order = np.argsort(key, kind="stable").astype(np.int64)
        else:
            order = np.lexsort((np.arange(len(objectives)), -bids, objectives)).astype(np.int64)
        return cls(order, objectives[order], bids[order])

    @property
    def n_objectives(self) -> int:
        """One more than the largest objective id (0 for an empty set)."""
        return int(self.objectives[-1]) + 1 if len(self.objectives) else 0

    def groups(self):
        """(objective t, first packed row, end) for every objective with candidates."""
        ends = list(self.starts[1:]) + [len(self.objectives)]
        for t, begin, end in zip(self.present, self.starts, ends):
            yield int(t), int(begin), int(end)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Packed positions of candidate ids (indices into the ads as given)."""
        if self._inverse is None:
            inverse = np.empty(len(self.order), np.int64)
            inverse[self.order] = np.arange(len(self.order))
            self._inverse = inverse
        return self._inverse[ids]

    def check(self, source) -> None:
        """Refuses a grouping that is not a packing of its own (a damaged file)."""
        n = len(self.order)
        sorted_order = np.sort(self.order)
        if (not np.array_equal(sorted_order, np.arange(n)) or (n and self.objectives[0] < 0)
                or np.any(np.diff(self.objectives) < 0) or not np.all(np.isfinite(self.bids) & (self.bids >= 0))):
            raise ValueError(f"{source}: damaged objectives, bids or order")


# ---- the quantities a call reports ----------------------------------------------------------
def probability(logits, in_place: bool = False):
    """The reported probability of logits: the logistic function in float64, rounded to float32,
    stable for every input (no overflow, small probabilities kept) and monotone, so that ranking
    by it never contradicts the score. The package's one definition: on the host it is the
    kernels' own (values fused in the kernels and this one agree bit for bit), the same formula
    in NumPy where they are not loaded, and torch's sigmoid in float64 for tensors off the host,
    traced, or recorded by autograd. A new array or tensor; with in_place=True the logits' own
    memory where it can be written (use the result either way)."""
    if is_tensor(logits):
        if logits.requires_grad or not holds_values(logits):  # a gradient or a graph: torch ops
            return logits.double().sigmoid().float()
        if logits.device.type != "cpu":
            wide = logits.double().sigmoid()
            return logits.copy_(wide) if in_place else wide.float()
        if not in_place:
            logits = logits.float().clone()
        probability(logits.numpy(), in_place=True)
        return logits
    values = logits if in_place else np.array(logits, np.float32)
    if _simd.compiled() and values.dtype == np.float32 and values.flags.c_contiguous and values.flags.writeable:
        _simd.probability_(values)
        return values
    wide = values.astype(np.float64)  # the same formula, where the kernels are not loaded
    e = np.exp(-np.abs(wide))
    values[...] = np.where(wide >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return values


def quantity(logits: np.ndarray, bids, output: str) -> np.ndarray:
    """What a call reports for float32 logits: themselves, their probability, or bid times it."""
    if output == "logit":
        return logits
    p = probability(logits)
    return p if output == "probability" else p * bids


def folded(metric, users: np.ndarray, t: int):
    """(objective t's queries: users folded through its metric, a dot metric with its bias):
    each user folds T queries once per request, and every block of every scan reuses them."""
    metric = metric[t] if isinstance(metric, ObjectiveMetrics) else metric
    users = np.asarray(users, np.float32)  # float64 and float16 users as the plain route takes them: float32
    if _simd.compiled():  # the kernels' fold: one user's bits are a batch's
        return _simd.fold(np.atleast_2d(users), metric).reshape(users.shape), dot_metric(metric.dim, metric.bias)
    return metric.fold(users), dot_metric(metric.dim, metric.bias)


def check_metric_for(metric, grouping, dim: int):
    """Refuses an ObjectiveMetrics that does not fit the set (dimension, objective ids)."""
    if not isinstance(metric, ObjectiveMetrics):
        return
    if grouping is None:
        raise ValueError("metric: ObjectiveMetrics needs a candidate set built with objectives= (one per "
                         "candidate); with one metric for every candidate pass a Metric")
    if metric.dim != dim:
        raise ValueError(f"metric has dimension {metric.dim}, but the candidates have dimension {dim}")
    if grouping.n_objectives > len(metric):
        raise ValueError(f"objectives: ids must be in [0, {len(metric)}) for {len(metric)} metrics, got "
                         f"{grouping.n_objectives - 1}")


_FIRST_BLOCK, _LAST_BLOCK = 4096, 65536  # rows per block of a scan by value: the first is small


def scan_by_value(users, bids, ids, local, k: int, score_rows, best, best_ids, begin: int = 0, until=None):
    """Continues the best-k lists (best, best_ids: (M, <= k), best first) of the rows already
    scanned with one objective's rows [begin, until) (until None: to the end), whose bids
    descend: block by block, each block ending where the bids fall below every user's k-th
    value (a value never exceeds its bid, so no row past that can enter). score_rows(begin,
    end) -> logits (M, end - begin) of rows [begin, end) of the objective (of `local`, its
    allowed positions, when given). Returns (best, best_ids, rows passed: where to resume, rows
    scored). The array backends' scan; the simd backend's runs inside the kernels (values.h)."""
    row_bids = bids if local is None else bids[local]
    n = len(row_bids) if until is None else min(until, len(row_bids))
    size, scored = _FIRST_BLOCK, 0
    while begin < n:
        end = min(n, begin + size)
        if best.shape[1] == k:
            kth = best[:, -1]
            threshold = float(np.where(np.isnan(kth), -np.inf, kth).min())  # a NaN k-th lets every row in
            end = begin + int(np.searchsorted(-row_bids[begin:end], -threshold, side="right"))
            if end == begin:  # no row left can enter
                return best, best_ids, len(row_bids), scored
        rows = np.arange(begin, end) if local is None else local[begin:end]
        values = quantity(score_rows(begin, end), row_bids[begin:end], "value")
        best, best_ids = keep_best(best, best_ids, values, np.broadcast_to(ids[rows], values.shape), k)
        begin, size, scored = end, min(2 * size, _LAST_BLOCK), scored + end - begin
    return best, best_ids, begin, scored


def keep_best(best, best_ids, values, ids, k):
    """The best k of two lists of (values, ids) rows, ties to the lower id."""
    return topk_by_id(np.concatenate([best, values], -1), np.concatenate([best_ids, ids], -1), k)
