"""The workloads W1-W7 of docs/design.md: their sizes, data and metrics, defined once for both
`splitnet-kernels bench` (driver.py) and the pytest-benchmark suites in bench/."""

from __future__ import annotations

import numpy as np

import splitnet_kernels as sk

DIM = 64  # the embedding length n of W1-W6
CANDIDATES, QUICK_CANDIDATES = 1_000_000, 100_000  # W1-W4; the second with --quick
PAIRS, QUICK_PAIRS = 1_000_000, 100_000  # W5
TOP_K = 100  # W2-W4
USERS = 128  # W4
DTYPES = ("float32", "bfloat16", "float16", "int8")  # the candidate sets of W3 and W4
REQUEST_CANDIDATES, REQUEST_K = 1000, 10  # W6: one serving request
PAIR_KINDS = ("dot", "diagonal", "full")  # W5
KINDS = ("dot", "scaled", "diagonal", "low_rank", "full")  # W7: every metric kind, cheapest first
W7_DIMS = (16, 32, 64, 128, 256, 512)
W7_BYTES, QUICK_W7_BYTES = 64 << 20, 4 << 20  # W7's candidates per n: past the L3, as in serving


def data(rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)


def one_user(candidates: int):
    """W1-W3: (ads, user), one user against `candidates` ads."""
    return data(candidates, DIM, 1), data(1, DIM, 2)[0]


def many_users(candidates: int):
    """W4: (ads, users), USERS users against the same ads as W1-W3."""
    return data(candidates, DIM, 1), data(USERS, DIM, 3)


def pairs(count: int):
    """W5: (users, ads), row i of each forming pair i."""
    return data(count, DIM, 4), data(count, DIM, 5)


def pair_metrics(dim: int = DIM) -> dict:
    """W5: {kind: (sk.Metric or None for plain dot, its factor: s of diag(s), S of full, or None)};
    the factor is what the NumPy and torch expressions multiply by."""
    rng = np.random.default_rng(6)
    s = rng.standard_normal(dim).astype(np.float32)
    S = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
    return {"dot": (None, None), "diagonal": (sk.Metric.diagonal(s), s), "full": (sk.Metric.full(S), S)}


def one_request():
    """W6: (ads, user), REQUEST_CANDIDATES ads."""
    return data(REQUEST_CANDIDATES, DIM, 7), data(1, DIM, 8)[0]


def w7_rows(dim: int, budget_bytes: int) -> int:
    """W7's candidates at length dim: budget_bytes of float32 rows, at least 1024."""
    return max(1024, budget_bytes // (4 * dim))


def w7_data(rows: int, dim: int):
    """W7: (ads, users) of length dim."""
    return data(rows, dim, 10), data(rows, dim, 11)


def metrics_for(n: int, rng) -> dict:
    """W7: one metric of every kind (KINDS) at length n, drawn from rng."""
    rank = max(1, n // 8)
    return {
        "dot": sk.Metric.dot(n),
        "scaled": sk.Metric.scaled(n, 0.5),
        "diagonal": sk.Metric.diagonal(rng.standard_normal(n)),
        "low_rank": sk.Metric.low_rank(rng.standard_normal((n, rank)), rng.standard_normal((n, rank)),
                                       d=rng.standard_normal(n)),
        "full": sk.Metric.full(rng.standard_normal((n, n)) / np.sqrt(n)),
    }


def numpy_topk(scores: np.ndarray, k: int):
    """The top k of one row of scores the NumPy way, best first: what a user would write."""
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
