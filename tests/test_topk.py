"""sk.topk and sk.merge_topk: agreement with a full sort of sk.score from the same backend, the
order contract (ties by lower index, NaN last, +0 == -0), k edge cases and sharded merges."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import splitnet_kernels as sk

from conftest import (KINDS, assert_topk_does_not_crash, assert_within, backend_available, expected_order, make_metric,
                      reference_scores, stable_sigmoid, to_numpy, tolerance)


def _integer_data(rng, users_shape, count, n, low=-3, high=4):
    """Small integer values: every score is an exact float32 integer, so ties are real ties."""
    users = rng.integers(low, high, users_shape).astype(np.float32)
    ads = rng.integers(low, high, (count, n)).astype(np.float32)
    return users, ads


def _check_topk_against_scores(scores_all, top_scores, top_ids, k, exact_order=False):
    """The contract, for 1-D or 2-D results, against the same backend's full score matrix."""
    scores_all = np.atleast_2d(to_numpy(scores_all))
    top_scores, top_ids = np.atleast_2d(to_numpy(top_scores)), np.atleast_2d(to_numpy(top_ids))
    count = scores_all.shape[1]
    kk = min(k, count)
    assert top_scores.shape == top_ids.shape == (scores_all.shape[0], kk)
    assert top_scores.dtype == np.float32 and top_ids.dtype == np.int64
    for row, (s, i, full) in enumerate(zip(top_scores, top_ids, scores_all)):
        assert np.all((i >= 0) & (i < count)), f"row {row}: ids out of range {i}"
        assert len(set(i.tolist())) == kk, f"row {row}: repeated ids {i}"
        # the reported scores are the scores of those ids
        np.testing.assert_allclose(s, full[i], rtol=1e-6, atol=1e-30, err_msg=f"row {row}")
        # sorted descending, NaN last
        finite = s[~np.isnan(s)]
        assert np.all(np.isnan(s[len(finite):])), f"row {row}: NaN not last: {s}"
        assert np.all(finite[:-1] >= finite[1:]), f"row {row}: not descending: {s}"
        # nothing left out beats the k-th
        if kk < count:
            rest = np.delete(full, i)
            kth = s[-1]
            if not np.isnan(kth):
                assert not np.any(rest > kth), f"row {row}: a left-out score beats the k-th {kth}"
        if exact_order:
            np.testing.assert_array_equal(i, expected_order(full)[:kk], err_msg=f"row {row}")


# ---- property-based ----------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_topk_agrees_with_full_sort(backend, data):
    n = data.draw(st.integers(1, 40), label="n")
    count = data.draw(st.integers(1, 70), label="N")
    users_ndim = data.draw(st.sampled_from([1, 2]), label="users ndim")
    m = data.draw(st.integers(1, 6), label="M")
    k = data.draw(st.integers(1, 80), label="k")
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    integers = data.draw(st.booleans(), label="integer data")
    rng = np.random.default_rng(seed)
    metric = make_metric(kind if not integers else "dot", n, rng, bias=float(rng.integers(-2, 3)))
    users_shape = (n,) if users_ndim == 1 else (m, n)
    if integers:
        users, ads = _integer_data(rng, users_shape, count, n)
    else:
        users = rng.standard_normal(users_shape).astype(np.float32)
        ads = rng.standard_normal((count, n)).astype(np.float32)
    full = sk.score(users, ads, metric, backend=backend)
    top_scores, top_ids = sk.topk(users, ads, k, metric, backend=backend)
    kk = min(k, count)
    expected_shape = (kk,) if users_ndim == 1 else (m, kk)
    assert to_numpy(top_scores).shape == expected_shape and to_numpy(top_ids).shape == expected_shape
    _check_topk_against_scores(full, top_scores, top_ids, k, exact_order=integers)
    # the top-k scores are also right against the oracle
    ids2d = np.atleast_2d(to_numpy(top_ids))
    ref = np.atleast_2d(reference_scores(users, ads, metric))
    tol = np.atleast_2d(tolerance(users, ads, metric))
    assert_within(np.atleast_2d(to_numpy(top_scores)), np.take_along_axis(ref, ids2d, 1),
                  np.take_along_axis(tol, ids2d, 1))


