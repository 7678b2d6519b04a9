"""W9: W2 and W4 on exact sets (exact=True: ids and scores bit for bit the float32 set's) beside
the float32 set, FAISS IndexFlatIP and IndexFlatIPPanorama (on PCA-rotated rows), on Gaussian rows,
decaying rows (also behind a random rotation), a trained two-tower model's ad embeddings (campaign;
its users too, trained once and cached, see workloads.campaign_rows) and clustered rows."""

import numpy as np
import pytest
from conftest import optional, panorama, scaled

import splitnet_kernels as sk
from splitnet_kernels.benchmark import workloads as wl

N, K = scaled(wl.CANDIDATES), wl.TOP_K


@pytest.fixture(scope="module", params=wl.W9_DATA)
def w9(request):
    try:
        return wl.w9_data(request.param, N)
    except wl.NeedsTorch as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def rows(w9):
    return w9.ads


@pytest.fixture(scope="module")
def users(w9):
    return w9.user, w9.users


@pytest.mark.benchmark(group="W9 one user, exact sets")
@pytest.mark.parametrize("dtype", ("float32",) + wl.EXACT_DTYPES)
def test_w9_one_user(benchmark, rows, users, dtype):
    cands = sk.Candidates(rows, dtype, exact=dtype != "float32")
    scores, ids = benchmark(cands.topk, users[0], K)
    if dtype != "float32":
        plain = sk.Candidates(rows, "float32").topk(users[0], K)
        assert np.array_equal(ids, plain[1]) and np.array_equal(scores, plain[0])
        benchmark.extra_info["rescored"] = cands.last_rescored


@pytest.mark.benchmark(group="W9 many users, exact sets")
@pytest.mark.parametrize("dtype", ("float32",) + wl.EXACT_DTYPES)
def test_w9_many_users(benchmark, rows, users, dtype):
    cands = sk.Candidates(rows, dtype, exact=dtype != "float32")
    benchmark(cands.topk, users[1], K)
    benchmark.extra_info["rescored"] = cands.last_rescored


@pytest.mark.benchmark(group="W9 one user, exact sets")
def test_w9_faiss(benchmark, rows, users):
    faiss = optional("faiss")
    index = faiss.IndexFlatIP(wl.DIM)
    index.add(rows)
    benchmark(index.search, users[0][None], K)


@pytest.mark.benchmark(group="W9 one user, exact sets")
def test_w9_faiss_panorama(benchmark, rows, users):
    peer = panorama(rows, users[0])
    benchmark.extra_info["levels"] = peer.levels
    benchmark(peer.index.search, peer.rotate(users[0]), K)


@pytest.mark.benchmark(group="W9 many users, exact sets")
def test_w9_faiss_panorama_many_users(benchmark, rows, users):
    peer = panorama(rows, users[0])
    benchmark.extra_info["levels"] = peer.levels
    benchmark(peer.index.search, peer.rotate(users[1]), K)
