"""The workloads W1-W10 of docs/design.md: their sizes, data and metrics, defined once for both
`splitnet-kernels bench` (driver.py) and the pytest-benchmark suites in the repository's bench/."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import pathlib
import time
from typing import NamedTuple

import numpy as np

import splitnet_kernels as sk

from .._metric import KINDS  # W7 measures every kind, cheapest first

DIM = 64  # the embedding length n of W1-W6
CANDIDATES, QUICK_CANDIDATES = 1_000_000, 100_000  # W1-W4; the second with --quick
PAIRS, QUICK_PAIRS = 1_000_000, 100_000  # W5
TOP_K = 100  # W2-W4
USERS = 128  # W4
DTYPES = ("float32", "bfloat16", "float16", "int8")  # the candidate sets of W3 and W4
REQUEST_CANDIDATES, REQUEST_K = 1000, 10  # W6: one serving request
PAIR_KINDS = ("dot", "diagonal", "full")  # W5
W7_DIMS = (16, 32, 64, 128, 256, 512)
W7_BYTES, QUICK_W7_BYTES = 64 << 20, 4 << 20  # W7's candidates per n: past the L3, as in serving
# W8: campaign objectives on the ads (and users) of W1-W4, ranked by value = bid * sigmoid(logit)
OBJECTIVES = ("video_view", "click", "app_install")
OBJECTIVE_KINDS = ("diagonal", "low_rank", "full")  # one kind per objective: kinds differ
BASE_RATES = (0.30, 0.05, 0.01)  # each bias is set so that the mean probability is this
LOGIT_STD = 1.0  # ||S_t||_F: the spread of u^T S_t a for standard normal u, a
BID_SIGMA = 1.0  # bids ~ lognormal(0, BID_SIGMA)
# W9: W2 and W4 on exact sets (exact=True), on five kinds of rows, beside FAISS's Panorama
EXACT_DTYPES = ("int8", "bfloat16", "float16")  # the default run times int8 alone
W9_DATA = ("gaussian", "decaying", "decaying, rotated", "campaign", "clustered")
DECAY = 0.85  # decaying rows: dimension i of a Gaussian row scaled DECAY**i
CLUSTERS, CLUSTER_NOISE = 1000, 0.05  # clustered rows: near-ties by the thousand
PANORAMA_LEVELS = (2, 4, 8, 16)  # the level counts tried for FAISS IndexFlatIPPanorama; the fastest is kept
CAMPAIGN_SEED = 0  # of the campaign and the towers trained on it (experiment/embeddings.py)
# W10: a live set (LiveCandidates) of W1-W4's rows under a stream of changes, beside the frozen
# Candidates of the same rows and FAISS IndexIDMap2(IndexFlatIP)
LIVE_SETS = (("float32", False), ("int8", True))  # (dtype, exact)
LIVE_CHANGED = 0.01  # rows upserted (half replacing present ids, half new ids) and rows removed since compact()
LIVE_BIDS_CHANGED = 0.10  # bids changed by set_bids before the query by value
LIVE_BATCH = 10_000  # ids per set_bids/remove/upsert batch in the rates, and rows per writer batch
LIVE_FAISS_REMOVE = 1_000  # ids per remove, ours against faiss remove_ids
LIVE_WRITER_PERIOD_S = 0.020  # the writer thread's cadence: one LIVE_BATCH-row upsert per period
# W10's filter rows (issue 25): eligibility filters per request on the frozen Candidates of W10's rows
FILTER_USERS = 32  # the first FILTER_USERS of W4's users: one batch of requests, each with its own filter
FILTER_DENSE, FILTER_SPARSE = 0.50, 0.05  # the share of the rows a random filter allows


def data(rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)


def one_user(candidates: int):
    """W1-W3: (ads, user), one user against `candidates` ads."""
    return data(candidates, DIM, 1), data(1, DIM, 2)[0]


def many_users(candidates: int):
    """W4: (ads, users), USERS users against the same ads as W1-W3."""
    return data(candidates, DIM, 1), data(USERS, DIM, 3)


def pairs(count: int):
    """W5: (users, ads), row i of each forming pair i."""
    return data(count, DIM, 4), data(count, DIM, 5)


def pair_metrics(dim: int = DIM) -> dict:
    """W5: {kind: (sk.Metric or None for plain dot, its factor: s of diag(s), S of full, or None)};
    the factor is what the NumPy and torch expressions multiply by."""
    rng = np.random.default_rng(6)
    s = rng.standard_normal(dim).astype(np.float32)
    S = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
    return {"dot": (None, None), "diagonal": (sk.Metric.diagonal(s), s), "full": (sk.Metric.full(S), S)}


class NeedsTorch(ImportError):
    """W9's campaign rows need torch to train the campaign towers (and no cached copy exists)."""


