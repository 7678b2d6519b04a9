"""One summation order (kernels/splitnet_kernels/order.h): every path of the compiled backend
gives a pair (user, candidate) the same float32 score, bit for bit: score and topk, one user and
many, with and without an allowed subset, objectives and plain metrics, on every ISA this CPU
runs. An exact reduced-precision set (issue 13) re-scores through these paths, and an offline
job must not depend on how users are batched (issue 15)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import splitnet_kernels as sk
from conftest import SUPPORTED_ISAS, allowed_form, make_metric, using_isa

DTYPES = ("float32", "float16", "bfloat16", "int8")
KINDS = ("dot", "scaled", "diagonal", "low_rank", "full")


def _every_path(cands, users, metric, k, allowed):
    """{path: (M, N) scores} where each path's scores are laid out over all candidates."""
    n = len(cands)
    paths = {"score many": cands.score(users, metric),
             "score one": np.stack([cands.score(u, metric) for u in users])}
    for name, found in (("topk many", cands.topk(users, k, metric)),
                        ("topk one", [cands.topk(u, k, metric) for u in users]),
                        ("topk allowed", cands.topk(users, k, metric, allowed=allowed))):
        full = np.full((len(users), n), np.nan, np.float32)
        for u, (scores, ids) in enumerate(zip(*found) if isinstance(found, tuple) else found):
            full[u, ids] = scores
        paths[name] = full
    return paths


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_every_path_and_isa_gives_the_same_bits(dtype, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    count, dim = data.draw(st.integers(1, 700)), data.draw(st.integers(1, 70))
    ads = rng.standard_normal((count, dim)).astype(np.float32)
    cands = sk.Candidates(ads, dtype)
    metric = make_metric(data.draw(st.sampled_from(KINDS)), dim, rng, bias=float(rng.normal()))
    users = rng.standard_normal((data.draw(st.sampled_from((2, 5, 17, 40))), dim)).astype(np.float32)
    k = data.draw(st.integers(1, count))
    allowed = allowed_form(np.arange(count), count)
    reference = None
    for isa in SUPPORTED_ISAS:
        with using_isa(isa):
            paths = _every_path(cands, users, metric, k, allowed)
        reference = paths["score many"] if reference is None else reference
        for name, scores in paths.items():
            seen = ~np.isnan(scores) if name.startswith("topk") else np.ones(scores.shape, bool)
            np.testing.assert_array_equal(scores[seen], reference[seen], err_msg=f"{isa}: {name}")


def test_objectives_one_user_and_many_give_the_same_bits(rng):
    ads = rng.standard_normal((5000, 24)).astype(np.float32)
    objectives, bids = rng.integers(0, 3, 5000), rng.lognormal(0, 1, 5000)
    om = sk.ObjectiveMetrics([make_metric(kind, 24, rng, bias=-1.0) for kind in ("full", "diagonal", "low_rank")])
    cands = sk.Candidates(ads, objectives=objectives, bids=bids)
    users = rng.standard_normal((9, 24)).astype(np.float32)
    many, (top, ids) = cands.score(users, om), cands.topk(users, 60, om)
    for u, user in enumerate(users):
        np.testing.assert_array_equal(cands.score(user, om), many[u])
        one = cands.topk(user, 60, om)
        np.testing.assert_array_equal(one[1], ids[u])
        np.testing.assert_array_equal(one[0], top[u])
