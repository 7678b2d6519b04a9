"""Filters (allowed=): one for every user or one per user, in one batched call.

The reference of a filtered top-k is the unfiltered top-k of the Candidates made of the allowed
rows alone, on the same backend, positions mapped back: an independent way to the same answer (a dense filter is read
as a bitmap beside the rows, a sparse one gathers its rows; that set reads neither). A per-user
call answers, for user u, what the call with users[u] and its own filter answers, padded to the
longest list with score NaN and id -1. Every backend, every ISA (the `backend` fixture).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_metric
from hypothesis import given, settings
from hypothesis import strategies as st

import splitnet_kernels as sk

SETS = [("float32", False), ("float16", False), ("bfloat16", False), ("int8", False), ("float16", True),
        ("bfloat16", True), ("int8", True)]
DENSITIES = (0.0, 0.01, 0.1, 0.3, 0.7, 1.0)  # both sides of the bitmap's threshold (1/8)
SETTINGS = settings(max_examples=8)


def _reference(ads, dtype, exact, users, k, mask, **options):
    """The top-k of the allowed rows alone, positions mapped back to the ads as given."""
    positions = np.flatnonzero(mask)
    if not len(positions):
        return np.empty(0, np.float32), np.empty(0, np.int64)
    scores, found = sk.Candidates(ads[positions], dtype, exact=exact).topk(users, k, **options)
    return scores, positions[found]


def _same(got, want, what):
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]), err_msg=f"{what}: ids")
    np.testing.assert_array_equal(np.asarray(got[0]).view(np.uint32), np.asarray(want[0]).view(np.uint32),
                                  err_msg=f"{what}: scores")


@pytest.mark.parametrize("dtype,exact", SETS, ids=[f"{d}{'-exact' if e else ''}" for d, e in SETS])
@SETTINGS
@given(data=st.data())
def test_one_filter_for_every_user_is_the_set_of_the_allowed_rows(backend, dtype, exact, data):
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    n_rows = data.draw(st.sampled_from([3, 63, 64, 65, 700, 2500]), label="rows")
    dim = data.draw(st.sampled_from([1, 7, 33]), label="dim")
    ads = rng.standard_normal((n_rows, dim)).astype(np.float32)
    density = data.draw(st.sampled_from(DENSITIES), label="density")
    mask = rng.random(n_rows) < density
    if not mask.any():
        mask[rng.integers(n_rows)] = True
    users = rng.standard_normal((data.draw(st.sampled_from([1, 2, 5, 9]), label="users"), dim)).astype(np.float32)
    if data.draw(st.booleans(), label="one user (1-D)"):
        users = users[0]
    k = data.draw(st.integers(1, n_rows + 3), label="k")
    metric = make_metric(data.draw(st.sampled_from(["dot", "diagonal", "low_rank"]), label="kind"), dim, rng)
    output = data.draw(st.sampled_from(["logit", "probability"]), label="output")
    cands = sk.Candidates(ads, dtype, exact=exact)
    want = _reference(ads, dtype, exact, users, k, mask, metric=metric, output=output, backend=backend)
    ids = np.flatnonzero(mask)
    rng.shuffle(ids)
    for form in (mask, ids, np.concatenate([ids, ids[:3]]), ids.tolist()):  # repeats are one
        got = cands.topk(users, k, metric, allowed=form, output=output, backend=backend)
        _same(got, want, f"{type(form).__name__} {getattr(form, 'dtype', '')}")


@pytest.mark.parametrize("dtype,exact", SETS, ids=[f"{d}{'-exact' if e else ''}" for d, e in SETS])
@SETTINGS
@given(data=st.data())
def test_one_filter_per_user_answers_each_user_alone(backend, dtype, exact, data):
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    n_rows = data.draw(st.sampled_from([64, 65, 700, 2500]), label="rows")
    dim = data.draw(st.sampled_from([7, 33]), label="dim")
    ads = rng.standard_normal((n_rows, dim)).astype(np.float32)
    ads[rng.integers(n_rows)] = ads[0]  # a tie
    n_users = data.draw(st.sampled_from([1, 3, 4, 9]), label="users")
    users = rng.standard_normal((n_users, dim)).astype(np.float32)
    masks = np.stack([rng.random(n_rows) < data.draw(st.sampled_from(DENSITIES), label=f"density {u}")
                      for u in range(n_users)])
    k = data.draw(st.integers(1, n_rows + 3), label="k")
    metric = make_metric(data.draw(st.sampled_from(["dot", "scaled", "diagonal", "low_rank", "full"]), label="kind"),
                         dim, rng)
    output = data.draw(st.sampled_from(["logit", "probability"]), label="output")
    cands = sk.Candidates(ads, dtype, exact=exact)
    lists = [_reference(ads, dtype, exact, users[u], k, masks[u], metric=metric, output=output, backend=backend)
             for u in range(n_users)]
    width = min(k, int(masks.sum(axis=1).max()))
    for form in (masks, list(masks), [np.flatnonzero(m) for m in masks], [np.flatnonzero(m).tolist() for m in masks]):
        scores, ids = cands.topk(users, k, metric, allowed=form, output=output, backend=backend)
        assert scores.shape == ids.shape == (n_users, width)
        for u, (s, i) in enumerate(lists):
            _same((scores[u, :len(s)], ids[u, :len(i)]), (s, i), f"user {u}")
            assert np.all(np.isnan(scores[u, len(s):])) and np.all(ids[u, len(i):] == -1), f"user {u}: padding"


def test_one_filter_per_user_by_value(rng):
    """Objectives ranked by value, each user with its own filter: each user's answer alone."""
    n_rows, dim = 3000, 16
    ads = rng.standard_normal((n_rows, dim)).astype(np.float32)
    om = sk.ObjectiveMetrics([make_metric("dot", dim, rng), make_metric("diagonal", dim, rng, bias=-1.0)])
    cands = sk.Candidates(ads, "int8", exact=True, objectives=rng.integers(0, 2, n_rows),
                          bids=rng.lognormal(size=n_rows).astype(np.float32))
    users = rng.standard_normal((4, dim)).astype(np.float32)
    masks = [rng.random(n_rows) < d for d in (0.5, 0.02, 0.0, 1.0)]
    scores, ids = cands.topk(users, 40, om, allowed=masks)
    assert scores.shape == (4, 40)
    for u, mask in enumerate(masks):
        if not mask.any():
            assert np.all(np.isnan(scores[u])) and np.all(ids[u] == -1)
            continue
        want = cands.topk(users[u], 40, om, allowed=mask)
        _same((scores[u, :len(want[0])], ids[u, :len(want[1])]), want, f"user {u}")


