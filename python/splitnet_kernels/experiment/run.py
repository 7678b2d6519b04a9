"""The experiment's run: the settings, the protocol (train / validation / test impressions, early
stopping on the validation loss, a learning-rate search per variant on seed 0), evaluation through
the serving path, the sweeps, the serving cost under a budget and the summary over seeds as 95 %
t-intervals. The variants are variants.py's, the training loop is training.py's.

Every trained model is a job; jobs run in worker processes, one per core this process may use
(os.sched_getaffinity), each with one torch thread: the models are too small for threads inside
an operation to pay, and threads spinning on cores another process holds made a busy machine
ten times slower. Torch is imported only when the experiment runs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import json
import multiprocessing
import os
import sys
import time

import numpy as np

import splitnet_kernels as sk

from .._progress import Progress
from . import campaign, serving, training
from .measures import interval, light_ranker, quality, true_values
from .report import plot, render
from .variants import HEADS, NORMS, VARIANTS, Variant

__all__ = ["NORMS", "HEADS", "Variant", "VARIANTS", "GROUND_TRUTH", "Settings", "run_experiment"]

GROUND_TRUTH = "ground truth"  # the row of the true logits, when the data has them


@dataclasses.dataclass(frozen=True)
class Settings:
    seeds: int = 5  # data, split and initialization; intervals are over seeds
    dim: int = 16  # embedding length n: as the latent's, so no head can spread objectives over spare dimensions
    rank: int = 4  # of the low_rank kind
    hidden: tuple[int, ...] = (64,)  # tower MLP widths
    batch_size: int = 2048
    max_epochs: int = 20
    patience: int = 2  # epochs without a better validation loss before stopping
    learning_rates: tuple[float, ...] = (1e-2, 3e-2)  # AdamW's, searched per variant on seed 0
    weight_decay: float = 0.0  # AdamW's, on every weight but the biases and the temperature
    ads_see_objective: bool = False  # the per-objective variants' ad tower gets the objective one-hot
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    top_k: int = 50  # the light ranker keeps this many of each user's pool
    ranking_users: int = 256  # users sampled for the light ranker's measure
    fractions: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # of the pool scored in time
    serving_candidates: int = 100_000  # the pool of one request in the serving-cost measurement
    budget_fraction: float = 0.5  # the budget: this share of the time the cheapest kind takes for the whole pool
    timing_rounds: int = 15
    sweep_kinds: tuple[str, ...] = ("diagonal", "low_rank", "full")  # unit norm, per objective
    sweep_seeds: int = 3
    off_diagonal: tuple[float, ...] = (0.0, 3.0)  # of the ground truth, beside the default (campaign's 1)
    data_sizes: tuple[float, ...] = (0.5, 2.0)  # impressions, times the default
    workers: int | None = None  # processes; None: the cores this process may use
    campaign: dict = dataclasses.field(default_factory=dict)  # make_campaign arguments

    @classmethod
    def default(cls, quick: bool = False, **overrides) -> "Settings":
        """The CLI's settings: the full run or --quick (smaller data, two seeds, one learning
        rate, no sweeps)."""
        base = cls(seeds=2, learning_rates=(3e-2,), max_epochs=8, ranking_users=128, serving_candidates=20_000,
                   timing_rounds=5, off_diagonal=(), data_sizes=(),
                   campaign={"n_users": 1000, "n_ads": 600, "n_pairs": 20_000}) if quick else cls()
        return dataclasses.replace(base, **overrides)


@dataclasses.dataclass(frozen=True)
class Job:
    """One model (or, variant None, the ground truth) for one seed at one point of a sweep."""

    variant: Variant | None
    seed: int
    learning_rate: float = 0.0
    point: tuple = ()  # (make_campaign argument, value) pairs; () is the default data


# ---- one job ------------------------------------------------------------------------------------
class _Worker:
    """Runs jobs; keeps each (seed, point)'s data, split and true values for the next job."""

    def __init__(self, settings: Settings, data: campaign.CampaignData | None):
        self.settings, self.data = settings, data
        self._prepared: dict = {}

    def _prepare(self, seed: int, point: tuple):
        if (seed, point) not in self._prepared:
            s = self.settings
            data = (self.data if self.data is not None
                    else campaign.make_campaign(seed, **{**s.campaign, **dict(point)}))
            rng = np.random.default_rng(seed)
            shuffled = rng.permutation(len(data.pairs))
            n_test = int(round(s.test_fraction * len(shuffled)))
            n_validation = int(round(s.validation_fraction * len(shuffled)))
            split = (shuffled[n_test + n_validation:], shuffled[n_test:n_test + n_validation], np.sort(shuffled[:n_test]))
            users = np.sort(rng.choice(len(data.user_features), min(s.ranking_users, len(data.user_features)),
                                       replace=False))
            order = rng.permutation(len(data.ad_features))  # the pool's arrival order
            values = true_values(data, users) if data.has_truth else None
            if len(self._prepared) >= 3:  # jobs come grouped by seed and point: keep the last few
                del self._prepared[next(iter(self._prepared))]
            self._prepared[seed, point] = (data, split, users, order, values)
        return self._prepared[seed, point]

    def run(self, job: Job) -> dict:
        data, (train, validation, test), users, order, values = self._prepare(job.seed, job.point)
        record: dict = {"seed": job.seed, "point": job.point, "learning_rate": job.learning_rate,
                        "variant": GROUND_TRUTH if job.variant is None else job.variant.name}
        if job.variant is None:
            record["measures"] = _per_objective(data, test, lambda t, rows: data.outcomes(t, rows)[2])
            return record
        import torch

        from .model import Model

        s, variant = self.settings, job.variant
        ad_inputs = data.ad_features
        if variant.head == "shared" or s.ads_see_objective:
            ad_inputs = np.concatenate([ad_inputs, np.eye(len(data.objectives), dtype=np.float32)[data.ad_objective]], 1)
        user_x, ad_x = torch.from_numpy(data.user_features), torch.from_numpy(ad_inputs)
        with torch.random.fork_rng(devices=[]):  # every variant of a seed starts from the same towers
            torch.manual_seed(job.seed)
            model = Model(user_x.shape[1], ad_x.shape[1], len(data.objectives), kind=variant.kind, norm=variant.norm,
                          head=variant.head, dim=s.dim, rank=s.rank, hidden=s.hidden)
        # the shared head learns only from each ad's own objective's outcome, as the blog's
        mask = (np.eye(len(data.objectives), dtype=np.float32)[data.pair_objective] if variant.head == "shared"
                else data.label_mask())
        schedule = training.Schedule(learning_rate=job.learning_rate, max_epochs=s.max_epochs,
                                     batch_size=s.batch_size, patience=s.patience, weight_decay=s.weight_decay,
                                     seed=job.seed)
        epochs, loss = training.train(model, user_x, ad_x, data.pairs, data.label_matrix(), mask, train, validation,
                                      schedule)
        user_embeddings, ad_embeddings = model.embeddings(user_x, ad_x)
        metrics = model.to_objective_metrics(data.objectives)

        def logits(t, rows):  # the serving path: the exported metric through the kernels
            return sk.score(user_embeddings[data.pairs[rows, 0]], ad_embeddings[data.pairs[rows, 1]], metrics[t],
                            pairwise=True, threads=1)

        record.update(epochs=epochs, validation_loss=loss, measures=_per_objective(data, test, logits))
        if values is not None:
            low = int(np.nanargmin(data.base_rates()))
            record["measures"].update(light_ranker(data, values, user_embeddings[users], ad_embeddings, metrics,
                                                   s.top_k, order, s.fractions, low))
        if job.seed == 0 and not job.point:  # what the serving-cost measurement needs
            record["serving"] = (metrics, user_embeddings[users[:8]], ad_embeddings, data.ad_objective, data.bids)
        return record


