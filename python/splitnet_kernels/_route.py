"""The one route: every scoring call (sk.score, sk.topk, Candidates, the objectives path) ends
here with checked operands, as one Request handed to one backend, or for tensors under
backend="auto" to one custom op (_torch_ops), which torch.compile can trace.

The fast path is a property of the route, not a second one: a call it may take as given (one
float32 user against plain float32 rows, NumPy or CPU tensors that nobody watches, backend
"auto" meaning the compiled kernels, threads=None) goes to the same backend call with its arrays
as they are, skipping the checks and conversions that the binding repeats; where the binding
refuses a layout (ValueError), the call takes the general route, which converts or reports.
W6 (one user x 1,000 candidates, top-10) is a few microseconds of arithmetic: this is its path.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import numpy as np

from . import _dispatch
from ._checks import DEFAULT_METRICS, Mask, check_metric, check_out, positions_of
from ._conversions import device_of, holds_values, host, kernel_rows, may_share_memory, result_for, to_numpy, \
    to_torch, wanting_gradients, watched
from ._metric import Metric
from ._objectives import _FIRST_BLOCK, folded, keep_best, probability, quantity, scan_by_value
from ._order import padded, rank_exactly
from ._storage import count, is_plain
from .backends import Request

# ---- the custom ops, for tensors ----------------------------------------------------------------
_torch_ops: Any = None
_TENSOR: Any = None  # torch.Tensor once the ops are loaded: the fast path takes tensors of exactly this type
_from_numpy: Any = None


def tensor_ops():
    """The custom ops' module, imported (and the ops registered) on first use."""
    global _torch_ops, _TENSOR, _from_numpy
    if _torch_ops is None:
        import torch

        from . import _torch_ops as module

        _torch_ops, _TENSOR, _from_numpy = module, torch.Tensor, torch.from_numpy
    return _torch_ops


def ops_run_tensors(backend) -> bool:
    """Whether tensors go to the custom ops: under backend="auto", unless the environment names a backend."""
    return backend == "auto" and _dispatch.ENV_BACKEND == "auto"


def without_gradient(name: str, result, *inputs):
    """result, computed off autograd's record: where tensors among inputs ask for a gradient, its
    backward raises and says why (as the op `name`'s does), rather than leave them without one."""
    wanting = wanting_gradients(*inputs)
    return tensor_ops().refused(name, result, wanting) if wanting else result


# ---- the backend and the arrays it computes on ------------------------------------------------------
def _backend_for(users, store, backend, device):
    """The backend that runs a call, or None for the custom ops: tensors under backend="auto" go
    to the ops, except plain CPU tensors that hold their values and that no gradient is asked of,
    which the compiled kernels read as arrays, as the ops' kernel would (its dispatch round trip
    costs more than W6's arithmetic)."""
    if device is not None and ops_run_tensors(backend):
        tensor_ops()
        fast = _dispatch.FAST
        tensors = (users, store) if is_plain(store) else (users,)
        if fast is None or device.type != "cpu" or not holds_values(*tensors) or wanting_gradients(*tensors):
            return None
        return fast
    return _dispatch.resolve(backend, device is not None and device.type != "cpu")


def _operand(native: str, x, device):
    """Users or a store as a backend computes on them (its `native`); packed Storage as it is."""
    if not is_plain(x):
        return x
    if native == "torch":
        return to_torch(x, device)
    return kernel_rows(to_numpy(x)) if native == "kernels" else to_numpy(x)


def _writable_out(native: str, out, torch_input: bool):
    """Where the backend may write: out itself, a NumPy view of a CPU tensor, or None (then the
    result is computed apart and copied into out)."""
    if out is None or (native == "torch") == torch_input:
        return out
    if native != "torch" and out.device.type == "cpu":
        return to_numpy(out)  # a view: the kernels write straight into the tensor
    return None


# ---- the route ---------------------------------------------------------------------------------------
def score(request: Request, backend, out=None, pairwise: bool = False):
    """The request's checked users scored against its store (pairwise: against plain rows, pair i
    being (users[i], rows[i])): the logits, or their probability (request.output), in the
    inputs' type; `out`, when given, filled and returned."""
    users, store = request.users, request.store
    device = device_of(users, store)
    torch_input = device is not None
    n_candidates = count(store) if request.ids is None else len(request.ids)
    shape = (n_candidates,) if pairwise or users.ndim == 1 else (users.shape[0], n_candidates)
    out = check_out(out, shape, torch_input, device)
    chosen = _backend_for(users, store, backend, device)
    if chosen is None:
        return tensor_ops().score(request, out, pairwise)
    if out is not None and any(may_share_memory(out, x) for x in ((users, store) if is_plain(store) else (users,))):
        result = score(request, backend, None, pairwise)
        out.copy_(result) if torch_input else np.copyto(out, result)
        return out  # out overlaps an input: computed apart first, so no input is read after a write
    if 0 in shape:
        return out if out is not None else result_for(np.empty(shape, np.float32), torch_input, device)
    native = chosen.native
    request = Request(_operand(native, users, device), _operand(native, store, device), *request[2:])
    written = _writable_out(native, out, torch_input)
    result = chosen.score_pairs(request, written) if pairwise else chosen.score(request, written)
    if request.output == "probability":
        result = probability(result, in_place=True)
    result = result_for(result, torch_input, device)
    if out is not None and result is not out:
        out.copy_(result) if torch_input else np.copyto(out, result)
        return out
    return result


