"""The experiment's run: the variants and settings, training every variant per seed, evaluating
it through the serving path, its serving cost, and the summary over seeds. Torch is imported
only when run_experiment is called."""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import numpy as np

import splitnet_kernels as sk

from ..bench.report import Progress
from ..bench.timing import median_time
from . import campaign
from .measures import quality, recall_at_k
from .report import plot, render

__all__ = ["Variant", "VARIANTS", "BASELINES", "GROUND_TRUTH", "Settings", "run_experiment"]


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    kind: str
    per_objective: bool  # a bias and a scale per objective (the cheap fix) instead of one shared bias


# Every kind with one shared bias (the blog's setup), and every kind with a bias and scale per
# objective. "dot" per objective would be "scaled+obj" again (its per-objective scale is a w).
VARIANTS = tuple(Variant(kind, kind, False) for kind in ("dot", "scaled", "diagonal", "low_rank", "full")) + tuple(
    Variant(f"{kind}+obj", kind, True) for kind in ("scaled", "diagonal", "low_rank", "full"))
BASELINES = ("scaled", "scaled+obj")  # what the paired differences are taken against
GROUND_TRUTH = "ground truth"  # the row of the true logits, when the data has them


@dataclasses.dataclass(frozen=True)
class Settings:
    dim: int = 32  # embedding length n
    rank: int = 4  # of the low_rank kind
    hidden: tuple[int, ...] = (64,)  # tower MLP widths
    epochs: int = 5
    batch_size: int = 1024
    learning_rate: float = 1e-2  # Adam's, decayed linearly to 0 over the run
    test_fraction: float = 0.3
    top_k: int = 50  # recall@K against the ground-truth top-K per user
    recall_users: int = 256  # users sampled for recall@K
    serving_candidates: int = 100_000  # ads in the serving-cost measurement
    timing_rounds: int = 7  # of at least 20 ms each; the median is reported
    campaign: dict = dataclasses.field(default_factory=dict)  # make_campaign sizes

    @classmethod
    def default(cls, quick: bool = False, **overrides) -> "Settings":
        """The CLI's settings: the full run (about a minute a seed on 2 cores) or --quick."""
        if quick:
            base = cls(epochs=2, serving_candidates=20_000, recall_users=128,
                       campaign={"n_users": 1500, "n_ads": 1000, "n_pairs": 200_000})
        else:
            base = cls(campaign={"n_users": 5000, "n_ads": 3000, "n_pairs": 1_000_000})
        return dataclasses.replace(base, **overrides)


# ---- training -----------------------------------------------------------------------------------
def _train(model, data, train, settings: Settings, seed: int, progress: Progress, label: str) -> float:
    """Adam on the mean BCE-with-logits of each impression's own objective; returns the last epoch's loss."""
    import torch
    from torch.nn import functional as F

    user_x, ad_x = torch.from_numpy(data.user_features), torch.from_numpy(data.ad_features)
    pairs = torch.from_numpy(data.pairs[train])
    labels = torch.from_numpy(data.labels[train])
    objective = torch.from_numpy(data.pair_objective[train])
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    steps = settings.epochs * -(-len(train) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)  # linear decay to 0
    order_generator = torch.Generator().manual_seed(seed)
    if model.head.bias is not None:  # start at the base rates: from 0 (p = 1/2) a 1% rate takes many steps
        rates = torch.bincount(objective, weights=labels, minlength=len(data.objectives)) / torch.bincount(
            objective, minlength=len(data.objectives))
        rates = torch.nan_to_num(rates, nan=labels.mean().item())  # an objective absent from the training split
        with torch.no_grad():
            model.head.bias.copy_(torch.logit(rates if model.head.n_objectives else labels.mean(), eps=1e-6))
    model.train()
    for epoch in range(settings.epochs):
        total, count = 0.0, 0
        for batch in torch.randperm(len(train), generator=order_generator).split(settings.batch_size):
            logits = model(user_x[pairs[batch, 0]], ad_x[pairs[batch, 1]])
            if logits.ndim == 2:  # one column per objective: take the impression's own
                logits = logits.gather(1, objective[batch, None]).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(batch), count + len(batch)
        progress.step(f"{label} epoch {epoch + 1}/{settings.epochs} loss {total / count:.4f}")
    model.eval()
    return total / count