@settings(max_examples=25, deadline=None)
@given(count=st.integers(1, 60), k=st.integers(1, 70), seed=st.integers(0, 2**32 - 1),
       n_shards=st.integers(1, 5), two_d=st.booleans())
def test_merge_topk_equals_topk_of_concatenation_property(count, k, seed, n_shards, two_d):
    rng = np.random.default_rng(seed)
    n = 5
    users, ads = _integer_data(rng, (3, n) if two_d else (n,), count, n, -2, 3)
    cuts = np.sort(rng.integers(0, count + 1, n_shards - 1))
    bounds = [0, *cuts.tolist(), count]
    parts = []
    for begin, end in zip(bounds[:-1], bounds[1:]):
        if end == begin:
            continue
        s, i = sk.topk(users, ads[begin:end], k, backend="numpy")
        parts.append((s, i + begin))
    merged = sk.merge_topk(parts, k)
    expected = sk.topk(users, ads, k, backend="numpy")
    np.testing.assert_array_equal(merged[1], expected[1])
    np.testing.assert_array_equal(merged[0], expected[0])


# ---- ties and order ----------------------------------------------------------------------------
@pytest.mark.parametrize("count", (1, 2, 5, 16, 17, 64, 65, 1000, 3000))
def test_ties_break_to_the_lower_index(backend, count, rng):
    n = 3
    users, ads = _integer_data(rng, (n,), count, n, -1, 2)  # scores in -3..3: many ties
    scores_all = to_numpy(sk.score(users, ads, backend=backend))
    for k in sorted({1, 2, 3, count // 2 + 1, count, count + 5}):
        top_scores, top_ids = sk.topk(users, ads, k, backend=backend)
        _check_topk_against_scores(scores_all, top_scores, top_ids, k, exact_order=True)


def test_ties_with_large_k(backend, rng):
    # k past the heap: the simd kernel switches to score-then-select above k = 2048
    count, n = 5000, 2
    users, ads = _integer_data(rng, (n,), count, n, -1, 2)
    scores_all = to_numpy(sk.score(users, ads, backend=backend))
    for k in (2047, 2049, 3000, 4999, 5000, 7000):
        top_scores, top_ids = sk.topk(users, ads, k, backend=backend)
        _check_topk_against_scores(scores_all, top_scores, top_ids, k, exact_order=True)


def test_all_equal_scores(backend):
    ads = np.ones((100, 4), np.float32)
    for users in (np.ones(4, np.float32), np.ones((3, 4), np.float32)):
        for k in (1, 7, 100, 200):
            scores, ids = sk.topk(users, ads, k, backend=backend)
            kk = min(k, 100)
            np.testing.assert_array_equal(np.atleast_2d(to_numpy(ids)),
                                          np.broadcast_to(np.arange(kk), np.atleast_2d(to_numpy(ids)).shape))
            assert np.all(to_numpy(scores) == 4.0)


@pytest.mark.parametrize("users_2d", (False, True))
def test_nan_ranks_below_minus_infinity(backend, users_2d, tmp_path):
    n = 4
    ads = np.array([
        [1.0, 0.0, 0.0, 0.0],      # 0: 1
        [np.nan, 0.0, 0.0, 0.0],   # 1: NaN
        [-np.inf, 0.0, 0.0, 0.0],  # 2: -inf
        [3.0, 0.0, 0.0, 0.0],      # 3: 3
        [np.nan, 1.0, 1.0, 1.0],   # 4: NaN
        [-5.0, 0.0, 0.0, 0.0],     # 5: -5
        [-np.inf, 2.0, 0.0, 0.0],  # 6: -inf
        [1.0, 0.0, 0.0, 0.0],      # 7: 1 (ties with 0)
        [np.inf, 0.0, 0.0, 0.0],   # 8: +inf
    ], np.float32)
    users = np.ones(n, np.float32)
    if users_2d:
        users = np.stack([users, users])
    expected_ids = [8, 3, 0, 7, 5, 2, 6, 1, 4]
    assert_topk_does_not_crash(tmp_path, backend, users, ads, (1, 2, 5, 6, 7, 8, 9, 20))
    for k in (1, 2, 5, 6, 7, 8, 9, 20):
        scores, ids = sk.topk(users, ads, k, backend=backend)
        scores, ids = np.atleast_2d(to_numpy(scores)), np.atleast_2d(to_numpy(ids))
        for row_scores, row_ids in zip(scores, ids):
            assert row_ids.tolist() == expected_ids[:k], f"k={k}: got {row_ids.tolist()}"
            expected_scores = np.array([np.inf, 3, 1, 1, -5, -np.inf, -np.inf, np.nan, np.nan], np.float32)[:k]
            np.testing.assert_array_equal(row_scores, expected_scores)


def test_nan_rows_never_displace_numbers(backend, rng, tmp_path):
    count, n = 500, 8
    ads = rng.standard_normal((count, n)).astype(np.float32)
    nan_rows = rng.choice(count, 200, replace=False)
    ads[nan_rows, rng.integers(0, n, 200)] = np.nan
    users = rng.standard_normal((3, n)).astype(np.float32)
    full = to_numpy(sk.score(users, ads, backend=backend))
    assert np.all(np.isnan(full[:, nan_rows]))
    assert_topk_does_not_crash(tmp_path, backend, users, ads, (10, 299, 300, 301, 500))
    for k in (10, 299, 300, 301, 500):
        scores, ids = sk.topk(users, ads, k, backend=backend)
        _check_topk_against_scores(full, scores, ids, k)
        ids = to_numpy(ids)
        expected = [expected_order(row)[:k] for row in full]
        np.testing.assert_array_equal(ids, np.array(expected))


@pytest.mark.parametrize("count", (1, 15, 16, 17, 31, 1000, 1025, 3000))
def test_small_k_among_special_values(backend, count, rng):
    # k <= 16 first bounds the k-th score by the largest of 16 lanes: lanes that hold only NaN,
    # -inf, signed zeros or ties must never raise that bound past a true top-k score
    values = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, 1.0, -1.0, 2.0], np.float32)
    for weights in ((1, 1, 0, 1, 1, 1, 1, 0), (6, 1, 0, 1, 1, 0, 0, 0), (0, 0, 0, 1, 1, 1, 1, 0)):
        p = np.array(weights, float) / sum(weights)
        ads = rng.choice(values, size=(count, 1), p=p).astype(np.float32)
        users = np.ones(1, np.float32)
        full = to_numpy(sk.score(users, ads, backend=backend))
        for k in (1, 2, 9, 16, 17):
            scores, ids = sk.topk(users, ads, k, backend=backend)
            _check_topk_against_scores(full, scores, ids, k, exact_order=True)