def topk(request: Request, backend):
    """The best request.k of the store for the request's checked users, ranked by the quantity
    asked for (logit or probability), in the inputs' type."""
    users, store = request.users, request.store
    device = device_of(users, store)
    torch_input = device is not None
    chosen = _backend_for(users, store, backend, device)
    kernels = chosen is not None and chosen.native == "kernels"
    if isinstance(request.ids, Mask) and request.ids.per_user and not kernels:
        return user_by_user(request, lambda one: topk(one, backend))
    if not kernels:  # the kernels read a Mask as it is; the rest take its ids
        request = request._replace(ids=positions_of(request.ids))
    if chosen is None:
        return tensor_ops().topk(request)
    eligible = count(store) if request.ids is None else len(request.ids)
    k = min(request.k, eligible)
    n_users = 1 if users.ndim == 1 else users.shape[0]
    if k == 0 or n_users == 0:
        scores, found = np.empty((n_users, k), np.float32), np.empty((n_users, k), np.int64)
    else:
        native = chosen.native
        many = _operand(native, users, device)
        many = many.reshape(1, -1) if many.ndim == 1 else many
        scores, found = _ranked(chosen, Request(many, _operand(native, store, device), request.metric, request.ids, k,
                                                request.output, request.threads))
    if users.ndim == 1:
        scores, found = scores[0], found[0]
    return result_for(scores, torch_input, device), result_for(found, torch_input, device)


def user_by_user(request: Request, answer):
    """The top-k of a request with one filter per user (a per-user Mask), one user at a time:
    answer(the request of user u alone) -> (scores, ids) (k_u,); the lists padded to the longest,
    min(k, the most any user may get), with score NaN and id -1. In the users' type."""
    users, mask = request.users, request.ids
    device = device_of(users)
    lists = [tuple(host(x) for x in answer(request._replace(users=users[u], ids=mask.user(u))))
             for u in range(users.shape[0])]
    scores, ids = padded(lists, min(request.k, len(mask)))
    return result_for(scores, device is not None, device), result_for(ids, device is not None, device)


def _ranked(chosen, request: Request):
    """chosen.topk(request), ranked by the probability where the request asks for it (rank_exactly)."""
    if request.output != "probability":
        return chosen.topk(request)
    eligible = count(request.store) if request.ids is None else len(request.ids)

    def raw_topk(how_many):
        return tuple(host(x) for x in chosen.topk(request._replace(k=how_many)))

    def every_probability(u):
        ids = positions_of(request.ids.user(u) if isinstance(request.ids, Mask) else request.ids)
        logits = chosen.score(request._replace(users=request.users[u], ids=ids, k=0), None)
        return probability(host(logits)), np.arange(eligible) if ids is None else ids

    return rank_exactly(eligible, request.k, raw_topk, every_probability, lambda scores, _: probability(scores))


# ---- the fast path -------------------------------------------------------------------------------------
_ndarray, _F32 = np.ndarray, np.dtype(np.float32)
_request = tuple.__new__  # Request(...) without NamedTuple's Python-level __new__: W6 counts every 0.1 us