def test_one_filter_per_user_on_tensors(rng):
    torch = pytest.importorskip("torch")
    ads = rng.standard_normal((500, 8)).astype(np.float32)
    cands = sk.Candidates(ads)
    users = rng.standard_normal((3, 8)).astype(np.float32)
    masks = rng.random((3, 500)) < 0.4
    want = cands.topk(users, 20, allowed=masks)
    got = cands.topk(torch.from_numpy(users), 20, allowed=torch.from_numpy(masks))
    _same((got[0].numpy(), got[1].numpy()), want, "tensors")


@pytest.mark.parametrize("allowed,error,match", [
    ([np.ones(10, bool)] * 2, ValueError, "2 filters for 3 users"),
    ([np.ones(9, bool)] * 3, ValueError, r"allowed\[0\]: a mask must have shape \(10,\)"),
    (np.ones((3, 9), bool), ValueError, r"allowed\[0\]: a mask must have shape \(10,\)"),
    ([np.array([0.5])] * 3, TypeError, r"allowed\[0\]: expected a boolean mask or a 1-D integer id array"),
    ([[1, 2], [3], [10]], ValueError, r"allowed\[2\]: ids must be in \[0, 10\)"),
    ([[1, 2], [-1], [3]], ValueError, r"allowed\[1\]: ids must be in \[0, 10\)"),
    ([np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 0])] * 3, ValueError, r"allowed\[0\]: .* could be a mask"),
])
def test_bad_per_user_filters_are_clear_errors(rng, allowed, error, match):
    cands = sk.Candidates(rng.standard_normal((10, 4)).astype(np.float32))
    with pytest.raises(error, match=match):
        cands.topk(rng.standard_normal((3, 4)).astype(np.float32), 2, allowed=allowed)


def test_per_user_filters_need_many_users(rng):
    cands = sk.Candidates(rng.standard_normal((10, 4)).astype(np.float32))
    with pytest.raises(TypeError, match="one filter per user needs users"):
        cands.topk(rng.standard_normal(4).astype(np.float32), 2, allowed=[np.ones(10, bool)])
    # a flat list of integers stays one id list for every user
    scores, ids = cands.topk(rng.standard_normal((2, 4)).astype(np.float32), 2, allowed=[1, 3, 5])
    assert set(ids.ravel()) <= {1, 3, 5}


@pytest.mark.parametrize("dtype,exact", [("float32", False), ("int8", True), ("bfloat16", False)])
def test_one_filter_per_user_on_a_live_set(rng, dtype, exact):
    """A live set with several segments and deleted rows, one id filter per user: each user's
    answer is its own call's, padded to the longest (the lists of every segment merged)."""
    dim = 12
    ids = rng.choice(10**9, 3000, replace=False)
    live = sk.LiveCandidates.from_arrays(ids, rng.standard_normal((3000, dim)).astype(np.float32), dtype, exact=exact)
    new = rng.choice(10**9, 300, replace=False) + 10**9
    live.upsert(new, rng.standard_normal((300, dim)).astype(np.float32))
    live.remove(ids[:200])
    present = live.ids()
    users = rng.standard_normal((5, dim)).astype(np.float32)
    filters = [rng.choice(present, n, replace=False) for n in (0, 3, 40, 1500, 3000)]
    filters[1] = np.append(filters[1], [-5, 10**15])  # absent ids are ignored
    for output in ("logit", "probability"):
        scores, found = live.topk(users, 50, allowed=filters, output=output)
        assert scores.shape == (5, 50)
        for u, wanted in enumerate(filters):
            if not len(live.contains(wanted).nonzero()[0]):
                assert np.all(np.isnan(scores[u])) and np.all(found[u] == -1)
                continue
            want = live.topk(users[u], 50, allowed=wanted, output=output)
            _same((scores[u, :len(want[0])], found[u, :len(want[1])]), want, f"user {u}, {output}")
            assert np.all(np.isnan(scores[u, len(want[0]):])) and np.all(found[u, len(want[1]):] == -1)
