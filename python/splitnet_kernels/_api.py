"""The public calls score, topk and merge_topk: each checks its arguments (_checks) and takes
the one route (_route); a call with objectives or bids goes through a Candidates set of the ads."""

from __future__ import annotations

import numpy as np

from . import _route
from ._candidates import Candidates
from ._checks import check_k, check_metric, check_pair, check_threads, embeddings, one_device
from ._conversions import check_tensor, is_tensor, numpy_floats, result_for, to_numpy, to_torch, wanting_gradients
from ._metric import Metric
from ._objectives import check_output
from ._order import merge_numpy
from ._route import as_given
from .backends import Request


def _by_objective(metric, objectives, bids, output) -> bool:
    """Whether a call needs the candidates grouped by objective (or bids)."""
    return objectives is not None or bids is not None or output == "value" or not (metric is None or
                                                                                 isinstance(metric, Metric))


def _objective_call(users, ads, objectives, bids):
    """(the set of the ads with their objectives and bids, users, bids, the device of the tensors
    among the arguments or None) for a call with objectives or bids. When any argument is a tensor,
    the users come as one on its device, so that the results are tensors (torch in, torch out)."""
    device = one_device(users=users, ads=ads, objectives=objectives, bids=bids)
    bids = numpy_floats(check_tensor(bids, "bids"))
    cands = Candidates(ads, "float32", objectives=check_tensor(objectives, "objectives"), bids=bids)
    if device is not None and not is_tensor(users):
        users = to_torch(embeddings(users, "users", (1, 2)), device)
    return cands, users, bids, device


def score(users, ads, metric=None, *, pairwise=False, sigmoid=False, backend="auto", threads=None, out=None,
          objectives=None, bids=None, output=None):
    """Scores users against ads with the metric: u^T S a + bias (sigmoid of it if sigmoid=True).

    users (n,) and ads (N, n) -> (N,); users (M, n) -> (M, N); pairwise=True with users (B, n)
    and ads (B, n) -> (B,), pair i being (users[i], ads[i]). Scores are float32; torch tensors
    in give torch tensors out. `out`, if given, receives the result and is returned. With an
    ObjectiveMetrics, objectives (N,) gives each ad's objective and bids (N,) its bid; output is
    "logit", "probability" or "value" (bid * probability, the default with objectives).
    """
    if objectives is None and bids is None and not pairwise and out is None and (
            output is None or output == "probability" or (output == "logit" and not sigmoid)):
        result = as_given(users, ads, metric, backend, threads, output or ("probability" if sigmoid else "logit"))
        if result is not None:  # the fast path (_route)
            return result
    if _by_objective(metric, objectives, bids, output):
        if pairwise:
            raise ValueError("pairwise=True scores one metric per pair; objectives, bids and output='value' are for "
                             "candidate sets")
        cands, users, bids, device = _objective_call(users, ads, objectives, bids)
        if device is not None and _route.ops_run_tensors(backend) and wanting_gradients(users, ads, bids):
            return _route.tensor_ops().score_by_objective(cands, users, ads, bids, metric, output=output,
                                                          sigmoid=sigmoid, threads=threads, out=out)
        return cands.score(users, metric, output=output, sigmoid=sigmoid, backend=backend, threads=threads, out=out)
    output = check_output(output, False, sigmoid)
    users, ads = check_pair(users, ads, pairwise, meta=_route.ops_run_tensors(backend))
    metric = check_metric(metric, ads.shape[-1], users, ads)
    return _route.score(Request(users, ads, metric, output=output, threads=check_threads(threads)), backend, out,
                        pairwise)