def _evaluate(model, data, test, recall_users, settings: Settings) -> dict:
    """Per objective: AUC, NE, calibration on the test impressions, scored by sk.score with the
    exported metric; recall@K when the data has a ground truth."""
    user_embeddings, ad_embeddings = model.embeddings(data.user_features, data.ad_features)
    metrics = model.head.to_metrics()
    test_objective = data.pair_objective[test]
    results = {}
    for t, name in enumerate(data.objectives):
        metric = metrics[t] if model.head.n_objectives else metrics[0]
        mine = test[test_objective == t]
        logits = sk.score(user_embeddings[data.pairs[mine, 0]], ad_embeddings[data.pairs[mine, 1]], metric,
                          pairwise=True).astype(np.float64)
        recall = (recall_at_k(data, recall_users, user_embeddings, ad_embeddings, metric, t, settings.top_k)
                  if data.has_truth else float("nan"))
        results[name] = quality(data.labels[mine], logits, recall)
    return results


def _ground_truth(data, test) -> dict:
    """The same measures for the true logits: the ceiling no model can beat (but by noise)."""
    test_objective = data.pair_objective[test]
    return {name: quality(data.labels[test[test_objective == t]], data.true_logits[test[test_objective == t]], 1.0)
            for t, name in enumerate(data.objectives)}


def _serving_cost(metric, candidates: int, dim: int, rounds: int) -> dict:
    """Seconds per candidate of one user against `candidates` ads (folded: S applied once), and
    per pair when every pair has its own user (S applied per pair)."""
    rng = np.random.default_rng(0)
    ads = rng.standard_normal((candidates, dim), dtype=np.float32)
    users = rng.standard_normal((candidates, dim), dtype=np.float32)
    out = np.empty(candidates, np.float32)
    folded = median_time(lambda: sk.score(users[0], ads, metric, out=out), rounds, min_seconds=0.02) / candidates
    per_pair = median_time(lambda: sk.score(users, ads, metric, pairwise=True, out=out), rounds, min_seconds=0.02)
    return {"ns_per_candidate": folded * 1e9, "candidates_per_ms": 1e-3 / folded,
            "ns_per_pair_unfolded": per_pair / candidates * 1e9}


