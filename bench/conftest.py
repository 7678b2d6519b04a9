"""pytest-benchmark suites for workloads W1-W7 (DESIGN.md), ours beside the peers.

Run: pytest bench --benchmark-only  (add --benchmark-group-by=group). Sizes follow
SPLITNET_BENCH_SCALE (default 1.0 = the reference sizes; 0.1 for a quick look). The tables
with floors and targets come from `splitnet-kernels bench`, which uses the same data.
"""

import os

import numpy as np
import pytest

SCALE = float(os.environ.get("SPLITNET_BENCH_SCALE", "1.0"))


def scaled(n: int) -> int:
    return max(1000, int(n * SCALE))


def data(rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)


def optional(name):
    module = pytest.importorskip(name)
    return module
