"""Serving: saved candidate sets, allowed subsets, many Python threads on one set, and a fuzz of
every public call that must end in the oracle's answer or a clear error."""

import concurrent.futures

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import splitnet_kernels as sk

DTYPES = ("float32", "float16", "bfloat16", "int8")


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return rng.standard_normal((2000, 40)).astype(np.float32), rng.standard_normal((3, 40)).astype(np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mmap", (True, False))
def test_save_load_round_trip(tmp_path, data, dtype, mmap):
    ads, users = data
    cands = sk.Candidates(ads, dtype=dtype)
    path = tmp_path / "cands.bin"
    cands.save(path)
    loaded = sk.Candidates.load(path, mmap=mmap)
    assert (len(loaded), loaded.dim, loaded.dtype, loaded.nbytes) == (len(cands), cands.dim, cands.dtype, cands.nbytes)
    np.testing.assert_array_equal(loaded.score(users[0]), cands.score(users[0]))
    for got, want in zip(loaded.topk(users, 17), cands.topk(users, 17)):
        np.testing.assert_array_equal(got, want)


def _damaged_copies(raw: bytes, data_start: int):
    yield "empty", b""
    yield "foreign", b"PK\x03\x04" + raw[4:]
    yield "truncated header", raw[:30]
    yield "truncated data", raw[: len(raw) // 2]
    yield "one byte short", raw[:-1]
    header = bytearray(raw)
    header[40] ^= 0x5A  # inside the JSON header
    yield "damaged header", bytes(header)
    payload = bytearray(raw)
    payload[data_start + 100] ^= 0x01  # one bit of one stored row
    yield "flipped bit", bytes(payload)


@pytest.mark.parametrize("dtype", DTYPES)
def test_damaged_files_are_refused(tmp_path, data, dtype):
    ads, _ = data
    path = tmp_path / "good.bin"
    sk.Candidates(ads, dtype=dtype).save(path)
    raw = path.read_bytes()
    data_start = len(raw) - sk.Candidates(ads, dtype=dtype).nbytes - (0 if dtype != "int8" else 0)
    data_start = max(0, data_start - 64)  # somewhere in the stored rows, past the header
    for name, content in _damaged_copies(raw, data_start):
        bad = tmp_path / f"{name.replace(' ', '_')}.bin"
        bad.write_bytes(content)
        with pytest.raises(ValueError):
            sk.Candidates.load(bad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_allowed_mask_and_ids_equal_topk_of_the_subset(data, dtype):
    ads, users = data
    cands = sk.Candidates(ads, dtype=dtype)
    rng = np.random.default_rng(1)
    mask = rng.random(len(ads)) < 0.3
    ids = np.flatnonzero(mask)
    full = cands.score(users[1])
    expected = ids[np.lexsort((ids, -full[ids].astype(np.float64)))][:25]
    for allowed in (mask, ids, ids[::-1].copy(), list(ids)):
        scores, found = cands.topk(users[1], 25, allowed=allowed)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_array_equal(scores, full[expected])
    scores, found = cands.topk(users[1], 25, allowed=np.zeros(len(ads), bool))
    assert scores.shape == found.shape == (0,)
    for bad, error in ((np.array([len(ads)]), ValueError), (np.array([-1]), ValueError),
                       (np.ones(3, bool), ValueError), (np.array([0.5]), TypeError)):
        with pytest.raises(error, match="allowed"):
            cands.topk(users[1], 5, allowed=bad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_zero_one_masks_are_refused_not_read_as_ids(data, dtype):
    """A 0/1 mask built with arithmetic (uint8, int, a list, a tensor) of length N would read as
    the ids 0 and 1: every path that takes allowed= refuses it and names the fix."""
    ads, users = data
    mask = np.random.default_rng(2).random(len(ads)) < 0.3
    plain = sk.Candidates(ads, dtype=dtype)
    exact = sk.Candidates(ads, dtype=dtype, exact=True) if dtype != "float32" else plain
    om = sk.ObjectiveMetrics([sk.Metric.dot(ads.shape[1])] * 2)
    valued = sk.Candidates(ads, dtype=dtype, objectives=np.arange(len(ads)) % 2, bids=np.ones(len(ads)))
    candidates = [mask.astype(np.uint8), mask.astype(np.int64), mask.astype(int).tolist(), np.ones(len(ads), np.int8)]
    try:
        import torch
        candidates.append(torch.from_numpy(mask.astype(np.int64)))
    except ImportError:
        pass
    for bad in candidates:
        for call in (lambda: plain.topk(users[1], 5, allowed=bad), lambda: exact.topk(users[:3], 5, allowed=bad),
                     lambda: valued.topk(users[1], 5, om, allowed=bad)):
            with pytest.raises(ValueError, match=r"allowed: .*0 and 1.*astype\(bool\)"):
                call()
    want = plain.topk(users[1], 5, allowed=np.flatnonzero(mask))
    np.testing.assert_array_equal(plain.topk(users[1], 5, allowed=mask)[1], want[1])
    assert sorted(plain.topk(users[1], 5, allowed=np.array([1, 1, 0]))[1].tolist()) == [0, 1]  # other lengths: ids


def test_many_threads_match_serial(data):
    """16 Python threads x 500 mixed calls on shared sets: identical to the serial results."""
    ads, users = data
    sets = {dtype: sk.Candidates(ads, dtype=dtype) for dtype in DTYPES}
    metric = sk.Metric.diagonal(np.linspace(0.5, 1.5, 40), bias=0.25)
    calls = []
    for i in range(500):
        dtype = DTYPES[i % 4]
        user = users[i % 3]
        kind = i % 5
        if kind == 0:
            calls.append(lambda c=sets[dtype], u=user: c.topk(u, 10, metric))
        elif kind == 1:
            calls.append(lambda c=sets[dtype], u=user: c.score(u, metric))
        elif kind == 2:
            calls.append(lambda u=user: sk.topk(u, ads, 7, metric))
        elif kind == 3:
            calls.append(lambda: sk.topk(users, ads, 5))
        else:
            calls.append(lambda c=sets[dtype], u=user: c.topk(u, 12, allowed=np.arange(0, 2000, 3)))
    serial = [call() for call in calls]

    def run(offset):
        return [(i, calls[i]()) for i in range(offset, len(calls), 16)]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for chunk in pool.map(run, range(16)):
            for i, result in chunk:
                expected = serial[i]
                for got, want in zip(result if isinstance(result, tuple) else (result,),
                                     expected if isinstance(expected, tuple) else (expected,)):
                    np.testing.assert_array_equal(got, want)


# ---- the fuzz: any input either gives the oracle's answer or a clear error -----------------------
values = st.sampled_from([0.0, -0.0, 1.0, -2.5, 1e-30, 3e38, -3e38, np.inf, -np.inf, np.nan])
float_dtypes = st.sampled_from([np.float16, np.float32, np.float64])
odd_dtypes = st.sampled_from([np.int32, np.bool_, np.complex64, object, "U3"])


@st.composite
def arrays(draw, shape):
    dtype = draw(st.one_of(float_dtypes, float_dtypes, float_dtypes, odd_dtypes))
    size = int(np.prod(shape))
    raw = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(size)
    if draw(st.booleans()) and size:
        raw[draw(st.integers(0, size - 1))] = draw(values)
    with np.errstate(over="ignore", invalid="ignore"):
        array = raw.reshape(shape).astype(dtype) if dtype is not object else raw.reshape(shape).astype(object)
    if draw(st.booleans()) and array.ndim == 2 and array.shape[1] > 1:
        array = np.asfortranarray(array)
    return array


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_public_calls(data):
    n = data.draw(st.integers(0, 9))
    n_ads = data.draw(st.integers(0, 40))
    users_shape = data.draw(st.sampled_from([(n,), (data.draw(st.integers(0, 5)), n), (2, n + 1), ()]))
    users = data.draw(arrays(users_shape))
    ads = data.draw(arrays((n_ads, n)))
    k = data.draw(st.sampled_from([1, 3, 50, 0, -1, 2.0, True]))
    backend = data.draw(st.sampled_from(["auto", "simd", "numba", "numpy"]))
    call = data.draw(st.sampled_from(["score", "topk", "pairwise", "candidates"]))
    try:
        if call == "score":
            got = sk.score(users, ads, backend=backend)
        elif call == "pairwise":
            got = sk.score(users, ads, pairwise=True, backend=backend)
        elif call == "topk":
            got = sk.topk(users, ads, k, backend=backend)
        else:
            cands = sk.Candidates(ads, dtype=data.draw(st.sampled_from(DTYPES)))
            got = cands.topk(users, k, backend=backend)
    except (TypeError, ValueError):
        return  # a clear error is an allowed outcome; a crash would have ended the process
    u = np.asarray(users, np.float64)
    a = np.asarray(ads, np.float64)
    with np.errstate(all="ignore"):
        if call in ("score", "pairwise"):
            want = np.einsum("ij,ij->i", u, a) if call == "pairwise" else (a @ u.T).T
            got = np.asarray(got, np.float64)
            finite = np.isfinite(want) & (np.abs(want) < 1e30)
            assert got.shape == want.shape
            scale = 1 + np.abs(a[np.isfinite(a)]).sum() * (1 + np.abs(u[np.isfinite(u)]).max(initial=0))
            assert np.allclose(got[finite], want[finite], rtol=1e-3, atol=1e-3 * scale)
        else:
            scores, ids = got
            assert scores.shape == ids.shape and ids.dtype == np.int64
            assert scores.shape[-1] == min(int(k), n_ads)
            if ids.size:
                assert ids.min() >= 0 and ids.max() < n_ads


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_metrics_against_the_reference(data):
    """Every kind, bias, call and storage type on the compiled kernels, with special values in
    the users or ads: finite references are matched, and non-finite inputs never come back
    as finite made-up scores on the rows they touch. (NumPy's own RuntimeWarnings for inf - inf
    in a NumPy fold are its IEEE reporting, so they are let through here.)"""
    n = data.draw(st.integers(1, 70))
    n_ads = data.draw(st.integers(1, 90))
    n_users = data.draw(st.integers(1, 20))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    users = rng.standard_normal((n_users, n)).astype(np.float32)
    ads = rng.standard_normal((n_ads, n)).astype(np.float32)
    special = data.draw(st.sampled_from([None, "user", "ad"]))
    value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if special == "user":
        users[rng.integers(n_users), rng.integers(n)] = value
    elif special == "ad":
        ads[rng.integers(n_ads), rng.integers(n)] = value
    kind = data.draw(st.sampled_from(["dot", "scaled", "diagonal", "low_rank", "full"]))
    bias = data.draw(st.sampled_from([0.0, -1.5, 2.0]))
    rank = data.draw(st.integers(1, max(1, n)))
    metric = {"dot": lambda: sk.Metric.dot(n, bias),
              "scaled": lambda: sk.Metric.scaled(n, 0.5, bias),
              "diagonal": lambda: sk.Metric.diagonal(rng.standard_normal(n), bias),
              "low_rank": lambda: sk.Metric.low_rank(rng.standard_normal((n, rank)), rng.standard_normal((n, rank)),
                                                     d=rng.standard_normal(n), bias=bias),
              "full": lambda: sk.Metric.full(rng.standard_normal((n, n)), bias)}[kind]()
    call = data.draw(st.sampled_from(["score", "pairwise", "topk", "candidates"]))
    if call == "pairwise":
        users = users[:1].repeat(n_ads, 0) if n_users < n_ads else users[:n_ads]
        ads = ads[:users.shape[0]]
    with np.errstate(invalid="ignore", over="ignore"):
        want = np.asarray(sk.score(users, ads, metric, pairwise=call == "pairwise", backend="numpy"), np.float64)
    bad_users = ~np.isfinite(users).all(axis=1)
    bad_ads = ~np.isfinite(ads).all(axis=1)
    if call in ("score", "pairwise"):
        got = np.asarray(sk.score(users, ads, metric, pairwise=call == "pairwise", backend="simd"), np.float64)
        assert got.shape == want.shape
        clean = np.isfinite(want) & (np.abs(want) < 1e30)
        magnitude = 1 + np.abs(users).max(initial=0, where=np.isfinite(users)) ** 2 * n * n * 10
        assert np.allclose(got[clean], want[clean], rtol=1e-3, atol=1e-4 * magnitude)
        touched = (bad_users | bad_ads) if call == "pairwise" else (bad_users[:, None] | bad_ads[None, :])
        assert not np.isfinite(got[touched & ~np.isfinite(want)]).any()
    else:
        k = data.draw(st.integers(1, n_ads))
        if call == "topk":
            scores, ids = sk.topk(users, ads, k, metric, backend="simd")
        else:
            if special == "ad":
                return  # reduced storage refuses non-finite ads (tested apart)
            cands = sk.Candidates(ads, dtype=data.draw(st.sampled_from(DTYPES)))
            scores, ids = cands.topk(users, k, metric, backend="simd")
        assert scores.shape == ids.shape == (n_users, k) and ids.dtype == np.int64
        for row in range(n_users):
            assert len(set(ids[row].tolist())) == k and ids[row].min() >= 0 and ids[row].max() < n_ads
            finite = scores[row][~np.isnan(scores[row])]
            assert np.all(finite[:-1] >= finite[1:]) and np.all(np.isnan(scores[row][len(finite):]))


@pytest.mark.parametrize("kind", ("full", "low_rank", "diagonal"))
def test_strided_single_user_on_the_fast_path(kind):
    """One float32 user that is a strided view goes through the fold's kernel path correctly."""
    rng = np.random.default_rng(3)
    wide = rng.standard_normal((4, 64)).astype(np.float32)
    user = wide[1, ::2]  # (32,), stride 8 bytes
    ads = rng.standard_normal((500, 32)).astype(np.float32)
    metric = {"full": lambda: sk.Metric.full(rng.standard_normal((32, 32))),
              "low_rank": lambda: sk.Metric.low_rank(rng.standard_normal((32, 3)), rng.standard_normal((32, 3)),
                                                     d=np.ones(32)),
              "diagonal": lambda: sk.Metric.diagonal(rng.standard_normal(32))}[kind]()
    want = ads.astype(np.float64) @ (user.astype(np.float64) @ metric.dense().astype(np.float64))
    for backend in ("auto", "simd"):
        np.testing.assert_allclose(sk.score(user, ads, metric, backend=backend), want, rtol=1e-4, atol=1e-3)
        scores, ids = sk.topk(user, ads, 7, metric, backend=backend)
        np.testing.assert_array_equal(ids, np.argsort(-want, kind="stable")[:7])
