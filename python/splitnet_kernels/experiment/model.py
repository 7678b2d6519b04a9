"""The experiment's model: two MLP towers, a normalisation of their embeddings, and a head with
one similarity S_t per objective (nn.ObjectiveHead) or one S shared by every objective (the
blog's nn.MetricHead with a bias per objective). Imports torch."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import splitnet_kernels as sk

from .._metric import build, takes_rank
from ..nn import MetricHead, ObjectiveHead, _tower

from .variants import HEADS, NORMS

__all__ = ["Model"]


class Model(nn.Module):
    """logits (B, T) for every objective of each (user, ad) pair.

    per_objective: logit_t = u^T S_t a + b_t, one S_t of `kind` per objective (ObjectiveHead).
    shared: logit_t = u^T S a + b_t, one S for every objective (the blog's SplitNet).
    norm: one of NORMS (see variants.py).
    """

    def __init__(self, user_features: int, ad_features: int, n_objectives: int, *, kind: str, norm: str,
                 head: str, dim: int, rank: int, hidden: tuple[int, ...]):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
        if head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {head!r}")
        self.norm, self.shared = norm, head == "shared"
        self.user_tower = _tower(user_features, tuple(hidden), dim)
        self.ad_tower = _tower(ad_features, tuple(hidden), dim)
        rank_or_none = rank if takes_rank(kind) else None
        self.head: nn.Module
        if self.shared:
            self.head = MetricHead(kind, dim, rank=rank_or_none, bias=False)
            self.bias = nn.Parameter(torch.zeros(n_objectives))
        else:
            self.head = ObjectiveHead(kind, dim, rank=rank_or_none, n_objectives=n_objectives)
        # log-parametrised, starting at 1: the model starts as the unit-norm one
        self.log_temperature = nn.Parameter(torch.zeros(())) if norm == "cosine" else None

    def embed_users(self, features: torch.Tensor) -> torch.Tensor:
        users = self.user_tower(features)
        if self.norm == "free":
            return users
        users = F.normalize(users, dim=-1)
        return users if self.log_temperature is None else users * self.log_temperature.exp()

    def embed_ads(self, features: torch.Tensor) -> torch.Tensor:
        ads = self.ad_tower(features)
        return ads if self.norm == "free" else F.normalize(ads, dim=-1)

    def forward(self, user_features: torch.Tensor, ad_features: torch.Tensor) -> torch.Tensor:
        users, ads = self.embed_users(user_features), self.embed_ads(ad_features)
        if self.shared:
            return self.head(users, ads).unsqueeze(-1) + self.bias
        return torch.stack([head(users, ads) for head in self.head.heads], dim=-1)  # type: ignore[union-attr]

    @torch.no_grad()
    def set_biases(self, logits: torch.Tensor) -> None:
        """Each objective's bias b_t = logits[t]."""
        if self.shared:
            self.bias.copy_(logits)
        else:
            for head, logit in zip(self.head.heads, logits):  # type: ignore[arg-type]
                head.bias.copy_(logit)

    @torch.no_grad()
    def embeddings(self, user_features: torch.Tensor, ad_features: torch.Tensor):
        """User and ad embeddings as float32 numpy arrays for the kernels."""
        return self.embed_users(user_features).numpy(), self.embed_ads(ad_features).numpy()

    @torch.no_grad()
    def to_objective_metrics(self, names) -> sk.ObjectiveMetrics:
        """What serves this model through the kernels, with the embeddings above."""
        if not self.shared:
            return sk.ObjectiveMetrics(self.head.to_metrics(), names=names)  # type: ignore[operator]
        metric = self.head.to_metric()  # type: ignore[operator]
        return sk.ObjectiveMetrics([build(metric.kind, metric.dim, metric.params, float(b)) for b in self.bias],
                                   names=names)
