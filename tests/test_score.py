"""sk.score on every backend x ISA x metric kind x mode against the float64 oracle, plus layouts,
input dtypes, out=, threads and empty inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import splitnet_kernels as sk

from conftest import (KINDS, SIZES, SUPPORTED_ISAS, assert_within, backend_available, make_metric,
                      reference_scores, sigmoid_tolerance, to_numpy, tolerance, using_isa)

MODES = ("one", "cross", "cross_single_user", "pairwise")
BIAS = -0.6875  # exact in float32


def _shapes(mode: str, n: int):
    """(users shape, ads shape) for a mode; N and M vary with n but stay small (1..70)."""
    count = 1 + (13 * n) % 70
    users = {"one": (n,), "cross": (1 + n % 9, n), "cross_single_user": (1, n), "pairwise": (count, n)}[mode]
    return users, (count, n)


def _data(rng, mode, n):
    users_shape, ads_shape = _shapes(mode, n)
    users = rng.standard_normal(users_shape).astype(np.float32)
    ads = rng.standard_normal(ads_shape).astype(np.float32)
    return users, ads


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_score_matches_oracle(backend, kind, mode, n, rng):
    metric = make_metric(kind, n, rng, bias=BIAS)
    users, ads = _data(rng, mode, n)
    pairwise = mode == "pairwise"
    got = sk.score(users, ads, metric, pairwise=pairwise, backend=backend)
    assert isinstance(got, np.ndarray)
    expected = reference_scores(users, ads, metric, pairwise)
    assert_within(got, expected, tolerance(users, ads, metric, pairwise))


@pytest.mark.parametrize("n", (1, 7, 33, 127))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_sigmoid_matches_oracle(backend, kind, mode, n, rng):
    metric = make_metric(kind, n, rng, bias=0.8125)
    users, ads = _data(rng, mode, n)
    pairwise = mode == "pairwise"
    got = sk.score(users, ads, metric, pairwise=pairwise, sigmoid=True, backend=backend)
    expected = reference_scores(users, ads, metric, pairwise, sigmoid=True)
    tol = sigmoid_tolerance(tolerance(users, ads, metric, pairwise), expected)
    assert_within(got, expected, tol, "probabilities")
    assert np.all((to_numpy(got) >= 0) & (to_numpy(got) <= 1))


def test_sigmoid_is_stable_for_large_scores(backend):
    ads = np.array([[100.0], [-80.0], [0.0], [-20.0], [-1000.0], [1e30], [-1e30]], np.float32)
    got = to_numpy(sk.score(np.ones(1, np.float32), ads, sigmoid=True, backend=backend))
    assert np.all(np.isfinite(got))
    assert got[0] == 1.0 and got[2] == 0.5 and got[5] == 1.0
    assert 0 <= got[4] <= 1e-38 and 0 <= got[6] <= 1e-38
    # small (normal float32) probabilities keep their relative precision instead of flushing to 0
    np.testing.assert_allclose(got[[1, 3]], [np.exp(-80.0), 1 / (1 + np.exp(20.0))], rtol=1e-5)


def test_metric_none_is_dot_with_no_bias(backend, rng):
    users, ads = rng.standard_normal((3, 9)).astype(np.float32), rng.standard_normal((11, 9)).astype(np.float32)
    got = sk.score(users, ads, backend=backend)
    assert_within(got, users.astype(np.float64) @ ads.T.astype(np.float64), tolerance(users, ads))


@pytest.mark.parametrize("kind", KINDS)
def test_large_candidate_set_split_across_threads(backend, kind, rng):
    # big enough that the simd backend splits the candidates across its thread pool
    n, count = 64, 12_000
    metric = make_metric(kind, n, rng, bias=BIAS)
    users = rng.standard_normal(n).astype(np.float32)
    ads = rng.standard_normal((count, n)).astype(np.float32)
    for threads in (1, 2):
        got = sk.score(users, ads, metric, backend=backend, threads=threads)
        assert_within(got, reference_scores(users, ads, metric), tolerance(users, ads, metric))
    users2 = rng.standard_normal((40, n)).astype(np.float32)
    got = sk.score(users2, ads[:3000], metric, backend=backend, threads=2)
    assert_within(got, reference_scores(users2, ads[:3000], metric), tolerance(users2, ads[:3000], metric))
    pairs = rng.standard_normal((count, n)).astype(np.float32)
    got = sk.score(pairs, ads, metric, pairwise=True, backend=backend, threads=2)
    assert_within(got, reference_scores(pairs, ads, metric, True), tolerance(pairs, ads, metric, True))


# ---- layouts and input types ------------------------------------------------------------------
def _unaligned(array: np.ndarray, offset: int) -> np.ndarray:
    """A float32 copy of array whose data pointer is `offset` bytes past a 4-byte boundary."""
    array = np.ascontiguousarray(array, np.float32)
    buffer = np.zeros(array.nbytes + 8, np.uint8)
    start = (-buffer.ctypes.data) % 4 + offset  # a 4-aligned start, then pushed off by `offset`
    view = np.ndarray(array.shape, np.float32, buffer=buffer, offset=start)
    view[...] = array
    assert view.ctypes.data % 4 == offset and not view.flags.aligned
    return view


def _layouts(users, ads):
    """(label, users, ads) variants that hold the same numbers as the contiguous users, ads."""
    wide_ads = np.zeros((ads.shape[0], 2 * ads.shape[1]), np.float32)
    wide_ads[:, ::2] = ads
    tall_ads = np.zeros((3 * ads.shape[0], ads.shape[1]), np.float32)
    tall_ads[::3] = ads
    wide_users = np.zeros(users.shape[:-1] + (2 * users.shape[-1],), np.float32)
    wide_users[..., ::2] = users
    read_only_users, read_only_ads = users.copy(), ads.copy()
    read_only_users.flags.writeable = False
    read_only_ads.flags.writeable = False
    yield "column_stride", wide_users[..., ::2], wide_ads[:, ::2]
    yield "row_stride", users, tall_ads[::3]
    yield "fortran", np.asfortranarray(users), np.asfortranarray(ads)
    yield "transposed_view", users, np.ascontiguousarray(ads.T).T
    yield "read_only", read_only_users, read_only_ads
    yield "unaligned_1", _unaligned(users, 1), _unaligned(ads, 1)
    yield "unaligned_2", _unaligned(users, 2), _unaligned(ads, 2)
    yield "lists", users.tolist(), ads.tolist()
    yield "float64", users.astype(np.float64), ads.astype(np.float64)


@pytest.mark.parametrize("mode", ("one", "cross", "pairwise"))
@pytest.mark.parametrize("kind", ("dot", "full", "low_rank"))
def test_layouts_give_the_same_answers(backend, kind, mode, rng):
    n = 33
    metric = make_metric(kind, n, rng, bias=BIAS)
    users, ads = _data(rng, mode, n)
    pairwise = mode == "pairwise"
    baseline = to_numpy(sk.score(users, ads, metric, pairwise=pairwise, backend=backend))
    expected = reference_scores(users, ads, metric, pairwise)
    tol = tolerance(users, ads, metric, pairwise)
    for label, u, a in _layouts(users, ads):
        got = sk.score(u, a, metric, pairwise=pairwise, backend=backend)
        assert_within(got, expected, tol, f"layout {label}")
        assert_within(got, baseline.astype(np.float64), 2 * tol, f"layout {label} vs contiguous")


def test_inputs_are_not_modified(backend, rng):
    metric = make_metric("full", 8, rng, bias=BIAS)
    users, ads = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((20, 8)).astype(np.float32)
    users_copy, ads_copy = users.copy(), ads.copy()
    sk.score(users, ads, metric, backend=backend, sigmoid=True)
    sk.topk(users, ads, 5, metric, backend=backend, sigmoid=True)
    assert np.array_equal(users, users_copy) and np.array_equal(ads, ads_copy)


def test_negative_strides(backend, rng):
    metric = make_metric("diagonal", 15, rng, bias=BIAS)
    users, ads = rng.standard_normal((4, 15)).astype(np.float32), rng.standard_normal((30, 15)).astype(np.float32)
    u, a = users[::-1, ::-1], ads[::-1, ::-1]
    got = sk.score(u, a, sk.Metric.diagonal(metric.params["s"][::-1], bias=BIAS), backend=backend)
    expected = reference_scores(users, ads, metric)[::-1, ::-1]
    assert_within(got, expected, tolerance(users, ads, metric)[::-1, ::-1])


@pytest.mark.parametrize("dtype", (np.float16, np.float64))
@pytest.mark.parametrize("mode", ("one", "cross", "pairwise"))
def test_float16_and_float64_inputs(backend, dtype, mode, rng):
    n = 17
    metric = make_metric("low_rank", n, rng, bias=BIAS)
    users, ads = _data(rng, mode, n)
    users, ads = users.astype(dtype), ads.astype(dtype)
    pairwise = mode == "pairwise"
    got = sk.score(users, ads, metric, pairwise=pairwise, backend=backend)
    assert to_numpy(got).dtype == np.float32
    assert_within(got, reference_scores(users, ads, metric, pairwise), tolerance(users, ads, metric, pairwise))
    # mixed precision: one side float16, the other float32
    got = sk.score(users.astype(np.float32), ads, metric, pairwise=pairwise, backend=backend)
    assert_within(got, reference_scores(users, ads, metric, pairwise), tolerance(users, ads, metric, pairwise))


def test_zero_and_denormal_inputs(backend):
    ads = np.zeros((5, 7), np.float32)
    ads[1, 3] = np.float32(1e-40)  # denormal
    got = to_numpy(sk.score(np.ones(7, np.float32), ads, backend=backend))
    assert got.dtype == np.float32
    assert np.all(np.abs(got) <= 1e-39)
    assert np.all(got[[0, 2, 3, 4]] == 0)


# ---- full pairs: folded, then dotted ----------------------------------------------------------
def _folded_then_dotted(users, ads, metric):
    """The bits full pairs promise: each user folded by the kernels' fold (the one summation
    order), then dotted with its ad by the pairwise kernel of a dot metric with the same bias."""
    from splitnet_kernels.backends._simd import fold

    folded = fold(np.ascontiguousarray(users, np.float32), metric)
    return sk.score(folded, ads, sk.Metric.dot(metric.dim, bias=metric.bias), pairwise=True, backend="simd")


@pytest.mark.skipif(not backend_available("simd"), reason="the compiled kernels are not built")
@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_full_pairs_are_the_folded_users_dotted(isa, data):
    """Full pairs (fused on AVX-512: U S stays in registers) have the bits of the fold, then the
    pairwise dot, on every ISA, any count and n (lane tails), every layout (strided, unaligned),
    one thread or two, with non-finite users; and the oracle's numbers to rounding."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    count, n = data.draw(st.integers(1, 300)), data.draw(st.integers(1, 150))
    users = rng.standard_normal((count, n)).astype(np.float32)
    ads = rng.standard_normal((count, n)).astype(np.float32)
    metric = sk.Metric.full(rng.standard_normal((n, n)) / np.sqrt(n), bias=BIAS)
    with using_isa(isa):
        want = _folded_then_dotted(users, ads, metric)
        assert_within(want, reference_scores(users, ads, metric, True), tolerance(users, ads, metric, True))
        for label, u, a in _layouts(users, ads):
            for threads in (1, 2):
                got = sk.score(u, a, metric, pairwise=True, backend="simd", threads=threads)
                np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"{label}, {threads}")
        users[count // 2, n // 2] = np.inf  # NaN where S's padding columns meet it, never read
        users[count - 1, 0] = np.nan
        got = sk.score(users, ads, metric, pairwise=True, backend="simd")
        np.testing.assert_array_equal(got, _folded_then_dotted(users, ads, metric))


# ---- out= -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ("one", "cross", "pairwise"))
def test_out_is_filled_and_returned(any_backend, mode, rng):
    n = 15
    metric = make_metric("full", n, rng, bias=BIAS)
    users, ads = _data(rng, mode, n)
    pairwise = mode == "pairwise"
    expected_shape = (ads.shape[0],) if users.ndim == 1 or pairwise else (users.shape[0], ads.shape[0])
    out = np.full(expected_shape, np.nan, np.float32)
    result = sk.score(users, ads, metric, pairwise=pairwise, backend=any_backend, out=out)
    assert result is out
    assert_within(out, reference_scores(users, ads, metric, pairwise), tolerance(users, ads, metric, pairwise))
    # sigmoid goes into out as well
    result = sk.score(users, ads, metric, pairwise=pairwise, sigmoid=True, backend=any_backend, out=out)
    assert result is out
    expected = reference_scores(users, ads, metric, pairwise, sigmoid=True)
    assert_within(out, expected, sigmoid_tolerance(tolerance(users, ads, metric, pairwise), expected))


def test_out_non_contiguous_view(any_backend, rng):
    users, ads = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32)
    big = np.zeros((3, 16), np.float32)
    view = big[:, ::2]
    result = sk.score(users, ads, backend=any_backend, out=view)
    assert result is view
    assert_within(big[:, ::2], reference_scores(users, ads), tolerance(users, ads))
    assert np.all(big[:, 1::2] == 0), "wrote outside the out view"