class W9Data(NamedTuple):
    ads: np.ndarray  # (candidates, DIM) float32
    user: np.ndarray  # (DIM,): W2's one user
    users: np.ndarray  # (USERS, DIM): W4's users
    note: str  # where the rows come from ("" for the synthetic kinds)


def w9_data(kind: str, candidates: int) -> W9Data:
    """W9's rows and users. gaussian: W1-W4's Gaussian rows and users (a flat spectrum).
    decaying: those rows with dimension i scaled DECAY**i; "decaying, rotated": the same behind a
    random orthogonal rotation (the decay no longer lies along the axes). campaign: a trained
    two-tower model's ad embeddings (campaign_rows) and that model's users, folded with one
    objective's S_t, so that user . ad is the model's logit. clustered: CLUSTERS tight clusters,
    whose near-equal rows the bound cannot tell apart. All but campaign against W1-W4's users."""
    if kind == "campaign":
        ads, users, info = campaign_rows(candidates)
        note = (f"campaign rows: the ad tower's output (unit length) of a two-tower model trained on "
                f"make_campaign(seed {info['seed']}, {info['n_ads']:,} ads, {info['n_users']:,} users, "
                f"{info['n_pairs']:,} impressions), {info['kind']} S_t per objective, {info['epochs']} epochs, "
                f"validation loss {info['validation_loss']:.4f}; users: user-tower outputs folded with the "
                f"{info['objective']} S_t; {info['source']}")
        return W9Data(ads, users[0], users[1:1 + USERS], note)
    return W9Data(w9_rows(kind, candidates), one_user(candidates)[1], many_users(candidates)[1], "")


def w9_rows(kind: str, candidates: int) -> np.ndarray:
    """W9's candidate rows (w9_data without the users)."""
    rng = np.random.default_rng(9)
    if kind == "gaussian":
        return data(candidates, DIM, 1)
    if kind == "campaign":
        return campaign_rows(candidates)[0]
    if kind in ("decaying", "decaying, rotated"):
        rows = data(candidates, DIM, 1) * (DECAY ** np.arange(DIM)).astype(np.float32)
        if kind == "decaying":
            return rows
        rotation, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
        return rows @ rotation.astype(np.float32)
    if kind == "clustered":
        centers = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
        noise = CLUSTER_NOISE * rng.standard_normal((candidates, DIM), dtype=np.float32)
        return centers[rng.integers(0, CLUSTERS, candidates)] + noise
    raise ValueError(f"W9 rows: unknown kind {kind!r} (known: {', '.join(W9_DATA)})")


def pca_rotation(rows: np.ndarray) -> np.ndarray:
    """(DIM, DIM) float32 orthogonal: the eigenvectors of the rows' second moment, by falling
    eigenvalue, as columns; rows @ it puts their energy in the first dimensions (what FAISS's
    Panorama needs of its rows and query)."""
    moment = (rows.T @ rows).astype(np.float64)  # BLAS in float32: eigenvectors need no more
    _, vectors = np.linalg.eigh(moment)
    return np.ascontiguousarray(vectors[:, ::-1], dtype=np.float32)


