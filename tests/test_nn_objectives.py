"""splitnet_kernels.nn.ObjectiveHead: one S_t per objective on shared towers. The exported
ObjectiveMetrics gives the module's own probabilities through sk.Candidates(objectives=) for every
kind and a mixed head (numpy and simd backends); the head trains, gradients reach every objective,
and bad objective ids are clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import splitnet_kernels as sk

from conftest import EPS32, assert_within, backend_available, tolerance

torch = pytest.importorskip("torch")
from splitnet_kernels.nn import MetricHead, ObjectiveHead  # noqa: E402  (needs torch)

HEAD_KINDS = ("dot", "scaled", "diagonal", "low_rank", "full")
MIXED = ("full", "dot", "low_rank", "scaled", "diagonal")  # every kind, one objective each
CASES = [pytest.param((kind,) * 3, id=kind) for kind in HEAD_KINDS] + [pytest.param(MIXED, id="mixed")]


def make_head(kinds, dim: int, seed: int = 0, perturbed: bool = True, names=None) -> ObjectiveHead:
    """A head; perturbed=True moves every parameter off its initial value (S is not the identity)."""
    torch.manual_seed(seed)
    rank = 3 if any(kind == "low_rank" for kind in kinds) else None
    head = ObjectiveHead(tuple(kinds), dim, rank=rank, names=names)
    if perturbed:
        with torch.no_grad():
            for parameter in head.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape))
    return head


def embeddings(rows: int, dim: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32))


def objective_ids(count: int, n_objectives: int, seed: int) -> torch.Tensor:
    """Random ids in [0, T), every objective present."""
    ids = np.random.default_rng(seed).integers(0, n_objectives, count)
    ids[:n_objectives] = np.arange(n_objectives)
    return torch.from_numpy(ids.astype(np.int64))


def _backends():
    return [pytest.param(name, marks=() if backend_available(name) else pytest.mark.skip(reason=f"{name} unavailable"))
            for name in ("numpy", "simd")]


# ---- construction -------------------------------------------------------------------------------
def test_one_kind_for_every_objective():
    head = ObjectiveHead("diagonal", 8, n_objectives=3)
    assert head.kinds == ("diagonal",) * 3 and head.n_objectives == 3
    assert len(head.heads) == 3 and all(isinstance(h, MetricHead) and h.n_objectives is None for h in head.heads)
    named = ObjectiveHead("full", 8, names=("view", "click"))
    assert named.n_objectives == 2 and named.to_objective_metrics().names == ("view", "click")


def test_mixed_kinds_and_rank_only_where_it_is_taken():
    head = ObjectiveHead(MIXED, 8, rank=2)
    assert [h.kind for h in head.heads] == list(MIXED)
    assert [h.rank for h in head.heads] == [None, None, 2, None, None]
    assert all(h.bias is not None and h.bias.shape == () for h in head.heads)


def test_heads_start_as_their_metric_heads():
    head = make_head(("diagonal", "full"), 6, perturbed=False)
    users, ads = embeddings(4, 6, 1), embeddings(4, 6, 2)
    objectives = torch.tensor([0, 1, 1, 0])
    torch.testing.assert_close(head(users, ads, objectives), (users * ads).sum(-1))  # both start at the identity


def test_separate_parameters_per_objective():
    head = make_head(("full",) * 3, 8)
    ids = {id(p) for p in head.parameters()}
    assert len(ids) == 6  # S_t and b_t for each objective
    dense = [m.dense() for m in head.to_metrics()]
    assert not np.allclose(dense[0], dense[1]) and not np.allclose(dense[0], np.eye(8))


# ---- the module against itself ----------------------------------------------------------------
@pytest.mark.parametrize("kinds", CASES)
def test_forward_is_each_pairs_own_head(kinds):
    dim = 9
    head = make_head(kinds, dim, seed=3)
    users, ads = embeddings(40, dim, 4), embeddings(40, dim, 5)
    objectives = objective_ids(40, len(kinds), 6)
    with torch.no_grad():
        got = head(users, ads, objectives)
        cross = head.cross(users, ads, objectives)
        expected = torch.stack([head.heads[int(t)](users[i:i + 1], ads[i:i + 1])[0] for i, t in enumerate(objectives)])
    assert got.shape == (40,) and cross.shape == (40, 40)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.diagonal(cross), got, rtol=1e-5, atol=1e-5)
    for t in range(len(kinds)):
        columns = objectives == t
        torch.testing.assert_close(cross[:, columns], head.heads[t].cross(users, ads[columns]), rtol=1e-5, atol=1e-5)


def test_empty_batches():
    head = make_head(("dot", "full"), 4)
    empty = torch.empty(0, 4)
    assert head(empty, empty, torch.empty(0, dtype=torch.int64)).shape == (0,)
    assert head.cross(embeddings(3, 4, 0), empty, torch.empty(0, dtype=torch.int64)).shape == (3, 0)
    assert head.cross(empty, embeddings(5, 4, 0), torch.zeros(5, dtype=torch.int64)).shape == (0, 5)


# ---- export: the module's probabilities through Candidates -------------------------------------
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("kinds", CASES)
def test_exported_objective_metrics_give_the_modules_probabilities(kinds, backend):
    dim, T = 17, len(kinds)  # 17: not a lane multiple
    names = tuple(f"goal{t}" for t in range(T))
    head = make_head(kinds, dim, seed=7, names=names)
    users, ads = embeddings(6, dim, 8), embeddings(50, dim, 9)
    objectives = objective_ids(50, T, 10)
    bids = np.random.default_rng(11).lognormal(0.0, 1.0, 50).astype(np.float32)
    with torch.no_grad():
        logits = head.cross(users, ads, objectives)
        probabilities = torch.sigmoid(logits).double().numpy()
        logits = logits.double().numpy()
    om = head.to_objective_metrics()
    assert isinstance(om, sk.ObjectiveMetrics) and len(om) == T and om.names == names and om.dim == dim
    assert [m.kind for m in om] == list(kinds)
    for t, metric in enumerate(om):
        assert metric.bias == pytest.approx(head.heads[t].bias.item())
        assert metric.bias != 0.0  # perturbed: the bias is part of what is checked

    u, a, obj = users.numpy(), ads.numpy(), objectives.numpy()
    cands = sk.Candidates(a, dtype="float32", objectives=obj, bids=bids)
    # the float32 error bound of each candidate's logit under its own objective's metric
    logit_tol = np.empty(logits.shape)
    for t, metric in enumerate(om):
        columns = obj == t
        logit_tol[:, columns] = 2 * tolerance(u, a[columns], metric)
    # sigmoid is 1/4-Lipschitz; each side's probability is rounded to float32 (p <= 1)
    probability_tol = 0.25 * logit_tol + 4 * EPS32

    got = cands.score(u, om, output="probability", backend=backend)
    assert_within(got, probabilities, probability_tol, "probabilities")
    assert_within(cands.score(u, om, output="logit", backend=backend), logits, logit_tol, "logits")
    assert_within(cands.score(u, om, output="value", backend=backend), bids * probabilities,
                  bids * probability_tol + 2 * EPS32 * bids, "values")
    one = cands.score(u[2], om, output="probability", backend=backend)  # one user: the serving call
    assert_within(one, probabilities[2], probability_tol[2], "one user's probabilities")

    # the pairwise forward: the same probabilities for each (user, ad) pair
    with torch.no_grad():
        pairs = torch.sigmoid(head(users[[i % 6 for i in range(50)]], ads, objectives)).double().numpy()
    np.testing.assert_allclose(pairs, probabilities[np.arange(50) % 6, np.arange(50)], rtol=1e-5, atol=1e-6)


def test_exported_metrics_round_trip_through_a_file(tmp_path):
    head = make_head(MIXED, 8, seed=2, names=tuple("abcde"))
    om = head.to_objective_metrics()
    om.save(tmp_path / "om.npz")
    loaded = sk.ObjectiveMetrics.load(tmp_path / "om.npz")
    assert loaded.names == om.names
    for got, expected in zip(loaded, om):
        assert got.kind == expected.kind and got.bias == expected.bias
        np.testing.assert_array_equal(got.dense(), expected.dense())


# ---- training ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kinds", CASES)
def test_trains_on_shared_towers_and_every_head_gets_gradients(kinds):
    torch.manual_seed(0)
    T, dim = len(kinds), 8
    x_u, x_a = torch.randn(512, 6), torch.randn(512, 5)
    objectives = objective_ids(512, T, 1)
    # a different rule per objective, with objective-specific base rates
    rules = torch.randn(T, 6, 5)
    truth = torch.einsum("bi,bij,bj->b", x_u, rules[objectives], x_a) + torch.linspace(-1.5, 1.5, T)[objectives]
    labels = (truth > 0).float()
    user_tower, ad_tower = torch.nn.Linear(6, dim), torch.nn.Linear(5, dim)
    head = ObjectiveHead(kinds, dim, rank=2 if "low_rank" in kinds else None)
    parameters = [*user_tower.parameters(), *ad_tower.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=2e-2)
    losses = []
    for step in range(40):
        logits = head(user_tower(x_u), ad_tower(x_a), objectives)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            for t, sub in enumerate(head.heads):
                for name, parameter in sub.named_parameters():
                    assert parameter.grad is not None and parameter.grad.abs().max() > 0, (t, name)
            assert all(p.grad is not None and p.grad.abs().max() > 0 for p in user_tower.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_a_batch_without_an_objective_leaves_its_head_alone():
    head = make_head(("diagonal", "full", "dot"), 4)
    users, ads = embeddings(6, 4, 0), embeddings(6, 4, 1)
    head(users, ads, torch.tensor([0, 1, 0, 1, 1, 0])).sum().backward()
    assert all(p.grad is not None for p in [*head.heads[0].parameters(), *head.heads[1].parameters()])
    assert all(p.grad is None for p in head.heads[2].parameters())


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    (torch.tensor([0, 1, 3, 0]), r"objectives: ids must be in \[0, 3\), got 3"),
    (torch.tensor([0, -1, 2, 0]), r"objectives: ids must be in \[0, 3\), got -1"),
    (torch.tensor([0.0, 1.0, 2.0, 0.0]), "objectives: expected integer"),
    (torch.tensor([True, False, True, False]), "objectives: expected integer"),
    (torch.tensor([0, 1, 2]), "objectives: expected shape"),
    (torch.zeros(4, 1, dtype=torch.int64), "objectives: expected shape"),
])
def test_bad_objective_ids(bad, match):
    head = make_head(("dot", "diagonal", "full"), 8)
    users, ads = embeddings(4, 8, 0), embeddings(4, 8, 1)
    with pytest.raises(ValueError, match=match):
        head(users, ads, bad)
    with pytest.raises(ValueError, match=match):
        head.cross(users[:2], ads, bad)


def test_bad_shapes():
    head = make_head(("dot", "full"), 8)
    objectives = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="users and ads"):
        head(embeddings(3, 8, 0), embeddings(3, 7, 1), objectives)
    with pytest.raises(ValueError, match="users and ads"):
        head.cross(embeddings(3, 8, 0)[0], embeddings(3, 8, 1), objectives)
    with pytest.raises(ValueError, match="pairwise"):
        head(embeddings(4, 8, 0), embeddings(3, 8, 1), objectives)


@pytest.mark.parametrize("arguments, match", [
    (dict(kinds="diagonal", dim=8), "n_objectives or names"),
    (dict(kinds=(), dim=8), "kinds"),
    (dict(kinds=("diagonal", "cosine"), dim=8), r"kinds\[1\]"),
    (dict(kinds=("diagonal", "low_rank"), dim=8), "rank"),
    (dict(kinds=("diagonal", "full"), dim=8, rank=2), "rank"),
    (dict(kinds=("low_rank",), dim=8, rank=9), "rank"),
    (dict(kinds=("full", "dot"), dim=0), "dim"),
    (dict(kinds=("full", "dot"), dim=8, names=("a",)), "names"),
    (dict(kinds=("full", "dot"), dim=8, names=("a", "a")), "names"),
    (dict(kinds=("full", "dot"), dim=8, n_objectives=3), "n_objectives"),
    (dict(kinds="full", dim=8, n_objectives=0), "n_objectives"),
])
def test_bad_head_arguments(arguments, match):
    kinds = arguments.pop("kinds")
    with pytest.raises(ValueError, match=match):
        ObjectiveHead(kinds, **arguments)


def test_candidates_refuse_ids_beyond_the_exported_metrics():
    head = make_head(("dot", "full"), 4)
    cands = sk.Candidates(embeddings(5, 4, 0).numpy(), dtype="float32", objectives=np.array([0, 1, 2, 0, 1]))
    with pytest.raises(ValueError, match="objectives"):
        cands.score(embeddings(1, 4, 1).numpy(), head.to_objective_metrics(), output="probability")
