"""Exact sets (issue 13): sk.Candidates(ads, dtype, exact=True) with dtype int8, bfloat16 or
float16 returns, from a certified scan of the reduced rows, the float32 set's top k: the same ids
and the same bits, on every ISA, for adversarial rows too. The bound itself is checked on its
own in tests/cpp/test_kernels.cpp."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import splitnet_kernels as sk
from conftest import SUPPORTED_ISAS, allowed_form, assert_same, make_metric, using_isa

REDUCED = ("int8", "bfloat16", "float16")
KINDS = ("dot", "scaled", "diagonal", "low_rank", "full")


def _adversarial(rng, kind: str, count: int, dim: int) -> np.ndarray:
    """Rows that make a reduced-precision ranking hard or impossible to certify."""
    ads = rng.standard_normal((count, dim)).astype(np.float32)
    if kind == "duplicated":  # every candidate ties with many others
        ads = ads[rng.integers(0, max(1, count // 50), count)]
    elif kind == "near_ties":  # rows one float32 ulp apart
        ads = np.repeat(ads[:1], count, 0)
        ads[:, 0] = np.nextafter(ads[0, 0], np.float32(np.inf) * np.sign(rng.standard_normal(count))).astype(np.float32)
    elif kind == "huge_coordinate":  # one large value per row hides the rest from int8
        ads[np.arange(count), rng.integers(0, dim, count)] *= 1e4
    elif kind == "magnitudes":  # rows of 1e-30 and 1e30 (beyond float16)
        ads *= np.where(rng.random(count) < 0.5, 1e-30, 1e30).astype(np.float32)[:, None]
    elif kind == "nonfinite":  # NaN and infinite rows, which only an exact set accepts
        ads[rng.integers(0, count, 3)] = np.nan
        ads[rng.integers(0, count, 2), rng.integers(0, dim)] = np.inf
        ads[rng.integers(0, count, 2), rng.integers(0, dim)] = -np.inf
    return ads


@pytest.mark.parametrize("dtype", REDUCED)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_exact_topk_is_the_float32_sets_bit_for_bit(dtype, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    count, dim = data.draw(st.integers(1, 2500)), data.draw(st.integers(1, 40))
    ads = _adversarial(rng, data.draw(st.sampled_from(("gaussian", "duplicated", "near_ties", "huge_coordinate",
                                                        "magnitudes", "nonfinite"))), count, dim)
    exact, plain = sk.Candidates(ads, dtype, exact=True), sk.Candidates(ads, "float32")
    metric = make_metric(data.draw(st.sampled_from(KINDS)), dim, rng, bias=float(rng.normal()))
    users = rng.standard_normal((data.draw(st.sampled_from((1, 3, 17))), dim)).astype(np.float32)
    k = data.draw(st.sampled_from((1, 10, 100, count)))
    k = min(k, count)
    allowed = np.flatnonzero(rng.random(count) < 0.4) if data.draw(st.booleans()) else None
    allowed = None if allowed is None or len(allowed) == 0 else allowed_form(allowed, count)
    threads, output = data.draw(st.sampled_from((1, 2))), data.draw(st.sampled_from(("logit", "probability")))
    for isa in SUPPORTED_ISAS:
        with using_isa(isa):
            for u in (users, users[0]):
                want = plain.topk(u, k, metric, allowed=allowed, output=output, threads=threads)
                assert_same(exact.topk(u, k, metric, allowed=allowed, output=output, threads=threads), want)
            assert_same([exact.score(users, metric)], [plain.score(users, metric)])


@pytest.mark.parametrize("dtype", REDUCED)
def test_rescore_counts_small_on_gaussian_rows_and_all_on_ties(dtype, rng):
    ads = rng.standard_normal((20000, 32)).astype(np.float32)
    exact = sk.Candidates(ads, dtype, exact=True)
    user = rng.standard_normal(32).astype(np.float32)
    exact.topk(user, 50)
    assert 50 <= exact.last_rescored < 2000  # the bound passes few besides the top 50
    tied = sk.Candidates(np.repeat(ads[:1], 3000, 0), dtype, exact=True)
    scores, ids = tied.topk(user, 50)
    assert tied.last_rescored == 3000 and ids.tolist() == list(range(50))  # all tie: ties to the lower index
    users = rng.standard_normal((4, 32)).astype(np.float32)
    exact.topk(users, 50)
    if dtype == "int8" and sk.info()["isa_active"] not in ("scalar", "neon"):  # the certified int8 tile: few re-scored per user
        assert 4 * 50 <= exact.last_rescored < 4 * 2000
    else:  # 4 users x >= 2 bytes: the float32 cross tile, every row
        assert exact.last_rescored == 4 * 20000
    tied.topk(np.repeat(user[None], 8, 0), 50)  # ties on the int8 tile: past the survivors' limit, the float32 tile
    assert tied.last_rescored == 8 * 3000


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("kind", ("gaussian", "duplicated", "near_ties", "huge_coordinate", "magnitudes", "nonfinite"))
def test_many_users_on_the_certified_int8_tile(kind, isa, rng):
    """Many users against int8 rows take the certified int8 cross tile (where the ISA has one):
    every user's top k is the float32 set's, bit for bit, with users that are not finite or huge
    among them (their bound is unusable: the whole call then takes the float32 tile)."""
    count, dim = 3001, 29
    ads = _adversarial(rng, kind, count, dim)
    exact, plain = sk.Candidates(ads, "int8", exact=True), sk.Candidates(ads, "float32")
    users = rng.standard_normal((37, dim)).astype(np.float32)
    with using_isa(isa):
        for metric in (None, make_metric("diagonal", dim, rng, bias=0.5), make_metric("full", dim, rng)):
            for k in (1, 16, 100, count):
                for threads in (1, 2):
                    assert_same(exact.topk(users, k, metric, threads=threads), plain.topk(users, k, metric, threads=threads))
        odd = users.copy()
        odd[3, 0], odd[5] = np.nan, odd[5] * np.float32(1e36)
        assert_same(exact.topk(odd, 10), plain.topk(odd, 10))
        assert exact.last_rescored == 37 * count


def _extreme_scale_sets(rng, dim: int = 64):
    """(name, users, ads) at the two ends of the float32 range where a certified scan can err:
    int8 scale products that are subnormal (tiny users and rows), and float32 lanes that overflow
    while the exact sum is finite (huge values of both signs in one lane)."""
    tiny_user = np.full(dim, np.float32(127 * 2.0**-75), np.float32)
    tiny = np.full((3, dim), np.float32(1e-22), np.float32)
    tiny[0], tiny[1] = np.float32(127 * 2.49 * 2.0**-74), 0
    tiny[1, :32] = np.float32(127 * 4.6 * 2.0**-74)
    scaled = (rng.standard_normal((3000, dim)) * 1e-21).astype(np.float32)
    yield "subnormal scale products", np.stack([tiny_user, tiny_user * 2]), tiny
    yield "gaussian x 1e-21", (rng.standard_normal((5, dim)) * 1e-21).astype(np.float32), scaled
    for user_scale in (1e19, 1e17):  # a query past the bounded norm; a bounded query, rows past it
        lanes = (rng.random((3000, dim)) * 1e15).astype(np.float32)
        for row, signs in enumerate(([1, 1, -1, -1], [1, -1, 1, 1], [1, 1, 1, -1])):
            lanes[row] = 0
            lanes[row, [0, 8, 16, 24]] = np.float32(2e38 / user_scale) * np.array(signs, np.float32)
        yield f"overflowing lanes, users of {user_scale:g}", np.full((5, dim), np.float32(user_scale)), lanes


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("dtype", REDUCED)
def test_exact_sets_at_the_ends_of_the_float32_range(dtype, isa, rng):
    """A subnormal int8 scale product carries an underflow of |I| 2^-150 (the bound holds it);
    a lane that overflows has no bound (such queries and rows are re-scored from the float32
    rows). Either way: the float32 set's answer, one user and many, bit for bit."""
    with using_isa(isa):
        for name, users, ads in _extreme_scale_sets(rng):
            exact, plain = sk.Candidates(ads, dtype, exact=True), sk.Candidates(ads, "float32")
            for k in (1, 2, 10):
                for u in (users[0], users[:2], users):  # one user, the user-by-user scan, the int8 tile
                    got, want = exact.topk(u, k), plain.topk(u, k)
                    assert np.array_equal(got[1], want[1]), (name, k, np.shape(u))
                    assert_same(got, want)