def test_out_errors(any_backend, rng):
    users, ads = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="out"):
        sk.score(users, ads, backend=any_backend, out=np.empty((8, 3), np.float32))
    with pytest.raises(ValueError, match="out"):
        sk.score(users, ads, backend=any_backend, out=np.empty(24, np.float32))
    with pytest.raises(ValueError, match="out"):
        sk.score(users[0], ads, backend=any_backend, out=np.empty((1, 8), np.float32))
    with pytest.raises(TypeError, match="out"):
        sk.score(users, ads, backend=any_backend, out=np.empty((3, 8), np.float64))
    with pytest.raises(TypeError, match="out"):
        sk.score(users, ads, backend=any_backend, out=np.empty((3, 8), np.int32))
    with pytest.raises(TypeError, match="out"):
        sk.score(users, ads, backend=any_backend, out=[[0.0] * 8] * 3)
    read_only = np.empty((3, 8), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        sk.score(users, ads, backend=any_backend, out=read_only)


def test_out_overlapping_inputs_is_not_silently_wrong(any_backend, rng):
    # out aliasing an input: either a correct answer or a clear error, never garbage
    ads = rng.standard_normal((6, 6)).astype(np.float32)
    users = rng.standard_normal(6).astype(np.float32)
    expected = reference_scores(users, ads)
    tol = tolerance(users, ads)
    alias = users.copy()
    try:
        result = sk.score(alias, ads, backend=any_backend, out=alias)
    except ValueError:
        return
    assert result is alias
    assert_within(result, expected, tol)


# ---- threads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ("one", "cross", "pairwise"))
def test_threads_one_and_two_agree(any_backend, mode, rng):
    n = 64
    metric = make_metric("low_rank", n, rng, bias=BIAS)
    count = 5000
    users = rng.standard_normal({"one": (n,), "cross": (7, n), "pairwise": (count, n)}[mode]).astype(np.float32)
    ads = rng.standard_normal((count, n)).astype(np.float32)
    pairwise = mode == "pairwise"
    one = sk.score(users, ads, metric, pairwise=pairwise, backend=any_backend, threads=1)
    two = sk.score(users, ads, metric, pairwise=pairwise, backend=any_backend, threads=2)
    tol = tolerance(users, ads, metric, pairwise)
    assert_within(one, reference_scores(users, ads, metric, pairwise), tol)
    assert_within(two, to_numpy(one).astype(np.float64), 2 * tol, "threads=2 vs threads=1")
    many = sk.score(users, ads, metric, pairwise=pairwise, backend=any_backend, threads=64)
    assert_within(many, to_numpy(one).astype(np.float64), 2 * tol, "threads=64 vs threads=1")


@pytest.mark.parametrize("threads", (0, -1))
def test_threads_must_be_positive(any_backend, threads):
    with pytest.raises(ValueError, match="threads"):
        sk.score(np.ones(3), np.ones((4, 3)), backend=any_backend, threads=threads)
    with pytest.raises(ValueError, match="threads"):
        sk.topk(np.ones(3), np.ones((4, 3)), 2, backend=any_backend, threads=threads)


@pytest.mark.parametrize("threads", (1.5, True, "2", 2.0))
def test_threads_must_be_an_integer(any_backend, threads):
    with pytest.raises(TypeError, match="threads"):
        sk.score(np.ones(3), np.ones((4, 3)), backend=any_backend, threads=threads)
    with pytest.raises(TypeError, match="threads"):
        sk.topk(np.ones(3), np.ones((4, 3)), 2, backend=any_backend, threads=threads)


def test_threads_numpy_integer_accepted(any_backend):
    got = sk.score(np.ones(3, np.float32), np.ones((4, 3), np.float32), backend=any_backend, threads=np.int64(2))
    assert np.array_equal(to_numpy(got), np.full(4, 3.0, np.float32))


# ---- empty inputs ----------------------------------------------------------------------------
def test_empty_candidates(any_backend):
    empty = np.zeros((0, 4), np.float32)
    got = sk.score(np.ones(4, np.float32), empty, backend=any_backend)
    assert to_numpy(got).shape == (0,) and to_numpy(got).dtype == np.float32
    got = sk.score(np.ones((3, 4), np.float32), empty, backend=any_backend)
    assert to_numpy(got).shape == (3, 0) and to_numpy(got).dtype == np.float32
    got = sk.score(np.ones((0, 4), np.float32), empty, pairwise=True, backend=any_backend)
    assert to_numpy(got).shape == (0,)
    got = sk.score(np.ones((0, 4), np.float32), np.ones((5, 4), np.float32), backend=any_backend)
    assert to_numpy(got).shape == (0, 5)


# ---- torch -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name", ("auto", "torch", "simd", "numpy", "numba"))
@pytest.mark.parametrize("mode", ("one", "cross", "pairwise"))
def test_torch_tensors_in_tensors_out(backend_name, mode, rng):
    torch = pytest.importorskip("torch")
    if backend_name != "auto" and not backend_available(backend_name):
        pytest.skip(f"backend {backend_name} not available")
    n = 17
    metric = make_metric("full", n, rng, bias=BIAS)
    users, ads = _data(rng, mode, n)
    pairwise = mode == "pairwise"
    got = sk.score(torch.from_numpy(users), torch.from_numpy(ads), metric, pairwise=pairwise, backend=backend_name)
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert_within(got, reference_scores(users, ads, metric, pairwise), tolerance(users, ads, metric, pairwise))
    # mixed: a tensor on one side, numpy on the other -> a tensor
    got = sk.score(torch.from_numpy(users), ads, metric, pairwise=pairwise, backend=backend_name)
    assert isinstance(got, torch.Tensor)
    # out= with tensors
    out = torch.empty(tuple(got.shape), dtype=torch.float32)
    result = sk.score(torch.from_numpy(users), torch.from_numpy(ads), metric, pairwise=pairwise,
                      backend=backend_name, out=out)
    assert result is out
    assert_within(out, reference_scores(users, ads, metric, pairwise), tolerance(users, ads, metric, pairwise))


def test_torch_other_dtypes_and_grad(rng):
    torch = pytest.importorskip("torch")
    users = rng.standard_normal((2, 9)).astype(np.float32)
    ads = rng.standard_normal((5, 9)).astype(np.float32)
    u16 = torch.from_numpy(users).to(torch.bfloat16)
    a64 = torch.from_numpy(ads).to(torch.float64).requires_grad_(True)
    for backend_name in ("auto", "torch", "numpy"):
        got = sk.score(u16, a64, backend=backend_name)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        u = u16.to(torch.float64).numpy()
        assert_within(got, reference_scores(u, ads), tolerance(u, ads))


def test_torch_non_contiguous_tensors(rng):
    torch = pytest.importorskip("torch")
    ads = torch.from_numpy(rng.standard_normal((12, 10)).astype(np.float32))
    users = torch.from_numpy(rng.standard_normal((3, 10)).astype(np.float32))
    for backend_name in ("auto", "torch", "numpy"):
        got = sk.score(users[:, ::2], ads[::2, ::2], backend=backend_name)
        u, a = users[:, ::2].numpy(), ads[::2, ::2].numpy()
        assert_within(got, reference_scores(u, a), tolerance(u, a))
        got = sk.score(users, ads.t().contiguous().t(), backend=backend_name)
        assert_within(got, reference_scores(users.numpy(), ads.numpy()), tolerance(users.numpy(), ads.numpy()))


@pytest.mark.parametrize("n, m", ((64, 150), (300, 40), (3, 300)))
@pytest.mark.parametrize("kind", ("dot", "full"))
def test_many_users_span_several_user_blocks(backend, kind, n, m, rng):
    metric = make_metric(kind, n, rng, bias=BIAS)
    users = rng.standard_normal((m, n)).astype(np.float32)
    ads = rng.standard_normal((70, n)).astype(np.float32)
    got = sk.score(users, ads, metric, backend=backend)
    assert_within(got, reference_scores(users, ads, metric), tolerance(users, ads, metric))


def _one_cross_and_pairwise_match_the_oracle(metric, backend, rng):
    """One user, 37 users and 37 pairs against the float64 oracle."""
    users = rng.standard_normal((37, metric.dim)).astype(np.float32)
    ads = rng.standard_normal((37, metric.dim)).astype(np.float32)
    for args, pairwise in (((users[3], ads), False), ((users, ads), False), ((users, ads), True)):
        got = sk.score(*args, metric, pairwise=pairwise, backend=backend)
        assert_within(got, reference_scores(*args, metric, pairwise=pairwise),
                      tolerance(*args, metric, pairwise=pairwise))


@pytest.mark.parametrize("n", (16, 64))
def test_full_with_lane_multiple_dims(backend, n, rng):
    # n a multiple of 16: the folds and the fused pairwise kernel read S in place, unpadded
    _one_cross_and_pairwise_match_the_oracle(make_metric("full", n, rng, bias=BIAS), backend, rng)


@pytest.mark.parametrize("rank", (1, 16, 17, 32, 49, 70))
@pytest.mark.parametrize("with_d", (False, True))
def test_low_rank_of_any_rank(backend, rank, with_d, rng):
    # the folds and the fused pairwise kernel pack P and Q in column blocks of 16, 32 and 48
    n = 70
    P, Q = rng.standard_normal((n, rank)) / np.sqrt(rank), rng.standard_normal((n, rank)) / np.sqrt(rank)
    metric = sk.Metric.low_rank(P, Q, d=rng.standard_normal(n) if with_d else None, bias=BIAS)
    _one_cross_and_pairwise_match_the_oracle(metric, backend, rng)


# ---- concurrency -------------------------------------------------------------------------------
_CONCURRENT_CALLS = """
import sys, threading
import numpy as np, splitnet_kernels as sk
backend = {backend!r}
rng = np.random.default_rng(0)
ads = rng.standard_normal((20000, 32)).astype(np.float32)
users = rng.standard_normal((6, 32)).astype(np.float32)
metric = sk.Metric.diagonal(rng.standard_normal(32), bias=0.5)
expected = [sk.score(users[i], ads, metric, backend=backend) for i in range(6)]
expected_cross = sk.score(users, ads[:500], metric, backend=backend)
expected_top = [sk.topk(users[i], ads, 10, metric, backend=backend) for i in range(6)]
errors = []
def work(i):
    try:
        for _ in range(4):
            assert np.array_equal(sk.score(users[i], ads, metric, backend=backend, threads=2), expected[i])
            assert np.array_equal(sk.score(users, ads[:500], metric, backend=backend), expected_cross)
            scores, ids = sk.topk(users[i], ads, 10, metric, backend=backend, threads=2)
            assert np.array_equal(ids, expected_top[i][1]) and np.array_equal(scores, expected_top[i][0])
    except Exception as error:
        errors.append(repr(error))
threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
for t in threads: t.start()
for t in threads: t.join()
print("ERRORS " + "; ".join(errors[:3]) if errors else "OK")
"""


def test_calls_from_many_python_threads(backend):
    """Concurrent calls give the single-threaded answers. In a subprocess: a threading-layer abort
    (a crash) must fail this test, not end the whole run."""
    import os
    import pathlib
    import subprocess
    import sys

    code = _CONCURRENT_CALLS.format(backend=backend)
    if backend == "simd":
        code = code.replace("import numpy as np, splitnet_kernels as sk",
                            f"import numpy as np, splitnet_kernels as sk; sk.set_isa({sk.info()['isa_active']!r})")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pathlib.Path(sk.__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip() == "OK", done.stdout
