"""W1 (all scores) and W2 (top-100): one user against a million candidates."""

import numpy as np
import pytest
from conftest import data, optional, scaled

import splitnet_kernels as sk

N, DIM, K = scaled(1_000_000), 64, 100


@pytest.fixture(scope="module")
def ads():
    return data(N, DIM, 1)


@pytest.fixture(scope="module")
def user():
    return data(1, DIM, 2)[0]


@pytest.mark.benchmark(group="W1 score")
@pytest.mark.parametrize("backend", ["simd", "numba"])
def test_w1_ours(benchmark, ads, user, backend):
    benchmark(sk.score, user, ads, backend=backend)


@pytest.mark.benchmark(group="W1 score")
def test_w1_numpy(benchmark, ads, user):
    benchmark(np.matmul, ads, user)


@pytest.mark.benchmark(group="W1 score")
def test_w1_torch(benchmark, ads, user):
    torch = optional("torch")
    benchmark(torch.mv, torch.from_numpy(ads), torch.from_numpy(user))


@pytest.mark.benchmark(group="W2 top-k")
@pytest.mark.parametrize("backend", ["simd", "numba"])
def test_w2_ours(benchmark, ads, user, backend):
    benchmark(sk.topk, user, ads, K, backend=backend)


@pytest.mark.benchmark(group="W2 top-k")
def test_w2_numpy(benchmark, ads, user):
    def numpy_topk():
        scores = ads @ user
        part = np.argpartition(-scores, K - 1)[:K]
        return part[np.argsort(-scores[part])]

    benchmark(numpy_topk)


@pytest.mark.benchmark(group="W2 top-k")
def test_w2_faiss(benchmark, ads, user):
    faiss = optional("faiss")
    index = faiss.IndexFlatIP(DIM)
    index.add(ads)
    benchmark(index.search, user[None], K)


@pytest.mark.benchmark(group="W2 top-k")
def test_w2_torch(benchmark, ads, user):
    torch = optional("torch")
    a, u = torch.from_numpy(ads), torch.from_numpy(user)
    benchmark(lambda: torch.topk(a @ u, K))


@pytest.mark.benchmark(group="W3 reduced precision")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
def test_w3_candidates(benchmark, ads, user, dtype):
    cands = sk.Candidates(ads, dtype=dtype)
    benchmark(cands.topk, user, K)
