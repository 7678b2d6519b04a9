"""sk.Candidates: float32 storage equals sk.score; reduced-precision storage stays within its own
rounding error and keeps top-k recall; same shapes and contract as sk.score / sk.topk."""

from __future__ import annotations

import numpy as np
import pytest

import splitnet_kernels as sk

from conftest import (EPS32, assert_within, make_metric, reference_scores, sigmoid_tolerance, to_numpy,
                      tolerance, using_isa, _abs_metric)

DTYPES = ("float32", "float16", "bfloat16", "int8")


def _storage_error(users, ads, metric, dtype):
    """Bound on |score(stored ads) - score(ads)|: |folded user| . |per-element storage error|.

    float16: round to nearest, 2^-11 relative (plus 2^-25 absolute for float16 subnormals);
    bfloat16: 2^-8 relative (8 significant bits, kept generous by one bit); int8: row scale / 2
    per element (scale = max |row| / 127), plus float32 rounding of q * scale; and, since the
    int8 kernels quantize the folded query the same way, max |folded| / 254 per element of the
    stored row on the query side.
    """
    folded = np.abs(np.asarray(users, np.float64)) @ _abs_metric(metric)
    a = np.abs(np.asarray(ads, np.float64))
    if dtype == "int8":
        query_step = np.abs(np.atleast_2d(folded)).max(axis=1, keepdims=True) / 254.0
        query_side = (query_step * 1.01) @ (a.sum(axis=1, keepdims=True).T * (1 + 2.0**-7))
        query_side = query_side.reshape(np.shape(folded)[:-1] + (a.shape[0],))
    else:
        query_side = 0.0
    if dtype == "float32":
        per_element = np.zeros_like(a)
    elif dtype == "float16":
        per_element = a * 2.0**-11 + 2.0**-25
    elif dtype == "bfloat16":
        per_element = a * 2.0**-8
    else:
        scale = a.max(axis=1, keepdims=True) / 127.0
        per_element = np.broadcast_to(scale / 2, a.shape) + a * 2.0**-23
    return 1.01 * (folded @ per_element.T) + query_side


def _data(rng, users_shape, count=300, n=24):
    return (rng.standard_normal(users_shape).astype(np.float32),
            rng.standard_normal((count, n)).astype(np.float32))


def test_properties(rng):
    users, ads = _data(rng, (24,), 50, 24)
    # rows are stored padded to 64 elements
    expected_bytes = {"float32": 50 * 64 * 4, "float16": 50 * 64 * 2, "bfloat16": 50 * 64 * 2,
                      "int8": 50 * 64 + 50 * 4}
    for dtype in DTYPES:
        cands = sk.Candidates(ads, dtype=dtype)
        assert len(cands) == 50 and cands.dim == 24 and cands.dtype == dtype
        assert cands.nbytes == expected_bytes[dtype]
        assert dtype in repr(cands)
    assert sk.Candidates(ads).dtype == "float32"


def test_candidates_copy_their_input(rng):
    _, ads = _data(rng, (24,), 20, 24)
    cands = sk.Candidates(ads)
    before = to_numpy(cands.score(np.ones(24, np.float32)))
    ads[:] = 0.0
    np.testing.assert_array_equal(to_numpy(cands.score(np.ones(24, np.float32))), before)