def test_signed_zero_ties(backend):
    # user . row is +0 or -0 depending on the signs; both are equal scores and tie by index
    users = np.array([-1.0], np.float32)
    ads = np.array([[0.0], [-1.0], [-0.0], [0.0], [1.0], [-0.0]], np.float32)
    scores, ids = sk.topk(users, ads, 6, backend=backend)
    assert to_numpy(ids).tolist() == [1, 0, 2, 3, 5, 4]
    assert to_numpy(scores)[1:5].tolist() == [0.0, 0.0, 0.0, 0.0]
    scores, ids = sk.topk(users, ads, 3, backend=backend)
    assert to_numpy(ids).tolist() == [1, 0, 2]


def test_merge_signed_zero_ties():
    scores, ids = sk.merge_topk([(np.array([-0.0, 0.0], np.float32), np.array([7, 3])),
                                 (np.array([0.0, -0.0], np.float32), np.array([5, 1]))], 4)
    assert to_numpy(ids).tolist() == [1, 3, 5, 7]


@pytest.mark.parametrize("m", (1, 2, 17, 33, 100, 130))
def test_cross_users_match_per_user_topk(backend, m, rng):
    n, count, k = 9, 300, 25
    users = rng.standard_normal((m, n)).astype(np.float32)
    ads = rng.standard_normal((count, n)).astype(np.float32)
    metric = make_metric("low_rank", n, rng, bias=0.5)
    full = sk.score(users, ads, metric, backend=backend)
    scores, ids = sk.topk(users, ads, k, metric, backend=backend)
    assert to_numpy(ids).shape == (m, k)
    _check_topk_against_scores(full, scores, ids, k)
    for row in range(0, m, 8):
        s1, i1 = sk.topk(users[row], ads, k, metric, backend=backend)
        np.testing.assert_array_equal(to_numpy(i1), to_numpy(ids)[row])
        np.testing.assert_allclose(to_numpy(s1), to_numpy(scores)[row], rtol=1e-6)


