"""W8: campaign objectives, top-100 by value = bid x sigmoid(logit): one user against a million
candidates of 3 objectives on every storage type (lognormal and unit bids), 128 users, and
beside them the NumPy expression a user would write, W2 and W4 on the same rows."""

import numpy as np
import pytest
from conftest import scaled

import splitnet_kernels as sk
from splitnet_kernels.benchmark import workloads as wl

N, DIM, K = scaled(wl.CANDIDATES), wl.DIM, wl.TOP_K
BIDS = ("lognormal", "unit")


@pytest.fixture(scope="module")
def data():
    ads, user = wl.one_user(N)
    objectives, lognormal, unit = wl.objectives_and_bids(N)
    return {"ads": ads, "user": user, "users": wl.many_users(N)[1], "objectives": objectives,
            "bids": {"lognormal": lognormal, "unit": unit}, "om": wl.objective_metrics(DIM)}


@pytest.fixture(scope="module")
def sets(data):
    return {}  # (dtype, bids) -> Candidates, built on first use


def candidates(sets, data, dtype, bids):
    if (dtype, bids) not in sets:
        sets[(dtype, bids)] = sk.Candidates(data["ads"], dtype=dtype, objectives=data["objectives"],
                                            bids=data["bids"][bids])
    return sets[(dtype, bids)]


@pytest.mark.benchmark(group="W8 one user by value")
@pytest.mark.parametrize("bids", BIDS)
@pytest.mark.parametrize("dtype", wl.DTYPES)
def test_w8_candidates(benchmark, data, sets, dtype, bids):
    cands = candidates(sets, data, dtype, bids)
    benchmark(cands.topk, data["user"], K, data["om"])


@pytest.mark.benchmark(group="W8 one user by value")
@pytest.mark.parametrize("way", ["topk", "topk_in_place"])
@pytest.mark.parametrize("bids", BIDS)
def test_w8_numpy(benchmark, data, bids, way):
    peer = wl.NumpyObjectives(data["ads"], data["objectives"], data["bids"][bids], data["om"])
    benchmark(getattr(peer, way), data["user"], K)


@pytest.mark.benchmark(group="W8 one user by value")
def test_w8_beside_w2(benchmark, data):
    metric = data["om"][wl.OBJECTIVE_KINDS.index("full")]
    benchmark(sk.topk, data["user"], data["ads"], K, metric)


@pytest.mark.benchmark(group="W8 many users by value")
@pytest.mark.parametrize("bids", BIDS)
def test_w8_many_users(benchmark, data, sets, bids):
    cands = candidates(sets, data, "float32", bids)
    benchmark(cands.topk, data["users"], K, data["om"])


@pytest.mark.benchmark(group="W8 many users by value")
def test_w8_beside_w4(benchmark, data):
    benchmark(sk.topk, data["users"], data["ads"], K)


@pytest.mark.parametrize("bids", BIDS)
def test_w8_exact(data, sets, bids):
    """The float32 top-k by value is a full sort of the set's own score output, and the NumPy
    expression finds the same candidates."""
    cands = candidates(sets, data, "float32", bids)
    values, found = cands.topk(data["user"], K, data["om"])
    scores = cands.score(data["user"], data["om"])
    order = np.argsort(-scores, kind="stable")[:K]
    np.testing.assert_array_equal(found, order)
    np.testing.assert_array_equal(values, scores[order])
    peer = wl.NumpyObjectives(data["ads"], data["objectives"], data["bids"][bids], data["om"])
    peer_values, peer_ids = peer.topk_in_place(data["user"], K)
    assert len(np.intersect1d(peer_ids, found)) >= K - 2  # float32 rounding may swap a near tie at the edge
    np.testing.assert_allclose(peer_values, values, rtol=1e-5)
