"""Trained campaign embeddings for the benchmarks (W9's "campaign" rows): one small two-tower
model trained on make_campaign data the way the experiment trains (model.Model, training.train,
one seed, no learning-rate search), then every ad and user of that campaign through the towers.

The ad rows are what serving scores: the ad tower's unit-length output. The users are folded
(u @ S_t of one objective's learned diagonal), so that user . ad is the model's logit for that
objective less its bias: the score distribution of a trained light ranker. Imports torch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import campaign, training

__all__ = ["CODE_VERSION", "TowerRecipe", "campaign_embeddings"]

CODE_VERSION = 1  # bump when campaign_embeddings makes different embeddings for the same recipe (cache keys)


@dataclasses.dataclass(frozen=True)
class TowerRecipe:
    """What campaign_embeddings trains; every field is part of a cache key."""

    n_ads: int = 1_000_000  # the campaign's ads: every one is embedded
    n_users: int = 10_000
    n_pairs: int = 200_000  # impressions: 90 % train, 10 % validation
    dim: int = 64  # the embedding length n
    kind: str = "diagonal"  # one S_t per objective, unit-length towers (the production shape)
    hidden: tuple[int, ...] = (64,)
    learning_rate: float = 3e-2
    max_epochs: int = 8  # early stopping as the experiment's (patience 2); 8 epochs take ~20 s on one core
    batch_size: int = 2048
    objective: str = "link_click"  # the users are folded with this objective's S_t
    seed: int = 0


def campaign_embeddings(recipe: TowerRecipe = TowerRecipe(), *, batch_rows: int = 65_536):
    """(ads (n_ads, dim), users (n_users, dim), info) float32: the trained ad tower's output for
    every ad of make_campaign(seed, n_ads=..., n_users=..., n_pairs=...), and every user's
    embedding folded with `objective`'s learned S_t. info: epochs, validation loss, seconds.
    Deterministic for a recipe on one machine: one torch thread, seeded init and batch order."""
    import time

    import torch

    from .model import Model

    started = time.perf_counter()
    data = campaign.make_campaign(recipe.seed, n_ads=recipe.n_ads, n_users=recipe.n_users, n_pairs=recipe.n_pairs)
    rng = np.random.default_rng(recipe.seed)
    shuffled = rng.permutation(len(data.pairs))
    n_validation = len(shuffled) // 10
    train, validation = shuffled[n_validation:], shuffled[:n_validation]
    schedule = training.Schedule(learning_rate=recipe.learning_rate, max_epochs=recipe.max_epochs,
                                 batch_size=recipe.batch_size, seed=recipe.seed)
    with training.one_torch_thread():  # as the experiment's workers: the model is too small for threads to pay
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = Model(data.user_features.shape[1], data.ad_features.shape[1], len(data.objectives),
                          kind=recipe.kind, norm="unit", head="per_objective", dim=recipe.dim, rank=4,
                          hidden=recipe.hidden)
        user_x, ad_x = torch.from_numpy(data.user_features), torch.from_numpy(data.ad_features)
        epochs, loss = training.train(model, user_x, ad_x, data.pairs, data.label_matrix(), data.label_mask(),
                                      train, validation, schedule)
        model.eval()
        with torch.no_grad():
            ads = np.empty((len(ad_x), recipe.dim), np.float32)
            for start in range(0, len(ad_x), batch_rows):
                ads[start:start + batch_rows] = model.embed_ads(ad_x[start:start + batch_rows]).numpy()
            users = model.embed_users(user_x).numpy().astype(np.float32)
        metric = model.to_objective_metrics(data.objectives)[data.objectives.index(recipe.objective)]
    folded = np.ascontiguousarray(metric.fold(users), dtype=np.float32)
    info = {"epochs": epochs, "validation_loss": loss, "seconds": time.perf_counter() - started,
            "objective": recipe.objective, "bias": float(metric.bias)}
    return ads, folded, info
