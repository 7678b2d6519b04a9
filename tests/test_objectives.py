"""Campaign objectives (issue 11): one metric per objective, bids, and ranking by expected
value, on every backend and storage type, against a float64 brute force."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import splitnet_kernels as sk
from conftest import SUPPORTED_ISAS, allowed_form, make_metric, to_numpy

DTYPES = ("float32", "float16", "bfloat16", "int8")
KINDS = ("dot", "scaled", "diagonal", "low_rank", "full")


def _campaign(rng, count=400, dim=12, n_objectives=3, unit_bids=False):
    ads = rng.standard_normal((count, dim)).astype(np.float32)
    objectives = rng.integers(0, n_objectives, count)
    bids = np.ones(count) if unit_bids else rng.lognormal(0.0, 1.0, count)
    metrics = [make_metric(KINDS[t % len(KINDS)], dim, rng, bias=-1.0 + t) for t in range(n_objectives)]
    return ads, objectives, bids, sk.ObjectiveMetrics(metrics, names=[f"o{t}" for t in range(n_objectives)])


def _reference(users, ads, objectives, bids, om, output):
    """float64 brute force: x = u S_t a + b_t for each ad's objective t, then the output."""
    users64 = np.atleast_2d(np.asarray(users, np.float64))
    x = np.empty((len(users64), len(ads)))
    for t in range(len(om)):
        rows = objectives == t
        x[:, rows] = users64 @ om[t].dense().astype(np.float64) @ ads[rows].astype(np.float64).T + om[t].bias
    if output == "logit":
        return x
    p = 1.0 / (1.0 + np.exp(-x))
    return p if output == "probability" else p * np.asarray(bids, np.float32)


