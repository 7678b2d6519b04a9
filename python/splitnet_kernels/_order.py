"""The top-k order for the array backends (numpy, torch), merge_topk, and the ranking by the
quantity a call reports (rank_exactly).

Scores rank by value, descending; NaN ranks below every number; equal scores (and +0 / -0)
rank by the lower candidate index. The C++ and Numba kernels implement the same order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_INT32_MIN = -(2**31)
# Candidates per chunk times users: bounds the score block a chunked top-k holds at once.
CHUNK_ELEMENTS = 1 << 22


def order_keys(scores: np.ndarray) -> np.ndarray:
    """int64 keys that sort float32 scores in the package's order (bigger key ranks first)."""
    s = np.asarray(scores, dtype=np.float32) + np.float32(0.0)  # -0 -> +0
    bits = s.view(np.int32)
    keys = np.where(bits >= 0, bits, bits ^ np.int32(0x7FFFFFFF)).astype(np.int64)
    keys[np.isnan(s)] = _INT32_MIN - 1
    return keys


def topk_numpy(scores: np.ndarray, k: int):
    """Best k of each row of float32 scores (M, N) -> (scores (M, k), positions (M, k) int64)."""
    n = scores.shape[-1]
    k = min(k, n)
    if n >= 2**31:
        raise ValueError(f"at most 2**31 - 1 candidates per call on this backend, got {n}")
    # One unique int64 key per entry: the order key, ties broken by the lower position.
    composite = order_keys(scores) * n + (n - 1 - np.arange(n, dtype=np.int64))
    if k < n:
        part = np.argpartition(-composite, k - 1, axis=-1)[..., :k]
    else:
        part = np.broadcast_to(np.arange(n, dtype=np.int64), composite.shape)
    order = np.argsort(-np.take_along_axis(composite, part, axis=-1), axis=-1)
    positions = np.take_along_axis(part, order, axis=-1).astype(np.int64)
    return np.take_along_axis(scores, positions, axis=-1), positions


