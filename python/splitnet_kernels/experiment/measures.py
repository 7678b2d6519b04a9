"""The quality measures of the experiment, in NumPy: AUC, normalized entropy, calibration and
recall@K through the serving path (sk.topk with the learned embeddings and exported metric)."""

from __future__ import annotations

import numpy as np

import splitnet_kernels as sk

from . import campaign

__all__ = ["auc", "normalized_entropy", "calibration", "recall_at_k", "quality"]


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


def recall_at_k(data: campaign.CampaignData, users: np.ndarray, user_embeddings, ad_embeddings, metric, objective: int,
                k: int) -> float:
    """Mean share of each user's ground-truth top-k ads (of this objective) that sk.topk finds
    with the learned embeddings and exported metric."""
    ads = np.flatnonzero(data.ad_objective == objective)
    k = min(k, len(ads))
    if k == 0:
        return float("nan")
    truth = np.argpartition(-data.true_scores(users, ads, objective), k - 1, axis=1)[:, :k]
    _, found = sk.topk(user_embeddings[users], ad_embeddings[ads], k, metric)
    return float(np.mean([np.isin(f, t).sum() / k for f, t in zip(found, truth)]))


def quality(labels, logits, recall: float) -> dict:
    return {"auc": auc(labels, logits), "ne": normalized_entropy(labels, logits),
            "calibration": calibration(labels, logits), "recall_at_k": recall}


