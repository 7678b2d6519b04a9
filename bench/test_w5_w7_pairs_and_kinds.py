"""W5 (a million (user, ad) pairs), W6 (one request of 1,000 candidates) and W7 (cost per
candidate against n, every kind)."""

import numpy as np
import pytest
from conftest import optional, scaled

import splitnet_kernels as sk
from splitnet_kernels.benchmark import workloads as wl

B, DIM = scaled(wl.PAIRS), wl.DIM


@pytest.fixture(scope="module")
def pairs():
    return wl.pairs(B)


@pytest.mark.benchmark(group="W5")
@pytest.mark.parametrize("kind", wl.PAIR_KINDS)
def test_w5_ours(benchmark, pairs, kind):
    metric = wl.pair_metrics(DIM)[kind][0]
    benchmark(sk.score, *pairs, metric, pairwise=True)


@pytest.mark.benchmark(group="W5")
@pytest.mark.parametrize("kind", wl.PAIR_KINDS)
def test_w5_numpy(benchmark, pairs, kind):
    users, ads = pairs
    factor = wl.pair_metrics(DIM)[kind][1]
    if kind == "full":
        benchmark(lambda: np.einsum("ij,ij->i", users @ factor, ads))
    elif kind == "dot":
        benchmark(np.einsum, "ij,ij->i", users, ads)
    else:
        benchmark(lambda: np.einsum("ij,j,ij->i", users, factor, ads))


@pytest.fixture(scope="module")
def request_1000():
    return wl.one_request()


@pytest.mark.benchmark(group="W6")
def test_w6_ours(benchmark, request_1000):
    ads, user = request_1000
    benchmark(sk.topk, user, ads, wl.REQUEST_K)


@pytest.mark.benchmark(group="W6")
def test_w6_numpy(benchmark, request_1000):
    ads, user = request_1000
    benchmark(lambda: wl.numpy_topk(ads @ user, wl.REQUEST_K))


@pytest.mark.benchmark(group="W6")
def test_w6_faiss(benchmark, request_1000):
    faiss = optional("faiss")
    ads, user = request_1000
    index = faiss.IndexFlatIP(DIM)
    index.add(ads)
    benchmark(index.search, user[None], wl.REQUEST_K)


@pytest.mark.benchmark(group="W7")
@pytest.mark.parametrize("dim", [16, 64, 256])
@pytest.mark.parametrize("kind", ["dot", "diagonal", "low_rank", "full"])
@pytest.mark.parametrize("per_pair", [False, True], ids=["folded", "per-pair"])
def test_w7(benchmark, dim, kind, per_pair):
    metric = wl.metrics_for(dim, np.random.default_rng(0))[kind]
    ads, users = wl.w7_data(scaled(100_000), dim)
    if per_pair:
        benchmark(sk.score, users, ads, metric, pairwise=True)
    else:
        benchmark(sk.score, users[0], ads, metric)