def chunked_topk(score_chunk, n_users: int, n_cands: int, k: int, topk=None):
    """Top-k over candidates a chunk at a time, so the (users, candidates) matrix never exists.

    score_chunk(begin, end) -> (n_users, end - begin) float32 scores, numpy or torch; topk is
    topk_numpy (default) or topk_torch. The running best list is kept in front of each new
    chunk: its ties are already in id order and its ids all precede the chunk's, so ranking by
    position is ranking by id.
    """
    topk = topk or topk_numpy
    chunk = max(4 * k, CHUNK_ELEMENTS // max(n_users, 1))
    best_scores = best_ids = None
    for begin in range(0, n_cands, chunk):
        end = min(n_cands, begin + chunk)
        scores = score_chunk(begin, end)
        cat: Any
        take: Any
        ids: Any
        if isinstance(scores, np.ndarray):
            cat, take = np.concatenate, np.take_along_axis
            ids = np.broadcast_to(np.arange(begin, end, dtype=np.int64), scores.shape)
        else:
            import torch

            cat, take = torch.cat, (lambda a, positions, axis: torch.gather(a, axis, positions))
            ids = torch.arange(begin, end, dtype=torch.int64, device=scores.device).expand(scores.shape)
        if best_scores is not None:
            scores, ids = cat([best_scores, scores], -1), cat([best_ids, ids], -1)
        best_scores, positions = topk(scores, k)
        best_ids = take(ids, positions, -1)
    return best_scores, best_ids


def topk_by_id(values: np.ndarray, ids: np.ndarray, k: int):
    """Best k of each row of float32 values (M, N) whose candidates are ids (N,) or (M, N), any
    order: (values (M, k), ids (M, k)), ties to the lower id. Vectorized: ids in [0, 2**31) are
    packed with the values into one key, others sorted with them (merge_numpy)."""
    values = np.atleast_2d(values)
    ids = np.broadcast_to(ids, values.shape).astype(np.int64, copy=False)
    k = min(k, values.shape[-1])
    span = np.int64(2**31)
    if ids.size and (ids.min() < 0 or ids.max() >= span):  # ad ids of a live set: sorted, not packed
        return merge_numpy(values, ids, k)
    composite = order_keys(values) * span + (span - 1 - ids)
    part = np.argpartition(-composite, k - 1, axis=-1)[..., :k] if k < values.shape[-1] else \
        np.broadcast_to(np.arange(values.shape[-1]), values.shape)
    order = np.argsort(-np.take_along_axis(composite, part, axis=-1), axis=-1)
    positions = np.take_along_axis(part, order, axis=-1)
    return np.take_along_axis(values, positions, axis=-1), np.take_along_axis(ids, positions, axis=-1)


def merge_numpy(scores: np.ndarray, ids: np.ndarray, k: int, last: np.ndarray | None = None):
    """Best k of each row of (scores, ids): scores of any float type compared in that type, ids
    of any integer type, ties (and +0 / -0) to the lower id, NaN last; entries marked in `last`
    (NaN ones: padding) after every other."""
    k = min(k, scores.shape[-1])
    nan = np.isnan(scores)
    descending = -np.where(nan, 0, scores)
    rank = nan if last is None else np.where(last, 2, nan.view(np.int8))
    order = np.lexsort((ids, descending, rank))[..., :k]  # along the last axis, every row at once
    return np.take_along_axis(scores, order, -1), np.take_along_axis(ids, order, -1)


def padded(lists, width: int):
    """Best-first lists [(scores (k_u,), ids (k_u,)), ...], one per user, as two (M, width)
    arrays, each row padded after its entries with score NaN and id -1 (a user allowed fewer
    candidates than the others)."""
    scores, ids = np.full((len(lists), width), np.nan, np.float32), np.full((len(lists), width), -1, np.int64)
    for u, (s, i) in enumerate(lists):
        scores[u, :len(s)], ids[u, :len(i)] = s, i
    return scores, ids


def topk_torch(scores, k: int):
    """topk_numpy for torch tensors, on their own device."""
    import torch

    n = scores.shape[-1]
    k = min(k, n)
    if n >= 2**31:
        raise ValueError(f"at most 2**31 - 1 candidates per call on this backend, got {n}")
    s = scores + 0.0  # -0 -> +0
    bits = s.view(torch.int32)
    keys = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    keys = keys.masked_fill(torch.isnan(s), _INT32_MIN - 1)
    composite = keys * n + (n - 1 - torch.arange(n, device=scores.device, dtype=torch.int64))
    positions = torch.topk(composite, k, dim=-1, sorted=True).indices
    return torch.gather(scores, -1, positions), positions


def rank_exactly(n_candidates: int, k: int, raw_topk, every_quantity, transform):
    """Top k by transform(score) -- the quantity a call reports -- ties to the lower id.

    Ranking by the reported number is what makes per-shard lists merge into the answer of one
    call: distinct scores can round to one float32 probability (or value), which then ties by id.
    transform is monotone, so the best k by it are among the best k + 1 by score, unless the
    (k+1)-th quantity equals the k-th (or is NaN); only then is that user's every quantity formed.
    raw_topk(count) -> (scores, ids) numpy (M, count) ranked by score, a user allowed fewer
    candidates padded with score NaN and id -1 (kept last); transform(scores, ids) -> quantities;
    every_quantity(u) -> (quantities, ids) over every eligible candidate of user u.
    """
    scores, ids = raw_topk(min(k + 1, n_candidates))
    quantities = transform(np.array(scores, np.float32), ids)
    padding = (ids == -1) & np.isnan(quantities)  # a user allowed fewer candidates (one filter per user)
    best, best_ids = merge_numpy(quantities, ids, k, last=padding if padding.any() else None)
    if quantities.shape[-1] > k:
        for u in np.flatnonzero(~(quantities[:, k] < quantities[:, k - 1])):
            values, candidate_ids = every_quantity(u)
            best[u], best_ids[u] = np.nan, -1  # padding after what the user may get
            if len(candidate_ids):
                top, top_ids = topk_by_id(values, candidate_ids, k)
                best[u, :top.shape[1]], best_ids[u, :top.shape[1]] = top[0], top_ids[0]
    return best, best_ids
