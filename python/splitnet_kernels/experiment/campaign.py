"""Campaign data for the metric-learning experiment: a seeded synthetic generator with a known
ground truth per objective, and .npz / Parquet save and load, through which a user's own logged
impressions go the same path as the synthetic ones.

The shape of the data follows the blog: every ad belongs to one campaign objective (video view,
link click, app install ...), objectives have very different base rates, and one model is
trained on the impressions of all of them. The outcomes form a funnel: an install needs a click,
a click needs a view. An impression records either every outcome (multi-label, labels (P, T)) or
only the outcome its ad's advertiser pays for (one outcome per ad, labels (P,)).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

__all__ = ["CampaignData", "Objective", "DEFAULT_OBJECTIVES", "OUTCOMES", "make_campaign", "load"]


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    base_rate: float  # the share of impressions with this outcome
    ad_share: float  # the share of ads (and so of impressions) with this objective
    spread: float  # the standard deviation of this funnel step's logit z_u^T S*_t z_a


# Each step's logit has its own spread, so one shared scale cannot fit every objective.
DEFAULT_OBJECTIVES = (
    Objective("video_view", 0.30, 0.35, 1.0),
    Objective("link_click", 0.04, 0.25, 2.0),
    Objective("app_install", 0.01, 0.40, 3.0),
)
OUTCOMES = ("funnel", "own")  # every outcome per impression, or only that of the ad's objective

_REQUIRED = ("user_features", "ad_features", "ad_objective", "pairs", "labels")
_TRUTH = ("true_logits", "user_latent", "ad_latent", "true_S", "true_bias")


@dataclasses.dataclass
class CampaignData:
    """Users, ads and impressions; the fields a user's own data must provide are the first six.

    objectives     (T,) names; objective t is index t everywhere below
    user_features  (U, F_u) float32, one row per user
    ad_features    (A, F_a) float32, one row per ad
    ad_objective   (A,) int64 in [0, T): the campaign objective of each ad
    pairs          (P, 2) int64: impression i shows ad pairs[i, 1] to user pairs[i, 0]
    labels         (P,) float32 0/1: the outcome of the ad's objective for impression i, or
                   (P, T): every objective's outcome for impression i (multi-label)
    ad_bids        (A,) float32 >= 0: what each ad pays for its objective's outcome (None: 1.0)

    Ground truth, known for synthetic data only (None otherwise), a funnel in objective order:
    step t of impression (u, a) has the logit x_t = z_u^T true_S[t] z_a + true_bias[t] with
    z_u = user_latent[u], z_a = ad_latent[a], and outcome t happens when outcome t - 1 did and a
    Bernoulli(sigmoid(x_t)) draw succeeds, so P(outcome t) = prod_{s <= t} sigmoid(x_s).
    true_logits (the shape of labels) holds the logit of that probability for each label.
    """

    objectives: tuple[str, ...]
    user_features: np.ndarray
    ad_features: np.ndarray
    ad_objective: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray
    ad_bids: np.ndarray | None = None
    true_logits: np.ndarray | None = None
    user_latent: np.ndarray | None = None
    ad_latent: np.ndarray | None = None
    true_S: np.ndarray | None = None
    true_bias: np.ndarray | None = None

    def __post_init__(self):
        self.objectives = tuple(str(name) for name in self.objectives)
        T = len(self.objectives)
        if T == 0:
            raise ValueError("objectives: at least one objective is needed")
        self.user_features = _array(self.user_features, "user_features", np.float32, 2)
        self.ad_features = _array(self.ad_features, "ad_features", np.float32, 2)
        self.ad_objective = _array(self.ad_objective, "ad_objective", np.int64, 1)
        self.pairs = _array(self.pairs, "pairs", np.int64, 2)
        self.labels = _array(self.labels, "labels", np.float32, 2 if np.ndim(self.labels) == 2 else 1)
        U, A, P = len(self.user_features), len(self.ad_features), len(self.pairs)
        if len(self.ad_objective) != A:
            raise ValueError(f"ad_objective: expected shape ({A},) to match ad_features, got {self.ad_objective.shape}")
        if A and not 0 <= self.ad_objective.min() <= self.ad_objective.max() < T:
            raise ValueError(f"ad_objective: values must lie in [0, {T}) for objectives {self.objectives}")
        if self.pairs.shape[1] != 2:
            raise ValueError(f"pairs: expected shape (P, 2), got {self.pairs.shape}")
        if P and not (0 <= self.pairs[:, 0].min() and self.pairs[:, 0].max() < U
                      and 0 <= self.pairs[:, 1].min() and self.pairs[:, 1].max() < A):
            raise ValueError(f"pairs: user indices must lie in [0, {U}) and ad indices in [0, {A})")
        if self.labels.shape not in ((P,), (P, T)):
            raise ValueError(f"labels: expected shape ({P},) or ({P}, {T}) to match pairs {self.pairs.shape} and "
                             f"{T} objectives, got {self.labels.shape}")
        if not np.isin(self.labels, (0.0, 1.0)).all():
            raise ValueError("labels: expected only 0 and 1")
        if self.ad_bids is not None:
            self.ad_bids = _array(self.ad_bids, "ad_bids", np.float32, 1)
            if self.ad_bids.shape != (A,) or not (np.isfinite(self.ad_bids).all() and (self.ad_bids >= 0).all()):
                raise ValueError(f"ad_bids: expected ({A},) finite values >= 0, got shape {self.ad_bids.shape}")
        truth = [getattr(self, name) is not None for name in _TRUTH]
        if any(truth) and not all(truth):
            raise ValueError(f"ground truth: give all of {', '.join(_TRUTH)} or none")
        if all(truth):
            self.true_logits = _array(self.true_logits, "true_logits", np.float32, self.labels.ndim)
            self.user_latent = _array(self.user_latent, "user_latent", np.float32, 2)
            self.ad_latent = _array(self.ad_latent, "ad_latent", np.float32, 2)
            self.true_S = _array(self.true_S, "true_S", np.float32, 3)
            self.true_bias = _array(self.true_bias, "true_bias", np.float32, 1)
            k = self.user_latent.shape[1]
            if (self.true_logits.shape != self.labels.shape or self.user_latent.shape[0] != U
                    or self.ad_latent.shape != (A, k) or self.true_S.shape != (T, k, k) or self.true_bias.shape != (T,)):
                raise ValueError(f"ground truth: expected true_logits {self.labels.shape} (as labels), user_latent "
                                 f"({U}, k), ad_latent ({A}, k), true_S ({T}, k, k), true_bias ({T},); got "
                                 f"{self.true_logits.shape}, {self.user_latent.shape}, {self.ad_latent.shape}, "
                                 f"{self.true_S.shape}, {self.true_bias.shape}")

    # ---- views ----------------------------------------------------------------------------
    @property
    def pair_objective(self) -> np.ndarray:
        """(P,) the objective of each impression (its ad's)."""
        return self.ad_objective[self.pairs[:, 1]]

    @property
    def multi_label(self) -> bool:
        """Whether every impression records every objective's outcome (labels (P, T))."""
        return self.labels.ndim == 2

    @property
    def has_truth(self) -> bool:
        return self.true_S is not None

    @property
    def bids(self) -> np.ndarray:
        """(A,) float32: ad_bids, or 1.0 for every ad."""
        return self.ad_bids if self.ad_bids is not None else np.ones(len(self.ad_features), np.float32)

    def outcomes(self, objective: int, rows: np.ndarray):
        """(impressions, labels, true logits or None): the impressions among `rows` (indices)
        that record objective t's outcome (every row when multi-label, else the rows whose ad has
        objective t), their outcomes and, with a ground truth, those outcomes' true logits."""
        mine = rows if self.multi_label else rows[self.pair_objective[rows] == objective]

        def of(array):
            return array[mine, objective] if self.multi_label else array[mine]

        return mine, of(self.labels), None if self.true_logits is None else of(self.true_logits)

    def label_mask(self) -> np.ndarray:
        """(P, T) float32: 1 where impression i records objective t's outcome."""
        if self.multi_label:
            return np.ones(self.labels.shape, np.float32)
        return np.eye(len(self.objectives), dtype=np.float32)[self.pair_objective]

    def label_matrix(self) -> np.ndarray:
        """(P, T) float32: the outcomes, 0 where label_mask is 0."""
        return self.labels if self.multi_label else self.label_mask() * self.labels[:, None]

    def base_rates(self) -> np.ndarray:
        """(T,) the share of positive outcomes per objective (NaN for an objective with no outcomes)."""
        with np.errstate(invalid="ignore"):
            return self.label_matrix().sum(0) / self.label_mask().sum(0)

    def true_scores(self, users, ads, objective: int) -> np.ndarray:
        """Ground-truth logits of P(outcome t) (float64), users (indices, (M,)) against ads
        (indices, (N,)): (M, N)."""
        if not self.has_truth:
            raise ValueError("true_scores: this data has no ground truth (only synthetic data does)")
        # __post_init__ accepts all of _TRUTH or none, and has_truth says true_S is set, so all are.
        assert self.user_latent is not None and self.ad_latent is not None and self.true_bias is not None
        assert self.true_S is not None
        z_u = self.user_latent[np.asarray(users)].astype(np.float64)
        z_a = self.ad_latent[np.asarray(ads)].astype(np.float64)
        steps = [z_u @ self.true_S[t].astype(np.float64) @ z_a.T + float(self.true_bias[t])
                 for t in range(objective + 1)]
        return _funnel_logit(steps)

    # ---- files ----------------------------------------------------------------------------
    def save(self, path) -> pathlib.Path:
        """Writes path.npz, or, for a path ending in .parquet, a directory of three Parquet tables
        (users, ads, impressions; needs pyarrow). Returns the path written."""
        path = pathlib.Path(path)
        if path.suffix == ".parquet":
            _save_parquet(self, path)
            return path
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays = {name: getattr(self, name) for name in _REQUIRED + ("ad_bids",) + _TRUTH
                  if getattr(self, name) is not None}
        np.savez_compressed(path, objectives=np.array(self.objectives, dtype=np.str_), **arrays)
        return path


def load(path) -> CampaignData:
    """Reads what CampaignData.save wrote: an .npz file, or a .parquet directory holding
    users.parquet (user, features), ads.parquet (ad, objective, features, optionally bid) and
    impressions.parquet (user, ad, label), where user and ad are row indices 0..U-1 and 0..A-1,
    features a list of floats, objective a name and label a number or, multi-label, a list of
    one outcome per objective; file metadata key "objectives" (a JSON list) fixes the order of
    the objectives, else they are sorted by name. Any other npz needs the fields of CampaignData."""
    path = pathlib.Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        return _load_parquet(path)
    with np.load(path, allow_pickle=False) as npz:
        missing = [name for name in ("objectives",) + _REQUIRED if name not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing field(s) {', '.join(missing)} (have {', '.join(npz.files)})")
        fields = {name: npz[name] for name in _REQUIRED + ("ad_bids",) + _TRUTH if name in npz.files}
        return CampaignData(objectives=tuple(npz["objectives"].tolist()), **fields)


# ---- the generator --------------------------------------------------------------------------
def make_campaign(seed: int = 0, *, n_users: int = 2000, n_ads: int = 1000, n_pairs: int = 40_000,
                  latent_dim: int = 16, user_features: int = 32, ad_features: int = 32, rank: int = 4,
                  off_diagonal: float = 1.0, feature_noise: float = 0.1, bid_spread: float = 0.5,
                  outcomes: str = "funnel", objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES) -> CampaignData:
    """Synthetic campaigns with a known answer (the funnel of CampaignData's ground truth).

    Users and ads have latent vectors z ~ N(0, I_k), seen only through a random linear mixing
    plus noise (user_features / ad_features columns); the features do not carry the objective.
    Step t scores z_u^T S*_t z_a + b*_t with S*_t = spread_t * unit(D_t + off_diagonal * R_t):
    D_t a diagonal and R_t a rank-2*`rank` matrix P Q^T, each half shared by every objective and
    half its own, both of unit Frobenius norm (off_diagonal=0: every S*_t diagonal in one basis,
    so per-objective diagonal heads can fit the truth). Under z ~ N(0, I) the step's logit has
    standard deviation spread_t. b*_t is set so that outcome t's rate is its base_rate.
    Bids are lognormal (sigma bid_spread) over the objective's base rate, so every objective's
    expected value per impression is alike. outcomes: "funnel" records every outcome (labels
    (P, T)), "own" only the ad's objective's (labels (P,)), from the same draws.
    """
    if outcomes not in OUTCOMES:
        raise ValueError(f"outcomes: expected one of {OUTCOMES}, got {outcomes!r}")
    if off_diagonal < 0:
        raise ValueError(f"off_diagonal: must be >= 0, got {off_diagonal}")
    rng = np.random.default_rng(seed)
    T, k = len(objectives), latent_dim
    shares = np.array([o.ad_share for o in objectives], np.float64)
    z_users = rng.standard_normal((n_users, k))
    z_ads = rng.standard_normal((n_ads, k))
    ad_objective = rng.choice(T, size=n_ads, p=shares / shares.sum())

    def diagonal():
        return np.diag(rng.standard_normal(k))

    def factors():
        return rng.standard_normal((k, rank)) @ rng.standard_normal((k, rank)).T

    shared_diagonal, shared_factors = diagonal(), factors()
    true_S = np.stack([o.spread * _unit(_unit(shared_diagonal + diagonal())
                                        + off_diagonal * _unit(shared_factors + factors())) for o in objectives])

    pairs = np.stack([rng.integers(0, n_users, n_pairs), rng.integers(0, n_ads, n_pairs)], axis=1)
    pair_users, pair_ads = z_users[pairs[:, 0]], z_ads[pairs[:, 1]]
    raw = np.stack([((pair_users @ S) * pair_ads).sum(1) for S in true_S], axis=1)
    true_bias = np.zeros(T)
    for t, o in enumerate(objectives):  # in funnel order: step t's bias given the earlier steps'
        earlier = np.exp(_log_sigmoid(raw[:, :t] + true_bias[:t]).sum(1))
        true_bias[t] = _bias_for_rate(raw[:, t], earlier, o.base_rate)
    steps = raw + true_bias
    happened = np.cumprod(rng.random((n_pairs, T)) < _sigmoid(steps), axis=1).astype(np.float32)
    true_logits = _funnel_logit([steps[:, t] for t in range(T)], cumulative=True)
    if outcomes == "own":
        own = ad_objective[pairs[:, 1]]
        happened, true_logits = happened[np.arange(n_pairs), own], true_logits[np.arange(n_pairs), own]

    def observed(z, columns):
        mixing = rng.standard_normal((k, columns)) / np.sqrt(k)
        return z @ mixing + feature_noise * rng.standard_normal((len(z), columns))

    base_rates = np.array([o.base_rate for o in objectives])
    bids = np.exp(bid_spread * rng.standard_normal(n_ads)) / base_rates[ad_objective]
    return CampaignData(objectives=tuple(o.name for o in objectives), user_features=observed(z_users, user_features),
                        ad_features=observed(z_ads, ad_features), ad_objective=ad_objective, pairs=pairs,
                        labels=happened, ad_bids=bids, true_logits=true_logits, user_latent=z_users, ad_latent=z_ads,
                        true_S=true_S, true_bias=true_bias)


def _unit(S: np.ndarray) -> np.ndarray:
    return S / np.linalg.norm(S)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for any x


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _funnel_logit(steps, cumulative: bool = False):
    """logit(prod_s sigmoid(steps[s])): of the last step, or of every prefix (stacked on the last
    axis) with cumulative=True. Computed from log-probabilities, so it neither overflows nor
    rounds a tiny probability to 0."""
    log_p = np.cumsum(np.stack([_log_sigmoid(np.asarray(x, np.float64)) for x in steps], -1), -1)
    logits = log_p - np.log(-np.expm1(np.minimum(log_p, -1e-300)))
    return logits if cumulative else logits[..., -1]


def _bias_for_rate(scores: np.ndarray, weights: np.ndarray, rate: float) -> float:
    """The b with mean(weights * sigmoid(scores + b)) = rate (bisection; the mean rises with b)."""
    if scores.size == 0:
        return float(np.log(rate / (1 - rate)))
    if not 0 < rate < weights.mean():
        raise ValueError(f"base_rate: {rate} is not reachable below the earlier funnel step's rate {weights.mean():.4g}")
    low, high = -40.0, 40.0
    for _ in range(40):  # to 80 / 2**40
        middle = 0.5 * (low + high)
        low, high = (middle, high) if (weights * _sigmoid(scores + middle)).mean() < rate else (low, middle)
    return 0.5 * (low + high)


def _array(value, name: str, dtype, ndim: int) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {array.shape}")
    if np.dtype(dtype).kind == "i" and array.size and array.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integers, got dtype {array.dtype}")
    if np.dtype(dtype).kind == "f" and array.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected numbers, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=dtype)


# ---- Parquet ----------------------------------------------------------------------------------
def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ImportError("Parquet files need pyarrow (pip install pyarrow); .npz needs nothing more") from None
    return pyarrow, pyarrow.parquet


def _list_column(pa, rows: np.ndarray):
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])


