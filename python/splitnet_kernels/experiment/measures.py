"""The quality measures of the experiment, in NumPy: AUC, normalized entropy and calibration per
objective, the light ranker's value captured from a mixed pool (through sk.topk by value), and
95 % t-intervals over seeds."""

from __future__ import annotations

import math

import numpy as np

import splitnet_kernels as sk

from . import campaign

__all__ = ["auc", "normalized_entropy", "calibration", "quality", "true_values", "light_ranker", "interval"]


def auc(labels, scores) -> float:
    """Area under the ROC curve from ranks (ties share their mean rank); NaN without both classes."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based mean rank per tie group
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _bce(labels, logits) -> np.ndarray:
    """Binary cross-entropy per example, from logits, without overflow."""
    return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def normalized_entropy(labels, logits) -> float:
    """Mean log loss over the entropy of the base rate: below 1 beats predicting the base rate."""
    labels, logits = np.asarray(labels, np.float64), np.asarray(logits, np.float64)
    rate = labels.mean() if labels.size else float("nan")
    if not 0 < rate < 1:
        return float("nan")
    return float(_bce(labels, logits).mean() / -(rate * np.log(rate) + (1 - rate) * np.log1p(-rate)))


def calibration(labels, logits) -> float:
    """Sum of predicted probabilities over sum of labels: 1 is calibrated."""
    positives = float(np.sum(labels))
    return float(campaign._sigmoid(np.asarray(logits, np.float64)).sum() / positives) if positives else float("nan")


def quality(labels, logits) -> dict:
    return {"auc": auc(labels, logits), "ne": normalized_entropy(labels, logits),
            "calibration": calibration(labels, logits)}


def true_values(data: campaign.CampaignData, users: np.ndarray) -> np.ndarray:
    """(M, A) float64: bid times the true probability of the ad's objective's outcome, for these
    users against every ad (the expected value the light ranker should rank by)."""
    values = np.empty((len(users), len(data.ad_features)))
    for t in range(len(data.objectives)):
        ads = np.flatnonzero(data.ad_objective == t)
        values[:, ads] = campaign._sigmoid(data.true_scores(users, ads, t))
    return values * data.bids.astype(np.float64)


def light_ranker(data: campaign.CampaignData, values: np.ndarray, user_embeddings: np.ndarray,
                 ad_embeddings: np.ndarray, metrics: sk.ObjectiveMetrics, k: int, order: np.ndarray, fractions,
                 objective: int) -> dict:
    """The light ranker's job: per user, keep k of a mixed pool (every objective) ranked by
    bid * p through sk.topk(..., output="value"), when only the first `fraction` of the pool (in
    arrival order `order`) can be scored in time.

    values: true_values of these users. Returns, as ratios of sums over users:
      value@f        value of the k kept from the fraction f of the pool over the oracle's (the
                     true top k of the whole pool), for every f in fractions
      truth@f        the same for the true values' own top k of that fraction (the ceiling)
      recall         the share of the oracle's ads of `objective` the whole pool's k keep
      share          the share of `objective` among the k kept (share_oracle: among the oracle's)
    """
    n_ads = values.shape[1]
    k = min(k, n_ads)
    rows = np.arange(len(values))[:, None]
    oracle = np.argpartition(-values, k - 1, axis=1)[:, :k]
    best = values[rows, oracle].sum()
    low = data.ad_objective == objective
    result = {}
    for fraction in sorted(set(fractions) | {1.0}):  # the whole pool last: `kept` is its below
        visible = order[:max(k, math.ceil(fraction * n_ads))]
        _, ids = sk.topk(user_embeddings, ad_embeddings[visible], k, metrics, objectives=data.ad_objective[visible],
                         bids=data.bids[visible], output="value", threads=1)
        kept = visible[ids]
        truth = visible[np.argpartition(-values[:, visible], k - 1, axis=1)[:, :k]]
        result[f"value@{fraction:g}"] = float(values[rows, kept].sum() / best)
        result[f"truth@{fraction:g}"] = float(values[rows, truth].sum() / best)
    wanted = np.zeros(values.shape, bool)
    wanted[rows, oracle] = low[oracle]
    found = wanted[rows, kept].sum()
    result["recall"] = float(found / wanted.sum()) if wanted.any() else float("nan")
    result["share"] = float(low[kept].mean())
    result["share_oracle"] = float(low[oracle].mean())
    return result


# 97.5 % quantiles of Student's t for 1..30 degrees of freedom (beyond: 1.96 + 2.4 / df, within 1e-3)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def interval(values) -> dict:
    """Mean and 95 % t-interval of the finite values (low = high = mean for one value; NaN for none)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    mean = float(values.mean())
    if n == 1:
        return {"mean": mean, "low": mean, "high": mean, "n": 1}
    df = n - 1
    half = (_T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df) * float(values.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}