@pytest.mark.parametrize("m", (1, 2, 17, 33, 100, 130))
def test_cross_users_exact_with_integer_data(backend, m, rng):
    n, count = 6, 257
    users, ads = _integer_data(rng, (m, n), count, n, -2, 3)
    full = to_numpy(sk.score(users, ads, backend=backend))
    for k in (1, 10, 256, 257, 300):
        scores, ids = sk.topk(users, ads, k, backend=backend)
        _check_topk_against_scores(full, scores, ids, k, exact_order=True)


def test_users_1d_and_2d_agree(backend, rng):
    n, count = 12, 100
    metric = make_metric("full", n, rng, bias=-1.0)
    user = rng.standard_normal(n).astype(np.float32)
    ads = rng.standard_normal((count, n)).astype(np.float32)
    s1, i1 = sk.topk(user, ads, 10, metric, backend=backend)
    s2, i2 = sk.topk(user[None, :], ads, 10, metric, backend=backend)
    assert to_numpy(s1).shape == (10,) and to_numpy(s2).shape == (1, 10)
    np.testing.assert_array_equal(to_numpy(i1), to_numpy(i2)[0])
    np.testing.assert_allclose(to_numpy(s1), to_numpy(s2)[0], rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_topk_large_sets_across_threads(backend, kind, rng):
    n, count, k = 32, 20_000, 50
    metric = make_metric(kind, n, rng, bias=0.25)
    ads = rng.standard_normal((count, n)).astype(np.float32)
    for users in (rng.standard_normal(n).astype(np.float32), rng.standard_normal((5, n)).astype(np.float32)):
        full = sk.score(users, ads, metric, backend=backend, threads=1)
        results = [sk.topk(users, ads, k, metric, backend=backend, threads=t) for t in (1, 2)]
        for scores, ids in results:
            _check_topk_against_scores(full, scores, ids, k)
        np.testing.assert_array_equal(to_numpy(results[0][1]), to_numpy(results[1][1]))


def test_threads_give_identical_topk_on_integer_data(any_backend, rng):
    # large enough that the simd kernels split one user's candidates across two tasks
    n, count = 4, 140_000
    for users_shape in ((n,), (3, n)):
        users, ads = _integer_data(rng, users_shape, count, n, -2, 3)
        full = to_numpy(sk.score(users, ads, backend=any_backend))
        for k in (1, 100, 3000):
            one = sk.topk(users, ads, k, backend=any_backend, threads=1)
            two = sk.topk(users, ads, k, backend=any_backend, threads=2)
            _check_topk_against_scores(full, *one, k, exact_order=True)
            np.testing.assert_array_equal(to_numpy(one[1]), to_numpy(two[1]))
            np.testing.assert_array_equal(to_numpy(one[0]), to_numpy(two[0]))


# ---- k and N edge cases ------------------------------------------------------------------------
def test_k_larger_than_n_and_equal_to_n(any_backend, rng):
    users, ads = _integer_data(rng, (2, 5), 7, 5)
    full = to_numpy(sk.score(users, ads, backend=any_backend))
    for k in (7, 8, 1000):
        scores, ids = sk.topk(users, ads, k, backend=any_backend)
        assert to_numpy(ids).shape == (2, 7)
        _check_topk_against_scores(full, scores, ids, k, exact_order=True)
    scores, ids = sk.topk(users[0], ads, 50, backend=any_backend)
    assert to_numpy(ids).shape == (7,)


def test_empty_candidate_set(any_backend):
    empty = np.zeros((0, 3), np.float32)
    scores, ids = sk.topk(np.ones(3, np.float32), empty, 5, backend=any_backend)
    assert to_numpy(scores).shape == (0,) and to_numpy(ids).shape == (0,)
    assert to_numpy(scores).dtype == np.float32 and to_numpy(ids).dtype == np.int64
    scores, ids = sk.topk(np.ones((4, 3), np.float32), empty, 5, backend=any_backend)
    assert to_numpy(scores).shape == (4, 0) and to_numpy(ids).shape == (4, 0)
    assert to_numpy(ids).dtype == np.int64


def test_no_users(any_backend):
    scores, ids = sk.topk(np.ones((0, 3), np.float32), np.ones((5, 3), np.float32), 2, backend=any_backend)
    assert to_numpy(scores).shape == (0, 2) and to_numpy(ids).shape == (0, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_topk_sigmoid_ranks_by_the_probability_it_reports(backend, kind, rng):
    # the contract: topk ranks by what it returns; equal float32 probabilities (distinct scores
    # that saturate) go to the lower index, as merge_topk orders them
    n, count, k = 16, 120, 15
    metric = make_metric(kind, n, rng, bias=-0.5)
    users = rng.standard_normal((3, n)).astype(np.float32)
    ads = rng.standard_normal((count, n)).astype(np.float32)
    probs, ids = sk.topk(users, ads, k, metric, sigmoid=True, backend=backend)
    all_probs = to_numpy(sk.score(users, ads, metric, sigmoid=True, backend=backend))
    for u in range(len(users)):
        order = np.lexsort((np.arange(count), -all_probs[u]))[:k]
        np.testing.assert_array_equal(to_numpy(ids)[u], order)
        np.testing.assert_array_equal(to_numpy(probs)[u], all_probs[u][order])
    expected = stable_sigmoid(reference_scores(users, ads, metric))
    np.testing.assert_allclose(to_numpy(probs), np.take_along_axis(expected, to_numpy(ids), 1),
                               rtol=1e-4, atol=1e-6)


# ---- merge_topk --------------------------------------------------------------------------------
def _shards(count, pieces=3):
    bounds = np.linspace(0, count, pieces + 1).astype(int)
    return list(zip(bounds[:-1], bounds[1:]))


@pytest.mark.parametrize("users_2d", (False, True))
@pytest.mark.parametrize("k", (1, 5, 40, 100))
def test_merge_topk_equals_topk_of_concatenation(backend, users_2d, k, rng):
    n, count = 7, 90
    users, ads = _integer_data(rng, (4, n) if users_2d else (n,), count, n, -2, 3)
    parts = []
    for begin, end in _shards(count):
        scores, ids = sk.topk(users, ads[begin:end], k, backend=backend)
        parts.append((scores, ids + begin))
    merged_scores, merged_ids = sk.merge_topk(parts, k)
    expected_scores, expected_ids = sk.topk(users, ads, k, backend=backend)
    assert to_numpy(merged_ids).dtype == np.int64 and to_numpy(merged_scores).dtype == np.float32
    np.testing.assert_array_equal(to_numpy(merged_ids), to_numpy(expected_ids))
    np.testing.assert_array_equal(to_numpy(merged_scores), to_numpy(expected_scores))


def test_merge_topk_with_nan_and_random_order():
    parts = [(np.array([np.nan, 1.0, 2.0], np.float32), np.array([10, 11, 12])),
             (np.array([2.0, -np.inf, np.nan], np.float32), np.array([3, 4, 5]))]
    scores, ids = sk.merge_topk(parts, 10)
    assert ids.tolist() == [3, 12, 11, 4, 5, 10]
    np.testing.assert_array_equal(scores, np.array([2, 2, 1, -np.inf, np.nan, np.nan], np.float32))
    scores, ids = sk.merge_topk(parts, 2)
    assert ids.tolist() == [3, 12]


def test_merge_topk_torch_in_torch_out(rng):
    torch = pytest.importorskip("torch")
    n, count, k = 6, 60, 8
    for users_shape in ((n,), (3, n)):
        users, ads = _integer_data(rng, users_shape, count, n, -2, 3)
        tu, ta = torch.from_numpy(users), torch.from_numpy(ads)
        parts = []
        for begin, end in _shards(count):
            scores, ids = sk.topk(tu, ta[begin:end], k)
            assert isinstance(scores, torch.Tensor) and isinstance(ids, torch.Tensor)
            parts.append((scores, ids + int(begin)))
        merged_scores, merged_ids = sk.merge_topk(parts, k)
        assert isinstance(merged_scores, torch.Tensor) and isinstance(merged_ids, torch.Tensor)
        assert merged_ids.dtype == torch.int64 and merged_scores.dtype == torch.float32
        expected_scores, expected_ids = sk.topk(tu, ta, k)
        assert torch.equal(merged_ids, expected_ids) and torch.equal(merged_scores, expected_scores)


def test_merge_topk_over_live_shards_equals_one_live_set(rng):
    """Per-shard LiveCandidates answers merge by ad id (up to 2**63 - 1) into the answer of one
    live set holding both shards' rows, after upserts and removals; with per-user allowed= the
    shards' padding (score NaN, id -1) never displaces a result, a NaN-scored one included."""
    n, count = 5, 120
    users, ads = _integer_data(rng, (3, n), count, n, -2, 3)  # many ties: broken by the lower ad id
    ads[7] = np.nan  # a row whose every score is NaN
    ids = rng.permutation(np.union1d(rng.integers(1, 2**63 - 1, count - 2), [0, 2**63 - 1]))
    in_first = rng.random(count) < 0.5
    whole = sk.LiveCandidates.from_arrays(ids, ads)
    shards = [sk.LiveCandidates.from_arrays(ids[mask], ads[mask]) for mask in (in_first, ~in_first)]
    new_ids = np.setdiff1d(rng.integers(1, 2**62, 10), ids)
    new_ads = _integer_data(rng, (1, n), 10, n, -2, 3)[1]
    for live in (whole, *shards):
        live.remove(ids[20:40])
        mine = live.contains(ids[40:50])  # replaced where they are
        live.upsert(ids[40:50][mine], new_ads[mine])
        if live is whole or live is shards[0]:  # new ids go to the first shard
            live.upsert(new_ids, new_ads[:len(new_ids)])
    for k in (1, 5, 40, count + 20):
        for who in (users[0], users):
            merged = sk.merge_topk([live.topk(who, k) for live in shards], k)
            expected = whole.topk(who, k)
            assert merged[1].dtype == np.int64
            np.testing.assert_array_equal(merged[1], expected[1])
            np.testing.assert_array_equal(merged[0], expected[0])
    present = whole.ids()
    allowed = [rng.choice(present, size, replace=False) for size in (3, 0, 12)]
    allowed[0][0] = ids[7]  # the NaN row is allowed for user 0
    for k in (2, 4, 12):
        merged = sk.merge_topk([live.topk(users, k, allowed=allowed) for live in shards], k)
        expected = whole.topk(users, k, allowed=allowed)
        width = expected[1].shape[1]
        np.testing.assert_array_equal(merged[1][:, :width], expected[1])
        np.testing.assert_array_equal(merged[0][:, :width], expected[0])
        assert np.all(merged[1][:, width:] == -1) and np.all(np.isnan(merged[0][:, width:]))


def test_merge_topk_padding_ranks_after_every_result():
    nan = np.nan
    parts = [(np.array([nan, nan], np.float32), np.array([5, -1])),
             (np.array([4.0, nan], np.float32), np.array([1, -1]))]
    scores, ids = sk.merge_topk(parts, 4)
    assert ids.tolist() == [1, 5, -1, -1]  # the NaN result of id 5 before the padding of id -1
    assert sk.merge_topk(parts, 2)[1].tolist() == [1, 5]
    # a negative id with a number is a result like any other
    assert sk.merge_topk([(np.array([1.0, nan], np.float32), np.array([-1, 3]))], 2)[1].tolist() == [-1, 3]


def test_merge_topk_errors():
    good = (np.zeros(3, np.float32), np.arange(3))
    with pytest.raises(ValueError, match="k"):
        sk.merge_topk([good], 0)
    with pytest.raises(TypeError, match="k"):
        sk.merge_topk([good], 1.5)
    with pytest.raises(ValueError, match="parts"):
        sk.merge_topk([], 3)
    with pytest.raises(TypeError, match="parts"):
        sk.merge_topk([np.zeros(3)], 3)
    with pytest.raises(TypeError, match="parts"):
        sk.merge_topk(5, 3)
    with pytest.raises(ValueError, match="parts"):
        sk.merge_topk([(np.zeros(3, np.float32), np.arange(4))], 3)
    with pytest.raises(ValueError, match="parts"):
        sk.merge_topk([good, (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64))], 3)
    with pytest.raises(TypeError, match="parts"):
        sk.merge_topk([(np.zeros(3, np.float32), np.zeros(3, np.float32))], 3)
    with pytest.raises(TypeError, match="parts"):
        sk.merge_topk([(np.zeros(3, np.int64), np.arange(3))], 3)


# ---- torch -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name", ("auto", "torch", "simd", "numba", "numpy"))
def test_topk_torch_in_torch_out(backend_name, rng):
    torch = pytest.importorskip("torch")
    if backend_name != "auto" and not backend_available(backend_name):
        pytest.skip(f"backend {backend_name} not available")
    n, count, k = 10, 80, 7
    users, ads = _integer_data(rng, (3, n), count, n, -2, 3)
    full = sk.score(users, ads, backend="numpy")
    for u in (torch.from_numpy(users), torch.from_numpy(users[0])):
        scores, ids = sk.topk(u, torch.from_numpy(ads), k, backend=backend_name)
        assert isinstance(scores, torch.Tensor) and isinstance(ids, torch.Tensor)
        assert scores.dtype == torch.float32 and ids.dtype == torch.int64
        assert tuple(ids.shape) == tuple(u.shape[:-1]) + (k,)
        _check_topk_against_scores(full[: 1 if u.ndim == 1 else 3], scores, ids, k, exact_order=True)


# ---- layouts -----------------------------------------------------------------------------------
def _unaligned(array, offset):
    array = np.ascontiguousarray(array, np.float32)
    buffer = np.zeros(array.nbytes + 8, np.uint8)
    view = np.ndarray(array.shape, np.float32, buffer=buffer, offset=(-buffer.ctypes.data) % 4 + offset)
    view[...] = array
    return view


def test_topk_layouts_give_the_same_answers(backend, rng):
    n, count, k = 9, 200, 12
    users, ads = _integer_data(rng, (3, n), count, n, -3, 4)
    expected_scores, expected_ids = (to_numpy(x) for x in sk.topk(users, ads, k, backend=backend))
    wide = np.zeros((count, 2 * n), np.float32)
    wide[:, 1::2] = ads
    read_only = ads.copy()
    read_only.flags.writeable = False
    variants = {"column_stride": wide[:, 1::2], "row_stride": np.repeat(ads, 2, axis=0)[::2],
                "fortran": np.asfortranarray(ads), "read_only": read_only, "unaligned": _unaligned(ads, 2),
                "float16": ads.astype(np.float16), "float64": ads.astype(np.float64), "list": ads.tolist()}
    for label, variant in variants.items():
        for users_variant in (users, np.asfortranarray(users), users.astype(np.float64), _unaligned(users, 1)):
            scores, ids = sk.topk(users_variant, variant, k, backend=backend)
            np.testing.assert_array_equal(to_numpy(ids), expected_ids, err_msg=label)
            np.testing.assert_array_equal(to_numpy(scores), expected_scores, err_msg=label)
