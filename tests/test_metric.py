"""Metric: constructors, properties, dense(), fold() against plain matrix algebra, immutability."""

from __future__ import annotations

import numpy as np
import pytest

import splitnet_kernels as sk

from conftest import KINDS, make_metric


def test_dot_and_scaled_dense():
    assert np.array_equal(sk.Metric.dot(4).dense(), np.eye(4, dtype=np.float32))
    m = sk.Metric.scaled(3, 2.5, bias=-1.0)
    assert m.kind == "scaled" and m.dim == 3 and m.bias == -1.0
    assert np.array_equal(m.dense(), 2.5 * np.eye(3, dtype=np.float32))


def test_diagonal_full_low_rank_dense():
    s = np.array([1.0, -2.0, 3.0])
    assert np.array_equal(sk.Metric.diagonal(s).dense(), np.diag(s).astype(np.float32))
    S = np.arange(9.0).reshape(3, 3)
    m = sk.Metric.full(S, bias=0.5)
    assert m.kind == "full" and m.dim == 3 and m.bias == 0.5
    assert np.array_equal(m.dense(), S.astype(np.float32))
    P = np.array([[1.0], [2.0], [3.0]])
    Q = np.array([[1.0], [0.0], [-1.0]])
    d = np.array([10.0, 20.0, 30.0])
    assert np.array_equal(sk.Metric.low_rank(P, Q).dense(), (P @ Q.T).astype(np.float32))
    assert np.array_equal(sk.Metric.low_rank(P, Q, d=d).dense(), (np.diag(d) + P @ Q.T).astype(np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_dense_is_float32_square_and_a_fresh_copy(kind, rng):
    m = make_metric(kind, 5, rng, bias=0.25)
    dense = m.dense()
    assert dense.dtype == np.float32 and dense.shape == (5, 5)
    dense[...] = 123.0  # a copy: the metric does not change
    assert not np.any(m.dense() == 123.0)
    assert m.bias == np.float32(0.25)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fold_equals_users_times_dense(kind, dtype, rng):
    n = 17
    m = make_metric(kind, n, rng)
    users = rng.standard_normal((4, n)).astype(dtype)
    expected = users.astype(np.float64) @ m.dense().astype(np.float64)
    folded = m.fold(users)
    assert folded.shape == (4, n)
    np.testing.assert_allclose(folded, expected, rtol=1e-4, atol=1e-4)
    one = m.fold(users[0])
    assert one.shape == (n,)
    np.testing.assert_allclose(one, expected[0], rtol=1e-4, atol=1e-4)


def test_fold_torch_in_torch_out(rng):
    torch = pytest.importorskip("torch")
    m = make_metric("full", 6, rng)
    users = torch.from_numpy(rng.standard_normal((3, 6)).astype(np.float32))
    folded = m.fold(users)
    assert isinstance(folded, torch.Tensor)
    np.testing.assert_allclose(folded.numpy(), users.numpy() @ m.dense(), rtol=1e-5, atol=1e-5)


def test_parameters_are_copied_and_read_only(rng):
    s = rng.standard_normal(4)
    m = sk.Metric.diagonal(s)
    before = m.dense().copy()
    s[:] = 0.0  # the caller's array is not shared
    assert np.array_equal(m.dense(), before)
    with pytest.raises(ValueError):
        m.params["s"][0] = 1.0
    with pytest.raises(AttributeError):
        m.bias = 3.0


def test_parameters_accept_torch_tensors(rng):
    torch = pytest.importorskip("torch")
    S = rng.standard_normal((4, 4)).astype(np.float32)
    m = sk.Metric.full(torch.from_numpy(S).requires_grad_(True))
    assert np.array_equal(m.dense(), S)
    P, Q = torch.ones(4, 2, dtype=torch.float64), torch.ones(4, 2)
    assert np.array_equal(sk.Metric.low_rank(P, Q).dense(), np.full((4, 4), 2.0, np.float32))


def test_parameters_accept_lists_and_integers():
    m = sk.Metric.full([[1, 2], [3, 4]], bias=1)
    assert np.array_equal(m.dense(), np.array([[1, 2], [3, 4]], np.float32))
    assert m.bias == 1.0


def test_repr_names_the_kind(rng):
    assert "low_rank" in repr(make_metric("low_rank", 4, rng))


@pytest.mark.parametrize("kind", KINDS)
def test_cost_per_candidate(kind, rng):
    m = make_metric(kind, 8, rng)
    assert m.cost_per_candidate() == 8
    assert m.cost_per_candidate(folded=False) >= 8


# ---- constructor errors -----------------------------------------------------------------------
@pytest.mark.parametrize("dim", [0, -3])
def test_dim_must_be_positive(dim):
    with pytest.raises(ValueError, match="dim"):
        sk.Metric.dot(dim)
    with pytest.raises(ValueError, match="dim"):
        sk.Metric.scaled(dim, 1.0)


@pytest.mark.parametrize("dim", [2.0, True, "3", None])
def test_dim_must_be_an_integer(dim):
    with pytest.raises(TypeError, match="dim"):
        sk.Metric.dot(dim)


def test_full_needs_a_square_matrix():
    with pytest.raises(ValueError, match="S"):
        sk.Metric.full(np.ones((3, 4)))
    with pytest.raises(ValueError, match="S"):
        sk.Metric.full(np.ones(3))
    with pytest.raises(ValueError, match="S"):
        sk.Metric.full(np.ones((0, 0)))


def test_low_rank_shape_errors():
    with pytest.raises(ValueError, match="P"):
        sk.Metric.low_rank(np.ones((4, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="P"):
        sk.Metric.low_rank(np.ones((4, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="d"):
        sk.Metric.low_rank(np.ones((4, 2)), np.ones((4, 2)), d=np.ones(3))
    with pytest.raises(ValueError, match="P"):
        sk.Metric.low_rank(np.ones((4, 0)), np.ones((4, 0)))
    with pytest.raises(ValueError, match="P"):
        sk.Metric.low_rank(np.ones(4), np.ones(4))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_parameters(bad):
    s = np.ones(3)
    s[1] = bad
    with pytest.raises(ValueError, match="s"):
        sk.Metric.diagonal(s)
    S = np.eye(3)
    S[0, 2] = bad
    with pytest.raises(ValueError, match="S"):
        sk.Metric.full(S)
    with pytest.raises(ValueError, match="w"):
        sk.Metric.scaled(3, bad)
    with pytest.raises(ValueError, match="bias"):
        sk.Metric.dot(3, bias=bad)
    with pytest.raises(ValueError, match="d"):
        sk.Metric.low_rank(np.ones((3, 1)), np.ones((3, 1)), d=s)


def test_values_overflowing_float32_are_rejected():
    with pytest.raises(ValueError, match="s"):
        sk.Metric.diagonal([1.0, 1e300])
    with pytest.raises(ValueError, match="bias"):
        sk.Metric.dot(2, bias=1e300)


@pytest.mark.parametrize("bad", [np.array([1 + 2j, 1]), np.array([True, False]), np.array(["a", "b"]),
                                 np.array([object(), object()], dtype=object)])
def test_parameter_dtypes(bad):
    with pytest.raises(TypeError, match="s"):
        sk.Metric.diagonal(bad)


@pytest.mark.parametrize("bad", [True, "1.0", None, 1 + 1j])
def test_scalar_parameters_must_be_real(bad):
    with pytest.raises(TypeError, match="w"):
        sk.Metric.scaled(3, bad)
    with pytest.raises(TypeError, match="bias"):
        sk.Metric.dot(3, bias=bad)


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        sk.Metric("cosine", 3, 0.0)


def test_fold_checks_users(rng):
    m = make_metric("full", 4, rng)
    with pytest.raises(ValueError, match="users"):
        m.fold(np.ones(5))
    with pytest.raises(ValueError, match="users"):
        m.fold(np.ones((2, 2, 4)))
    with pytest.raises(TypeError, match="users"):
        m.fold(np.ones(4, dtype=np.int64))
