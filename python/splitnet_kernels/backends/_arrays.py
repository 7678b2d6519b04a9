"""What the array backends (numpy, numba, torch) share: scoring any candidate store through
their own whole-array kernels, score_rows and topk_rows. Plain rows go straight in; packed
storage and allowed subsets go in widened blocks, whose top-k lists are merged."""

from __future__ import annotations

import numpy as np

from .._conversions import host
from .._order import merge_numpy
from .._storage import blocks, is_plain


class ArrayBackend:
    """score / topk / score_pairs over candidate stores (see backends/__init__.py); subclasses
    give score_rows(users, ads, metric, *, pairwise, threads, out) and topk_rows(users, ads, k,
    metric, *, threads) on whole arrays of their native type, and as_rows(rows, like) to bring a
    block to it. The by-value scan runs in the route (_objectives.scan_by_value)."""

    topk_value = None

    def as_rows(self, rows, like):
        return rows

    def score(self, request, out):
        users, store, metric, ids, threads = request.users, request.store, request.metric, request.ids, request.threads
        if is_plain(store) and ids is None:
            return self.score_rows(users, store, metric, pairwise=False, threads=threads, out=out)
        parts = [self.score_rows(users, self.as_rows(rows, users), metric, pairwise=False, threads=threads, out=None)
                 for _, rows in blocks(store, ids)]
        result = self.concatenate(parts)  # the route never asks for no candidates
        if out is None:
            return result
        out[...] = result
        return out

    def topk(self, request):
        users, store, metric, ids, k, threads = (request.users, request.store, request.metric, request.ids, request.k,
                                                 request.threads)
        if is_plain(store) and ids is None:
            return self.topk_rows(users, store, k, metric, threads=threads)
        scores, found = [], []
        for block_ids, rows in blocks(store, ids):
            s, local = self.topk_rows(users, self.as_rows(rows, users), min(k, len(block_ids)), metric, threads=threads)
            scores.append(host(s))
            found.append(block_ids[host(local)])
        return merge_numpy(np.concatenate(scores, -1), np.concatenate(found, -1), k)

    def score_pairs(self, request, out):
        return self.score_rows(request.users, request.store, request.metric, pairwise=True, threads=request.threads,
                               out=out)

    @staticmethod
    def concatenate(parts):
        return np.concatenate(parts, -1)