def cache_dir() -> pathlib.Path:
    """Where the benchmarks keep generated data: $SPLITNET_KERNELS_CACHE, else
    $XDG_CACHE_HOME/splitnet_kernels, else ~/.cache/splitnet_kernels."""
    if os.environ.get("SPLITNET_KERNELS_CACHE"):
        return pathlib.Path(os.environ["SPLITNET_KERNELS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "splitnet_kernels"


def campaign_rows(candidates: int):
    """(ads (candidates, DIM), users (n_users, DIM), info): the first `candidates` ad embeddings
    of experiment.embeddings.campaign_embeddings at max(candidates, CANDIDATES) ads (so --quick's
    rows are a prefix of the full run's) and every user, folded. Trained once per recipe (about
    20 s on one core) and cached in cache_dir(), keyed by the recipe; a cached copy needs no torch.
    Raises NeedsTorch when torch is absent and nothing is cached."""
    from ..experiment.embeddings import CODE_VERSION, TowerRecipe  # no torch: the recipe alone

    recipe = TowerRecipe(n_ads=max(candidates, CANDIDATES), dim=DIM, seed=CAMPAIGN_SEED)
    fields = dataclasses.asdict(recipe)
    key = hashlib.sha256(json.dumps({"code": CODE_VERSION, **fields}, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"w9_campaign_{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as cached:
            ads, users, info = cached["ads"], cached["users"], json.loads(str(cached["info"]))
        info["source"] = f"loaded from {path}"
    else:
        try:
            importlib.import_module("torch")
        except ImportError:
            raise NeedsTorch(f"W9 campaign rows: training the campaign towers needs torch (pip install torch); "
                             f"nothing cached at {path}") from None
        started = time.perf_counter()
        from ..experiment.embeddings import campaign_embeddings

        ads, users, info = campaign_embeddings(recipe)
        info["seconds"] = time.perf_counter() - started
        info.update(fields)
        info["hidden"] = list(recipe.hidden)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(partial, "wb") as f:  # a file object: savez adds no suffix; written whole, then renamed
            np.savez(f, ads=ads, users=users, info=np.array(json.dumps(info)))
        os.replace(partial, path)
        info["source"] = f"generated in {info['seconds']:.0f} s, cached at {path}"
    return np.ascontiguousarray(ads[:candidates]), users, info


def one_request():
    """W6: (ads, user), REQUEST_CANDIDATES ads."""
    return data(REQUEST_CANDIDATES, DIM, 7), data(1, DIM, 8)[0]


def w7_rows(dim: int, budget_bytes: int) -> int:
    """W7's candidates at length dim: budget_bytes of float32 rows, at least 1024."""
    return max(1024, budget_bytes // (4 * dim))


def w7_data(rows: int, dim: int):
    """W7: (ads, users) of length dim."""
    return data(rows, dim, 10), data(rows, dim, 11)


def metrics_for(n: int, rng) -> dict:
    """W7: one metric of every kind (KINDS, in its order) at length n, drawn from rng."""
    rank = max(1, n // 8)
    made = {
        "dot": sk.Metric.dot(n),
        "scaled": sk.Metric.scaled(n, 0.5),
        "diagonal": sk.Metric.diagonal(rng.standard_normal(n)),
        "low_rank": sk.Metric.low_rank(rng.standard_normal((n, rank)), rng.standard_normal((n, rank)),
                                       d=rng.standard_normal(n)),
        "full": sk.Metric.full(rng.standard_normal((n, n)) / np.sqrt(n)),
    }
    return {kind: made[kind] for kind in KINDS}  # a KeyError names a kind W7 has no metric for


def _bias_for(rate: float, std: float) -> float:
    """The bias b with E[sigmoid(b + std Z)] = rate, Z standard normal (Gauss-Hermite, bisection)."""
    z, w = np.polynomial.hermite_e.hermegauss(64)
    w = w / w.sum()
    low, high = -30.0, 30.0
    for _ in range(100):
        b = (low + high) / 2
        low, high = (b, high) if np.sum(w / (1 + np.exp(-(b + std * z)))) < rate else (low, b)
    return (low + high) / 2


def objective_metrics(dim: int = DIM) -> sk.ObjectiveMetrics:
    """W8: one metric per objective (OBJECTIVE_KINDS), each scaled to ||S||_F = LOGIT_STD and
    with the bias that gives its base rate (BASE_RATES)."""
    rng = np.random.default_rng(12)
    metrics = []
    for kind, rate in zip(OBJECTIVE_KINDS, BASE_RATES):
        bias = _bias_for(rate, LOGIT_STD)
        if kind == "diagonal":
            s = rng.standard_normal(dim)
            metrics.append(sk.Metric.diagonal(s * LOGIT_STD / np.linalg.norm(s), bias=bias))
        elif kind == "low_rank":
            rank = max(1, dim // 8)
            P, Q, d = rng.standard_normal((dim, rank)), rng.standard_normal((dim, rank)), rng.standard_normal(dim)
            c = LOGIT_STD / np.linalg.norm(np.diag(d) + P @ Q.T)
            metrics.append(sk.Metric.low_rank(P * np.sqrt(c), Q * np.sqrt(c), d=d * c, bias=bias))
        else:
            S = rng.standard_normal((dim, dim))
            metrics.append(sk.Metric.full(S * LOGIT_STD / np.linalg.norm(S), bias=bias))
    return sk.ObjectiveMetrics(metrics, OBJECTIVES)


def objectives_and_bids(candidates: int):
    """W8: (objective ids int64, lognormal bids float32, unit bids float32), one per candidate;
    the objectives uniform over OBJECTIVES."""
    rng = np.random.default_rng(13)
    objectives = rng.integers(0, len(OBJECTIVES), candidates)
    bids = rng.lognormal(0.0, BID_SIGMA, candidates).astype(np.float32)
    return objectives, bids, np.ones(candidates, np.float32)


class NumpyObjectives:
    """W8 the NumPy way, as a user would hold the data: the rows already grouped by objective
    (one contiguous float32 array per objective, with its bids and original ids) and each
    metric's dense S and bias. Per request: fold the user once per objective (u @ S_t), one
    matvec per group, sigmoid, times bids, argpartition of the top k and a sort of those."""

    def __init__(self, ads, objectives, bids, om: sk.ObjectiveMetrics):
        groups = [np.flatnonzero(objectives == t) for t in range(len(om))]
        self.ads = [np.ascontiguousarray(ads[g]) for g in groups]
        self.bids = [bids[g] for g in groups]
        self.ids = np.concatenate(groups)
        self.group_ids = groups
        self.S = [m.dense().astype(np.float32) for m in om]
        self.b = [np.float32(m.bias) for m in om]
        self.edges = np.cumsum([0] + [len(g) for g in groups])
        self.buffer = np.empty(len(objectives), np.float32)

    def topk(self, user, k: int):
        """The plain expression: a value array per objective, concatenated."""
        values = np.concatenate([b / (1 + np.exp(-(A @ (user @ S) + c)))
                                 for A, b, S, c in zip(self.ads, self.bids, self.S, self.b)])
        top = np.argpartition(-values, k - 1)[:k]
        top = top[np.argsort(-values[top], kind="stable")]
        return values[top], self.ids[top]

    def topk_in_place(self, user, k: int):
        """The same, written into one preallocated array with in-place ufuncs."""
        v = self.buffer
        for t, (A, b, S, c) in enumerate(zip(self.ads, self.bids, self.S, self.b)):
            x = v[self.edges[t]:self.edges[t + 1]]
            np.matmul(A, user @ S, out=x)
            x += c
            np.negative(x, out=x)
            np.exp(x, out=x)
            x += 1
            np.divide(b, x, out=x)
        top = np.argpartition(v, len(v) - k)[len(v) - k:]
        top = top[np.argsort(-v[top], kind="stable")]
        return v[top], self.ids[top]


def numpy_topk(scores: np.ndarray, k: int):
    """The top k of one row of scores the NumPy way, best first: what a user would write."""
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def live_ids(rows: int, seed: int = 20) -> np.ndarray:
    """W10: (rows,) int64 external ids, ascending, unique, with gaps (as an ad id space has)."""
    return np.random.default_rng(seed).integers(1, 8, rows).cumsum() - 1


class LiveChanges(NamedTuple):
    """One W10 batch of changes to a live set whose ids are `ids`: upsert_ids (ascending; the first
    half replace present ids, the second half are new ids above the largest), their rows, and
    remove_ids (present ids, none of them upserted)."""
    upsert_ids: np.ndarray
    upsert_rows: np.ndarray
    remove_ids: np.ndarray


def live_changes(ids: np.ndarray, upserted: int, removed: int, seed: int, dim: int = DIM) -> LiveChanges:
    """W10: `upserted` rows to upsert (half replacing present ids, half new ids) and `removed`
    present ids to remove, disjoint, drawn from seed."""
    rng = np.random.default_rng(seed)
    replaced = upserted // 2
    present = rng.choice(len(ids), replaced + removed, replace=False)
    new = int(ids[-1]) + 1 + np.sort(rng.choice(4 * (upserted - replaced) + 1, upserted - replaced, replace=False))
    upsert_ids = np.concatenate([np.sort(ids[present[:replaced]]), new]).astype(np.int64)
    rows = rng.standard_normal((upserted, dim), dtype=np.float32)
    return LiveChanges(upsert_ids, rows, np.sort(ids[present[replaced:]]).astype(np.int64))


def live_present(ids: np.ndarray, ads: np.ndarray, changes: LiveChanges):
    """W10's oracle rows: (ids, ads) of a live set that held (ids, ads) (ids ascending) after
    `changes`, in ascending id order: what a frozen Candidates of the present rows holds."""
    gone = np.isin(ids, changes.upsert_ids) | np.isin(ids, changes.remove_ids)
    new_ids = np.concatenate([ids[~gone], changes.upsert_ids])
    order = np.argsort(new_ids, kind="stable")
    return new_ids[order], np.concatenate([ads[~gone], changes.upsert_rows])[order]


def live_new_bids(ids: np.ndarray, bids: np.ndarray, fraction: float, seed: int = 21):
    """W10: (changed ids ascending, their new bids, every row's bids after the change): `fraction`
    of the ids get a bid drawn anew from W8's lognormal(0, BID_SIGMA), as a bid change that moves
    a row anywhere in the bid order."""
    rng = np.random.default_rng(seed)
    where = np.sort(rng.choice(len(ids), int(round(fraction * len(ids))), replace=False))
    values = rng.lognormal(0.0, BID_SIGMA, len(where)).astype(np.float32)
    after = bids.copy()
    after[where] = values
    return ids[where], values, after


class Filters(NamedTuple):
    """W10's filters over `rows` rows (issue 25), each row allowed at random: `dense` (bool mask,
    FILTER_DENSE of the rows), `dense_ids` (the same rows as int64 ids, shuffled), `sparse` (bool
    mask, FILTER_SPARSE of the rows), `per_user` (FILTER_USERS masks, FILTER_DENSE each, drawn
    apart: one per request of a batch)."""
    dense: np.ndarray
    dense_ids: np.ndarray
    sparse: np.ndarray
    per_user: list


def filters(rows: int, seed: int = 29) -> Filters:
    """W10: the filters of its filter rows, drawn from seed."""
    rng = np.random.default_rng(seed)
    dense = rng.random(rows) < FILTER_DENSE
    dense_ids = rng.permutation(np.flatnonzero(dense)).astype(np.int64)
    sparse = rng.random(rows) < FILTER_SPARSE
    per_user = [rng.random(rows) < FILTER_DENSE for _ in range(FILTER_USERS)]
    return Filters(dense, dense_ids, sparse, per_user)