@pytest.mark.parametrize("kind", ("dot", "diagonal", "full", "low_rank"))
@pytest.mark.parametrize("users_2d", (False, True))
def test_float32_storage_equals_score(backend, kind, users_2d, rng):
    users, ads = _data(rng, (5, 24) if users_2d else (24,))
    metric = make_metric(kind, 24, rng, bias=0.25)
    cands = sk.Candidates(ads, dtype="float32")
    np.testing.assert_array_equal(to_numpy(cands.score(users, metric, backend=backend)),
                                  to_numpy(sk.score(users, ads, metric, backend=backend)))
    got = cands.topk(users, 17, metric, backend=backend)
    expected = sk.topk(users, ads, 17, metric, backend=backend)
    np.testing.assert_array_equal(to_numpy(got[1]), to_numpy(expected[1]))
    np.testing.assert_array_equal(to_numpy(got[0]), to_numpy(expected[0]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ("dot", "diagonal", "full", "low_rank"))
@pytest.mark.parametrize("users_2d", (False, True))
def test_reduced_storage_within_rounding(backend, dtype, kind, users_2d, rng):
    users, ads = _data(rng, (5, 24) if users_2d else (24,))
    metric = make_metric(kind, 24, rng, bias=-0.5)
    cands = sk.Candidates(ads, dtype=dtype)
    got = cands.score(users, metric, backend=backend)
    assert to_numpy(got).dtype == np.float32
    assert to_numpy(got).shape == ((5, 300) if users_2d else (300,))
    tol = tolerance(users, ads, metric) + _storage_error(users, ads, metric, dtype)
    assert_within(got, reference_scores(users, ads, metric), tol)
    rows = cands.rows()
    assert rows.dtype == np.float32 and rows.shape == ads.shape
    # the widened rows score within float32 accumulation of the stored set (exactly, on the
    # backends that widen; the simd kernels widen in registers, and quantize the int8 query)
    widened = to_numpy(sk.score(users, rows, metric, backend=backend))
    query_side = _storage_error(users, ads, metric, dtype) if dtype == "int8" else 0.0
    assert_within(got, widened, 2 * tolerance(users, ads, metric) + query_side)
    # top-k agrees with the set's own scores
    scores, ids = (to_numpy(x) for x in cands.topk(users, 20, metric, backend=backend))
    own = np.atleast_2d(to_numpy(got)).astype(np.float64)
    for row in range(own.shape[0]):
        np.testing.assert_array_equal(np.atleast_2d(ids)[row], np.lexsort((np.arange(300), -own[row]))[:20])
        np.testing.assert_array_equal(np.atleast_2d(scores)[row], own[row][np.atleast_2d(ids)[row]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_users_span_user_blocks(backend, dtype, rng):
    # 130 users: two user blocks of the cross tile, over 16-bit rows widened a tile at a time
    users, ads = _data(rng, (130, 24), 200)
    metric = make_metric("full", 24, rng, bias=0.5)
    cands = sk.Candidates(ads, dtype=dtype)
    got = cands.score(users, metric, backend=backend)
    tol = tolerance(users, ads, metric) + _storage_error(users, ads, metric, dtype)
    assert_within(got, reference_scores(users, ads, metric), tol)
    scores, ids = (to_numpy(x) for x in cands.topk(users, 7, metric, backend=backend))
    own = to_numpy(got).astype(np.float64)
    for row in range(0, 130, 13):
        np.testing.assert_array_equal(ids[row], np.lexsort((np.arange(200), -own[row]))[:7])
        np.testing.assert_array_equal(scores[row], own[row][ids[row]])


@pytest.mark.parametrize("isa", sk.info()["isa_supported"])
@pytest.mark.parametrize("dim", (4, 70, 129))
def test_int8_many_users_match_one_user_at_a_time(isa, dim, rng):
    # the int8 cross tile (vpdpbusd) and the one-user kernel take the same exact integer sums:
    # only the scaling's float32 rounding may differ. Raw rows of any width, tails included.
    core = sk._core
    with using_isa(isa):
        _int8_many_against_one(core, dim, rng)


def _int8_many_against_one(core, dim, rng):
    n_users, count, bias = 37, 203, 0.375
    data = rng.integers(-127, 128, (count, dim)).astype(np.int8)
    scales = rng.uniform(0.5, 2.0, count).astype(np.float32)
    users = rng.standard_normal((n_users, dim)).astype(np.float32)
    users[3] = 0.0  # an all-zero user: scale 0, every score the bias
    cross = np.empty((n_users, count), np.float32)
    dot = (np.ones(dim, np.float32), None, None)  # the binding's metric form of a dot product
    core.score(users, data, "int8", scales, None, *dot, bias, cross, 2)
    one = np.empty_like(cross)
    for u in range(n_users):
        core.score(users[u], data, "int8", scales, None, *dot, bias, one[u], 1)
    np.testing.assert_allclose(cross, one, rtol=4 * EPS32, atol=4 * EPS32 * abs(bias))
    assert np.all(cross[3] == np.float32(bias))
    scores, ids = np.empty((n_users, 9), np.float32), np.empty((n_users, 9), np.int64)
    core.topk(users, data, "int8", scales, None, *dot, bias, 9, scores, ids, 2)
    for u in range(n_users):
        np.testing.assert_array_equal(ids[u], np.lexsort((np.arange(count), -cross[u].astype(np.float64)))[:9])


@pytest.mark.parametrize("dtype", DTYPES)
def test_users_with_nan_or_infinity(backend, dtype, rng):
    # a non-finite user gives what float32 arithmetic gives over the stored rows, never finite
    # numbers made up by a split or quantized query (int8 kernels, which quantize the query,
    # give NaN: no int8 query stands for infinity)
    _, ads = _data(rng, (24,), 50)
    cands = sk.Candidates(ads, dtype=dtype)
    users = rng.standard_normal((3, 24)).astype(np.float32)
    users[0, 5], users[1, 7] = np.nan, np.inf
    for u in (users, users[0], users[1]):
        got = np.atleast_2d(to_numpy(cands.score(u, backend=backend)))
        with np.errstate(invalid="ignore"):  # inf * 0 in the float64 reference
            expected = np.atleast_2d(to_numpy(sk.score(u, cands.rows(), backend="numpy")))
        bad_user = ~np.isfinite(np.atleast_2d(u)).all(axis=1)
        assert np.isfinite(got[~bad_user]).all() and not np.isfinite(got[bad_user]).any()
        if dtype != "int8":
            np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
            np.testing.assert_array_equal(got[np.isinf(expected)], expected[np.isinf(expected)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_within_storage_rounding(dtype, rng):
    _, ads = _data(rng, (24,), 100, 24)
    ads[3] = 0.0  # an all-zero row must not divide by zero
    rows = sk.Candidates(ads, dtype=dtype).rows().astype(np.float64)
    assert np.all(np.isfinite(rows))
    assert np.all(rows[3] == 0)
    if dtype == "int8":
        step = np.abs(ads).max(axis=1, keepdims=True) / 127.0
        assert np.all(np.abs(rows - ads) <= step / 2 * (1 + 1e-5) + 1e-30)
    elif dtype == "bfloat16":
        assert np.all(np.abs(rows - ads) <= np.abs(ads) * 2.0**-8)
    elif dtype == "float16":
        assert np.all(np.abs(rows - ads) <= np.abs(ads) * 2.0**-11 + 2.0**-25)
    else:
        assert np.array_equal(rows, ads)


@pytest.mark.parametrize("dtype, minimum_recall", [("float32", 1.0), ("float16", 0.97), ("bfloat16", 0.85),
                                                   ("int8", 0.85)])
def test_topk_recall(backend, dtype, minimum_recall, rng):
    n, count, k = 64, 4000, 50
    users = rng.standard_normal((4, n)).astype(np.float32)
    ads = rng.standard_normal((count, n)).astype(np.float32)
    exact_ids = to_numpy(sk.topk(users, ads, k, backend="numpy")[1])
    ids = to_numpy(sk.Candidates(ads, dtype=dtype).topk(users, k, backend=backend)[1])
    for row in range(users.shape[0]):
        recall = len(set(ids[row].tolist()) & set(exact_ids[row].tolist())) / k
        assert recall >= minimum_recall, f"{dtype}: recall@{k} {recall} for user {row}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_out_and_threads(any_backend, dtype, rng):
    users, ads = _data(rng, (3, 24))
    metric = make_metric("diagonal", 24, rng, bias=0.125)
    cands = sk.Candidates(ads, dtype=dtype)
    out = np.full((3, 300), np.nan, np.float32)
    result = cands.score(users, metric, sigmoid=True, backend=any_backend, out=out, threads=2)
    assert result is out
    expected = reference_scores(users, ads, metric, sigmoid=True)
    tol = sigmoid_tolerance(tolerance(users, ads, metric) + _storage_error(users, ads, metric, dtype), expected)
    assert_within(out, expected, tol)
    with pytest.raises(ValueError, match="out"):
        cands.score(users, metric, backend=any_backend, out=np.empty((300, 3), np.float32))
    one = cands.topk(users, 9, metric, backend=any_backend, threads=1)
    two = cands.topk(users, 9, metric, backend=any_backend, threads=2)
    np.testing.assert_array_equal(to_numpy(one[1]), to_numpy(two[1]))
    probs, ids = cands.topk(users, 9, metric, sigmoid=True, backend=any_backend)
    all_probs = to_numpy(cands.score(users, metric, sigmoid=True, backend=any_backend))
    order = np.lexsort((np.broadcast_to(np.arange(300), all_probs.shape), -all_probs))[:, :9]
    np.testing.assert_array_equal(to_numpy(ids), order)  # ranked by probability, ties by index
    np.testing.assert_array_equal(to_numpy(probs), np.take_along_axis(all_probs, order, 1))
    assert np.all((to_numpy(probs) > 0) & (to_numpy(probs) <= 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_candidates(any_backend, dtype):
    cands = sk.Candidates(np.zeros((0, 8), np.float32), dtype=dtype)
    assert len(cands) == 0 and cands.dim == 8
    assert to_numpy(cands.score(np.ones(8, np.float32), backend=any_backend)).shape == (0,)
    assert to_numpy(cands.score(np.ones((2, 8), np.float32), backend=any_backend)).shape == (2, 0)
    scores, ids = cands.topk(np.ones((2, 8), np.float32), 3, backend=any_backend)
    assert to_numpy(scores).shape == (2, 0) and to_numpy(ids).shape == (2, 0)
    assert to_numpy(ids).dtype == np.int64


@pytest.mark.parametrize("dtype", DTYPES)
def test_k_larger_than_n_and_ties(any_backend, dtype, rng):
    # integers in [-127, 127] with every row peaking at 127 are exact in every storage type
    # (int8 scale is then exactly 1), so all backends see the same exact scores and real ties
    ads = rng.integers(-3, 4, (40, 6)).astype(np.float32)
    ads[:, 0] = 127.0
    users = rng.integers(-2, 3, (3, 6)).astype(np.float32)
    users[:, 1] = 127.0  # so the int8 kernels' query quantization is exact too
    cands = sk.Candidates(ads, dtype=dtype)
    assert np.array_equal(cands.rows(), ads)
    full = to_numpy(sk.score(users, ads, backend="numpy"))
    scores, ids = cands.topk(users, 100, backend=any_backend)
    assert to_numpy(ids).shape == (3, 40)
    for row in range(3):
        s = full[row].astype(np.float64)
        np.testing.assert_array_equal(to_numpy(ids)[row], np.lexsort((np.arange(40), -s)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_tensors_in_tensors_out(dtype, rng):
    torch = pytest.importorskip("torch")
    users, ads = _data(rng, (3, 24))
    cands = sk.Candidates(torch.from_numpy(ads), dtype=dtype)
    got = cands.score(torch.from_numpy(users))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    metric = sk.Metric.dot(24)
    assert_within(got, reference_scores(users, ads), tolerance(users, ads) + _storage_error(users, ads, metric, dtype))
    scores, ids = cands.topk(torch.from_numpy(users), 5)
    assert isinstance(scores, torch.Tensor) and isinstance(ids, torch.Tensor)
    assert ids.dtype == torch.int64 and tuple(ids.shape) == (3, 5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_sigmoid_ranks_by_the_reported_probability(any_backend, dtype):
    # sigmoid(20) and sigmoid(30) are both 1.0 in float32: a tie, so the lower index goes first,
    # which is the order merge_topk gives per-shard lists of probabilities
    ads = np.array([[10.0], [20.0], [30.0]], np.float32)
    probs, ids = sk.Candidates(ads, dtype=dtype).topk(np.ones(1, np.float32), 3, sigmoid=True, backend=any_backend)
    assert to_numpy(ids).tolist() == [1, 2, 0]
    expected_probs, expected_ids = sk.topk(np.ones(1, np.float32), ads, 3, sigmoid=True, backend=any_backend)
    assert to_numpy(expected_ids).tolist() == [1, 2, 0]
    np.testing.assert_array_equal(to_numpy(probs), to_numpy(expected_probs))
