"""The metric-learning experiment: its quality measures against brute force, the campaign
generator and its files, the identifiability argument (the SVD equivalence), the model's export
to the kernels, and a tiny run end to end (API and command line)."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest

import splitnet_kernels as sk
from splitnet_kernels import cli, experiment
from splitnet_kernels.experiment import campaign


TINY_CAMPAIGN = {"n_users": 120, "n_ads": 90, "n_pairs": 6000, "latent_dim": 6, "user_features": 8,
                 "ad_features": 7, "rank": 2}


def tiny_campaign(seed: int = 0, **overrides) -> campaign.CampaignData:
    return campaign.make_campaign(seed, **{**TINY_CAMPAIGN, **overrides})


def logged(data: campaign.CampaignData) -> campaign.CampaignData:
    """The same impressions without a ground truth, as a user's own logs come."""
    return campaign.CampaignData(objectives=data.objectives, user_features=data.user_features,
                                 ad_features=data.ad_features, ad_objective=data.ad_objective, pairs=data.pairs,
                                 labels=data.labels, ad_bids=data.ad_bids)


# ---- quality measures -------------------------------------------------------------------------
def brute_force_auc(labels, scores) -> float:
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return wins / (len(positives) * len(negatives))


def test_auc_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.2).astype(np.float32)
    scores = np.round(rng.standard_normal(500) + labels, 1)  # rounding makes many ties
    assert experiment.auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)
    assert experiment.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert experiment.auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert np.isnan(experiment.auc([1, 1], [0.1, 0.2]))


def test_normalized_entropy_and_calibration_of_the_base_rate():
    labels = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], np.float32)
    base_rate_logit = np.full(10, np.log(0.1 / 0.9))
    assert experiment.normalized_entropy(labels, base_rate_logit) == pytest.approx(1.0)
    assert experiment.calibration(labels, base_rate_logit) == pytest.approx(1.0)
    assert experiment.normalized_entropy(labels, np.where(labels == 1, 20.0, -20.0)) < 1e-6
    assert np.isnan(experiment.normalized_entropy(np.zeros(4), np.zeros(4)))


def test_interval_is_the_t_interval():
    stats = experiment.interval([1.0, 2.0, 3.0, float("nan")])  # NaN: a measure undefined for that seed
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(2.0)
    assert stats["high"] - stats["mean"] == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)
    assert experiment.interval([5.0]) == {"mean": 5.0, "low": 5.0, "high": 5.0, "n": 1}
    assert experiment.interval([])["n"] == 0
    many = experiment.interval(np.arange(41.0))  # 40 degrees of freedom: 2.021
    assert (many["high"] - many["mean"]) / (np.std(np.arange(41.0), ddof=1) / math.sqrt(41)) == pytest.approx(
        2.021, abs=2e-3)


# ---- campaign data ----------------------------------------------------------------------------
def test_generator_hits_the_base_rates_down_the_funnel_and_is_seeded():
    data = campaign.make_campaign(0, n_users=400, n_ads=300, n_pairs=40_000)
    assert data.objectives == ("video_view", "link_click", "app_install") and data.multi_label
    np.testing.assert_allclose(data.base_rates(), [0.30, 0.04, 0.01], rtol=0.15)
    assert (data.labels[:, 2] <= data.labels[:, 1]).all() and (data.labels[:, 1] <= data.labels[:, 0]).all()
    assert data.ad_features.shape == (300, 32)  # the features do not carry the objective
    assert (data.bids > 0).all()
    again = campaign.make_campaign(0, n_users=400, n_ads=300, n_pairs=40_000)
    np.testing.assert_array_equal(data.labels, again.labels)
    np.testing.assert_array_equal(data.user_features, again.user_features)
    # one outcome per ad: the same draws, only the ad's objective's outcome recorded
    own = campaign.make_campaign(0, n_users=400, n_ads=300, n_pairs=40_000, outcomes="own")
    assert not own.multi_label
    rows = np.arange(len(data.pairs))
    np.testing.assert_array_equal(own.labels, data.labels[rows, data.pair_objective])
    np.testing.assert_allclose(own.base_rates(), [0.30, 0.04, 0.01], rtol=0.3)
    other = campaign.make_campaign(1, n_users=400, n_ads=300, n_pairs=1000)
    assert not np.array_equal(other.user_features, data.user_features)


