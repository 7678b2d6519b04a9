"""PyTorch side (needs the [torch] extra): a trainable metric head per kind, with optional
per-objective bias and scale, that exports to sk.Metric for serving; and a small two-tower SplitNet.

A head computes logits = scale_t * (u^T S a) + bias_t. Exporting folds the scale into S
(S_t = scale_t * S), so sk.score(u, a, head.to_metric(t)) gives the module's logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._api import score as _score
from ._metric import KINDS, PARTS, Form, Metric, build, takes_rank

__all__ = ["MetricHead", "SplitNet"]

LOW_RANK_INIT_STD = 0.01  # P, Q start this small, so diag(1) + P Q^T starts near the identity


def _initial(part, dim: int, rank: int | None) -> torch.Tensor:
    """A part's starting value: S starts at the identity (diag(1) + small P Q^T for factors)."""
    shape = {"scalar": (), "vector": (dim,), "square": (dim, dim), "factor": (dim, rank or 0)}[part.shape]
    if part.init == "eye":
        return torch.eye(dim)
    if part.init == "small":
        return torch.randn(shape) * LOW_RANK_INIT_STD
    return torch.ones(shape)


class MetricHead(nn.Module):
    """The learned similarity S of one kind, trainable jointly with the towers.

    kind: dot, scaled, diagonal, low_rank (needs rank) or full. Initialization: scaled and
    diagonal start as the dot product, full at the identity, low_rank at diag(1) + P Q^T with
    small random P, Q. n_objectives=None gives one logit per pair with one bias; n_objectives=T
    gives T logits per pair, each with its own bias b_t and scale tau_t (starting at 0 and 1) on
    a shared S. bias=False drops the biases.
    """

    def __init__(self, kind: str, dim: int, *, rank: int | None = None, n_objectives: int | None = None,
                 bias: bool = True):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind: unknown metric kind {kind!r} (known: {', '.join(KINDS)})")
        if dim < 1:
            raise ValueError(f"dim: must be >= 1, got {dim}")
        if (rank is not None) != takes_rank(kind):
            raise ValueError(f"rank: needed for kinds with factors (low_rank) and only for them, got kind "
                             f"{kind!r}, rank {rank!r}")
        if rank is not None and not 1 <= rank <= dim:
            raise ValueError(f"rank: must be in [1, dim={dim}], got {rank}")
        if n_objectives is not None and n_objectives < 1:
            raise ValueError(f"n_objectives: must be None or >= 1, got {n_objectives}")
        self.kind, self.dim, self.rank, self.n_objectives = kind, dim, rank, n_objectives
        for part in PARTS[kind]:
            self.register_parameter(part.name, nn.Parameter(_initial(part, dim, rank)))
        shape = () if n_objectives is None else (n_objectives,)
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None
        self.scale = None if n_objectives is None else nn.Parameter(torch.ones(shape))

    def extra_repr(self) -> str:
        rank = f", rank={self.rank}" if self.rank is not None else ""
        return f"kind={self.kind!r}, dim={self.dim}{rank}, n_objectives={self.n_objectives}"

    # ---- forward --------------------------------------------------------------------------
    def form(self) -> Form:
        """The head's S in the canonical form (diag, left, right) of its trainable parameters;
        diag may be a scalar tensor (scaled)."""
        roles = {part.role: getattr(self, part.name) for part in PARTS[self.kind]}
        return Form(roles.get("diag"), roles.get("left"), roles.get("right"))

    def fold(self, users: torch.Tensor) -> torch.Tensor:
        """users @ S, for users (..., n)."""
        return Metric._fold(users, self.form())

    def _finish(self, raw: torch.Tensor) -> torch.Tensor:
        """raw u^T S a -> logits: (...) for one objective, (..., T) with per-objective scale and bias."""
        if self.scale is not None:
            raw = raw.unsqueeze(-1) * self.scale
        return raw if self.bias is None else raw + self.bias

    def _check(self, users, ads, pairwise: bool):
        if users.ndim != 2 or ads.ndim != 2 or users.shape[1] != self.dim or ads.shape[1] != self.dim:
            raise ValueError(f"users and ads: expected (B, {self.dim}) each, got {tuple(users.shape)} and "
                             f"{tuple(ads.shape)}")
        if pairwise and users.shape[0] != ads.shape[0]:
            raise ValueError(f"pairwise: users {tuple(users.shape)} and ads {tuple(ads.shape)} differ in length")

    def forward(self, users: torch.Tensor, ads: torch.Tensor) -> torch.Tensor:
        """Pairwise logits: users (B, n), ads (B, n) -> (B,), or (B, T) with n_objectives=T."""
        self._check(users, ads, pairwise=True)
        diag, left, right = self.form()
        if right is not None:  # factors: never forms S, n + 2 n r per pair
            raw = ((users @ left) * (ads @ right)).sum(-1)
            if diag is not None:
                raw = (users * diag * ads).sum(-1) + raw
        else:
            raw = (self.fold(users) * ads).sum(-1)
        return self._finish(raw)

    def cross(self, users: torch.Tensor, ads: torch.Tensor) -> torch.Tensor:
        """Every user against every ad: users (M, n), ads (N, n) -> (M, N), or (M, N, T)."""
        self._check(users, ads, pairwise=False)
        return self._finish(self.fold(users) @ ads.T)

    # ---- export ---------------------------------------------------------------------------
    @torch.no_grad()
    def to_metric(self, objective: int | None = None) -> Metric:
        """The sk.Metric scoring like this head (for objective t when n_objectives is set), with
        the objective's scale folded into S; a dot head with a scale exports as scaled."""
        scale: torch.Tensor | None = None
        bias: torch.Tensor | None = self.bias
        if self.n_objectives is None:
            if objective is not None:
                raise ValueError(f"objective: this head has one objective, got objective={objective!r}")
        else:
            if objective is None or not 0 <= objective < self.n_objectives:
                raise ValueError(f"objective: expected an index in [0, {self.n_objectives}), got {objective!r}")
            assert self.scale is not None  # a head with objectives has scales
            scale, bias = self.scale[objective], None if self.bias is None else self.bias[objective]
        offset = 0.0 if bias is None else bias.item()
        if scale is not None and not PARTS[self.kind]:  # a dot head with a scale is scaled
            return Metric.scaled(self.dim, scale.item(), offset)
        factor = 1.0 if scale is None else scale
        parameters = {part.name: (getattr(self, part.name).detach() * (1.0 if part.role == "right" else factor))
                      for part in PARTS[self.kind]}  # S_t = scale_t S: the diagonal and the left factor
        return build(self.kind, self.dim, parameters, offset)

    def to_metrics(self) -> list[Metric]:
        """One exported metric per objective (a list of one for a single-objective head)."""
        if self.n_objectives is None:
            return [self.to_metric()]
        return [self.to_metric(t) for t in range(self.n_objectives)]