def as_given(users, store, metric, backend, threads, output: str = "logit", k=None):
    """The answer of a call the route may take as given (see the module's docstring): the scores
    (k None) or the top k of one user against plain rows, as sk.score / sk.topk give them; None
    for every other call, which then takes the general route. The metric's fold range is checked
    here; everything else that the binding checks is left to it."""
    fast = _dispatch.FAST
    if backend != "auto" or threads is not None or fast is None:
        return None
    if type(users) is _ndarray:
        if type(store) is not _ndarray:
            return None
        tensors = False
    elif _TENSOR is not None and type(users) is _TENSOR and type(store) is _TENSOR and not watched():
        try:  # numpy() refuses tensors off the CPU and tensors that ask for a gradient
            users, store, tensors = users.numpy(), store.numpy(), True
        except (RuntimeError, TypeError):
            return None
    else:
        return None
    # The binding checks layouts and what it reads (ValueError: then the general route runs, and
    # reports); it takes rows wider than the users (packed rows are), so the dimensions are here.
    if users.dtype is not _F32 or store.dtype is not _F32 or users.ndim != 1 or store.ndim != 2:
        return None
    dim = users.size  # shape[0] of a 1-D array, read without making a tuple
    if store.shape[1] != dim:
        return None
    if metric is None:  # dot: no fold range to check
        metric = DEFAULT_METRICS.get(dim) or check_metric(None, dim, users, store)
    elif type(metric) is not Metric or metric.dim != dim:
        return None
    else:
        metric.check_fold_range(users)
    if k is None:
        try:
            result = fast.score(_request(Request, (users, store, metric, None, 0, output, None)), None)
        except ValueError:
            return None  # a layout the general route handles (or reports)
        if output == "probability":
            result = probability(result, in_place=True)
        return _from_numpy(result) if tensors else result
    if type(k) is not int or k < 1:  # k > N: the binding refuses it, then the general route caps k
        return None
    try:
        found = fast.topk(_request(Request, (users, store, metric, None, k, output, None)))
    except ValueError:
        return None  # a layout the general route handles (or reports)
    return (_from_numpy(found[0]), _from_numpy(found[1])) if tensors else found


# ---- the route by objective ---------------------------------------------------------------------------
class Group(NamedTuple):
    """One objective's rows, as a scan by objective takes them: the objective, its rows (a
    store), their bids (descending; a scalar where every row has the same), the ids the results
    report for them, and the allowed ones among them (positions, ascending; None: all)."""

    objective: int
    rows: Any
    bids: Any
    ids: np.ndarray
    local: np.ndarray | None = None

    @property
    def eligible(self) -> int:
        return count(self.rows) if self.local is None else len(self.local)


def groups_of(store, grouping, reported=None, allowed=None) -> list:
    """The groups of a store packed by objective as grouping says (None: one group of every
    row). reported: the id each packed row reports (default: its index in the order given);
    allowed: the allowed rows' indices in the order given (ascending; None: all)."""
    n = count(store)
    if grouping is None:
        return [Group(0, store, np.float32(1.0), np.arange(n) if reported is None else reported, allowed)]
    mask = None
    if allowed is not None:
        mask = np.zeros(n, bool)
        mask[grouping.positions(allowed)] = True
    reported = grouping.order if reported is None else reported
    return [Group(t, store.slice(begin, end), grouping.bids[begin:end], reported[begin:end],
                  None if mask is None else np.flatnonzero(mask[begin:end])) for t, begin, end in grouping.groups()]


def score_by_objective(request: Request, grouping, backend, out):
    """The quantity request.output of a packed store (request.store, packed by objective as
    grouping says, or None) for checked users: each objective's rows scored with its metric."""
    users, n_candidates = request.users, count(request.store)
    device = device_of(users)
    shape = (n_candidates,) if users.ndim == 1 else (users.shape[0], n_candidates)
    check_out(out, shape, device is not None, device)
    result = np.empty(shape, np.float32)
    plain_users = to_numpy(users)
    for group in groups_of(request.store, grouping):
        queries, dot = folded(request.metric, plain_users, group.objective)
        logits = host(score(Request(queries, group.rows, dot, threads=request.threads), backend))
        result[..., group.ids] = quantity(logits, group.bids, request.output)
    result = without_gradient("candidates_score", result_for(result, device is not None, device), users)
    if out is None:
        return result
    out.copy_(result) if device is not None else np.copyto(out, result)
    return out


def topk_by_objective(request: Request, groups: list, backend):
    """(scores, ids, rows scanned per objective): the best request.k of the groups' allowed rows
    (groups_of, of one store or of several: the ids they report rank ties) by the quantity
    request.output (see _ByObjective), for request.users, in the users' type."""
    scan = _ByObjective(request, groups, backend)
    scores, found = scan.run()
    users, device = request.users, device_of(request.users)
    if users.ndim == 1:
        scores, found = scores[0], found[0]
    scores = without_gradient("candidates_topk", result_for(scores, device is not None, device), users)
    return scores, result_for(found, device is not None, device), scan.scanned