# ---- the experiment -----------------------------------------------------------------------------
def run_experiment(data: campaign.CampaignData | None = None, *, seeds: int = 1, quick: bool = False,
                   variants=None, settings: Settings | None = None, show_progress: bool = True, out=None,
                   json_path=None, plot_path=None) -> dict:
    """Trains every variant (default: VARIANTS) for each seed, prints the table to `out`
    (default stdout) and returns it as a dict (also written to json_path; plot_path gets a PNG).

    data=None generates campaign data per seed (make_campaign(seed, **settings.campaign));
    given data is used for every seed, and the seeds vary the split and the initialization.
    """
    import torch

    from .._metric import takes_rank
    from ..nn import SplitNet

    if seeds < 1:
        raise ValueError(f"seeds: must be >= 1, got {seeds}")
    settings = settings or Settings.default(quick)
    variants = _pick_variants(variants)
    out = sys.stdout if out is None else out
    progress = Progress(seeds * len(variants) * settings.epochs + len(variants), show_progress)
    runs: list[dict] = []
    heads: dict[str, SplitNet] = {}  # the seed-0 model of each variant, for the serving cost
    for seed in range(seeds):
        seed_data = data if data is not None else campaign.make_campaign(seed, **settings.campaign)
        if seed == 0:
            first_data = seed_data
        rng = np.random.default_rng(seed)
        shuffled = rng.permutation(len(seed_data.pairs))
        n_test = int(round(settings.test_fraction * len(shuffled)))
        test, train = np.sort(shuffled[:n_test]), shuffled[n_test:]
        n_users = len(seed_data.user_features)
        recall_users = rng.choice(n_users, min(settings.recall_users, n_users), replace=False)
        if seed_data.has_truth:
            runs.append({"seed": seed, "variant": GROUND_TRUTH, "objectives": _ground_truth(seed_data, test)})
        for variant in variants:
            with torch.random.fork_rng(devices=[]):  # the same towers at the start for every variant
                torch.manual_seed(seed)
                model = SplitNet(seed_data.user_features.shape[1], seed_data.ad_features.shape[1], settings.dim,
                                 kind=variant.kind, rank=settings.rank if takes_rank(variant.kind) else None,
                                 n_objectives=len(seed_data.objectives) if variant.per_objective else None,
                                 hidden=settings.hidden)
                start = time.perf_counter()
                loss = _train(model, seed_data, train, settings, seed, progress, f"seed {seed} {variant.name}")
                seconds = time.perf_counter() - start
            runs.append({"seed": seed, "variant": variant.name, "kind": variant.kind,
                         "per_objective": variant.per_objective, "train_loss": loss, "train_seconds": seconds,
                         "objectives": _evaluate(model, seed_data, test, recall_users, settings)})
            heads.setdefault(variant.name, model)
    cost = {}
    for variant in variants:
        model = heads[variant.name]
        cost[variant.name] = {"head_parameters": model.parameter_count(head_only=True),
                              **_serving_cost(model.head.to_metrics()[0], settings.serving_candidates, settings.dim,
                                              settings.timing_rounds)}
        progress.step(f"serving cost {variant.name}")
    result = _summarize(runs, cost, variants, first_data, seeds, settings)
    print(render(result), file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(_without_nan(result), f, indent=2)
    if plot_path:
        plot(result, plot_path)
    return result


def _without_nan(value):
    """NaN (a measure undefined for the data) as JSON null."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    return None if isinstance(value, float) and value != value else value


def _pick_variants(variants) -> tuple[Variant, ...]:
    if variants is None:
        return VARIANTS
    known = {v.name: v for v in VARIANTS}
    picked = []
    for v in variants:
        if isinstance(v, Variant):
            picked.append(v)
        elif v in known:
            picked.append(known[v])
        else:
            raise ValueError(f"variants: unknown variant {v!r} (known: {', '.join(known)})")
    if not picked:
        raise ValueError("variants: at least one is needed")
    return tuple(picked)


def _mean_std(values) -> dict:
    values = np.asarray(values, np.float64)
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std}


def _summarize(runs, cost, variants, data, seeds: int, settings: Settings) -> dict:
    rates = data.base_rates()
    low = data.objectives[int(np.nanargmin(rates))]
    summary = {}
    rows = [v.name for v in variants] + ([GROUND_TRUTH] if any(r["variant"] == GROUND_TRUTH for r in runs) else [])
    for row in rows:
        mine = [r for r in runs if r["variant"] == row]
        summary[row] = {name: {measure: _mean_std([r["objectives"][name][measure] for r in mine])
                               for measure in mine[0]["objectives"][name]} for name in data.objectives}
    # AUC on the low-base-rate objective minus a baseline's, seed by seed (same data, same start)
    paired = {}
    for baseline in (b for b in BASELINES if b in summary):
        base = {r["seed"]: r["objectives"][low]["auc"] for r in runs if r["variant"] == baseline}
        paired[baseline] = {v.name: _mean_std([r["objectives"][low]["auc"] - base[r["seed"]]
                                               for r in runs if r["variant"] == v.name])
                            for v in variants if v.name != baseline}
    return {
        "settings": dataclasses.asdict(settings),
        "seeds": seeds,
        "data": {"users": len(data.user_features), "ads": len(data.ad_features), "impressions": len(data.pairs),
                 "objectives": {name: {"base_rate": float(rate)} for name, rate in zip(data.objectives, rates)}},
        "low_rate_objective": low,
        "runs": runs,
        "summary": summary,
        "paired_auc_difference": paired,
        "cost": cost,
    }