def test_ground_truth_spread_off_diagonal_and_true_logits():
    data = campaign.make_campaign(0, n_users=2000, n_ads=2000, n_pairs=1000)
    z_u, z_a = data.user_latent[:1000].astype(np.float64), data.ad_latent[:1000].astype(np.float64)
    for S, objective in zip(data.true_S, campaign.DEFAULT_OBJECTIVES):
        step = np.einsum("pi,ij,pj->p", z_u, S, z_a)
        assert np.std(step) == pytest.approx(objective.spread, rel=0.1)
        off_diagonal = S - np.diag(np.diag(S))
        assert np.linalg.norm(off_diagonal) > 0.3 * np.linalg.norm(S)
    diagonal = tiny_campaign(off_diagonal=0.0)
    for S in diagonal.true_S:
        np.testing.assert_array_equal(S, np.diag(np.diag(S)))
    # true_logits are the logits of P(outcome t) that true_scores gives, down the funnel
    small = tiny_campaign()
    for t in range(3):
        rows = np.arange(40)
        full = small.true_scores(small.pairs[rows, 0], small.pairs[rows, 1], t)
        np.testing.assert_allclose(np.diag(full), small.true_logits[rows, t], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="outcomes"):
        tiny_campaign(outcomes="some")


def _assert_same(a: campaign.CampaignData, b: campaign.CampaignData):
    assert a.objectives == b.objectives
    for field in dataclasses.fields(campaign.CampaignData):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name != "objectives":
            assert (x is None and y is None) or (x.dtype == y.dtype and np.array_equal(x, y)), field.name


@pytest.mark.parametrize("outcomes", campaign.OUTCOMES)
@pytest.mark.parametrize("name", ["data.npz", "data", "data.parquet"])
def test_save_load_round_trip(tmp_path, name, outcomes):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    data = tiny_campaign(outcomes=outcomes)
    path = data.save(tmp_path / name)
    _assert_same(data, campaign.load(path))


@pytest.mark.parametrize("name", ["logged.npz", "logged.parquet"])
def test_round_trip_without_ground_truth(tmp_path, name):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    mine = logged(tiny_campaign())
    loaded = campaign.load(mine.save(tmp_path / name))
    _assert_same(mine, loaded)
    assert not loaded.has_truth
    with pytest.raises(ValueError, match="ground truth"):
        loaded.true_scores([0], [0], 0)


@pytest.mark.parametrize("change, match", [
    ({"labels": "two"}, "labels"),
    ({"labels": "a column too many"}, "labels"),
    ({"pairs": "out of range"}, "pairs"),
    ({"ad_objective": "out of range"}, "ad_objective"),
    ({"ad_bids": "negative"}, "ad_bids"),
    ({"true_S": None}, "ground truth"),
])
def test_bad_campaign_data(change, match):
    data = tiny_campaign()
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(campaign.CampaignData)}
    (name, how), = change.items()
    if how == "two":
        fields[name] = np.where(data.labels == 1, 2.0, 0.0)
    elif how == "a column too many":
        fields[name] = np.concatenate([data.labels, data.labels[:, :1]], axis=1)
    elif how == "out of range":
        fields[name] = getattr(data, name) + 1000
    elif how == "negative":
        fields[name] = -data.bids
    else:
        fields[name] = how
    with pytest.raises(ValueError, match=match):
        campaign.CampaignData(**fields)


def test_load_names_missing_fields(tmp_path):
    np.savez(tmp_path / "partial.npz", objectives=np.array(["a"]), labels=np.zeros(3))
    with pytest.raises(ValueError, match="user_features"):
        campaign.load(tmp_path / "partial.npz")


# ---- the light ranker's measure ---------------------------------------------------------------
def test_light_ranker_gives_the_truth_everything_and_a_random_model_less():
    # one objective: its true probability is sigmoid(z_u^T S* z_a + b*), which a Metric can serve
    data = tiny_campaign(objectives=(campaign.Objective("only", 0.1, 1.0, 2.0),))
    users = np.arange(30)
    values = experiment.true_values(data, users)
    truth = sk.ObjectiveMetrics([sk.Metric.full(data.true_S[0], bias=float(data.true_bias[0]))])
    order = np.random.default_rng(0).permutation(len(data.ad_features))
    perfect = experiment.light_ranker(data, values, data.user_latent[users], data.ad_latent, truth, 10, order,
                                      (0.25, 1.0), 0)
    for fraction in ("0.25", "1"):
        assert perfect[f"value@{fraction}"] == pytest.approx(perfect[f"truth@{fraction}"], rel=1e-5)
    assert perfect["value@1"] == pytest.approx(1.0) and perfect["value@0.25"] < 1.0
    assert perfect["recall"] == pytest.approx(1.0) and perfect["share"] == 1.0
    rng = np.random.default_rng(1)
    guess = experiment.light_ranker(data, values, rng.standard_normal((30, 6)).astype(np.float32),
                                    rng.standard_normal((90, 6)).astype(np.float32), truth, 10, order, (1.0,), 0)
    assert 0 < guess["value@1"] < 0.9


