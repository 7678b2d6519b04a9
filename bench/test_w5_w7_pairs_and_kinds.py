"""W5 (a million (user, ad) pairs) and W7 (cost per candidate against n, every kind)."""

import numpy as np
import pytest
from conftest import data, scaled

import splitnet_kernels as sk
from splitnet_kernels.benchmarks import _metrics_for

B, DIM = scaled(1_000_000), 64


@pytest.fixture(scope="module")
def pairs():
    return data(B, DIM, 4), data(B, DIM, 5)


@pytest.mark.benchmark(group="W5")
@pytest.mark.parametrize("kind", ["dot", "diagonal", "full"])
def test_w5_ours(benchmark, pairs, kind):
    metric = _metrics_for(DIM, np.random.default_rng(0))[kind]
    benchmark(sk.score, *pairs, metric, pairwise=True)


@pytest.mark.benchmark(group="W5")
def test_w5_numpy_full(benchmark, pairs):
    users, ads = pairs
    S = _metrics_for(DIM, np.random.default_rng(0))["full"].dense()
    benchmark(lambda: np.einsum("ij,ij->i", users @ S, ads))


@pytest.mark.benchmark(group="W6")
def test_w6_latency(benchmark):
    ads, user = data(1000, DIM, 7), data(1, DIM, 8)[0]
    benchmark(sk.topk, user, ads, 10)


@pytest.mark.benchmark(group="W7")
@pytest.mark.parametrize("dim", [16, 64, 256])
@pytest.mark.parametrize("kind", ["dot", "diagonal", "low_rank", "full"])
def test_w7_folded(benchmark, dim, kind):
    metric = _metrics_for(dim, np.random.default_rng(0))[kind]
    ads, user = data(scaled(100_000), dim, 9), data(1, dim, 10)[0]
    benchmark(sk.score, user, ads, metric)
