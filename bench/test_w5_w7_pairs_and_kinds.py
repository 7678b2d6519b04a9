"""W5 (a million (user, ad) pairs) and W7 (cost per candidate against n, every kind)."""

import numpy as np
import pytest
from conftest import data, optional, scaled

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
@pytest.mark.parametrize("kind", ["dot", "diagonal", "full"])
def test_w5_numpy(benchmark, pairs, kind):
    users, ads = pairs
    S = _metrics_for(DIM, np.random.default_rng(0))[kind].dense()
    if kind == "full":
        benchmark(lambda: np.einsum("ij,ij->i", users @ S, ads))
    elif kind == "dot":
        benchmark(np.einsum, "ij,ij->i", users, ads)
    else:
        benchmark(lambda: np.einsum("ij,j,ij->i", users, np.diagonal(S).copy(), ads))


@pytest.fixture(scope="module")
def request_1000():
    return data(1000, DIM, 7), data(1, DIM, 8)[0]


@pytest.mark.benchmark(group="W6")
def test_w6_ours(benchmark, request_1000):
    ads, user = request_1000
    benchmark(sk.topk, user, ads, 10)


@pytest.mark.benchmark(group="W6")
def test_w6_numpy(benchmark, request_1000):
    ads, user = request_1000

    def numpy_topk():
        scores = ads @ user
        part = np.argpartition(-scores, 9)[:10]
        return part[np.argsort(-scores[part])]

    benchmark(numpy_topk)


@pytest.mark.benchmark(group="W6")
def test_w6_faiss(benchmark, request_1000):
    faiss = optional("faiss")
    ads, user = request_1000
    index = faiss.IndexFlatIP(DIM)
    index.add(ads)
    benchmark(index.search, user[None], 10)


@pytest.mark.benchmark(group="W7")
@pytest.mark.parametrize("dim", [16, 64, 256])
@pytest.mark.parametrize("kind", ["dot", "diagonal", "low_rank", "full"])
@pytest.mark.parametrize("per_pair", [False, True], ids=["folded", "per-pair"])
def test_w7(benchmark, dim, kind, per_pair):
    metric = _metrics_for(dim, np.random.default_rng(0))[kind]
    ads, users = data(scaled(100_000), dim, 9), data(scaled(100_000), dim, 10)
    if per_pair:
        benchmark(sk.score, users, ads, metric, pairwise=True)
    else:
        benchmark(sk.score, users[0], ads, metric)