def test_exact_sets_save_and_load(tmp_path, rng):
    ads = _adversarial(rng, "nonfinite", 3000, 24)
    users = rng.standard_normal((4, 24)).astype(np.float32)
    metric = make_metric("full", 24, rng, bias=0.5)
    plain = sk.Candidates(ads, "float32")
    for dtype in REDUCED:
        exact = sk.Candidates(ads, dtype, exact=True)
        exact.save(tmp_path / f"{dtype}.skc")
        for mmap in (True, False):
            loaded = sk.Candidates.load(tmp_path / f"{dtype}.skc", mmap=mmap)
            assert loaded.exact and loaded.dtype == dtype and len(loaded) == 3000
            assert_same(loaded.topk(users, 40, metric), plain.topk(users, 40, metric))
            assert loaded.last_rescored >= 4 * 40
            loaded.topk(users[0], 40, metric)
            assert 40 <= loaded.last_rescored < 3000
    assert not plain.exact and "exact" in repr(exact)


def test_objectives_and_bids_on_exact_sets(rng):
    ads = _adversarial(rng, "duplicated", 4000, 16)
    objectives, bids = rng.integers(0, 3, 4000), rng.lognormal(0, 1, 4000)
    om = sk.ObjectiveMetrics([make_metric(kind, 16, rng, bias=-1.0) for kind in ("diagonal", "full", "dot")])
    user = rng.standard_normal(16).astype(np.float32)
    plain = sk.Candidates(ads, "float32", objectives=objectives, bids=bids)
    for dtype in REDUCED:
        exact = sk.Candidates(ads, dtype, objectives=objectives, bids=bids, exact=True)
        for output in ("value", "probability", "logit"):
            assert_same(exact.topk(user, 30, om, output=output), plain.topk(user, 30, om, output=output))


