"""W4: 128 users against a million candidates, top-100 each."""

import numpy as np
import pytest
from conftest import optional, scaled

import splitnet_kernels as sk
from splitnet_kernels.benchmark import workloads as wl

N, DIM, K = scaled(wl.CANDIDATES), wl.DIM, wl.TOP_K


@pytest.fixture(scope="module")
def many_users():
    return wl.many_users(N)


@pytest.fixture(scope="module")
def ads(many_users):
    return many_users[0]


@pytest.fixture(scope="module")
def users(many_users):
    return many_users[1]


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
@pytest.mark.parametrize("dtype", wl.DTYPES)
def test_w4_candidates(benchmark, ads, users, dtype):
    cands = sk.Candidates(ads, dtype=dtype)
    benchmark(cands.topk, users, K)