def _column(pa, values: np.ndarray):
    """A (P,) array as numbers, a (P, T) one as a list per row."""
    return values if values.ndim == 1 else _list_column(pa, values)


def _save_parquet(data: CampaignData, path: pathlib.Path):
    pa, pq = _pyarrow()
    path.mkdir(parents=True, exist_ok=True)
    meta = {"objectives": json.dumps(list(data.objectives))}
    users = {"user": np.arange(len(data.user_features)), "features": _list_column(pa, data.user_features)}
    ads = {"ad": np.arange(len(data.ad_features)), "objective": np.array(data.objectives)[data.ad_objective],
           "features": _list_column(pa, data.ad_features)}
    impressions = {"user": data.pairs[:, 0], "ad": data.pairs[:, 1], "label": _column(pa, data.labels)}
    if data.ad_bids is not None:
        ads["bid"] = data.ad_bids
    if data.has_truth:
        # __post_init__ accepts all of _TRUTH or none, and has_truth says true_S is set, so all are.
        assert data.true_S is not None and data.true_bias is not None
        assert data.user_latent is not None and data.ad_latent is not None and data.true_logits is not None
        meta["true_S"] = json.dumps(data.true_S.tolist())
        meta["true_bias"] = json.dumps(data.true_bias.tolist())
        users["latent"] = _list_column(pa, data.user_latent)
        ads["latent"] = _list_column(pa, data.ad_latent)
        impressions["true_logit"] = _column(pa, data.true_logits)
    for name, columns in (("users", users), ("ads", ads), ("impressions", impressions)):
        table = pa.table(columns).replace_schema_metadata({key: value.encode() for key, value in meta.items()})
        pq.write_table(table, path / f"{name}.parquet")


