"""Quality against the deadline (the blog's q): the seconds one request takes through the
kernels for every kind (its T folds, then one scan of the candidates by value), fitted as a
fixed cost plus a cost per candidate, and how many candidates a per-request budget lets each
kind score."""

from __future__ import annotations

import functools
import time

import numpy as np

import splitnet_kernels as sk

__all__ = ["request_costs", "processed"]


def request_costs(models: dict, candidates: int, k: int, rounds: int) -> dict:
    """models: kind -> (ObjectiveMetrics, user embeddings (M, n), ad embeddings (A, n), ad
    objectives (A,), bids (A,)), a trained model's. Its pool of `candidates` ads is drawn from
    its ads (bids jittered), so the scan by value stops where that model's values let it. One
    request = Candidates.topk(user, k, metrics, output="value", threads=1) for one user, which runs
    on the calling thread; timed in turns (every kind and pool size once per round, after a
    warm-up) at 1/16 and all of the pool as that thread's CPU time, keeping each one's fastest
    round: what a server core spends on the request, which other processes on a shared machine
    leave almost untouched (they stretch the wall-clock time instead).
    Returns kind -> {"fixed_us", "ns_per_candidate", "us": {pool size: fastest us}}."""
    rng = np.random.default_rng(0)
    sizes = (max(1, candidates // 16), candidates)
    calls = {}
    for kind, (metrics, users, ads, objectives, bids) in models.items():
        rows = rng.integers(0, len(ads), candidates)
        jitter = np.exp(0.1 * rng.standard_normal(candidates)).astype(np.float32)
        for size in sizes:
            pool = sk.Candidates(ads[rows[:size]], objectives=objectives[rows[:size]], bids=bids[rows[:size]] * jitter[:size])
            calls[kind, size] = functools.partial(_requests, pool, users, k, metrics)
    for call in calls.values():
        call()
    seconds = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for key, call in calls.items():
            start = time.thread_time()
            call()
            seconds[key] = min(seconds[key], time.thread_time() - start)
    costs = {}
    for kind in models:
        us = np.array([seconds[kind, size] / len(models[kind][1]) * 1e6 for size in sizes])
        per_candidate, fixed = np.polyfit(np.array(sizes, np.float64), us, 1)
        costs[kind] = {"fixed_us": float(fixed), "ns_per_candidate": float(per_candidate * 1e3),
                       "us": {size: float(u) for size, u in zip(sizes, us)}}
    return costs


def _requests(pool, users, k, metrics):
    for user in users:  # one request per user
        pool.topk(user, k, metrics, output="value", threads=1)


def processed(cost: dict, budget_us: float, candidates: int) -> float:
    """The candidates a request scores within budget_us (at most the pool), by the fitted costs
    (a fit with no cost per candidate, timing noise on a small pool, scores all or none)."""
    left = budget_us - cost["fixed_us"]
    if cost["ns_per_candidate"] <= 0:
        return float(candidates if left >= 0 else 0)
    return float(np.clip(left / (cost["ns_per_candidate"] * 1e-3), 0, candidates))
