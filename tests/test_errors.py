"""Bad input is a clear TypeError / ValueError naming the argument, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import splitnet_kernels as sk

from conftest import make_metric

USERS = np.ones((2, 4), np.float32)
ADS = np.ones((5, 4), np.float32)


def _calls(users, ads, metric=None, backend="auto", pairwise=False):
    """score and (when it applies) topk with the same arguments."""
    yield lambda: sk.score(users, ads, metric, pairwise=pairwise, backend=backend)
    if not pairwise:
        yield lambda: sk.topk(users, ads, 2, metric, backend=backend)


def _raises_for_all(error, match, users, ads, metric=None, backend="auto", pairwise=False):
    for call in _calls(users, ads, metric, backend, pairwise):
        with pytest.raises(error, match=match):
            call()


def test_dimension_mismatch_users_ads(any_backend):
    _raises_for_all(ValueError, r"users.*ads|ads.*users", np.ones(3, np.float32), ADS, backend=any_backend)
    _raises_for_all(ValueError, r"users.*ads|ads.*users", np.ones((2, 3), np.float32), ADS, backend=any_backend)
    _raises_for_all(ValueError, r"users.*ads|ads.*users", np.ones((5, 3), np.float32), ADS,
                    backend=any_backend, pairwise=True)


def test_dimension_mismatch_metric(any_backend, rng):
    for kind in ("dot", "full", "low_rank", "diagonal"):
        metric = make_metric(kind, 5, rng)
        _raises_for_all(ValueError, "metric", USERS, ADS, metric, backend=any_backend)
        _raises_for_all(ValueError, "metric", USERS, np.ones((2, 4), np.float32), metric,
                        backend=any_backend, pairwise=True)


def test_metric_of_the_wrong_type(any_backend):
    _raises_for_all(TypeError, "metric", USERS, ADS, "dot", backend=any_backend)
    _raises_for_all(TypeError, "metric", USERS, ADS, np.eye(4), backend=any_backend)


@pytest.mark.parametrize("users, ads, name", [
    (np.ones((2, 2, 4), np.float32), ADS, "users"),
    (np.float32(1.0), ADS, "users"),
    (USERS, np.ones(4, np.float32), "ads"),
    (USERS, np.ones((1, 5, 4), np.float32), "ads"),
])
def test_wrong_ndim(any_backend, users, ads, name):
    _raises_for_all(ValueError, name, users, ads, backend=any_backend)


def test_pairwise_needs_2d_users_and_equal_batches(any_backend):
    _raises_for_all(ValueError, "users", np.ones(4, np.float32), ADS, backend=any_backend, pairwise=True)
    _raises_for_all(ValueError, "pairwise", np.ones((3, 4), np.float32), ADS, backend=any_backend, pairwise=True)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int8, np.complex64, np.complex128, object,
                                   np.bool_, "U3", "S3", "datetime64[s]"])
@pytest.mark.parametrize("which", ("users", "ads"))
def test_non_float_dtypes(any_backend, dtype, which):
    bad = (USERS if which == "users" else ADS).astype(dtype) if dtype not in ("datetime64[s]",) else \
        np.zeros((USERS if which == "users" else ADS).shape, dtype)
    users, ads = (bad, ADS) if which == "users" else (USERS, bad)
    _raises_for_all(TypeError, which, users, ads, backend=any_backend)


def test_ragged_and_string_lists(any_backend):
    _raises_for_all(TypeError, "ads", USERS, [[1.0, 2.0, 3.0, 4.0], [1.0]], backend=any_backend)
    _raises_for_all(TypeError, "users", "abcd", ADS, backend=any_backend)
    _raises_for_all(TypeError, "users", None, ADS, backend=any_backend)
    _raises_for_all(TypeError, "users", [[1, 2, 3, 4]], ADS, backend=any_backend)  # integer list


def test_zero_dimension_embeddings(any_backend):
    _raises_for_all(ValueError, "dimension", np.ones((2, 0), np.float32), np.ones((5, 0), np.float32),
                    backend=any_backend)


@pytest.mark.parametrize("k", (0, -1, -100))
def test_k_must_be_positive(any_backend, k):
    with pytest.raises(ValueError, match="k"):
        sk.topk(USERS, ADS, k, backend=any_backend)


@pytest.mark.parametrize("k", (1.5, 2.0, True, False, "3", None, np.float32(2)))
def test_k_must_be_an_integer(any_backend, k):
    with pytest.raises(TypeError, match="k"):
        sk.topk(USERS, ADS, k, backend=any_backend)


def test_k_numpy_integer_accepted(any_backend):
    scores, ids = sk.topk(USERS, ADS, np.int32(3), backend=any_backend)
    assert np.asarray(ids).shape == (2, 3)


def test_k_is_checked_even_when_there_are_no_candidates(any_backend):
    with pytest.raises(ValueError, match="k"):
        sk.topk(USERS, np.ones((0, 4), np.float32), 0, backend=any_backend)


@pytest.mark.parametrize("name", ("bogus", "SIMD ", "", "cuda", "faiss"))
def test_unknown_backend_name(name):
    with pytest.raises(ValueError, match="backend"):
        sk.score(USERS, ADS, backend=name)
    with pytest.raises(ValueError, match="backend"):
        sk.topk(USERS, ADS, 2, backend=name)


@pytest.mark.parametrize("name", (None, 3, sk.score))
def test_backend_must_be_a_string(name):
    with pytest.raises(TypeError, match="backend"):
        sk.score(USERS, ADS, backend=name)


def test_unknown_metric_kind():
    with pytest.raises(ValueError, match="kind"):
        sk.Metric("bilinear", 4, 0.0)


@pytest.mark.parametrize("dtype", ("float8", "uint8", "float64", None, "bf16"))
def test_candidates_unknown_dtype(dtype):
    with pytest.raises(ValueError, match="dtype"):
        sk.Candidates(ADS, dtype=dtype)


def test_candidates_bad_ads():
    with pytest.raises(ValueError, match="ads"):
        sk.Candidates(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="ads"):
        sk.Candidates(np.ones((3, 4), np.int32))
    for dtype in ("float16", "bfloat16", "int8"):
        bad = ADS.copy()
        bad[1, 2] = np.nan
        with pytest.raises(ValueError, match="ads"):
            sk.Candidates(bad, dtype=dtype)
    with pytest.raises(ValueError, match="ads"):
        sk.Candidates(np.full((2, 4), 1e6, np.float32), dtype="float16")


def test_candidates_query_errors(any_backend):
    for dtype in ("float32", "float16", "bfloat16", "int8"):
        cands = sk.Candidates(ADS, dtype=dtype)
        with pytest.raises(ValueError, match=r"users|ads|dimension"):
            cands.score(np.ones(3, np.float32), backend=any_backend)
        with pytest.raises(ValueError, match=r"users|ads|dimension"):
            cands.topk(np.ones((2, 3), np.float32), 2, backend=any_backend)
        with pytest.raises(TypeError, match="users"):
            cands.score(np.ones(4, np.int64), backend=any_backend)
        with pytest.raises(ValueError, match="k"):
            cands.topk(np.ones(4, np.float32), 0, backend=any_backend)
        with pytest.raises(ValueError, match="metric"):
            cands.score(np.ones(4, np.float32), sk.Metric.dot(5), backend=any_backend)


def test_set_isa_unknown_name():
    if not sk.backends()["simd"]["available"]:
        pytest.skip("compiled kernels not available")
    active = sk.info()["isa_active"]
    with pytest.raises(ValueError, match="ISA"):
        sk.set_isa("bogus")
    assert sk.info()["isa_active"] == active
    unsupported = [name for name in sk.info()["isa_known"] if name not in sk.info()["isa_supported"]]
    for name in unsupported:
        with pytest.raises(ValueError, match=name):
            sk.set_isa(name)
        assert sk.info()["isa_active"] == active


def test_set_isa_returns_the_previous_one():
    if not sk.backends()["simd"]["available"]:
        pytest.skip("compiled kernels not available")
    original = sk.info()["isa_active"]
    try:
        for isa in sk.info()["isa_supported"]:
            previous = sk.info()["isa_active"]
            assert sk.set_isa(isa) == previous
            assert sk.info()["isa_active"] == isa
    finally:
        sk.set_isa(original)
