"""The progressive scan of exact sets (issue 26): heads of rows turned by a rotation fitted to
them, read first; the answer stays the float32 set's, bit for bit, on every ISA, for every metric
kind, one user and many, allowed subsets and per-user filters, objectives, save/load (mmap) and
live sets. The head test's bound is checked on its own in tests/cpp/test_kernels.cpp."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import splitnet_kernels as sk
from splitnet_kernels import _storage
from conftest import SUPPORTED_ISAS, allowed_form, assert_same, make_metric, using_isa

KINDS = ("dot", "scaled", "diagonal", "low_rank", "full")
REDUCED = ("int8", "bfloat16", "float16")


@pytest.fixture(autouse=True)
def small_sets_get_heads(monkeypatch):
    """Heads for sets of any size, so that small sets exercise the progressive scan."""
    monkeypatch.setattr(_storage, "LEVELS_MIN_ROWS", 0)


def _decaying(rng, count: int, dim: int, decay: float = 0.8) -> np.ndarray:
    """Rows whose energy falls off along directions hidden behind a random rotation."""
    turn, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return ((rng.standard_normal((count, dim)) * decay ** np.arange(dim)) @ turn.T).astype(np.float32)


@pytest.mark.parametrize("dtype", REDUCED)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_progressive_topk_is_the_float32_sets_bit_for_bit(dtype, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    count, dim = data.draw(st.integers(1, 3000)), data.draw(st.integers(12, 70))
    ads = _decaying(rng, count, dim, data.draw(st.sampled_from((0.5, 0.8, 0.9))))
    if data.draw(st.booleans()):  # rows the reduced type or the heads cannot stand for
        ads[rng.integers(0, count, 2)] = np.nan
        ads[rng.integers(0, count), rng.integers(0, dim)] = np.inf
        ads[rng.integers(0, count)] *= 1e30
    exact, plain = sk.Candidates(ads, dtype, exact=True), sk.Candidates(ads, "float32")
    metric = make_metric(data.draw(st.sampled_from(KINDS)), dim, rng, bias=float(rng.normal()))
    users = rng.standard_normal((data.draw(st.sampled_from((1, 3, 17))), dim)).astype(np.float32)
    k = min(data.draw(st.sampled_from((1, 10, 100, count))), count)
    allowed = None
    if data.draw(st.booleans()):
        ids = np.flatnonzero(rng.random(count) < 0.4)
        allowed = allowed_form(ids, count) if len(ids) else None
    threads = data.draw(st.sampled_from((1, 2)))
    for isa in SUPPORTED_ISAS:
        with using_isa(isa):
            for u in (users, users[0]):
                want = plain.topk(u, k, metric, allowed=allowed, threads=threads)
                assert_same(exact.topk(u, k, metric, allowed=allowed, threads=threads), want)


def test_turned_rows_get_heads_and_flat_rows_do_not(rng):
    decaying = sk.Candidates(_decaying(rng, 4000, 64, 0.85), "int8", exact=True)
    gaussian = sk.Candidates(rng.standard_normal((4000, 64)).astype(np.float32), "int8", exact=True)
    # 0.85^48 of the energy past 24 values (0.85^32, past 16, is more than REST_ENERGY)
    assert "progressive scan (head 24)" in repr(decaying) and "flat scan" in repr(gaussian)
    user = rng.standard_normal(64).astype(np.float32)
    decaying.topk(user, 10)
    scan = decaying.last_scan
    assert scan["layout"] == "progressive" and scan["head"] == 24 and scan["rows"] == 4000
    assert scan["rescored"] == decaying.last_rescored >= 10 and 0 <= scan["refined"] <= 4000
    assert 24 + 8 <= scan["bytes_per_row"] < 68  # the heads of every row, the whole of a few
    gaussian.topk(user, 10)
    assert gaussian.last_scan["layout"] == "flat" and gaussian.last_scan["bytes_per_row"] == 68


def test_a_set_below_the_size_for_heads_scans_flat(rng, monkeypatch):
    monkeypatch.setattr(_storage, "LEVELS_MIN_ROWS", 5000)
    assert "flat scan" in repr(sk.Candidates(_decaying(rng, 4000, 64), "int8", exact=True))


def test_per_user_filters_and_objectives_on_a_progressive_set(rng):
    ads = _decaying(rng, 3000, 32)
    users = rng.standard_normal((5, 32)).astype(np.float32)
    masks = rng.random((5, 3000)) < 0.3
    exact, plain = sk.Candidates(ads, "int8", exact=True), sk.Candidates(ads)
    assert_same(exact.topk(users, 20, allowed=masks), plain.topk(users, 20, allowed=masks))
    objectives, bids = rng.integers(0, 3, 3000), rng.random(3000).astype(np.float32)
    om = sk.ObjectiveMetrics([make_metric("dot", 32, rng, bias=b) for b in (0.0, -1.0, 0.5)])
    with_objectives = sk.Candidates(ads, "int8", exact=True, objectives=objectives, bids=bids)
    plain = sk.Candidates(ads, objectives=objectives, bids=bids)
    for output in ("value", "logit"):
        assert_same(with_objectives.topk(users, 15, om, output=output), plain.topk(users, 15, om, output=output))


@pytest.mark.parametrize("mmap", [True, False])
def test_save_and_load_keep_the_heads(rng, tmp_path, mmap):
    ads = _decaying(rng, 2500, 48)
    exact, plain = sk.Candidates(ads, "int8", exact=True), sk.Candidates(ads)
    exact.save(tmp_path / "set.sk")
    loaded = sk.Candidates.load(tmp_path / "set.sk", mmap=mmap)
    assert repr(loaded) == repr(exact)
    users = rng.standard_normal((3, 48)).astype(np.float32)
    for u in (users, users[0]):
        assert_same(loaded.topk(u, 25), plain.topk(u, 25))
    assert loaded.last_scan["layout"] == "progressive"


def test_a_file_whose_rotation_is_not_orthogonal_is_refused(rng, tmp_path):
    exact = sk.Candidates(_decaying(rng, 2000, 32), "int8", exact=True)
    path = tmp_path / "set.sk"
    exact.save(path)
    raw = bytearray(path.read_bytes())
    rotation = exact._store.levels.rotation
    at = raw.find(rotation.tobytes())
    assert at > 0
    raw[at:at + 8] = np.float64(rotation[0, 0] * 1.01).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged heads|checksum"):
        sk.Candidates.load(path, verify=True)
    with pytest.raises(ValueError, match="damaged heads"):
        sk.Candidates.load(path, verify=False)


def test_a_live_set_keeps_its_heads_through_merges(rng):
    ads = _decaying(rng, 6000, 32)
    ids = np.arange(6000) * 3
    live = sk.LiveCandidates.from_arrays(ids[:4000], ads[:4000], "int8", exact=True)
    for begin in range(4000, 6000, 250):  # batches that merge into the main store
        live.upsert(ids[begin:begin + 250], ads[begin:begin + 250])
    live.remove(ids[:100])
    live.compact()
    plain = sk.Candidates(ads[100:])
    user = rng.standard_normal(32).astype(np.float32)
    scores, got = live.topk(user, 30)
    want_scores, want = plain.topk(user, 30)
    np.testing.assert_array_equal(got, ids[100:][want])
    np.testing.assert_array_equal(scores, want_scores)