class _ByObjective:
    """One top-k by objective, by the quantity asked for, exactly (ties to the lower id). Two
    rounds: every group's highest bids first, so that the k-th value each scan stops at comes
    from all objectives, then the rest of each, as far as the bids allow (a value never exceeds
    its bid). The backend runs the scan by value inside its kernels where it can (its
    topk_value); otherwise the route runs it (scan_by_value)."""

    def __init__(self, request: Request, groups: list, backend):
        self.request, self.backend, self.groups = request, backend, groups
        self.users = np.atleast_2d(to_numpy(request.users))
        eligible = sum(group.eligible for group in groups)
        kept = min(request.k, eligible) if len(self.users) == 0 else 0  # no users: (0, k) results
        self.best = np.empty((len(self.users), kept), np.float32), np.empty((len(self.users), kept), np.int64)
        self.resume: dict = {}  # per group: how many of its eligible rows are behind the scan
        self.scanned: dict = {}  # per objective: rows scored

    def run(self):
        if len(self.users):
            queries = {t: folded(self.request.metric, self.users, t) for t in {g.objective for g in self.groups}}
            for until in (_FIRST_BLOCK, None):
                for g, group in enumerate(self.groups):
                    self.best = self._objective(g, group, *queries[group.objective], until)
        return self.best

    def _count(self, t: int, rows: int) -> None:
        self.scanned[t] = self.scanned.get(t, 0) + rows

    def _objective(self, g: int, group: Group, queries, metric, until):
        """best merged with one group's candidates: its rows up to `until` (None: all), from
        where the last round stopped."""
        request, t, local = self.request, group.objective, group.local
        start, eligible = self.resume.get(g, 0), group.eligible
        if start >= eligible:
            return self.best
        bids = np.broadcast_to(group.bids, (count(group.rows),))
        objective = Request(queries, group.rows, metric, local, request.k, "logit", request.threads)
        if request.output != "value" or bids[0] == bids[-1]:  # the quantity is monotone in the logit here
            self.resume[g] = eligible  # ranked whole, in one call
            self._count(t, eligible)
            scores, ids = self._ranked_whole(objective, group.ids, bids, eligible)
            return keep_best(self.best[0], self.best[1], scores, ids, request.k)
        scores = self.best[0]
        if scores.shape[1] == request.k and bids[start if local is None else local[start]] < scores[:, -1].min():
            self.resume[g] = eligible  # no value ahead can reach any user's k-th (a value never exceeds its bid)
            return self.best
        chosen = _dispatch.resolve(self.backend, False)
        if chosen.topk_value is not None:  # values formed and ranked inside the backend's kernels
            end = eligible if until is None else min(until, eligible)
            return self._fused(chosen, objective, g, group, bids, start, end)

        def score_rows(first, last):
            block = objective._replace(k=0, ids=None if local is None else local[first:last],
                                       store=group.rows.slice(first, last) if local is None else group.rows)
            return host(score(block, self.backend)).reshape(len(queries), -1)

        *best, self.resume[g], scored = scan_by_value(queries, bids, group.ids, local, request.k, score_rows,
                                                      *self.best, begin=start, until=until)
        self._count(t, scored)
        return tuple(best)

    def _ranked_whole(self, objective: Request, ids, bids, eligible: int):
        """One group's best by a quantity monotone in its logit (rank_exactly)."""
        output, local = self.request.output, objective.ids

        def raw_topk(how_many):
            scores, positions = (host(x) for x in topk(objective._replace(k=how_many), self.backend))
            return scores, ids[positions]

        def every_quantity(u):
            logits = host(score(objective._replace(users=objective.users[u], k=0), self.backend))
            rows = slice(None) if local is None else local
            return quantity(logits, bids[rows], output), ids[rows]

        return rank_exactly(eligible, min(self.request.k, eligible), raw_topk, every_quantity,
                            lambda scores, _: quantity(scores, bids[0], output))

    def _fused(self, chosen, objective: Request, g: int, group: Group, bids, begin: int, end: int):
        """The scan by value of rows [begin, end) of one group inside the backend's kernels."""
        n_users, kept = self.best[0].shape
        k = objective.k
        scores, found = np.empty((n_users, k), np.float32), np.empty((n_users, k), np.int64)
        scores[:, :kept], found[:, :kept] = self.best
        counts = np.full(n_users, kept, np.int64)
        self.resume[g], scored = chosen.topk_value(
            objective, np.ascontiguousarray(bids, np.float32), np.ascontiguousarray(group.ids, np.int64), begin, end,
            (scores, found, counts))
        self._count(group.objective, scored)
        kept = int(counts[0]) if n_users else 0
        if np.any(counts != kept):  # every user sees the same rows, so the same number of them
            raise RuntimeError(f"internal error: users kept {counts.min()}..{counts.max()} values")
        return scores[:, :kept], found[:, :kept]


if sys.modules.get("torch") is not None:  # torch came first: the ops exist from the start, as torch.ops.splitnet_kernels
    tensor_ops()
