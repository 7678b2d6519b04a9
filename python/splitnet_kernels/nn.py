"""PyTorch side (needs the [torch] extra): a trainable metric head per kind, with optional
per-objective bias and scale, that exports to sk.Metric for serving; a head with one S_t per
campaign objective (ObjectiveHead) that exports to sk.ObjectiveMetrics; and a small two-tower
SplitNet.

A head computes logits = scale_t * (u^T S a) + bias_t. Exporting folds the scale into S
(S_t = scale_t * S), so sk.score(u, a, head.to_metric(t)) gives the module's logits.

An ObjectiveHead computes logit_i = u_i^T S_{t_i} a_i + b_{t_i} with one metric (of any kind)
per objective t_i on the same embeddings. Compose it with towers of your own (SplitNet keeps its
single head):

    user_tower, ad_tower = nn.Linear(F_u, 32), nn.Linear(F_a, 32)
    head = ObjectiveHead(("diagonal", "low_rank", "full"), 32, rank=4, names=("view", "click", "install"))
    logits = head(F.normalize(user_tower(x_u), dim=-1), F.normalize(ad_tower(x_a), dim=-1), objectives)
    ...  # train with binary_cross_entropy_with_logits(logits, labels)
    om = head.to_objective_metrics()
    cands = sk.Candidates(ad_embeddings, dtype="float32", objectives=ad_objectives, bids=bids)
    cands.score(user_embeddings, om, output="probability")  # == torch.sigmoid(logits), float32
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._api import score as _score
from ._metric import KINDS, PARTS, Form, Metric, build, takes_rank
from ._objectives import ObjectiveMetrics

__all__ = ["MetricHead", "ObjectiveHead", "SplitNet"]

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

    # Pure torch, forward and backward. The package's custom ops have gradients too (sk.score on
    # grad-requiring tensors goes through them), but a training step of the campaign model ran
    # 1.13-1.24x slower with this head on them (bench/torch_ops.py, Zen 3): the head is a small
    # part of the step and each op call costs more than its arithmetic.
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



class ObjectiveHead(nn.Module):
    """One learned similarity S_t, with its own bias b_t, per campaign objective, on shared towers.

    kinds: one kind for every objective (then n_objectives or names gives T), or a sequence of T
    kinds, which may differ. rank is passed to the objectives whose kind takes one (takes_rank:
    low_rank) and is required when any does. names: T distinct strings for the exported
    ObjectiveMetrics (default objective_0, ...). Each objective is a single-objective
    MetricHead(kind, dim, rank=..., bias=True) in `heads` (an nn.ModuleList) and starts as that
    head does.

    forward(users (B, n), ads (B, n), objectives (B,) integers) -> (B,) logits, pair i scored by
    heads[objectives[i]]; cross(users (M, n), ads (N, n), objectives (N,)) -> (M, N), ad j scored
    by heads[objectives[j]]. Pairs are grouped by objective (one index_select per objective with
    pairs), so every head with pairs in the batch gets gradients. to_objective_metrics() gives the
    sk.ObjectiveMetrics that scores like the module through sk.Candidates(..., objectives=).
    """

    def __init__(self, kinds, dim: int, *, rank: int | None = None, names=None, n_objectives: int | None = None):
        super().__init__()
        if names is not None:
            names = tuple(names) if not isinstance(names, str) else (names,)
            if not names or not all(isinstance(name, str) for name in names):
                raise ValueError(f"names: expected a non-empty sequence of strings, got {names!r}")
            if len(set(names)) != len(names):
                raise ValueError(f"names: must be distinct, got {names!r}")
        if n_objectives is not None and (isinstance(n_objectives, bool) or not isinstance(n_objectives, int)
                                         or n_objectives < 1):
            raise ValueError(f"n_objectives: must be None or an integer >= 1, got {n_objectives!r}")
        if isinstance(kinds, str):
            count = n_objectives if n_objectives is not None else None if names is None else len(names)
            if count is None:
                raise ValueError(f"kinds: one kind {kinds!r} for every objective needs n_objectives or names "
                                 f"to say how many objectives there are")
            kinds = (kinds,) * count
        else:
            try:
                kinds = tuple(kinds)
            except TypeError:
                raise ValueError(f"kinds: expected a kind or a sequence of kinds, got {type(kinds).__name__}") from None
            if not kinds:
                raise ValueError("kinds: expected at least one objective")
        for t, kind in enumerate(kinds):
            if kind not in KINDS:
                raise ValueError(f"kinds[{t}]: unknown metric kind {kind!r} (known: {', '.join(KINDS)})")
        if n_objectives is not None and n_objectives != len(kinds):
            raise ValueError(f"n_objectives: {n_objectives} does not match the {len(kinds)} kinds given")
        if names is not None and len(names) != len(kinds):
            raise ValueError(f"names: expected {len(kinds)} names (one per objective), got {len(names)}")
        ranked = [takes_rank(kind) for kind in kinds]
        if any(ranked) and rank is None:
            raise ValueError(f"rank: needed for the kinds with factors (low_rank) among {kinds}")
        if rank is not None and not any(ranked):
            raise ValueError(f"rank: only for kinds with factors (low_rank), none among {kinds}; got rank {rank!r}")
        self.kinds, self.dim, self.rank, self.names = kinds, dim, rank, names
        self.heads = nn.ModuleList(MetricHead(kind, dim, rank=rank if r else None, bias=True)
                                   for kind, r in zip(kinds, ranked))

    @property
    def n_objectives(self) -> int:
        return len(self.heads)

    def extra_repr(self) -> str:
        rank = f", rank={self.rank}" if self.rank is not None else ""
        names = f", names={self.names}" if self.names is not None else ""
        return f"kinds={self.kinds}, dim={self.dim}{rank}{names}"

    # ---- forward --------------------------------------------------------------------------
    def _check(self, users, ads, objectives, pairwise: bool) -> torch.Tensor:
        if not isinstance(users, torch.Tensor) or not isinstance(ads, torch.Tensor):
            raise TypeError(f"users and ads: expected tensors, got {type(users).__name__} and {type(ads).__name__}")
        if users.ndim != 2 or ads.ndim != 2 or users.shape[1] != self.dim or ads.shape[1] != self.dim:
            raise ValueError(f"users and ads: expected (B, {self.dim}) each, got {tuple(users.shape)} and "
                             f"{tuple(ads.shape)}")
        if pairwise and users.shape[0] != ads.shape[0]:
            raise ValueError(f"pairwise: users {tuple(users.shape)} and ads {tuple(ads.shape)} differ in length")
        if not isinstance(objectives, torch.Tensor):
            objectives = torch.as_tensor(np.asarray(objectives))
        if objectives.dtype.is_floating_point or objectives.dtype.is_complex or objectives.dtype == torch.bool:
            raise ValueError(f"objectives: expected integer objective ids, got dtype {objectives.dtype}")
        if objectives.shape != (ads.shape[0],):
            raise ValueError(f"objectives: expected shape ({ads.shape[0]},), one id per "
                             f"{'pair' if pairwise else 'ad'}, got {tuple(objectives.shape)}")
        objectives = objectives.to(device=ads.device, dtype=torch.int64)
        if objectives.numel():
            low, high = (int(x) for x in torch.aminmax(objectives))
            if low < 0 or high >= self.n_objectives:
                raise ValueError(f"objectives: ids must be in [0, {self.n_objectives}), got "
                                 f"{low if low < 0 else high}")
        return objectives

    def _groups(self, objectives: torch.Tensor):
        """(objective t, the rows of objective t) for every objective with rows, and the inverse
        of their concatenation (so cat(pieces)[inverse] is in the rows' own order)."""
        order = torch.argsort(objectives, stable=True)
        counts = torch.bincount(objectives, minlength=self.n_objectives).tolist()
        groups = [(t, rows) for t, rows in enumerate(torch.split(order, counts)) if rows.numel()]
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return groups, inverse

    def forward(self, users: torch.Tensor, ads: torch.Tensor, objectives: torch.Tensor) -> torch.Tensor:
        """Pairwise logits: pair i scored by heads[objectives[i]]; (B, n), (B, n), (B,) -> (B,)."""
        objectives = self._check(users, ads, objectives, pairwise=True)
        groups, inverse = self._groups(objectives)
        if not groups:
            return users.new_zeros((0,))
        pieces = [self.heads[t](users.index_select(0, rows), ads.index_select(0, rows)) for t, rows in groups]
        return torch.cat(pieces).index_select(0, inverse)

    def cross(self, users: torch.Tensor, ads: torch.Tensor, objectives: torch.Tensor) -> torch.Tensor:
        """Every user against every ad, ad j scored by heads[objectives[j]]: (M, n), (N, n), (N,) -> (M, N)."""
        objectives = self._check(users, ads, objectives, pairwise=False)
        groups, inverse = self._groups(objectives)
        if not groups:
            return users.new_zeros((users.shape[0], 0))
        pieces = [self.heads[t].cross(users, ads.index_select(0, rows)) for t, rows in groups]
        return torch.cat(pieces, dim=1).index_select(1, inverse)

    # ---- export ---------------------------------------------------------------------------
    def to_metrics(self) -> list[Metric]:
        """Each objective's exported sk.Metric (its S_t and bias b_t), in objective order."""
        return [head.to_metric() for head in self.heads]  # type: ignore[operator]  # ModuleList items are modules

    def to_objective_metrics(self) -> ObjectiveMetrics:
        """The sk.ObjectiveMetrics scoring like this head, with its names."""
        return ObjectiveMetrics(self.to_metrics(), names=self.names)


def _tower(in_features: int, hidden: tuple[int, ...], dim: int) -> nn.Sequential:
    layers, width = [], in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, dim))
    return nn.Sequential(*layers)


class SplitNet(nn.Module):
    """Two towers (MLPs) making user and ad embeddings of length dim, and a MetricHead.

    normalize=True (the default) puts embeddings on the unit sphere. Neither norm makes one S
    matter: with free norms the user tower's last linear layer absorbs any S (u^T S a =
    (S^T u)^T a), so a dot product is as expressive as a full matrix; with unit norms the towers'
    last layers absorb the rotations of S = U diag(sigma) V^T (a rotation keeps the norm), so a
    diagonal is as expressive as a full matrix. Only several S_t on the same towers (ObjectiveHead)
    can differ by kind; docs/reproduction.md has the argument and its test.
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