def test_exact_bad_input():
    ads = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="exact=True scans a reduced type"):
        sk.Candidates(ads, "float32", exact=True)
    with pytest.raises(TypeError, match="exact"):
        sk.Candidates(ads, "int8", exact="yes")
    with pytest.raises(ValueError, match="exact=True takes them"):
        sk.Candidates(np.full((2, 2), np.nan, np.float32), "int8")


@pytest.mark.parametrize("dtype", REDUCED)
def test_stored_block_maxima_of_any_size_give_the_same_answer(dtype, rng):
    """The binding's block maxima (ExactStorage.block_bounds at BOUND_BLOCK rows) gate the scan's
    blocks wherever their edges fall: any block size gives the float32 set's answer; a bad one is
    refused by name."""
    from splitnet_kernels import _core
    from splitnet_kernels._storage import BOUND_BLOCK

    ads = _adversarial(rng, "huge_coordinate", 5000, 24)
    exact, plain = sk.Candidates(ads, dtype, exact=True), sk.Candidates(ads, "float32")
    store, user = exact._store, rng.standard_normal(24).astype(np.float32)
    want = plain.topk(user, 30)
    assert [len(b) for b in store.block_bounds] == [-(-5000 // BOUND_BLOCK)] * 2
    ones = np.ones(24, np.float32)
    for block in (1, 7, 1000, 1024, 4999, 5000, 9999):
        starts = np.arange(0, 5000, block)
        maxima = [np.maximum.reduceat(x, starts) for x in (store.norms, store.residuals)]
        scores, ids = np.empty(30, np.float32), np.empty(30, np.int64)
        _core.topk_exact(user, store.scan.data, store.scan.dtype, store.scan.scales, None, store.data, store.norms,
                         store.residuals, ones, None, None, 0.0, 30, scores, ids, 2, *maxima, block, None)
        assert_same((scores, ids), want)
    for block, lengths, match in ((0, 1, "block: rows per stored maximum"), (1024, 4, "block_norms")):
        bad = [np.zeros(lengths, np.float32)] * 2
        with pytest.raises(ValueError, match=match):
            _core.topk_exact(user, store.scan.data, store.scan.dtype, store.scan.scales, None, store.data,
                             store.norms, store.residuals, ones, None, None, 0.0, 30, scores, ids, 2, *bad, block, None)
