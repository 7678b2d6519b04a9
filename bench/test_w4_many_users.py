"""W4: 128 users against a million candidates, top-100 each."""

import numpy as np
import pytest
from conftest import data, optional, scaled

import splitnet_kernels as sk

N, M, DIM, K = scaled(1_000_000), 128, 64, 100


@pytest.fixture(scope="module")
def ads():
    return data(N, DIM, 1)


@pytest.fixture(scope="module")
def users():
    return data(M, DIM, 3)


@pytest.mark.benchmark(group="W4")
def test_w4_ours(benchmark, ads, users):
    benchmark(sk.topk, users, ads, K)


@pytest.mark.benchmark(group="W4")
def test_w4_numpy_scores_only(benchmark, ads, users):
    benchmark(np.matmul, users, ads.T)


@pytest.mark.benchmark(group="W4")
def test_w4_faiss(benchmark, ads, users):
    faiss = optional("faiss")
    index = faiss.IndexFlatIP(DIM)
    index.add(ads)
    benchmark(index.search, users, K)


@pytest.mark.benchmark(group="W4 prepared sets")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int8"])
def test_w4_candidates(benchmark, ads, users, dtype):
    cands = sk.Candidates(ads, dtype=dtype)
    benchmark(cands.topk, users, K)
