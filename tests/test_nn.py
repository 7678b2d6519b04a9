"""splitnet_kernels.nn: heads of every kind start where they should, train on CPU, and export
metrics that score like the module through sk.score (numpy and simd backends, cross and pairwise)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import splitnet_kernels as sk

from conftest import assert_within, backend_available, tolerance

torch = pytest.importorskip("torch")
from splitnet_kernels.nn import MetricHead, SplitNet  # noqa: E402  (needs torch)

HEAD_KINDS = ("dot", "scaled", "diagonal", "low_rank", "full")
OBJECTIVES = (None, 3)  # one shared logit, or three with a bias and a scale each


def make_head(kind: str, dim: int, n_objectives=None, seed: int = 0, trained: bool = True) -> MetricHead:
    """A head; trained=True moves every parameter off its initial value, as training would."""
    torch.manual_seed(seed)
    head = MetricHead(kind, dim, rank=3 if kind == "low_rank" else None, n_objectives=n_objectives)
    if trained:
        with torch.no_grad():
            for parameter in head.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape))
    return head


def embeddings(rows: int, dim: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32))


# ---- initialization ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ("dot", "scaled", "diagonal"))
def test_scaled_and_diagonal_start_as_the_dot_product(kind):
    head = make_head(kind, 16, trained=False)
    users, ads = embeddings(5, 16, 1), embeddings(9, 16, 2)
    torch.testing.assert_close(head.cross(users, ads), users @ ads.T)
    torch.testing.assert_close(head(users, ads[:5]), (users * ads[:5]).sum(-1))
    np.testing.assert_array_equal(head.to_metric().dense(), np.eye(16, dtype=np.float32))


def test_full_starts_at_the_identity():
    np.testing.assert_array_equal(make_head("full", 16, trained=False).to_metric().dense(), np.eye(16))


def test_low_rank_starts_near_the_identity():
    head = make_head("low_rank", 16, trained=False)
    np.testing.assert_array_equal(head.d.detach().numpy(), np.ones(16, np.float32))
    assert head.P.abs().max() > 0 and head.Q.abs().max() > 0  # random, so P and Q get distinct gradients
    np.testing.assert_allclose(head.to_metric().dense(), np.eye(16), atol=1e-3)


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_per_objective_heads_start_equal_across_objectives(kind):
    head = make_head(kind, 8, n_objectives=3, trained=False)
    np.testing.assert_array_equal(head.bias.detach().numpy(), np.zeros(3, np.float32))
    np.testing.assert_array_equal(head.scale.detach().numpy(), np.ones(3, np.float32))
    users, ads = embeddings(4, 8, 3), embeddings(4, 8, 4)
    logits = head(users, ads)
    assert logits.shape == (4, 3)
    torch.testing.assert_close(logits, logits[:, :1].expand(4, 3))


def test_shapes():
    head = make_head("diagonal", 8, n_objectives=2)
    users, ads = embeddings(5, 8, 5), embeddings(7, 8, 6)
    assert head.cross(users, ads).shape == (5, 7, 2)
    assert head(users, ads[:5]).shape == (5, 2)
    single = make_head("diagonal", 8)
    assert single.cross(users, ads).shape == (5, 7)
    assert single(users, ads[:5]).shape == (5,)


# ---- export: the exported metric scores like the module ------------------------------------------
def _backends():
    return [pytest.param(name, marks=() if backend_available(name) else pytest.mark.skip(reason=f"{name} unavailable"))
            for name in ("numpy", "simd")]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("n_objectives", OBJECTIVES)
@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_exported_metric_matches_module(kind, n_objectives, backend):
    dim = 17  # not a lane multiple
    head = make_head(kind, dim, n_objectives, seed=7)
    users, ads = embeddings(6, dim, 8), embeddings(33, dim, 9)
    with torch.no_grad():
        cross = head.cross(users, ads).double().numpy()
        pairs = head(users.repeat(6, 1)[:33], ads).double().numpy()
    pair_users = users.repeat(6, 1)[:33].numpy()
    metrics = head.to_metrics()
    assert len(metrics) == (n_objectives or 1)
    for t, metric in enumerate(metrics):
        assert metric.dim == dim
        column = (slice(None),) if n_objectives is None else (Ellipsis, t)
        got = sk.score(users.numpy(), ads.numpy(), metric, backend=backend)
        assert_within(got, cross[column], 2 * tolerance(users.numpy(), ads.numpy(), metric), "cross logits")
        got = sk.score(pair_users, ads.numpy(), metric, pairwise=True, backend=backend)
        assert_within(got, pairs[column], 2 * tolerance(pair_users, ads.numpy(), metric, pairwise=True),
                      "pairwise logits")


def test_export_folds_the_objective_scale_and_bias():
    head = make_head("dot", 8, n_objectives=2)
    metric = head.to_metric(1)
    assert metric.kind == "scaled"  # a dot product with a per-objective scale is a scaled one
    assert metric.params["w"] == pytest.approx(head.scale[1].item())
    assert metric.bias == pytest.approx(head.bias[1].item())
    low_rank = make_head("low_rank", 8, n_objectives=2)
    P, Q, d = (x.detach().double().numpy() for x in (low_rank.P, low_rank.Q, low_rank.d))
    expected = low_rank.scale[0].item() * (np.diag(d) + P @ Q.T)
    np.testing.assert_allclose(low_rank.to_metric(0).dense(), expected, rtol=1e-5, atol=1e-6)


def test_no_bias():
    head = MetricHead("full", 4, bias=False)
    assert head.bias is None and head.to_metric().bias == 0.0


# ---- training ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n_objectives", OBJECTIVES)
@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_heads_train_on_cpu(kind, n_objectives):
    torch.manual_seed(0)
    users, ads = torch.randn(256, 6), torch.randn(256, 5)
    truth = (users[:, :5] * ads).sum(-1) - users[:, 5] * ads[:, 0]
    labels = (truth > 0).float()
    model = SplitNet(6, 5, 8, kind=kind, rank=2 if kind == "low_rank" else None, n_objectives=n_objectives,
                     hidden=(16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        logits = model(users, ads)
        if n_objectives:
            logits = logits[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    head_gradients = [p.grad for p in model.head.parameters()]
    assert all(g is not None for g in head_gradients)


@pytest.mark.parametrize("n_objectives", OBJECTIVES)
def test_splitnet_score_is_the_serving_path(n_objectives):
    torch.manual_seed(1)
    model = SplitNet(6, 5, 8, kind="low_rank", rank=2, n_objectives=n_objectives, hidden=(16,))
    rng = np.random.default_rng(2)
    user_x, ad_x = rng.standard_normal((10, 6), dtype=np.float32), rng.standard_normal((10, 5), dtype=np.float32)
    objective = None if n_objectives is None else 2
    with torch.no_grad():
        logits = model(torch.from_numpy(user_x), torch.from_numpy(ad_x)).double().numpy()
    if n_objectives:
        logits = logits[:, objective]
    pairs = model.score(user_x, ad_x, objective, pairwise=True)
    np.testing.assert_allclose(pairs, logits, rtol=1e-5, atol=1e-5)
    assert model.score(user_x, ad_x, objective).shape == (10, 10)
    assert model.score(user_x[0], ad_x, objective).shape == (10,)
    probabilities = model.score(user_x, ad_x, objective, pairwise=True, sigmoid=True)
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)
    users, ads = model.embeddings(user_x, ad_x)
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1, rtol=1e-5)  # on the unit sphere
    assert model.parameter_count(head_only=True) == 8 + 2 * 8 * 2 + (1 if n_objectives is None else 6)


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arguments, match", [
    (("cosine", 8), "kind"),
    (("low_rank", 8), "rank"),
    (("diagonal", 8, 2), "rank"),
    (("low_rank", 8, 9), "rank"),
    (("full", 0), "dim"),
])
def test_bad_head_arguments(arguments, match):
    kind, dim, *rank = arguments
    with pytest.raises(ValueError, match=match):
        MetricHead(kind, dim, rank=rank[0] if rank else None)


def test_bad_calls():
    head = make_head("full", 8, n_objectives=2)
    with pytest.raises(ValueError, match="users and ads"):
        head(embeddings(3, 8, 0), embeddings(3, 7, 1))
    with pytest.raises(ValueError, match="pairwise"):
        head(embeddings(3, 8, 0), embeddings(4, 8, 1))
    with pytest.raises(ValueError, match="objective"):
        head.to_metric()
    with pytest.raises(ValueError, match="objective"):
        head.to_metric(2)
    with pytest.raises(ValueError, match="objective"):
        make_head("full", 8).to_metric(0)


def test_package_imports_without_torch():
    code = ("import sys, splitnet_kernels, splitnet_kernels.experiment.campaign, splitnet_kernels.experiment\n"
            "print('torch' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [os.path.dirname(os.path.dirname(sk.__file__)), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