@pytest.mark.parametrize("output", ("value", "probability", "logit"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_scores_and_topk_by_output(backend, dtype, output, rng):
    ads, objectives, bids, om = _campaign(rng)
    cands = sk.Candidates(ads, dtype, objectives=objectives, bids=bids)
    users = rng.standard_normal((3, 12)).astype(np.float32)
    got = to_numpy(cands.score(users, om, output=output, backend=backend))
    expected = _reference(users, cands.rows(), objectives, bids, om, output)
    # the float32 tolerance of the logit (as tests/conftest.tolerance, with |S| <= 3 here), carried
    # through sigmoid' <= 1/4 and the bid, plus the int8 query's rounding
    scale = np.abs(expected).max() if output == "logit" else np.max(bids)
    tol = (1e-4 if dtype != "int8" else 3e-2) * max(scale, 1.0) * (10 if output == "logit" else 1)
    np.testing.assert_allclose(got, expected, atol=tol)
    scores, ids = (to_numpy(x) for x in cands.topk(users, 25, om, output=output, backend=backend))
    for row in range(len(users)):  # top-k is a full sort of the set's own scores
        order = np.lexsort((np.arange(len(ads)), -got[row].astype(np.float64)))[:25]
        np.testing.assert_array_equal(ids[row], order)
        np.testing.assert_array_equal(scores[row], got[row][order])


@pytest.mark.parametrize("unit_bids", (False, True))
def test_one_user_allowed_and_functional_form(backend, unit_bids, rng):
    ads, objectives, bids, om = _campaign(rng, unit_bids=unit_bids)
    cands = sk.Candidates(ads, objectives=objectives, bids=bids)
    user = rng.standard_normal(12).astype(np.float32)
    every = to_numpy(cands.score(user, om, backend=backend))  # value is the default with objectives
    np.testing.assert_array_equal(every, to_numpy(sk.score(user, ads, om, objectives=objectives, bids=bids,
                                                           backend=backend)))
    allowed = np.arange(3, 400, 5)
    scores, ids = (to_numpy(x) for x in cands.topk(user, 30, om, allowed=allowed, backend=backend))
    np.testing.assert_array_equal(ids, allowed[np.lexsort((allowed, -every[allowed]))[:30]])
    scores, ids = (to_numpy(x) for x in sk.topk(user, ads, 30, om, objectives=objectives, bids=bids, backend=backend))
    np.testing.assert_array_equal(ids, np.lexsort((np.arange(400), -every))[:30])


def test_shards_merge_into_one_call(rng):
    ads, objectives, bids, om = _campaign(rng, count=900)
    user = rng.standard_normal(12).astype(np.float32)
    whole = sk.topk(user, ads, 40, om, objectives=objectives, bids=bids)
    parts = []
    for begin in range(0, 900, 250):
        end = begin + 250
        s, i = sk.topk(user, ads[begin:end], 40, om, objectives=objectives[begin:end], bids=bids[begin:end])
        parts.append((s, i + begin))
    merged = sk.merge_topk(parts, 40)
    np.testing.assert_array_equal(merged[1], whole[1])
    np.testing.assert_array_equal(merged[0], whole[0])


def test_equal_values_go_to_the_lower_index_and_nan_last():
    ads = np.array([[1.0], [1.0], [1.0], [np.nan], [2.0]], np.float32)
    om = sk.ObjectiveMetrics([sk.Metric.dot(1), sk.Metric.dot(1)])
    objectives, bids = np.array([1, 0, 1, 0, 0]), np.array([2.0, 2.0, 2.0, 5.0, 0.0])
    scores, ids = sk.topk(np.ones(1, np.float32), ads, 5, om, objectives=objectives, bids=bids)
    assert ids.tolist() == [0, 1, 2, 4, 3] and np.isnan(scores[-1]) and scores[3] == 0.0


def test_plain_metric_takes_output_and_bids(rng):
    ads = rng.standard_normal((50, 4)).astype(np.float32)
    user, bids = rng.standard_normal(4).astype(np.float32), rng.lognormal(size=50)
    m = sk.Metric.diagonal(rng.standard_normal(4), bias=0.5)
    p = sk.score(user, ads, m, output="probability")
    np.testing.assert_array_equal(p, sk.score(user, ads, m, sigmoid=True))
    values = sk.score(user, ads, m, bids=bids, output="value")
    np.testing.assert_array_equal(values, p * bids.astype(np.float32))
    assert sk.topk(user, ads, 5, m, bids=bids, output="value")[1].tolist() == np.lexsort((np.arange(50), -values))[:5].tolist()
    assert sk.topk(user, ads, 5, m, bids=bids)[1].tolist() == sk.topk(user, ads, 5, m)[1].tolist()  # logit by default


def test_save_and_load_keep_objectives(tmp_path, rng):
    ads, objectives, bids, om = _campaign(rng)
    om.save(tmp_path / "om.npz")
    loaded = sk.ObjectiveMetrics.load(tmp_path / "om.npz")
    assert loaded.names == om.names and len(loaded) == 3
    for t in range(3):
        np.testing.assert_array_equal(loaded[t].dense(), om[t].dense())
        assert loaded[t].bias == om[t].bias and loaded[t].kind == om[t].kind
    for dtype in DTYPES:
        cands = sk.Candidates(ads, dtype, objectives=objectives, bids=bids)
        cands.save(tmp_path / "c.skc")
        for mmap in (True, False):
            again = sk.Candidates.load(tmp_path / "c.skc", mmap=mmap)
            np.testing.assert_array_equal(again.objectives, objectives)
            np.testing.assert_array_equal(again.bids, bids.astype(np.float32))
            user = rng.standard_normal(12).astype(np.float32)
            np.testing.assert_array_equal(again.topk(user, 20, loaded)[1], cands.topk(user, 20, om)[1])


@pytest.mark.parametrize("kind", KINDS)
def test_metric_save_load_round_trip(kind, tmp_path, rng):
    metric = make_metric(kind, 6, rng, bias=0.25)
    metric.save(tmp_path / "m.npz")
    again = sk.Metric.load(tmp_path / "m.npz")
    assert again.kind == metric.kind and again.bias == metric.bias
    np.testing.assert_array_equal(again.dense(), metric.dense())


def test_bad_input_names_the_argument(rng, tmp_path):
    ads, objectives, bids, om = _campaign(rng, n_objectives=2)
    user = np.ones(12, np.float32)
    with pytest.raises(ValueError, match="objectives"):
        sk.Candidates(ads, objectives=np.full(400, 2)).topk(user, 5, om)  # id 2 with two metrics
    with pytest.raises(ValueError, match="objectives"):
        sk.Candidates(ads, objectives=-np.ones(400, int))
    with pytest.raises(ValueError, match="objectives"):
        sk.Candidates(ads, objectives=objectives[:-1])
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="bids"):
            sk.Candidates(ads, objectives=objectives, bids=np.where(np.arange(400) == 7, bad, 1.0))
    with pytest.raises(ValueError, match="bids"):
        sk.Candidates(ads, objectives=objectives, bids=np.ones(3))
    with pytest.raises(ValueError, match="dimension"):
        sk.ObjectiveMetrics([sk.Metric.dot(3), sk.Metric.dot(4)])
    with pytest.raises(ValueError, match="output"):
        sk.score(user, ads, om, objectives=objectives, output="odds")
    with pytest.raises(ValueError, match="objectives="):
        sk.Candidates(ads).score(user, om)
    with pytest.raises(ValueError, match="sigmoid"):
        sk.topk(user, ads, 3, output="logit", sigmoid=True)
    (tmp_path / "bad.npz").write_bytes(b"not a file")
    with pytest.raises(ValueError):
        sk.Metric.load(tmp_path / "bad.npz")


def test_sparse_large_objective_ids_allocate_nothing_per_id(rng):
    # ids are labels, not a dense range: 10**12 must not size anything by it
    ads = rng.standard_normal((6, 3)).astype(np.float32)
    cands = sk.Candidates(ads, objectives=np.array([0, 10**12, 0, 5, 5, 10**12]))
    om = sk.ObjectiveMetrics([sk.Metric.dot(3)] * 2)
    with pytest.raises(ValueError, match=r"objectives: ids must be in \[0, 2\)"):
        cands.topk(np.ones(3, np.float32), 2, om)
    with pytest.raises(ValueError, match="objectives"):
        sk.Candidates(ads, objectives=np.array([0, 2**63, 0, 0, 0, 0], np.uint64))


def test_edges_no_users_empty_set_torch(rng):
    ads, objectives, bids, om = _campaign(rng, count=30)
    cands = sk.Candidates(ads, objectives=objectives, bids=bids)
    scores, ids = cands.topk(np.zeros((0, 12), np.float32), 5, om)
    assert scores.shape == (0, 5) and ids.shape == (0, 5)
    assert cands.score(np.zeros((0, 12), np.float32), om).shape == (0, 30)
    empty = sk.Candidates(np.zeros((0, 12), np.float32), objectives=np.zeros(0, int))
    assert empty.topk(np.ones(12, np.float32), 5, om)[1].shape == (0,)
    torch = pytest.importorskip("torch")
    users = rng.standard_normal((2, 12)).astype(np.float32)
    got = cands.topk(torch.from_numpy(users), 5, om)
    assert isinstance(got[0], torch.Tensor)
    np.testing.assert_array_equal(got[1].numpy(), cands.topk(users, 5, om)[1])


# ---- the kernels' fused scan by value (gated on logits, stopping at bids) ----------------------
def test_kernel_sigmoid_is_the_documented_formula(rng):
    x = np.concatenate([rng.standard_normal(20000) * 30, rng.standard_normal(20000) * 3, [0.0, -0.0, 88.7, -88.7,
                        -103.0, -745.0, 1e30, -1e30, np.inf, -np.inf, np.nan]]).astype(np.float32)
    wide = x.astype(np.float64)
    e = np.exp(-np.abs(wide))
    expected = np.where(wide >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)
    np.testing.assert_array_equal(sk.score(x[:, None], np.ones((1, 1), np.float32), output="probability")[:, 0],
                                  expected)


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_fused_topk_by_value_is_a_full_sort_of_the_values(isa, data):
    """Adversarial sets: few distinct rows and bids (ties in value), probabilities saturating at
    one, zero bids, NaN rows; one user and many, allowed subsets, both thread counts: the top k
    is the full sort of the set's own values, ties to the lower id, NaN last."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    count, dim = data.draw(st.integers(1, 3000)), data.draw(st.integers(1, 19))
    distinct_rows = rng.standard_normal((data.draw(st.integers(1, 40)), dim)) * data.draw(st.sampled_from((0.1, 1, 30)))
    ads = distinct_rows[rng.integers(0, len(distinct_rows), count)].astype(np.float32)
    dtype = data.draw(st.sampled_from(DTYPES))
    if dtype == "float32" and data.draw(st.booleans()):  # the reduced types refuse NaN
        ads[rng.integers(0, count, 3)] = np.nan
    bid_values = np.array([0.0, 0.5, 1.0, 1.0, 3.0, 1e-30, 7.25])
    bids = bid_values[rng.integers(0, len(bid_values), count)] if data.draw(st.booleans()) \
        else rng.lognormal(0, 2, count)
    n_objectives = data.draw(st.integers(1, 4))
    objectives = rng.integers(0, n_objectives, count)
    om = sk.ObjectiveMetrics([make_metric(KINDS[t % len(KINDS)], dim, rng, bias=float(rng.normal() * 3))
                              for t in range(n_objectives)])
    cands = sk.Candidates(ads, dtype, objectives=objectives, bids=bids)
    users = rng.standard_normal((data.draw(st.sampled_from((1, 2, 17))), dim)).astype(np.float32)
    k = data.draw(st.sampled_from((1, 5, 40, 100, 5000)))
    allowed = np.flatnonzero(rng.random(count) < 0.5) if data.draw(st.booleans()) else None
    threads = data.draw(st.sampled_from((1, 2)))
    previous = sk.set_isa(isa)
    try:
        _check_topk_by_value(cands, users, om, k, allowed, threads)
    finally:
        sk.set_isa(previous)


def _check_topk_by_value(cands, users, om, k, allowed, threads):
    """Each user's top k by value against the full sort of its own values from the same path: all
    users at once, or one at a time with an allowed subset (until one user and many fold alike)."""
    pool = np.arange(len(cands)) if allowed is None else allowed
    if allowed is None:
        results = zip(cands.score(users, om, output="value", threads=threads),
                      *cands.topk(users, k, om, output="value", threads=threads))
    else:
        results = ((cands.score(user, om, output="value", threads=threads),
                    *cands.topk(user, k, om, output="value", allowed=allowed_form(allowed, len(cands)), threads=threads))
                   for user in users)
    for values, scores, ids in results:
        order = pool[np.lexsort((pool, -np.nan_to_num(values[pool].astype(np.float64), nan=-np.inf),
                                 np.isnan(values[pool])))][:k]
        np.testing.assert_array_equal(ids, order)
        np.testing.assert_array_equal(scores, values[order])


def test_fused_scan_splits_across_tasks_exactly(rng):
    """Large enough for the tasks to split the scan, of one user and of the cross tile."""
    ads, objectives, bids, om = _campaign(rng, count=60000, dim=16)
    cands = sk.Candidates(ads, objectives=objectives, bids=bids)
    for users in (rng.standard_normal(16).astype(np.float32), rng.standard_normal((40, 16)).astype(np.float32)):
        values = np.atleast_2d(cands.score(users, om))
        expected = np.stack([np.lexsort((np.arange(len(ads)), -row))[:100] for row in values])
        for threads in (1, 2):
            np.testing.assert_array_equal(np.atleast_2d(cands.topk(users, 100, om, threads=threads)[1]), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_users_of_every_float_type_fold_in_float32_on_the_objectives_path(kind, rng):
    """Every path gives a pair the same bits: float64, float16 and torch float64 users fold in
    float32 with objectives as without (they were folded in float64 there, 6e-5 apart)."""
    dim, count = 24, 600
    ads = rng.standard_normal((count, dim)).astype(np.float32)
    metric = make_metric(kind, dim, rng, bias=0.3)
    plain, grouped = sk.Candidates(ads), sk.Candidates(ads, objectives=np.zeros(count, int))
    om = sk.ObjectiveMetrics([metric])
    users64 = rng.standard_normal((7, dim)) * 3
    kinds_of_users = [users64, users64.astype(np.float16), users64[0]]
    try:
        import torch
        kinds_of_users.append(torch.from_numpy(users64))
    except ImportError:
        pass
    for users in kinds_of_users:
        for output in ("logit", "probability"):
            want = to_numpy(plain.score(users, metric, output=output))
            np.testing.assert_array_equal(to_numpy(grouped.score(users, om, output=output)), want)
            np.testing.assert_array_equal(
                to_numpy(sk.score(users, ads, om, objectives=np.zeros(count, int), output=output)), want)
            for got, expected in zip(grouped.topk(users, 20, om, output=output), plain.topk(users, 20, metric, output=output)):
                np.testing.assert_array_equal(to_numpy(got), to_numpy(expected))