def _rows(table, column: str) -> np.ndarray:
    """A column of equal-length lists of numbers as a 2-D float32 array."""
    import pyarrow.compute

    values = table.column(column).combine_chunks()
    lengths = np.unique(pyarrow.compute.list_value_length(values).to_numpy(zero_copy_only=False))
    if len(lengths) > 1:
        raise ValueError(f"column {column!r}: every row needs the same number of values, "
                         f"got lengths {lengths.tolist()}")
    width = int(lengths[0]) if len(lengths) else 0
    return np.asarray(values.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(values), width)


def _numbers(table, column: str) -> np.ndarray:
    """A column of numbers as (P,), or of equal-length lists as (P, T)."""
    import pyarrow

    if pyarrow.types.is_list(table.schema.field(column).type) or pyarrow.types.is_fixed_size_list(
            table.schema.field(column).type):
        return _rows(table, column)
    return table.column(column).to_numpy()


def _in_index_order(table, column: str, path: pathlib.Path):
    index = table.column(column).to_numpy()
    if not np.array_equal(np.sort(index), np.arange(len(index))):
        raise ValueError(f"{path}: column {column!r} must hold the row indices 0..{len(index) - 1}")
    return table.take(np.argsort(index))


def _load_parquet(path: pathlib.Path) -> CampaignData:
    _, pq = _pyarrow()
    users = _in_index_order(pq.read_table(path / "users.parquet"), "user", path / "users.parquet")
    ads = _in_index_order(pq.read_table(path / "ads.parquet"), "ad", path / "ads.parquet")
    impressions = pq.read_table(path / "impressions.parquet")
    meta = {key.decode(): value.decode() for key, value in (impressions.schema.metadata or {}).items()}
    ad_names = np.asarray(ads.column("objective").to_pylist(), dtype=np.str_)
    objectives = tuple(json.loads(meta["objectives"])) if "objectives" in meta else tuple(sorted(set(ad_names)))
    unknown = sorted(set(ad_names) - set(objectives))
    if unknown:
        raise ValueError(f"{path / 'ads.parquet'}: objective(s) {unknown} not in {objectives}")
    truth = {}
    if "true_S" in meta and "latent" in users.column_names and "true_logit" in impressions.column_names:
        truth = {"true_S": np.array(json.loads(meta["true_S"])), "true_bias": np.array(json.loads(meta["true_bias"])),
                 "user_latent": _rows(users, "latent"), "ad_latent": _rows(ads, "latent"),
                 "true_logits": _numbers(impressions, "true_logit")}
    return CampaignData(
        objectives=objectives,
        user_features=_rows(users, "features"),
        ad_features=_rows(ads, "features"),
        ad_objective=np.array([objectives.index(name) for name in ad_names], np.int64),
        pairs=np.stack([impressions.column("user").to_numpy(), impressions.column("ad").to_numpy()], axis=1),
        labels=_numbers(impressions, "label"),
        ad_bids=ads.column("bid").to_numpy() if "bid" in ads.column_names else None,
        **truth,
    )