def _tower(in_features: int, hidden: tuple[int, ...], dim: int) -> nn.Sequential:
    layers, width = [], in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, dim))
    return nn.Sequential(*layers)


class SplitNet(nn.Module):
    """Two towers (MLPs) making user and ad embeddings of length dim, and a MetricHead.

    normalize=True (the default) puts embeddings on the unit sphere. This is what makes S matter:
    with free-norm embeddings the user tower's last linear layer can absorb any S (u^T S a =
    (S^T u)^T a), and a dot product would be as expressive as a full matrix.
    """

    def __init__(self, user_features: int, ad_features: int, dim: int = 32, *, kind: str = "diagonal",
                 rank: int | None = None, n_objectives: int | None = None, hidden: tuple[int, ...] = (64,),
                 normalize: bool = True, bias: bool = True):
        super().__init__()
        self.user_tower = _tower(user_features, tuple(hidden), dim)
        self.ad_tower = _tower(ad_features, tuple(hidden), dim)
        self.head = MetricHead(kind, dim, rank=rank, n_objectives=n_objectives, bias=bias)
        self.normalize = normalize

    def _embed(self, tower, features):
        embedding = tower(features)
        return F.normalize(embedding, dim=-1) if self.normalize else embedding

    def embed_users(self, features: torch.Tensor) -> torch.Tensor:
        return self._embed(self.user_tower, features)

    def embed_ads(self, features: torch.Tensor) -> torch.Tensor:
        return self._embed(self.ad_tower, features)

    def forward(self, user_features: torch.Tensor, ad_features: torch.Tensor) -> torch.Tensor:
        """Pairwise logits for (user_features[i], ad_features[i]): (B,) or (B, T)."""
        return self.head(self.embed_users(user_features), self.embed_ads(ad_features))

    @torch.no_grad()
    def embeddings(self, user_features, ad_features) -> tuple[np.ndarray, np.ndarray]:
        """User and ad embeddings as float32 numpy arrays, ready for sk.score / sk.topk / Candidates."""
        users = self.embed_users(torch.as_tensor(np.asarray(user_features, np.float32)))
        ads = self.embed_ads(torch.as_tensor(np.asarray(ad_features, np.float32)))
        return users.numpy(), ads.numpy()

    def score(self, user_features, ad_features, objective: int | None = None, *, pairwise: bool = False,
              sigmoid: bool = False, backend: str = "auto") -> np.ndarray:
        """The serving path: embed with the towers, then sk.score with the exported metric.

        user_features (F_u,) or (M, F_u), ad_features (N, F_a): shapes and options as sk.score.
        """
        users, ads = self.embeddings(user_features, ad_features)
        return _score(users, ads, self.head.to_metric(objective), pairwise=pairwise, sigmoid=sigmoid,
                      backend=backend)

    def parameter_count(self, head_only: bool = False) -> int:
        return sum(p.numel() for p in (self.head if head_only else self).parameters())