# ---- identifiability: why the setting has one S_t per objective ---------------------------------
def _model(kind: str, norm: str, head: str, n_objectives: int = 1, seed: int = 0):
    torch = pytest.importorskip("torch")
    from splitnet_kernels.experiment.model import Model

    torch.manual_seed(seed)
    model = Model(5, 4, n_objectives, kind=kind, norm=norm, head=head, dim=6, rank=2, hidden=(7,))
    with torch.no_grad():
        for parameter in model.head.parameters():  # a trained-looking S, not the identity
            parameter.copy_(torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("norm", ["unit", "free"])
def test_one_metric_is_absorbed_by_the_towers(norm):
    """With one S on towers ending in a linear layer, S = U diag(sigma) V^T is absorbed by rotating
    the towers' last layers (rotation keeps the norm): a full head and a diagonal one are one
    model class, and with free norms a full head and a plain dot product are too."""
    torch = pytest.importorskip("torch")
    full = _model("full", norm, "shared")
    users, ads = torch.randn(50, 5), torch.randn(50, 4)
    S = full.head.S.detach().double()
    U, sigma, Vt = torch.linalg.svd(S)
    target = _model("diagonal" if norm == "unit" else "dot", norm, "shared", seed=1)
    target.load_state_dict({name: value for name, value in full.state_dict().items() if not name.startswith("head.")},
                           strict=False)
    user_rotation, ad_rotation = (U.T, Vt) if norm == "unit" else (S.T, torch.eye(6, dtype=torch.float64))
    with torch.no_grad():
        for tower, rotation in ((target.user_tower[-1], user_rotation), (target.ad_tower[-1], ad_rotation)):
            tower.weight.copy_(rotation @ tower.weight.double())
            tower.bias.copy_(rotation @ tower.bias.double())
        if norm == "unit":
            target.head.s.copy_(sigma)
    torch.testing.assert_close(target(users, ads), full(users, ads), rtol=1e-5, atol=1e-5)
    # two objectives' generic S_t share no rotation: the one that diagonalizes S_1 leaves S_2 full
    second = torch.randn(6, 6, dtype=torch.float64)
    rotated = U.T @ second @ Vt.T
    assert torch.linalg.norm(rotated - torch.diag(torch.diag(rotated))) > 0.5 * torch.linalg.norm(rotated)


@pytest.mark.parametrize("kind, norm, head", [("low_rank", "unit", "per_objective"), ("full", "free", "per_objective"),
                                              ("dot", "cosine", "per_objective"), ("diagonal", "unit", "shared"),
                                              ("scaled", "cosine", "shared")])
def test_exported_metrics_score_like_the_model(kind, norm, head):
    torch = pytest.importorskip("torch")
    model = _model(kind, norm, head, n_objectives=3)
    if model.log_temperature is not None:
        with torch.no_grad():
            model.log_temperature.fill_(0.7)
    users, ads = torch.randn(40, 5), torch.randn(40, 4)
    user_embeddings, ad_embeddings = model.embeddings(users, ads)
    metrics = model.to_objective_metrics(("a", "b", "c"))
    expected = model(users, ads).detach().numpy()
    for t in range(3):
        np.testing.assert_allclose(sk.score(user_embeddings, ad_embeddings, metrics[t], pairwise=True),
                                   expected[:, t], rtol=1e-5, atol=1e-5)


# ---- the experiment end to end ------------------------------------------------------------------
TINY = experiment.Settings(seeds=2, dim=8, rank=2, hidden=(16,), batch_size=512, max_epochs=2, patience=1,
                           learning_rates=(1e-2, 3e-2), top_k=5, ranking_users=20, fractions=(0.25, 1.0),
                           serving_candidates=2000, timing_rounds=1, sweep_kinds=("diagonal", "full"),
                           sweep_seeds=2, off_diagonal=(0.0,), data_sizes=(), workers=1, campaign=TINY_CAMPAIGN)
VARIANTS = ["scaled:unit", "diagonal:unit", "full:unit", "low_rank:free", "scaled:cosine", "diagonal:unit:shared"]


def test_tiny_experiment_end_to_end(tmp_path):
    out = io.StringIO()
    result = experiment.run_experiment(variants=VARIANTS, settings=TINY, show_progress=False, out=out,
                                       json_path=tmp_path / "result.json", plot_path=tmp_path / "result.png")
    assert list(result["summary"]) == VARIANTS + [experiment.GROUND_TRUTH]
    assert result["low_rate_objective"] == "app_install"
    for variant in VARIANTS:
        row = result["summary"][variant]
        for objective in ("video_view", "link_click", "app_install"):
            auc = row[f"auc:{objective}"]
            assert auc["n"] == 2 and 0 <= auc["mean"] <= 1 and auc["low"] <= auc["mean"] <= auc["high"]
        assert 0 < row["value@1"]["mean"] <= 1 and row["value@0.25"]["mean"] <= row["value@1"]["mean"] + 1e-9
        assert 0 <= row["value@budget"]["mean"] <= row["value@1"]["mean"] + 1e-9
        assert result["training"][variant]["learning_rate"] in TINY.learning_rates
    assert result["summary"][experiment.GROUND_TRUTH]["value@1"]["mean"] == 1.0
    assert set(result["cost"]) == {"scaled", "diagonal", "full", "low_rank"}
    assert all({"fixed_us", "ns_per_candidate", "us"} <= set(cost) for cost in result["cost"].values())
    assert {"diagonal:unit - scaled:unit", "full:unit - diagonal:unit", "scaled:cosine - scaled:unit",
            "diagonal:unit - diagonal:unit:shared"} <= set(result["paired"])
    assert "scaled:unit - diagonal:unit" not in result["paired"]  # each pair once
    sweep = result["sweeps"]["off_diagonal=0"]
    assert list(sweep["summary"]) == ["diagonal:unit", "full:unit"]
    assert sweep["summary"]["full:unit"]["value@1"]["n"] == 2 and "full:unit - diagonal:unit" in sweep["paired"]
    text = out.getvalue()
    for word in ("app_install", "value captured", "[", "diagonal:unit:shared", "ground truth", "sweep off_diagonal=0",
                 "candidates in budget"):
        assert word in text
    assert json.loads((tmp_path / "result.json").read_text())["summary"].keys() == result["summary"].keys()
    assert (tmp_path / "result.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_worker_processes_give_the_same_figures():
    settings = dataclasses.replace(TINY, seeds=1, learning_rates=(3e-2,), off_diagonal=())
    here = experiment.run_experiment(variants=["diagonal:unit"], settings=settings, show_progress=False,
                                     out=io.StringIO())
    pooled = experiment.run_experiment(variants=["diagonal:unit"], settings=dataclasses.replace(settings, workers=2),
                                       show_progress=False, out=io.StringIO())
    assert pooled["summary"]["diagonal:unit"]["auc:app_install"] == here["summary"]["diagonal:unit"]["auc:app_install"]
    assert pooled["time"]["workers"] == 2


def test_experiment_command_line_on_own_data(tmp_path, capsys):
    path = logged(tiny_campaign(1, outcomes="own")).save(tmp_path / "logged.npz")
    assert cli.main(["experiment", "--quick", "--data", str(path), "--epochs", "1", "--workers", "1", "--variants",
                     "scaled:unit,diagonal:unit:shared", "--json", str(tmp_path / "out.json"), "--no-progress"]) == 0
    assert "diagonal:unit:shared" in capsys.readouterr().out
    result = json.loads((tmp_path / "out.json").read_text())
    assert list(result["summary"]) == ["scaled:unit", "diagonal:unit:shared"]  # no ground truth for logged data
    assert "value@1" not in result["summary"]["scaled:unit"] and result["sweeps"] == {}
    with pytest.raises(SystemExit):
        cli.main(["experiment", "--seeds", "0"])


def test_bad_settings():
    with pytest.raises(ValueError, match="variants"):
        experiment.run_experiment(variants=["cosine"], settings=TINY, show_progress=False)
    for change, match in (({"seeds": 0}, "seeds"), ({"learning_rates": ()}, "learning_rates"),
                          ({"test_fraction": 0.95}, "test_fraction"), ({"fractions": (0.0, 1.0)}, "fractions")):
        with pytest.raises(ValueError, match=match):
            experiment.run_experiment(settings=dataclasses.replace(TINY, **change), show_progress=False)
