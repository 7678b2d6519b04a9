"""W1 (all scores) and W2 (top-100): one user against a million candidates."""

import numpy as np
import pytest
from conftest import optional, panorama, scaled

import splitnet_kernels as sk
from splitnet_kernels.benchmark import workloads as wl

N, DIM, K = scaled(wl.CANDIDATES), wl.DIM, wl.TOP_K


@pytest.fixture(scope="module")
def one_user():
    return wl.one_user(N)


@pytest.fixture(scope="module")
def ads(one_user):
    return one_user[0]


@pytest.fixture(scope="module")
def user(one_user):
    return one_user[1]


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
    benchmark(lambda: wl.numpy_topk(ads @ user, K))


@pytest.mark.benchmark(group="W2 top-k")
def test_w2_faiss(benchmark, ads, user):
    faiss = optional("faiss")
    index = faiss.IndexFlatIP(DIM)
    index.add(ads)
    benchmark(index.search, user[None], K)


@pytest.mark.benchmark(group="W2 top-k")
def test_w2_faiss_panorama(benchmark, ads, user):
    peer = panorama(ads, user)
    benchmark.extra_info["levels"] = peer.levels
    benchmark(peer.index.search, peer.rotate(user), K)


@pytest.mark.benchmark(group="W2 top-k")
def test_w2_torch(benchmark, ads, user):
    torch = optional("torch")
    a, u = torch.from_numpy(ads), torch.from_numpy(user)
    benchmark(lambda: torch.topk(a @ u, K))


@pytest.mark.benchmark(group="W3 reduced precision")
@pytest.mark.parametrize("dtype", wl.DTYPES)
def test_w3_candidates(benchmark, ads, user, dtype):
    cands = sk.Candidates(ads, dtype=dtype)
    benchmark(cands.topk, user, K)