def topk(users, ads, k, metric=None, *, sigmoid=False, backend="auto", threads=None, objectives=None, bids=None,
         output=None):
    """The k best ads per user: (scores, ids), sorted best first, never forming all scores.

    users (n,) -> scores (k,), ids (k,) int64; users (M, n) -> (M, k) each. Equal scores: the
    lower ad index first; NaN ranks below every number; k > N returns N results; N = 0 returns
    empty results. With sigmoid=True the reported scores are sigmoid(score + bias), and the
    ranking is by them (equal probabilities: the lower index first), so that per-shard lists
    merge into the answer of one call. objectives, bids and output as in score; the ranking is
    by the quantity returned.
    """
    if objectives is None and bids is None and not sigmoid and (output is None or output == "logit"):
        found = as_given(users, ads, metric, backend, threads, "logit", k)
        if found is not None:  # the fast path (_route)
            return found
    if _by_objective(metric, objectives, bids, output):
        cands, users, bids, _ = _objective_call(users, ads, objectives, bids)
        scores, ids = cands.topk(users, k, metric, output=output, sigmoid=sigmoid, backend=backend, threads=threads)
        return _route.without_gradient("topk", scores, users, ads, bids), ids  # a selection, as the op says
    output = check_output(output, False, sigmoid)
    users, ads = check_pair(users, ads, False, meta=_route.ops_run_tensors(backend))
    metric = check_metric(metric, ads.shape[-1], users, ads)
    return _route.topk(Request(users, ads, metric, None, check_k(k), output, check_threads(threads)), backend)


def merge_topk(parts, k):
    """Merges per-shard top-k lists [(scores, ids), ...] into the best k overall.

    Each part is 1-D (k_i,) or, for M users, 2-D (M, k_i); ids are global candidate ids. The
    result equals topk over the concatenation: sorted best first, equal scores by the lower id,
    NaN below every number. An entry of score NaN and id -1 is padding (what a live set's topk
    ends a shorter per-user list with) and ranks below every other, so it never displaces a
    result. Scores are compared in their own precision and come back in the widest type given
    (float64 parts stay float64); ids come back as int64, or as uint64 when some id is beyond the
    int64 range (a mix of those with negative ids is refused).
    """
    k = check_k(k)
    try:
        parts = list(parts)
    except TypeError:
        raise TypeError("parts: expected a sequence of (scores, ids) pairs") from None
    if not parts:
        raise ValueError("parts: expected at least one (scores, ids) pair")
    torch_input = any(is_tensor(x) for part in parts for x in (part if isinstance(part, (tuple, list)) else ()))
    device = None
    all_scores, all_ids = [], []
    for i, part in enumerate(parts):
        if not isinstance(part, (tuple, list)) or len(part) != 2:
            raise TypeError(f"parts[{i}]: expected a (scores, ids) pair")
        scores, ids = part
        device = device or (scores.device if is_tensor(scores) else None)
        scores, ids = np.asarray(to_numpy(scores)), np.asarray(ids.cpu() if is_tensor(ids) else ids)
        if scores.dtype.kind != "f":
            raise TypeError(f"parts[{i}] scores: expected floating point, got dtype {scores.dtype}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"parts[{i}] ids: expected integers, got dtype {ids.dtype}")
        if scores.shape != ids.shape or scores.ndim not in (1, 2):
            raise ValueError(f"parts[{i}]: scores {scores.shape} and ids {ids.shape} must have one 1-D or 2-D shape")
        if all_scores and (scores.ndim != all_scores[0].ndim or scores.shape[:-1] != all_scores[0].shape[:-1]):
            raise ValueError(f"parts[{i}]: shape {scores.shape} does not match parts[0] {all_scores[0].shape}")
        all_scores.append(scores)
        all_ids.append(ids)
    scores, ids = np.concatenate(all_scores, -1), _common_ids(all_ids)
    padding = np.isnan(scores) & (ids == -1) if ids.dtype.kind == "i" else None
    merged = merge_numpy(scores, ids, k, padding)
    return tuple(result_for(x, torch_input, device) for x in merged)


_INT64_MAX = np.iinfo(np.int64).max


def _common_ids(parts) -> np.ndarray:
    """The id parts concatenated as int64, or as uint64 when some id does not fit int64."""
    huge = any(p.dtype == np.uint64 and p.size and p.max() > _INT64_MAX for p in parts)
    if not huge:
        return np.concatenate([p.astype(np.int64, copy=False) for p in parts], -1)
    if any(p.dtype.kind == "i" and p.size and p.min() < 0 for p in parts):
        raise ValueError("parts: ids mix negative values with values beyond the int64 range")
    return np.concatenate([p.astype(np.uint64, copy=False) for p in parts], -1)
