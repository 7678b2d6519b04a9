"""The backends behind score and topk. Each takes validated inputs and one contract:

    score(users, ads, metric, *, pairwise, threads, out) -> float32 scores, bias included
    topk(users (M, n), ads (N, n), k <= N, metric, *, threads) -> (scores (M, k), ids (M, k))

`native` says which arrays a backend computes on ("numpy" or "torch"); the API converts to it
and back. Every backend scores through Metric.fold and ranks in the order of _order.py.
"""
