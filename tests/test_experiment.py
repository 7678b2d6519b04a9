"""The metric-learning experiment: its quality measures against brute force, the campaign
generator and its files, and a tiny run end to end (API and command line)."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest

from splitnet_kernels import cli, experiment
from splitnet_kernels.experiment import campaign


def tiny_campaign(seed: int = 0) -> campaign.CampaignData:
    return campaign.make_campaign(seed, n_users=120, n_ads=90, n_pairs=6000, latent_dim=6, user_features=8,
                                  ad_features=7, rank=2)


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


# ---- campaign data ----------------------------------------------------------------------------
def test_generator_hits_the_base_rates_and_is_seeded():
    data = campaign.make_campaign(0, n_users=400, n_ads=300, n_pairs=200_000)
    assert data.objectives == ("video_view", "link_click", "app_install")
    np.testing.assert_allclose(data.base_rates(), [0.30, 0.04, 0.01], rtol=0.1)
    assert set(np.unique(data.labels)) == {0.0, 1.0}
    again = campaign.make_campaign(0, n_users=400, n_ads=300, n_pairs=200_000)
    np.testing.assert_array_equal(data.labels, again.labels)
    np.testing.assert_array_equal(data.user_features, again.user_features)
    other = campaign.make_campaign(1, n_users=400, n_ads=300, n_pairs=1000)
    assert not np.array_equal(other.user_features, data.user_features)


def test_ground_truth_is_objective_specific_and_not_diagonal():
    data = tiny_campaign()
    for S in data.true_S:
        off_diagonal = S - np.diag(np.diag(S))
        assert np.linalg.norm(off_diagonal) > 0.5 * np.linalg.norm(S)
    assert not np.allclose(data.true_S[0], data.true_S[-1])
    # true_logits are the scores true_scores gives for each impression
    t = data.pair_objective
    for objective in range(len(data.objectives)):
        mine = np.flatnonzero(t == objective)[:50]
        full = data.true_scores(data.pairs[mine, 0], data.pairs[mine, 1], objective)
        np.testing.assert_allclose(np.diag(full), data.true_logits[mine], rtol=1e-5, atol=1e-5)
    # the ad features carry the objective one-hot in their last columns
    np.testing.assert_array_equal(data.ad_features[:, -3:].argmax(1), data.ad_objective)


def _assert_same(a: campaign.CampaignData, b: campaign.CampaignData):
    assert a.objectives == b.objectives
    for field in dataclasses.fields(campaign.CampaignData):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name != "objectives":
            assert (x is None and y is None) or (x.dtype == y.dtype and np.array_equal(x, y)), field.name


@pytest.mark.parametrize("name", ["data.npz", "data", "data.parquet"])
def test_save_load_round_trip(tmp_path, name):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    data = tiny_campaign()
    path = data.save(tmp_path / name)
    _assert_same(data, campaign.load(path))


@pytest.mark.parametrize("name", ["logged.npz", "logged.parquet"])
def test_round_trip_without_ground_truth(tmp_path, name):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    full = tiny_campaign()
    logged = campaign.CampaignData(objectives=full.objectives, user_features=full.user_features,
                                   ad_features=full.ad_features, ad_objective=full.ad_objective, pairs=full.pairs,
                                   labels=full.labels)
    loaded = campaign.load(logged.save(tmp_path / name))
    _assert_same(logged, loaded)
    assert not loaded.has_truth
    with pytest.raises(ValueError, match="ground truth"):
        loaded.true_scores([0], [0], 0)


@pytest.mark.parametrize("change, match", [
    ({"labels": "two"}, "labels"),
    ({"pairs": "out of range"}, "pairs"),
    ({"ad_objective": "out of range"}, "ad_objective"),
    ({"true_S": None}, "ground truth"),
])
def test_bad_campaign_data(change, match):
    data = tiny_campaign()
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(campaign.CampaignData)}
    (name, how), = change.items()
    if how == "two":
        fields[name] = np.where(data.labels == 1, 2.0, 0.0)
    elif how == "out of range":
        fields[name] = getattr(data, name) + 1000
    else:
        fields[name] = how
    with pytest.raises(ValueError, match=match):
        campaign.CampaignData(**fields)


def test_load_names_missing_fields(tmp_path):
    np.savez(tmp_path / "partial.npz", objectives=np.array(["a"]), labels=np.zeros(3))
    with pytest.raises(ValueError, match="user_features"):
        campaign.load(tmp_path / "partial.npz")


# ---- the experiment end to end ------------------------------------------------------------------
TINY = experiment.Settings(dim=8, rank=2, hidden=(16,), epochs=1, batch_size=512, top_k=5, recall_users=20,
                           serving_candidates=2000, timing_rounds=1)
MEASURES = {"auc", "ne", "calibration", "recall_at_k"}


def test_tiny_experiment_end_to_end(tmp_path):
    out = io.StringIO()
    result = experiment.run_experiment(tiny_campaign(), seeds=2, settings=TINY, show_progress=False, out=out,
                                       json_path=tmp_path / "result.json", plot_path=tmp_path / "result.png")
    names = [v.name for v in experiment.VARIANTS]
    assert "scaled+obj" in names and {v.kind for v in experiment.VARIANTS} == {"dot", "scaled", "diagonal",
                                                                             "low_rank", "full"}
    assert list(result["summary"]) == names + [experiment.GROUND_TRUTH]
    assert result["low_rate_objective"] == "app_install"
    for variant in names:
        for objective in ("video_view", "link_click", "app_install"):
            row = result["summary"][variant][objective]
            assert set(row) == MEASURES
            assert 0 <= row["auc"]["mean"] <= 1 and row["auc"]["std"] >= 0
            assert 0 <= row["recall_at_k"]["mean"] <= 1
        cost = result["cost"][variant]
        assert cost["head_parameters"] >= 1 and cost["ns_per_candidate"] > 0
        assert cost["candidates_per_ms"] == pytest.approx(1e6 / cost["ns_per_candidate"])
    assert result["cost"]["full"]["head_parameters"] == 8 * 8 + 1
    assert result["cost"]["scaled+obj"]["head_parameters"] == 1 + 2 * 3
    assert set(result["paired_auc_difference"]) == {"scaled", "scaled+obj"}
    assert len([r for r in result["runs"] if r["variant"] == "diagonal"]) == 2
    text = out.getvalue()
    for word in ("app_install", "recall@5", "ns/candidate", "±", "diagonal+obj", "ground truth"):
        assert word in text
    assert json.loads((tmp_path / "result.json").read_text())["summary"].keys() == result["summary"].keys()
    assert (tmp_path / "result.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_experiment_command_line_on_own_data(tmp_path, capsys):
    data = tiny_campaign(1)
    logged = campaign.CampaignData(objectives=data.objectives, user_features=data.user_features,
                                   ad_features=data.ad_features, ad_objective=data.ad_objective, pairs=data.pairs,
                                   labels=data.labels)
    path = logged.save(tmp_path / "logged.npz")
    assert cli.main(["experiment", "--quick", "--data", str(path), "--epochs", "1", "--variants",
                     "scaled,diagonal+obj", "--json", str(tmp_path / "out.json"), "--no-progress"]) == 0
    assert "diagonal+obj" in capsys.readouterr().out
    result = json.loads((tmp_path / "out.json").read_text())
    assert list(result["summary"]) == ["scaled", "diagonal+obj"]  # no ground truth for logged data
    assert result["summary"]["scaled"]["app_install"]["recall_at_k"]["mean"] is None  # NaN -> null
    with pytest.raises(SystemExit):
        cli.main(["experiment", "--seeds", "0"])


def test_unknown_variant():
    with pytest.raises(ValueError, match="variants"):
        experiment.run_experiment(tiny_campaign(), variants=["cosine"], settings=TINY, show_progress=False)