def _per_objective(data, test, logits) -> dict:
    """AUC, NE and calibration of logits(t, impressions) on each objective's test outcomes."""
    measures = {}
    for t, name in enumerate(data.objectives):
        rows, labels, _ = data.outcomes(t, test)
        for key, value in quality(labels, logits(t, rows)).items():
            measures[f"{key}:{name}"] = value
    return measures


_WORKER: _Worker | None = None


def _start_worker(settings: Settings, data) -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    global _WORKER
    _WORKER = _Worker(settings, data)


def _run_in_worker(job: Job) -> dict:
    assert _WORKER is not None  # _start_worker ran in this process
    return _WORKER.run(job)


class _Jobs:
    """Runs batches of jobs on worker processes (or here, with one worker), reporting each."""

    def __init__(self, settings: Settings, data, progress: Progress):
        self.workers = settings.workers or len(os.sched_getaffinity(0))
        self.progress = progress
        self.pool = None
        if self.workers > 1:
            self.pool = concurrent.futures.ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"),
                                                               initializer=_start_worker, initargs=(settings, data))
        else:
            self.worker = _Worker(settings, data)

    def run(self, jobs: list[Job]) -> list[dict]:
        if self.pool is None:
            with training.one_torch_thread():
                return [self._report(self.worker.run(job)) for job in jobs]
        futures = [self.pool.submit(_run_in_worker, job) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            self._report(future.result())
        return [future.result() for future in futures]

    def _report(self, record: dict) -> dict:
        where = f" {_point_name(record['point'])}" if record["point"] else ""
        self.progress.step(f"seed {record['seed']} {record['variant']}{where}")
        return record

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()


# ---- the experiment -----------------------------------------------------------------------------
def run_experiment(data: campaign.CampaignData | None = None, *, quick: bool = False, variants=None,
                   settings: Settings | None = None, show_progress: bool = True, out=None, json_path=None,
                   plot_path=None) -> dict:
    """Trains every variant (default: VARIANTS) for settings.seeds seeds, runs the sweeps (on
    synthetic data), measures the serving cost, prints the tables to `out` (default stdout) and
    returns them as a dict (also written to json_path; plot_path gets a PNG).

    data=None generates campaign data per seed (make_campaign(seed, **settings.campaign)); given
    data is used for every seed, the seeds varying the split and the initialization, and has no
    sweeps (they need the generator).
    """
    started, cpu = time.perf_counter(), _cpu_seconds()
    settings = settings or Settings.default(quick)
    _check(settings)
    variants = _pick_variants(variants)
    out = sys.stdout if out is None else out
    truth = data is None or data.has_truth
    search = [Job(v, 0, rate) for v in variants for rate in settings.learning_rates]
    sweep_variants = [v for v in variants if v.kind in settings.sweep_kinds and v.norm == "unit"
                      and v.head == "per_objective"]
    points = ([(("off_diagonal", value),) for value in settings.off_diagonal]
              + [(("n_pairs", _pairs_at(settings, scale)),) for scale in settings.data_sizes]) if data is None else []
    sweep_jobs = len(points) * len(sweep_variants) * settings.sweep_seeds
    progress = Progress(len(search) + (len(variants) + truth) * settings.seeds - len(variants) + sweep_jobs + 1,
                        show_progress)
    jobs = _Jobs(settings, data, progress)
    try:
        searched = jobs.run(search)
        rates = {}
        for v in variants:  # the learning rate with the best validation loss on seed 0
            rates[v.name] = min((r for r in searched if r["variant"] == v.name), key=lambda r: r["validation_loss"])
        runs = list(rates.values())
        later = [Job(None, 0)] if truth else []
        for seed in range(1, settings.seeds):
            later += ([Job(None, seed)] if truth else []) + [Job(v, seed, rates[v.name]["learning_rate"])
                                                              for v in variants]
        later += [Job(v, seed, rates[v.name]["learning_rate"], point) for point in points
                  for seed in range(settings.sweep_seeds) for v in sweep_variants]
        runs += jobs.run(later)
    finally:
        jobs.close()
    costs = _serving_costs(runs, settings)
    progress.step("serving cost")
    result = _summarize(runs, variants, costs, data, settings, points)
    result["time"] = {"wall_seconds": time.perf_counter() - started, "cpu_seconds": _cpu_seconds() - cpu,
                      "workers": jobs.workers}
    print(render(result), file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(_without_nan(result), f, indent=2)
    if plot_path:
        plot(result, plot_path)
    return result


def _check(settings: Settings) -> None:
    if settings.seeds < 1 or settings.sweep_seeds < 1:
        raise ValueError(f"seeds: must be >= 1, got seeds={settings.seeds}, sweep_seeds={settings.sweep_seeds}")
    if not settings.learning_rates or min(settings.learning_rates) <= 0:
        raise ValueError(f"learning_rates: expected at least one rate > 0, got {settings.learning_rates}")
    if not (settings.test_fraction > 0 and settings.validation_fraction > 0
            and settings.test_fraction + settings.validation_fraction < 1):
        raise ValueError(f"test_fraction, validation_fraction: expected both > 0 with a sum below 1, got "
                         f"{settings.test_fraction} and {settings.validation_fraction}")
    if not all(0 < f <= 1 for f in settings.fractions) or not 0 < settings.budget_fraction:
        raise ValueError(f"fractions, budget_fraction: expected fractions in (0, 1] and a budget_fraction > 0, "
                         f"got {settings.fractions} and {settings.budget_fraction}")


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished worker processes."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _pairs_at(settings: Settings, scale: float) -> int:
    """scale times the impressions of the default data."""
    default = inspect.signature(campaign.make_campaign).parameters["n_pairs"].default
    return int(round(scale * settings.campaign.get("n_pairs", default)))


def _point_name(point: tuple) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in point) or "default"


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


def _serving_costs(runs, settings: Settings) -> dict:
    """The fitted request cost of each kind, from its seed-0 model (unit, per objective if run)."""
    models: dict = {}
    for record in sorted((r for r in runs if "serving" in r), key=lambda r: not r["variant"].endswith(":unit")):
        models.setdefault(record["variant"].split(":")[0], record.pop("serving"))
    for record in runs:
        record.pop("serving", None)
    return serving.request_costs(models, settings.serving_candidates, settings.top_k, settings.timing_rounds)


def _without_nan(value):
    """NaN (a measure undefined for the data) as JSON null; tuples as lists."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    return None if isinstance(value, float) and value != value else value


# ---- the summary --------------------------------------------------------------------------------
def _comparisons(variants) -> list[tuple[str, str]]:
    """(variant, baseline) pairs taken seed by seed: every kind against the scaled dot of the
    same norm and head, low_rank and full against the diagonal too, each norm against unit, and
    one S_t per objective against the shared S."""
    names = {v.name for v in variants}
    pairs = []
    for v in variants:
        baselines = [Variant("scaled", v.norm, v.head), Variant(v.kind, "unit", v.head),
                     Variant(v.kind, v.norm, "shared")]
        if v.kind in ("low_rank", "full"):
            baselines.insert(1, Variant("diagonal", v.norm, v.head))
        pairs += [(v.name, b.name) for b in baselines if b.name in names and b.name != v.name]
    return pairs


def _budget_values(records, costs: dict, settings: Settings) -> float:
    """Adds value@budget to each record: its value at the fraction of the pool its kind scores
    within the budget (interpolated in log fraction). Returns the budget in microseconds."""
    full = {kind: cost["fixed_us"] + cost["ns_per_candidate"] * 1e-3 * settings.serving_candidates
            for kind, cost in costs.items()}
    budget = settings.budget_fraction * min(full.values())
    fractions = sorted(set(settings.fractions) | {1.0})
    for record in records:
        kind = record["variant"].split(":")[0]
        if kind in costs and "value@1" in record["measures"]:
            share = serving.processed(costs[kind], budget, settings.serving_candidates) / settings.serving_candidates
            curve = [record["measures"][f"value@{f:g}"] for f in fractions]
            record["measures"]["value@budget"] = (float(np.interp(np.log(max(share, fractions[0])), np.log(fractions),
                                                                  curve)) if share > 0 else 0.0)
    return budget


def _summarize(runs, variants, costs, data, settings: Settings, points) -> dict:
    first = data if data is not None else campaign.make_campaign(0, **settings.campaign)
    rates = first.base_rates()
    low = first.objectives[int(np.nanargmin(rates))]
    for record in runs:  # the truth's own top k: what the light ranker's measure gives the truth
        if record["variant"] == GROUND_TRUTH:
            model = next((r for r in runs if r["seed"] == record["seed"] and not r["point"]
                          and "value@1" in r["measures"] and r["variant"] != GROUND_TRUTH), None)
            if model is not None:
                record["measures"].update({key.replace("truth@", "value@"): value
                                           for key, value in model["measures"].items() if key.startswith("truth@")})
                record["measures"].update(recall=1.0, share=model["measures"]["share_oracle"])
    budget = _budget_values([r for r in runs if not r["point"]], costs, settings)

    def at(point):
        mine = [r for r in runs if r["point"] == point]
        rows = list(dict.fromkeys(r["variant"] for r in mine))
        summary = {row: {key: interval([r["measures"].get(key, float("nan")) for r in mine if r["variant"] == row])
                         for key in next(r for r in mine if r["variant"] == row)["measures"]} for row in rows}
        paired = {}
        for variant, baseline in _comparisons([v for v in variants if v.name in rows]):
            base = {r["seed"]: r["measures"] for r in mine if r["variant"] == baseline}
            differences = [(r["measures"], base[r["seed"]]) for r in mine if r["variant"] == variant
                           and r["seed"] in base]
            paired[f"{variant} - {baseline}"] = {key: interval([a[key] - b[key] for a, b in differences])
                                                 for key in differences[0][0] if key in differences[0][1]}
        return {"summary": summary, "paired": paired}

    default = at(())
    chosen = {r["variant"]: {"learning_rate": r["learning_rate"]} for r in runs if r["seed"] == 0 and not r["point"]
              and r["variant"] != GROUND_TRUTH}
    for r in runs:
        if r["variant"] in chosen and not r["point"]:
            chosen[r["variant"]].setdefault("epochs", []).append(r["epochs"])
    return {
        "settings": dataclasses.asdict(settings),
        "data": {"users": len(first.user_features), "ads": len(first.ad_features), "impressions": len(first.pairs),
                 "multi_label": first.multi_label,
                 "objectives": {name: {"base_rate": float(rate)} for name, rate in zip(first.objectives, rates)}},
        "low_rate_objective": low,
        "variants": [v.name for v in variants],
        "training": chosen,
        "summary": default["summary"],
        "paired": default["paired"],
        "cost": costs,
        "budget_us": budget,
        "sweeps": {_point_name(point): at(point) for point in points},
        "runs": runs,
    }
