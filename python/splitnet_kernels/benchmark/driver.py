"""The benchmark driver behind `splitnet-kernels bench`: workloads W1-W10 of docs/design.md.

Every table is measured in one run, side by side: our kernels, the other backends, and what a
user would pick instead (NumPy/BLAS, PyTorch, FAISS, Numba), each timed in turns with the others
(round after round, each contender once a round), and every ratio taken round by round: against
ours, and ours against the physical floor timed in the same turns (bytes over read bandwidth,
flops over an sgemm's rate). Ratios, not absolute times, are the result. The default run is the
headline tables (DEFAULT_WORKLOADS); --full runs them all.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import numpy as np

import splitnet_kernels as sk

from .._progress import Progress
from .._storage import ExactStorage, Storage
from . import workloads as wl
from .report import Table, plot_w7, quartiles
from .timing import floor_and_rounds, machine_facts, median_time, medians, paired_ratio, times_in_turns

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10")
DEFAULT_WORKLOADS = ("W1", "W2", "W4", "W7", "W8", "W9")  # `splitnet-kernels bench` alone: the headline tables
PEER_LIBRARIES = ("numpy", "torch", "faiss", "numba")  # a row named with one of these words runs in its threads


# ---- the peers (real packages, loaded when present) ---------------------------------------
def _try_import(name):
    try:
        return __import__(name)
    except ImportError:
        return None


class Peers:
    def __init__(self):
        self.torch = _try_import("torch")
        self.faiss = _try_import("faiss")
        self.numba_ok = sk.backends()["numba"]["available"]

    def faiss_index(self, ads):
        index = self.faiss.IndexFlatIP(ads.shape[1])
        index.add(ads)
        return index

    @property
    def panorama(self) -> bool:
        """FAISS has IndexFlatIPPanorama (faiss 1.14 and later)."""
        return self.faiss is not None and hasattr(self.faiss, "IndexFlatIPPanorama")


class Panorama:
    """FAISS's IndexFlatIPPanorama as a user would run it: the rows rotated by the PCA of their
    second moment (workloads.pca_rotation; energy to the first dimensions, as Panorama's pruning
    needs), the level count the fastest of PANORAMA_LEVELS on the probe query (best of three calls
    each). Queries are rotated once, before timing: `search` times Panorama's search alone."""

    def __init__(self, faiss, ads, probe):
        self.faiss = faiss
        self.rotation = wl.pca_rotation(ads)
        rotated = np.ascontiguousarray(ads @ self.rotation)
        query = self.rotate(probe)
        best = None
        for levels in wl.PANORAMA_LEVELS:
            index = faiss.IndexFlatIPPanorama(ads.shape[1], levels)
            index.add(rotated)
            seconds = min(_seconds(functools.partial(index.search, query, wl.TOP_K)) for _ in range(3))
            if best is None or seconds < best[0]:
                best = (seconds, levels, index)
        _, self.levels, self.index = best

    @property
    def name(self) -> str:
        """Its row in a table."""
        return f"faiss  IndexFlatIPPanorama.search ({self.levels} levels)"

    def rotate(self, users) -> np.ndarray:
        return np.ascontiguousarray(np.atleast_2d(users) @ self.rotation)

    def describe(self, ads, query, ours, k) -> str:
        """What a table notes of this peer: its level count, and how its top-k ids for one query
        compare with ours (scores, ids)."""
        return (f"Panorama: rows and queries PCA-rotated before timing, {self.levels} levels (the fastest of "
                f"{', '.join(map(str, wl.PANORAMA_LEVELS))}); "
                + _agreement(ads, query, ours, self.index.search(self.rotate(query), k)[1][0], k))

    def dims_scanned(self, query, k) -> float | None:
        """The share of the row's dimensions one search read (FAISS's own count), or None."""
        stats = getattr(self.faiss.cvar, "indexPanorama_stats", None)
        if stats is None:
            return None
        stats.reset()
        self.index.search(query, k)
        return float(stats.ratio_dims_scanned)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _agreement(ads, query, ours, theirs, k) -> str:
    """How a peer's top-k ids compare with ours (scores, ids) for one query: how many are the
    same, and where they are not, whether the others tie with our k-th score (float64 scores
    within float32 rounding of it)."""
    scores, ids = ours
    others = np.setdiff1d(theirs, ids)
    same = k - len(others)
    if not len(others):
        return f"top-{k} ids: the same {k} as ours"
    exact = ads[others].astype(np.float64) @ query.astype(np.float64)
    kth = float(scores[-1])
    gap = float(np.max(np.abs(exact - kth)))
    tie = gap <= 4 * np.finfo(np.float32).eps * max(1.0, abs(kth)) * np.sqrt(ads.shape[1])
    return (f"top-{k} ids: {same} of {k} the same as ours; the other {len(others)} score within {gap:.2g} of our "
            f"{k}th ({'ties' if tie else 'NOT ties'})")


def _library(name) -> str:
    return next((lib for lib in PEER_LIBRARIES if lib in str(name).split()), "splitnet_kernels")


def _table(workload, title, fns, repeat, ctx, note="", columns=(), **floor) -> tuple[Table, dict]:
    """(a Table with a row for each fn, named by its key, in order; the rounds): every fn timed in
    turns with the others, and with the floor when `floor` says what it is (arrays=, extra_bytes=,
    flops=: timing.floor_and_rounds). The first fn is ours."""
    libraries = {name: _library(name) for name in fns}
    if floor:
        floor_rounds, rounds = floor_and_rounds(fns, repeat, ctx.threads, libraries=libraries, **floor)
    else:
        floor_rounds, rounds = None, times_in_turns(fns, repeat, libraries)
    t = Table(workload, title, floor_rounds, note, columns)
    for name, r in rounds.items():
        t.add(name, r)
    return t, rounds


# ---- workloads ------------------------------------------------------------------------------
OURS = "splitnet_kernels simd"


def w1(ctx) -> Table:
    n, N = wl.DIM, ctx.n_cands
    ads, user = wl.one_user(N)
    out = np.empty(N, np.float32)
    fns = {OURS: lambda: sk.score(user, ads, out=out), "numpy  A @ u": lambda: ads @ user}
    if ctx.peers.torch is not None:
        ta, tu = ctx.peers.torch.from_numpy(ads), ctx.peers.torch.from_numpy(user)
        fns["torch  A @ u"] = lambda: ta @ tu
    if ctx.peers.numba_ok:
        fns["splitnet_kernels numba"] = lambda: sk.score(user, ads, backend="numba")
    if ctx.full:
        fns["splitnet_kernels numpy (float64 reference)"] = lambda: sk.score(user, ads, backend="numpy")
    t, _ = _table("W1", f"one user x {N:,} candidates, all scores (n={n})", fns, ctx.repeat, ctx,
                  "reading the candidates once, timed in turns with them, + writing the scores",
                  arrays=(ads,), extra_bytes=N * 4)
    efficiency, faster = t.of_floor(OURS)[0], t.ratio("numpy  A @ u", OURS)[0]
    t.target(f">= 0.90 x the read-bandwidth floor ({efficiency:.2f})", efficiency >= 0.90)
    t.target(f"not slower than numpy A @ u ({faster:.2f}x)", faster >= 1)
    return t


def w2(ctx) -> Table:
    N, k = ctx.n_cands, wl.TOP_K
    ads, user = wl.one_user(N)
    fns = {OURS: lambda: sk.topk(user, ads, k), "numpy  A @ u + argpartition": lambda: wl.numpy_topk(ads @ user, k)}
    notes = []
    if ctx.peers.faiss is not None:
        index = ctx.peers.faiss_index(ads)
        fns["faiss  IndexFlatIP.search"] = functools.partial(index.search, user[None], k)
    if ctx.peers.panorama:
        panorama = Panorama(ctx.peers.faiss, ads, user)
        fns[panorama.name] = functools.partial(panorama.index.search, panorama.rotate(user), k)
        notes.append(panorama.describe(ads, user, sk.topk(user, ads, k), k))
    if ctx.peers.torch is not None:
        torch = ctx.peers.torch
        ta, tu = torch.from_numpy(ads), torch.from_numpy(user)
        fns["torch  topk(A @ u)"] = lambda: torch.topk(ta @ tu, k)
    if ctx.peers.numba_ok:
        fns["splitnet_kernels numba"] = lambda: sk.topk(user, ads, k, backend="numba")
    t, _ = _table("W2", f"one user x {N:,} candidates, top-{k}", fns, ctx.repeat, ctx,
                  "reading the candidates once, timed in turns with them", arrays=(ads,))
    t.notes.extend(notes)
    if t.has("faiss  IndexFlatIP.search"):
        faster = t.ratio("faiss  IndexFlatIP.search", OURS)[0]
        t.target(f">= 2x faster than FAISS IndexFlatIP.search ({faster:.2f}x)", faster >= 2)
    faster = t.ratio("numpy  A @ u + argpartition", OURS)[0]
    t.target(f">= 1.2x faster than A @ u + argpartition ({faster:.2f}x)", faster >= 1.2)
    return t


def w3(ctx) -> list[Table]:
    N, k = ctx.n_cands, wl.TOP_K
    ads, user = wl.one_user(N)
    _, exact = sk.topk(user, ads, k)
    sets = {dtype: sk.Candidates(ads, dtype=dtype) for dtype in wl.DTYPES}
    t, _ = _table("W3", f"W2 with reduced-precision candidates (one user x {N:,}, top-{k})",
                  {f"Candidates {dtype}": functools.partial(cands.topk, user, k) for dtype, cands in sets.items()},
                  ctx.repeat, ctx, "reading the float32 candidates once, timed in turns with the sets", arrays=(ads,))
    for dtype, cands in sets.items():
        recall = len(np.intersect1d(cands.topk(user, k)[1], exact)) / k
        t.notes.append(f"{dtype}: {cands.nbytes / 2**20:.0f} MiB, recall@{k} {recall:.3f}")
        if dtype == "float32":
            continue
        faster, least, least_recall = t.ratio("Candidates float32", f"Candidates {dtype}")[0], 1.7, 0.99
        if dtype == "int8":
            least, least_recall = 3, 0.95
        t.target(f"{dtype} >= {least:g}x faster than float32 ({faster:.2f}x), recall >= {least_recall} ({recall:.3f})",
                 faster >= least and recall >= least_recall)
    return [t, _serving_threads(ctx, sets["bfloat16"], user)]


def _serving_threads(ctx, cands, user) -> Table:
    """Throughput of many small calls from 1 and from 2 Python threads on one shared set: more
    than 1x only if the GIL is released while the kernels run."""
    import concurrent.futures

    calls = 200 if ctx.quick else 600
    subset = sk.Candidates(cands.rows(0, 100_000), dtype=cands.dtype)

    def work(count):
        for _ in range(count):
            subset.topk(user, 100, threads=1)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        fns = {"1 Python thread": lambda: work(calls),
               "2 Python threads": lambda: list(pool.map(work, [calls // 2, calls - calls // 2]))}
        t, _ = _table("W3", f"serving: {calls} top-100 calls (1 user x 100,000 bfloat16, threads=1 each) from Python "
                      "threads", fns, ctx.repeat, ctx)
    faster = t.ratio("1 Python thread", "2 Python threads")[0]
    t.target(f"2 threads >= 1.6x the throughput of 1 ({faster:.2f}x)", faster >= 1.6)
    return t


def w4(ctx) -> list[Table]:
    n, N, M, k = wl.DIM, ctx.n_cands, wl.USERS, wl.TOP_K
    ads, users = wl.many_users(N)
    flops = 2 * M * N * n
    fns = {OURS: lambda: sk.topk(users, ads, k), "numpy  U @ A.T (scores only)": lambda: users @ ads.T}
    if ctx.peers.faiss is not None:
        index = ctx.peers.faiss_index(ads)
        fns["faiss  IndexFlatIP.search"] = functools.partial(index.search, users, k)
    if ctx.peers.torch is not None:
        torch = ctx.peers.torch
        tu, ta = torch.from_numpy(users), torch.from_numpy(ads)
        fns["torch  topk(U @ A.T)"] = lambda: torch.topk(tu @ ta.T, k, dim=1)
    if ctx.peers.numba_ok:
        fns["splitnet_kernels numba"] = lambda: sk.topk(users, ads, k, backend="numba")
    t, _ = _table("W4", f"{M} users x {N:,} candidates, top-{k} each", fns, ctx.repeat_slow, ctx,
                  "flops over the rate of an sgemm timed in turns with them", flops=flops)
    if t.has("faiss  IndexFlatIP.search"):
        faster = t.ratio("faiss  IndexFlatIP.search", OURS)[0]
        t.target(f">= 10x faster than FAISS ({faster:.2f}x)", faster >= 10)
    over = t.ratio(OURS, "numpy  U @ A.T (scores only)")[0]
    t.target(f"<= 1.2x the time of numpy U @ A.T alone ({over:.2f}x)", over <= 1.2)
    return [t, _many_users_on_candidates(ctx, ads, users, k, flops)]


def _many_users_on_candidates(ctx, ads, users, k, flops) -> Table:
    """W4 on prepared sets: each storage type read once for all users (int8 on its own tile)."""
    sets = {dtype: sk.Candidates(ads, dtype=dtype) for dtype in wl.DTYPES}
    t, _ = _table("W4", f"W4 on prepared candidate sets ({users.shape[0]} users x {ads.shape[0]:,}, top-{k} each)",
                  {f"Candidates {dtype}": functools.partial(cands.topk, users, k) for dtype, cands in sets.items()},
                  ctx.repeat_slow, ctx, "float32 flops over the rate of an sgemm timed in turns with them", flops=flops)
    _, exact = sk.topk(users, ads, k)
    for dtype, cands in sets.items():
        found = cands.topk(users, k)[1]
        recall = np.mean([len(np.intersect1d(f, e)) / k for f, e in zip(found, exact)])
        t.notes.append(f"{dtype}: recall@{k} {recall:.3f} (mean over users)")
    return t


def w5(ctx) -> list[Table]:
    n, B = wl.DIM, ctx.n_pairs
    users, ads = wl.pairs(B)
    metrics = wl.pair_metrics(n)
    s, S = metrics["diagonal"][1], metrics["full"][1]
    torch = ctx.peers.torch
    tables = []
    out = np.empty(B, np.float32)
    for kind in wl.PAIR_KINDS:
        metric = metrics[kind][0]
        fns = {OURS: lambda: sk.score(users, ads, metric, pairwise=True, out=out)}
        if kind == "dot":
            fns.update({"numpy  einsum('ij,ij->i')": lambda: np.einsum("ij,ij->i", users, ads),
                        "numpy  (U * A).sum(1)": lambda: (users * ads).sum(1)})
        elif kind == "diagonal":
            fns.update({"numpy  einsum('ij,j,ij->i')": lambda: np.einsum("ij,j,ij->i", users, s, ads),
                        "numpy  ((U * s) * A).sum(1)": lambda: ((users * s) * ads).sum(1)})
        else:
            fns.update({"numpy  einsum('ij,ij->i', U @ S, A)": lambda: np.einsum("ij,ij->i", users @ S, ads),
                        "numpy  ((U @ S) * A).sum(1)": lambda: ((users @ S) * ads).sum(1)})
        numpy_ways = [name for name in fns if name.startswith("numpy")]
        if torch is not None:
            tu, ta = torch.from_numpy(users), torch.from_numpy(ads)
            factor = {"dot": None, "diagonal": torch.from_numpy(s), "full": torch.from_numpy(S)}[kind]
            if kind == "full":
                fns["torch  expression"] = lambda: ((tu @ factor) * ta).sum(1)
            elif kind == "diagonal":
                fns["torch  expression"] = lambda: (tu * factor * ta).sum(1)
            else:
                fns["torch  expression"] = lambda: (tu * ta).sum(1)
        if ctx.peers.numba_ok:
            fns["splitnet_kernels numba"] = lambda: sk.score(users, ads, metric, pairwise=True, backend="numba")
        if kind == "full":
            floor = {"arrays": (users, ads), "extra_bytes": B * 4, "flops": 2 * B * n * n}
            note = "max(flops over an sgemm's rate, bytes over read bandwidth), timed in turns with them"
        else:
            floor = {"arrays": (users, ads), "extra_bytes": B * 4}
            note = "reading both inputs once, timed in turns with them, + writing the scores"
        t, _ = _table("W5", f"{B:,} (user, ad) pairs, {kind} (n={n})", fns, ctx.repeat, ctx, note, **floor)
        if kind == "full":
            best = min(numpy_ways, key=t.seconds_of)
            faster = t.ratio(best, OURS)[0]
            t.target(f">= 2x faster than the best NumPy expression ({best[7:]}: {faster:.2f}x)", faster >= 2)
        else:
            efficiency = t.of_floor(OURS)[0]
            t.target(f">= 0.85 x the read-bandwidth floor ({efficiency:.2f})", efficiency >= 0.85)
        tables.append(t)
    return tables


def w6(ctx) -> Table:
    N, k = wl.REQUEST_CANDIDATES, wl.REQUEST_K
    ads, user = wl.one_request()
    fns = {"splitnet_kernels sk.topk": lambda: sk.topk(user, ads, k),
           "numpy  A @ u + argpartition": lambda: wl.numpy_topk(ads @ user, k)}
    if ctx.peers.faiss is not None:
        index = ctx.peers.faiss_index(ads)
        fns["faiss  IndexFlatIP.search"] = functools.partial(index.search, user[None], k)
    if ctx.peers.torch is not None:
        torch = ctx.peers.torch
        ta, tu = torch.from_numpy(ads), torch.from_numpy(user)
        fns["torch  topk(A @ u)"] = lambda: torch.topk(ta @ tu, k)
    libraries = {name: _library(name) for name in fns}
    calls = 0.05 if ctx.quick else 0.2  # seconds of calls per round: one call lasts microseconds
    t = Table("W6", f"one user x {N:,} candidates, top-{k}: latency of one Python call", None, "")
    for name, r in times_in_turns(fns, ctx.repeat, libraries, min_seconds=calls).items():
        t.add(name, r)
    t.notes.append(f"each round calls each function for about {calls:g} s and gives the seconds of one call")
    ours = "splitnet_kernels sk.topk"
    faster = t.ratio("numpy  A @ u + argpartition", ours)[0]
    t.target(f">= 2x faster than A @ u + argpartition ({faster:.2f}x)", faster >= 2)
    if t.has("faiss  IndexFlatIP.search"):
        faster = t.ratio("faiss  IndexFlatIP.search", ours)[0]
        t.target(f">= 3x faster than FAISS ({faster:.2f}x)", faster >= 3)
    return t


def w7(ctx) -> Table:
    dims = wl.W7_DIMS
    budget = ctx.w7_bytes
    t = Table("W7", "cost per candidate (ns) against n, folded (one user vs many) vs per pair", None, "")
    rng = np.random.default_rng(9)
    grid: dict[tuple[int, str], tuple[float, float]] = {}
    full_over_dot, pair_over_folded = {}, {}
    for n in dims:
        N = wl.w7_rows(n, budget)
        ads, users = wl.w7_data(N, n)
        out = np.empty(N, np.float32)
        metrics = wl.metrics_for(n, rng)
        fns: dict = {}
        for kind, m in metrics.items():
            fns[("folded", kind)] = functools.partial(sk.score, users[0], ads, m, out=out)
            fns[("per pair", kind)] = functools.partial(sk.score, users, ads, m, pairwise=True, out=out)
        rounds = times_in_turns(fns, ctx.repeat_w7)
        times = medians(rounds)
        for kind in metrics:
            grid[(n, kind)] = (times[("folded", kind)] / N, times[("per pair", kind)] / N)
        full_over_dot[n] = paired_ratio(rounds[("folded", "full")], rounds[("folded", "dot")])[0]
        pair_over_folded[n] = paired_ratio(rounds[("per pair", "full")], rounds[("folded", "full")])[0]
        ctx.progress.step(f"W7 n={n}")
    kinds = list(wl.metrics_for(16, rng))
    header = "  n    " + "".join(f"{k + ' fold':>14s}{k + ' pair':>14s}" for k in kinds)
    lines = [header] + ["  " + f"{n:<5d}" + "".join(f"{grid[(n, k)][0] * 1e9:14.3f}{grid[(n, k)][1] * 1e9:14.3f}"
                                                  for k in kinds) for n in dims]
    t.notes.append("table (ns per candidate, medians):\n" + "\n".join(lines))
    t.notes.append(f"at each n every kind, folded and per pair, timed in turns over {ctx.repeat_w7} rounds; the "
                   "targets' ratios taken round by round (medians)")
    t.grid = grid
    worst = max(full_over_dot.values())
    t.target(f"folded full within 1.1x of dot at every n (worst {worst:.2f}x)", worst <= 1.1)
    growth = pair_over_folded[512] / pair_over_folded[64]
    t.target(f"per-pair full over folded grows ~n x: 64 -> 512 is {growth:.1f}x (n ratio 8)", 4 <= growth <= 16)
    return t


def _skipped(cands, call):
    """(fraction of the candidate rows' bytes the scan by value skipped, MiB skipped, per
    objective: fraction of its rows read) in one untimed call, from cands.last_scan."""
    call()
    scanned = cands.last_scan
    sizes = np.bincount(cands.objectives, minlength=max(scanned) + 1)
    rows = len(cands) - sum(scanned.values())
    row_bytes = cands._store.nbytes / len(cands)  # the packed rows (and int8 scales), not the bids
    return rows / len(cands), rows * row_bytes / 2**20, [scanned[t] / sizes[t] for t in sorted(scanned)]


def _scan_note(label, skip, N, store_bytes, must=None, kth=None, k=None, kth_word="final"):
    fraction, mib, read = skip
    text = (f"{label}: the scan skipped {fraction:.1%} of the candidate bytes ({mib:.0f} MiB of {store_bytes / 2**20:.0f}); "
            f"rows read per objective {', '.join(f'{r:.1%}' for r in read)}")
    if must is not None:
        text += (f"; a bid bound must read at least the rows with bid >= the {kth_word} {k}th value {kth:.3g}: "
                 f"{sum(must):,} ({sum(must) / N:.2%}; per objective {', '.join(f'{m:,}' for m in must)})")
    return text


def _must_read(objectives, bids, kth, n_objectives):
    """Rows per objective whose bid is >= the final k-th value (the lowest over users): what
    any scan bounded by bids must read at least."""
    return [int(np.count_nonzero(bids[objectives == t] >= kth)) for t in range(n_objectives)]


def _check_exact(cands, users, om, k, found, values, label):
    """Asserts that a top-k by value equals a full sort of the set's own score output (ties to
    the lower id; no NaN here)."""
    scores = np.atleast_2d(cands.score(users, om))
    found, values = np.atleast_2d(found), np.atleast_2d(values)
    for u in range(scores.shape[0]):
        order = np.argsort(-scores[u], kind="stable")[:k]
        assert np.array_equal(found[u], order), f"W8 {label}: top-{k} ids differ from a full sort of score()"
        assert np.array_equal(values[u], scores[u][order]), f"W8 {label}: top-{k} values differ from score()"


def _float64_values(ads, objectives, bids, om, user):
    """Every candidate's value in float64: the brute-force reference."""
    out = np.empty(len(ads))
    for t, m in enumerate(om):
        rows = np.flatnonzero(objectives == t)
        logits = ads[rows].astype(np.float64) @ (user.astype(np.float64) @ m.dense().astype(np.float64)) + m.bias
        out[rows] = bids[rows] / (1 + np.exp(-logits))
    return out


def w8(ctx) -> list[Table]:
    n, N, k = wl.DIM, ctx.n_cands, wl.TOP_K
    ads, user = wl.one_user(N)
    users = wl.many_users(N)[1]
    objectives, lognormal, unit = wl.objectives_and_bids(N)
    om = wl.objective_metrics(n)
    bid_sets = {"lognormal": lognormal, "unit": unit}
    sets = {(dtype, b): sk.Candidates(ads, dtype=dtype, objectives=objectives, bids=bids)
            for dtype in wl.DTYPES for b, bids in bid_sets.items()}
    peers = {b: wl.NumpyObjectives(ads, objectives, bids, om) for b, bids in bid_sets.items()}
    single = om[wl.OBJECTIVE_KINDS.index("full")]  # W2 with the dearest kind: folded, it costs what dot does
    kinds = ", ".join(f"{name} {m.kind} ({rate:.0%})" for name, m, rate in zip(om.names, om, wl.BASE_RATES))
    name = {key: f"Candidates {key[0]}, {key[1]} bids" for key in sets}
    numpy_names = {b: (f"numpy  grouped matvecs+sigmoid+argpartition ({b})", f"numpy  same, in place ({b})")
                   for b in bid_sets}
    w2_name = "W2  sk.topk(user, ads, k, metric), same rows"

    # one user: every set, the NumPy expressions and W2 timed in turns with the float32 read floor
    fns: dict = {name[key]: functools.partial(cands.topk, user, k, om) for key, cands in sets.items()}
    for b, peer in peers.items():
        fns[numpy_names[b][0]] = functools.partial(peer.topk, user, k)
        fns[numpy_names[b][1]] = functools.partial(peer.topk_in_place, user, k)
    fns[w2_name] = lambda: sk.topk(user, ads, k, single)
    floor, rounds = floor_and_rounds(fns, ctx.repeat, ctx.threads, arrays=(ads,),
                                     libraries={f: _library(f) for f in fns})
    times = medians(rounds)
    numpy_best = {b: min(numpy_names[b], key=times.__getitem__) for b in bid_sets}  # the row with the lower median

    results = {key: cands.topk(user, k, om) for key, cands in sets.items()}
    skips = {key: _skipped(cands, functools.partial(cands.topk, user, k, om)) for key, cands in sets.items()}
    for b in bid_sets:
        _check_exact(sets[("float32", b)], user, om, k, results[("float32", b)][1], results[("float32", b)][0],
                     f"float32 {b} bids")
    t = Table("W8", f"one user x {N:,} candidates, {len(om)} objectives, top-{k} by value = bid x p (n={n})", floor,
              "reading the float32 candidates once, timed in turns with them")
    for row in (name[("float32", "lognormal")], name[("float32", "unit")], *numpy_names["lognormal"],
                *numpy_names["unit"], w2_name):
        t.add(row, rounds[row])
    ours, ours_unit = name[("float32", "lognormal")], name[("float32", "unit")]
    faster, over_w2 = t.ratio(numpy_best["lognormal"], ours)[0], t.ratio(ours, w2_name)[0]
    faster_unit = t.ratio(numpy_best["unit"], ours_unit)[0]
    t.target(f"lognormal bids >= 3x faster than the best NumPy expression ({faster:.2f}x)", faster >= 3)
    t.target(f"lognormal bids within 1.25x of W2 ({over_w2:.2f}x W2)", over_w2 <= 1.25)
    t.target(f"unit bids >= 1.4x faster than the best NumPy expression ({faster_unit:.2f}x)", faster_unit >= 1.4)
    t.notes.append(f"objectives (kind, base rate): {kinds}; objectives uniform over the rows, bids lognormal(0, "
                   f"{wl.BID_SIGMA:g}) or 1; NumPy gets the rows already grouped by objective")
    kth = float(results[("float32", "lognormal")][0][-1])
    must = _must_read(objectives, lognormal, kth, len(om))
    store_bytes = sets[("float32", "lognormal")]._store.nbytes
    t.notes.append(_scan_note("lognormal bids", skips[("float32", "lognormal")], N, store_bytes, must, kth, k))
    t.notes.append(_scan_note("unit bids", skips[("float32", "unit")], N, store_bytes))
    t.notes.append(f"exact: the float32 top-{k} (lognormal and unit bids) equals a full sort of its own score output")
    reference = _float64_values(ads, objectives, lognormal, om, user)
    ref_top = np.argsort(-reference, kind="stable")[:k]
    values, found = results[("float32", "lognormal")]
    error = float(np.max(np.abs(values - reference[found]) / reference[found]))
    t.notes.append(f"float64 brute force (lognormal): top-{k} sets equal {set(found) == set(ref_top)}, order equal "
                   f"{np.array_equal(found, ref_top)}, max relative value error {error:.2g}")

    # every storage type, from the same turns
    s = Table("W8", f"W8 on every storage type (one user x {N:,}, top-{k} by value)", floor,
              "reading the float32 candidates once, timed in turns with the sets",
              columns=("numpy / this [quartiles]", "x W2 [quartiles]", "skipped", "recall"))
    for key in sets:
        s.add(name[key], rounds[name[key]])
    for b in bid_sets:
        s.add(f"numpy  best expression, {b} bids", rounds[numpy_best[b]])
    s.add(w2_name, rounds[w2_name])
    for key in sets:
        recall = len(np.intersect1d(results[key][1], results[("float32", key[1])][1])) / k
        s.annotate(name[key], (quartiles(s.ratio(f"numpy  best expression, {key[1]} bids", name[key])),
                               quartiles(s.ratio(name[key], w2_name)), f"{skips[key][0]:.1%}", f"{recall:.3f}"))
    s.notes.append("numpy / this: the best NumPy expression (same bids, the lower median of the two) over this set; x "
                   "W2: this set over W2; skipped: the candidate bytes the scan did not read; recall: against the "
                   "float32 set's top-k (same bids)")
    return [t, s, _w8_many_users(ctx, ads, users, objectives, bid_sets, om, k, sets)]


def _w8_many_users(ctx, ads, users, objectives, bid_sets, om, k, sets) -> Table:
    M, N = users.shape[0], ads.shape[0]
    fns: dict = {f"Candidates float32, {b} bids": functools.partial(sets[("float32", b)].topk, users, k, om)
                 for b in bid_sets}
    fns["W4  sk.topk(users, ads, k), same rows"] = lambda: sk.topk(users, ads, k)
    t, _ = _table("W8", f"{M} users x {N:,} candidates, {len(om)} objectives, top-{k} by value each (float32)", fns,
                  ctx.repeat_slow, ctx, "flops over the rate of an sgemm timed in turns with them",
                  flops=2 * M * N * ads.shape[1])
    over = t.ratio("Candidates float32, lognormal bids", "W4  sk.topk(users, ads, k), same rows")[0]
    t.target(f"lognormal bids within 1.3x of W4 ({over:.2f}x W4)", over <= 1.3)
    cands = sets[("float32", "lognormal")]
    values, _ = cands.topk(users, k, om)
    kth = float(values[:, -1].min())
    must = _must_read(objectives, bid_sets["lognormal"], kth, len(om))
    t.notes.append(_scan_note("lognormal bids", _skipped(cands, fns["Candidates float32, lognormal bids"]), N,
                              cands._store.nbytes, must, kth, k, "lowest (over users)"))
    t.notes.append(_scan_note("unit bids", _skipped(sets[("float32", "unit")], fns["Candidates float32, unit bids"]), N,
                              cands._store.nbytes))
    return t


def _scan_columns(scans: list) -> tuple:
    """W9's columns from the exact sets' `last_scan` (layout, bytes read per row, rows refined and
    re-scored: Candidates.last_scan), where some set reports them: () if none does."""
    return ("scan", "bytes/row", "refined", "re-scored") if any("bytes_per_row" in s for s in scans) else ()


def _scan_cells(scan: dict, columns) -> tuple:
    if not columns:
        return ()
    if "bytes_per_row" not in scan:
        return ("",) * len(columns)
    layout = scan["layout"] + (f", head {scan['head']}" if scan["head"] is not None else "")
    return layout, f"{scan['bytes_per_row']:.1f}", f"{scan['refined']:,}", f"{scan['rescored']:,}"


def _flat(cands) -> "sk.Candidates | None":
    """An exact set without its heads, sharing every array: the flat scan the progressive one
    is judged against (None for a set without heads)."""
    store = cands._store
    if not isinstance(store, ExactStorage) or store.levels is None:
        return None
    return sk.Candidates.packed(ExactStorage(Storage("float32", store.dim, store.data, None), store.scan, store.norms,
                                             store.residuals))


def w9(ctx) -> list[Table]:
    """W2 and W4 on exact sets, beside the float32 set and FAISS's Panorama (and IndexFlatIP with
    --full), on five kinds of rows; every exact result is checked bit for bit against the float32
    set's."""
    N, k = ctx.n_cands, wl.TOP_K
    dtypes = wl.EXACT_DTYPES if ctx.full else ("int8",)
    faiss = ctx.peers.faiss
    tables = []
    for kind in wl.W9_DATA:
        try:
            ads, user, users, source = wl.w9_data(kind, N)  # campaign: a trained model's ads and its users
        except wl.NeedsTorch as missing:
            skipped = Table("W9", f"exact sets, {N:,} {kind} candidates: skipped")
            skipped.notes.append(str(missing))
            tables.append(skipped)
            continue
        plain = sk.Candidates(ads, "float32")
        sets = {dtype: sk.Candidates(ads, dtype, exact=True) for dtype in dtypes}
        flat = _flat(sets["int8"])
        if flat is not None:
            sets["int8, flat scan"] = flat  # the int8 set without its heads, as before issue 26
        index = ctx.peers.faiss_index(ads) if faiss is not None and ctx.full else None
        panorama = Panorama(faiss, ads, user) if ctx.peers.panorama else None
        for label, who, repeat in (("one user", user, ctx.repeat_w9[0]), (f"{users.shape[0]} users", users, ctx.repeat_w9[1])):
            many = who.ndim == 2
            fns: dict = {"Candidates float32": functools.partial(plain.topk, who, k)}
            fns.update({f"Candidates {dtype}, exact=True": functools.partial(cands.topk, who, k)
                        for dtype, cands in sets.items()})
            if panorama is not None:
                fns[panorama.name] = functools.partial(panorama.index.search, panorama.rotate(who), k)
            if index is not None:
                fns["faiss  IndexFlatIP.search"] = functools.partial(index.search, np.atleast_2d(who), k)
            want = plain.topk(who, k)
            scans = {}
            for dtype, cands in sets.items():
                got = cands.topk(who, k)
                assert all(np.array_equal(g, w) for g, w in zip(got, want)), \
                    f"W9 {kind} {label}: the exact {dtype} set differs from the float32 set"
                scans[dtype] = (cands.last_scan, cands.last_rescored)
            scan_columns = _scan_columns([scan for scan, _ in scans.values()])
            if many:
                floor = {"flops": 2 * who.shape[0] * N * wl.DIM}
                note = "flops over the rate of an sgemm timed in turns with them"
            else:
                floor, note = {"arrays": (ads,)}, "reading the float32 candidates once, timed in turns with them"
            t, _ = _table("W9", f"exact sets, {label} x {N:,} {kind} candidates, top-{k}", fns, repeat, ctx, note,
                          ("identical", "re-scored per user", *scan_columns), **floor)
            users_in_call = np.atleast_2d(who).shape[0]
            if scan_columns:
                t.annotate("Candidates float32", ("", "", "float32", f"{4 * wl.DIM:.1f}", "", ""))
            for dtype in sets:
                row = f"Candidates {dtype}, exact=True"
                rescored = scans[dtype][1] / users_in_call
                t.annotate(row, ("yes", f"{rescored:,.0f} ({rescored / N:.2%})",
                                 *_scan_cells(scans[dtype][0], scan_columns)))
            if panorama is not None:
                scanned = panorama.dims_scanned(panorama.rotate(who), k)
                if scanned is not None:
                    t.notes.append(f"Panorama read {scanned:.1%} of the rows' dimensions ({scanned * 4 * wl.DIM:.1f} "
                                   f"bytes per row of the float32 rows' {4 * wl.DIM})")
                if not many:
                    t.notes.append(panorama.describe(ads, who, want, k))
            int8 = t.ratio("Candidates float32", "Candidates int8, exact=True")[0]
            if flat is not None:
                over_flat = t.ratio("Candidates int8, flat scan, exact=True", "Candidates int8, exact=True")[0]
                if many:
                    t.target(f"int8 exact no slower than its flat scan (issue 26; {over_flat:.2f}x)", over_flat >= 0.95)
                else:
                    t.target(f"int8 exact >= 2x faster than its flat scan (issue 26; {over_flat:.2f}x)", over_flat >= 2)
            if kind == "gaussian":
                least = 1.6 if many else 2.5
                t.target(f"int8 exact >= {least:g}x faster than float32 ({int8:.2f}x)", int8 >= least)
                if not many and t.has("faiss  IndexFlatIP.search"):
                    over_faiss = t.ratio("faiss  IndexFlatIP.search", "Candidates int8, exact=True")[0]
                    t.target(f"int8 exact >= 2.5x faster than FAISS ({over_faiss:.2f}x)", over_faiss >= 2.5)
                for dtype in [d for d in sets if d != "int8" and not many]:
                    faster = t.ratio("Candidates float32", f"Candidates {dtype}, exact=True")[0]
                    t.target(f"{dtype} exact >= 1.6x faster than float32 ({faster:.2f}x)", faster >= 1.6)
            elif kind in ("decaying", "decaying, rotated", "campaign") and not many and panorama is not None:
                over_pano = t.ratio(panorama.name, "Candidates int8, exact=True")[0]
                t.target(f"int8 exact >= 2x faster than Panorama (issue 26; {over_pano:.2f}x)", over_pano >= 2)
            t.notes.append("identical: ids and scores bit for bit those of the float32 set (checked in this run); re-scored: rows the certified scan "
                           "could not rule out, re-scored from the float32 rows"
                           + ("; scan, bytes/row, refined, re-scored: the set's last_scan after this call (refined "
                              "and re-scored: rows in the call)" if scan_columns else ""))
            if source:
                t.notes.append(source)
            tables.append(t)
        ctx.progress.step(f"W9 {kind}")
    return tables


# ---- W10: a live set under a stream of changes ---------------------------------------------
def _live_check(got, want, ids, label):
    """Asserts that a live set's (scores, ids) are bit for bit the frozen set's (scores, rows),
    its rows mapped to the external ids `ids` (ascending): the oracle of docs/design.md."""
    assert np.array_equal(got[0], want[0]), f"W10 {label}: scores differ from the frozen set's"
    assert np.array_equal(got[1], ids[want[1]]), f"W10 {label}: ids differ from the frozen set's, mapped"


def _live_table(title, lives, frozen, ids, u, k, index, repeat, limit, state) -> Table:
    """One W10 query table: each live set (LIVE_SETS key -> set) beside the frozen set of the same
    rows (and FAISS's search when index is given), timed in turns, ratios taken round by round;
    every live answer first checked against the frozen set's, ids mapped (`ids`: the present ids,
    ascending)."""
    fns: dict = {}
    pair = {}  # live row name -> frozen row name
    for (dtype, exact), live in lives.items():
        name = f"{dtype}{', exact' if exact else ''}"
        _live_check(live.topk(u, k), frozen[(dtype, exact)].topk(u, k), ids, f"{name}, {u.ndim}-d users, {state}")
        fns[f"LiveCandidates {name}"] = functools.partial(live.topk, u, k)
        fns[f"Candidates {name} (frozen)"] = functools.partial(frozen[(dtype, exact)].topk, u, k)
        pair[f"LiveCandidates {name}"] = f"Candidates {name} (frozen)"
    if index is not None:
        fns["faiss"] = functools.partial(index.search, np.atleast_2d(u), k)
    rounds = times_in_turns(fns, repeat, {name: _library(name) for name in fns})
    t = Table("W10", title, columns=("x frozen [quartiles]", "faiss / this [quartiles]"))
    for name, frozen_name in pair.items():
        over = paired_ratio(rounds[name], rounds[frozen_name])
        over_faiss = quartiles(paired_ratio(rounds["faiss"], rounds[name])) if index is not None else ""
        t.add(name, rounds[name], (quartiles(over), over_faiss))
        t.add(frozen_name, rounds[frozen_name], ("1.00", ""))
        t.target(f"{name} <= {limit:.2f}x the frozen set ({over[0]:.2f}x)", over[0] <= limit)
    if index is not None:
        t.add("faiss  IndexIDMap2(IndexFlatIP).search", rounds["faiss"], ("", "1.00"))
        name = next(n for n in pair if "float32" in n)  # FAISS's like: float32 rows, a flat scan
        faster = paired_ratio(rounds["faiss"], rounds[name])[0]
        t.target(f"{name} >= 2x faster than FAISS IndexIDMap2 search ({faster:.2f}x)", faster >= 2)
    t.notes.append("x frozen: the live set's time over the frozen set's"
                   + ("; faiss / this: FAISS's time over this one's" if index is not None else ""))
    t.notes.append("frozen: a Candidates built from the present rows in ascending id order; every live answer is its "
                   "answer, ids mapped, scores bit for bit (checked in this run)")
    return t


def _reader_beside_writer(ctx, live, user, k, batches, label) -> Table:
    """W10: one-user top-k latency (median of `calls` calls) with no writer, then while a writer
    thread applies one upsert batch every LIVE_WRITER_PERIOD_S; compact() (untimed) before each
    round, so every round starts from one main store."""
    import threading

    rounds, calls = ctx.rounds_w10_writer
    period = wl.LIVE_WRITER_PERIOD_S
    idle, busy, applied, writing, spans = [], [], [], [], []
    query = functools.partial(live.topk, user, k)
    for _ in range(rounds):
        live.compact()
        idle.append(median_time(query, calls))
        stop = threading.Event()
        seconds: list[float] = []

        def write():
            began = time.perf_counter()
            for i in range(1 << 30):
                start = time.perf_counter()
                live.upsert(*batches[i % len(batches)])
                seconds.append(time.perf_counter() - start)
                if stop.wait(max(0.0, began + (i + 1) * period - time.perf_counter())):
                    break

        writer = threading.Thread(target=write, name="W10 writer")
        started = time.perf_counter()
        writer.start()
        try:
            busy.append(median_time(query, calls))
        finally:
            stop.set()
            writer.join()
        spans.append(time.perf_counter() - started)
        applied.append(len(seconds))
        writing.append(sum(seconds))
    live.compact()
    over = paired_ratio(busy, idle)
    t = Table("W10", f"one-user top-{k} on a live {label} set while a writer thread upserts {wl.LIVE_BATCH:,} rows "
              f"every {period * 1e3:.0f} ms", columns=("x idle [quartiles]",))
    t.add("reader, no writer (median call)", idle, ("1.00",))
    t.add("reader, writer running (median call)", busy, (quartiles(over),))
    t.target(f"reader median while writing <= 1.5x idle ({over[0]:.2f}x)", over[0] <= 1.5)
    batches_per_s = sum(applied) / sum(spans)
    t.notes.append(f"{rounds} rounds of {calls} calls each way, compact() before each round (untimed); x idle: the "
                   f"median while writing over the median without, round by round; the writer applied "
                   f"{batches_per_s:.1f} batches/s ({batches_per_s * wl.LIVE_BATCH / 1e3:,.0f}k rows/s; asked "
                   f"{1 / period:.0f}/s), busy {sum(writing) / sum(spans):.0%} of the time, a batch in "
                   f"{sum(writing) / max(1, sum(applied)) * 1e3:.1f} ms on average; "
                   f"{ctx.threads} query threads on {ctx.cores} cores")
    return t


def _filter_table(frozen, names, ads, user, users, k, repeat) -> Table:
    """W10's filter rows (issue 25): one user with a dense filter as a mask and as ids and with a
    sparse mask, FILTER_USERS users sharing the dense mask, each with a mask of its own in one call,
    and the same as a Python loop of one-user calls; on each frozen set (LIVE_SETS key -> set), timed
    in turns, ratios round by round; the answers checked first."""
    M, N = wl.FILTER_USERS, len(ads)
    users = users[:M]
    f = wl.filters(N)
    float32_key = wl.LIVE_SETS[0]
    # the answers: a filtered call is the top-k of the allowed rows alone, mapped back; the id form
    # answers what the mask form answers; each user of a per-user call what its one-user call does;
    # an exact set what the float32 set does
    got = frozen[float32_key].topk(user, k, allowed=f.dense)
    want = sk.Candidates(ads[f.dense], "float32").topk(user, k)
    assert np.array_equal(got[0], want[0]), "W10 filters: scores differ from those of the allowed rows alone"
    assert np.array_equal(got[1], np.flatnonzero(f.dense)[want[1]]), "W10 filters: ids differ from the allowed rows'"
    del want
    fns: dict = {}
    for key, cands in frozen.items():
        name = names[key]
        for allowed in (f.dense, f.dense_ids):
            each = cands.topk(user, k, allowed=allowed)
            assert all(np.array_equal(a, b) for a, b in zip(each, got)), f"W10 filters, {name}: a one-user answer"
        per_user = cands.topk(users, k, allowed=f.per_user)
        for i in (0, M - 1):
            alone = cands.topk(users[i], k, allowed=f.per_user[i])
            assert all(np.array_equal(a[i], b) for a, b in zip(per_user, alone)), f"W10 filters, {name}: user {i}"
        fns[(name, "one")] = functools.partial(cands.topk, user, k)
        fns[(name, "mask")] = functools.partial(cands.topk, user, k, allowed=f.dense)
        fns[(name, "ids")] = functools.partial(cands.topk, user, k, allowed=f.dense_ids)
        fns[(name, "sparse")] = functools.partial(cands.topk, user, k, allowed=f.sparse)
        fns[(name, "many")] = functools.partial(cands.topk, users, k)
        fns[(name, "shared")] = functools.partial(cands.topk, users, k, allowed=f.dense)
        fns[(name, "own")] = functools.partial(cands.topk, users, k, allowed=f.per_user)
        fns[(name, "loop")] = functools.partial(lambda c: [c.topk(users[i], k, allowed=f.per_user[i]) for i in range(M)],
                                                cands)
    rounds = times_in_turns(fns, repeat)  # all ours: no pauses between them
    dense, sparse = f"{wl.FILTER_DENSE:.0%}", f"{wl.FILTER_SPARSE:.0%}"
    t = Table("W10", f"filters per request (allowed=) on frozen sets of the {N:,} rows, one user and the first {M} "
              f"users, top-{k} (n={wl.DIM})",
              columns=("x unfiltered [quartiles]", "x shared [quartiles]", "loop / this [quartiles]"))

    def ratio(key, a, b):
        return paired_ratio(rounds[(names[key], a)], rounds[(names[key], b)])

    for key in frozen:
        name = names[key]
        over = {form: ratio(key, form, "one") for form in ("mask", "ids", "sparse")}
        over["shared"], over["own"] = ratio(key, "shared", "many"), ratio(key, "own", "many")
        own_shared, loop_own = ratio(key, "own", "shared"), ratio(key, "loop", "own")
        rows = ((f"{name}: one user, unfiltered", "one", ("1.00", "", "")),
                (f"{name}: one user, a {dense} mask", "mask", (quartiles(over["mask"]), "", "")),
                (f"{name}: one user, the {dense} as shuffled int64 ids", "ids", (quartiles(over["ids"]), "", "")),
                (f"{name}: one user, a {sparse} mask", "sparse", (quartiles(over["sparse"]), "", "")),
                (f"{name}: {M} users, unfiltered", "many", ("1.00", "", "")),
                (f"{name}: {M} users sharing the {dense} mask", "shared", (quartiles(over["shared"]), "1.00", "")),
                (f"{name}: {M} users, a {dense} mask each, one call", "own",
                 (quartiles(over["own"]), quartiles(own_shared), quartiles(loop_own))),
                (f"{name}: {M} one-user calls, a mask each (Python loop)", "loop", ("", "", "1.00")))
        for row, form, extras in rows:
            t.add(row, rounds[(name, form)], extras)
        if key != float32_key:
            continue
        for form, what, limit in (("mask", f"a {dense} mask", 1.15), ("ids", f"the {dense} as int64 ids", 1.15),
                                  ("sparse", f"a {sparse} mask", 0.5)):
            t.target(f"{name}, one user, {what} <= {limit:.2f}x the unfiltered call ({over[form][0]:.2f}x)",
                     over[form][0] <= limit)
        t.target(f"{name}, {M} users sharing the {dense} mask <= 1.15x the unfiltered {M}-user call "
                 f"({over['shared'][0]:.2f}x)", over["shared"][0] <= 1.15)
        t.target(f"{name}, {M} users, a {dense} mask each, one call <= 1.5x the shared-filter call "
                 f"({own_shared[0]:.2f}x)", own_shared[0] <= 1.5)
        t.target(f"{name}, {M} users, a {dense} mask each, one call >= 4x faster than {M} one-user calls "
                 f"({loop_own[0]:.2f}x)", loop_own[0] >= 4)
    t.notes.append("x unfiltered: the time over the unfiltered call of the same users, x shared: over the call with "
                   "the shared mask, loop / this: the loop's time over this one's")
    t.notes.append(f"filters: each row allowed at random, a {dense} mask, the same rows as an int64 id array in random "
                   f"order, a {sparse} mask, and {M} masks of {dense} drawn apart; answers checked in this run: a "
                   "filtered call is the top-k of a Candidates of the allowed rows alone, ids mapped back; ids and "
                   "mask the same answer; a user of the one per-user call its one-user call")
    t.notes.append("; ".join(f"{names[key]}: no target: the issue's targets are on float32" for key in frozen
                             if key != float32_key))
    return t


def _chunks(array, size, count):
    return [array[i * size:(i + 1) * size] for i in range(count)]


def w10(ctx) -> list[Table]:
    """W10: a live set (LiveCandidates) under a stream of changes, beside the frozen Candidates of
    the same rows (the oracle: every live answer is checked bit for bit, ids mapped) and FAISS
    IndexIDMap2(IndexFlatIP): queries right after compact() and after 1 % upserted and 1 % removed,
    by value after 10 % of bids changed, the rates of the batches, a reader beside a writer,
    memory, and filters per request (allowed=) on the frozen sets."""
    faiss = ctx.peers.faiss
    if faiss is None:
        return _w10(ctx, None)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(ctx.threads)  # FAISS on as many threads as ours
    try:
        return _w10(ctx, faiss)
    finally:
        faiss.omp_set_num_threads(before)


def _w10(ctx, faiss) -> list[Table]:
    Live = sk.LiveCandidates
    n, N, k, M, B = wl.DIM, ctx.n_cands, wl.TOP_K, wl.USERS, wl.LIVE_BATCH
    one, many = ctx.repeat_w10
    ads, user = wl.one_user(N)
    users = wl.many_users(N)[1]
    ids = wl.live_ids(N)
    who = (("one user", user, one), (f"{M} users", users, many))
    names = {(dtype, exact): f"{dtype}{', exact' if exact else ''}" for dtype, exact in wl.LIVE_SETS}
    lives = {key: Live.from_arrays(ids, ads, dtype=key[0], exact=key[1]) for key in wl.LIVE_SETS}
    for live in lives.values():
        live.compact()
    frozen = {key: sk.Candidates(ads, key[0], exact=key[1]) for key in wl.LIVE_SETS}
    index = None
    if faiss is not None:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(n))
        index.add_with_ids(ads, ids)
    tables = []

    # (1) right after compact(), with FAISS's search in the same turns; (7) memory
    memory = []
    for key, live in lives.items():
        floor = frozen[key].nbytes + 24 * N
        memory.append((f"{names[key]}: live {live.nbytes / 2**20:,.1f} MiB, frozen {frozen[key].nbytes / 2**20:,.1f} "
                       f"MiB + 24 B/row = {floor / 2**20:,.1f} MiB ({(live.nbytes - frozen[key].nbytes) / N:.1f} "
                       f"B/row over the frozen set)", live.nbytes <= floor))
    for label, u, repeat in who:
        t = _live_table(f"live sets right after compact(), {label} x {N:,}, top-{k} (n={n})", lives, frozen, ids, u,
                        k, index, repeat, 1.05, "after compact()")
        if label == "one user":
            for text, ok in memory:
                t.target(f"memory after compact() <= frozen nbytes + 24 B/row: {text}", ok)
        tables.append(t)
    ctx.progress.step("W10 after compact()")

    # (8) filters per request (issue 25), on the frozen sets of these rows
    tables.append(_filter_table(frozen, names, ads, user, users, k, one))
    ctx.progress.step("W10 filters")

    # (2) 1 % upserted (half replacing present ids, half new) and 1 % removed since compact()
    changed = max(2, int(wl.LIVE_CHANGED * N))
    changes = wl.live_changes(ids, changed, changed, seed=22)
    for live in lives.values():
        live.upsert(changes.upsert_ids, changes.upsert_rows)
        live.remove(changes.remove_ids)
    if index is not None:  # FAISS the same way: a replaced id is removed, then added
        index.remove_ids(np.concatenate([changes.upsert_ids, changes.remove_ids]))
        index.add_with_ids(changes.upsert_rows, changes.upsert_ids)
    now_ids, now_ads = wl.live_present(ids, ads, changes)
    assert np.array_equal(lives[wl.LIVE_SETS[0]].ids(), now_ids), "W10: the live set's ids after the changes"
    del frozen
    frozen = {key: sk.Candidates(now_ads, key[0], exact=key[1]) for key in wl.LIVE_SETS}
    for label, u, repeat in who:
        tables.append(_live_table(f"live sets with {changed:,} rows upserted ({changed // 2:,} replaced, "
                                  f"{changed - changed // 2:,} new) and {changed:,} removed since compact(), {label} "
                                  f"x {len(now_ids):,}, top-{k}", lives, frozen, now_ids, u, k, None, repeat, 1.25,
                                  "after changes"))
    del frozen
    ctx.progress.step("W10 after changes")

    # (5) a reader beside a writer (replacing present ids: the set keeps its size)
    rng = np.random.default_rng(23)
    writer_batches = [(np.sort(rng.choice(now_ids, B, replace=False)), rng.standard_normal((B, n), dtype=np.float32))
                      for _ in range(4)]
    float32_key = wl.LIVE_SETS[0]
    tables.append(_reader_beside_writer(ctx, lives[float32_key], user, k, writer_batches, names[float32_key]))
    ctx.progress.step("W10 reader beside a writer")

    # (3) by value after 10 % of bids changed, beside a frozen set built with the new bids and NumPy
    objectives, bids, _ = wl.objectives_and_bids(N)
    om = wl.objective_metrics(n)
    by_value = Live.from_arrays(ids, ads, dtype="float32", objectives=objectives, bids=bids)
    by_value.compact()
    moved, values, new_bids = wl.live_new_bids(ids, bids, wl.LIVE_BIDS_CHANGED)
    for i in range(0, len(moved), B):
        by_value.set_bids(moved[i:i + B], values[i:i + B])
    value_frozen = sk.Candidates(ads, "float32", objectives=objectives, bids=new_bids)
    _live_check(by_value.topk(user, k, om), value_frozen.topk(user, k, om), ids, "by value after set_bids")
    peer = wl.NumpyObjectives(ads, objectives, new_bids, om)
    fns: dict = {"live": functools.partial(by_value.topk, user, k, om), "frozen": functools.partial(value_frozen.topk, user, k, om),
           "numpy": functools.partial(peer.topk, user, k), "numpy in place": functools.partial(peer.topk_in_place, user, k)}
    rounds = times_in_turns(fns, one, {name: _library(name) for name in fns})
    times = medians(rounds)
    best = min(("numpy", "numpy in place"), key=lambda name: times[name])
    over, faster = paired_ratio(rounds["live"], rounds["frozen"]), paired_ratio(rounds[best], rounds["live"])
    t = Table("W10", f"by value after {len(moved):,} bids changed ({wl.LIVE_BIDS_CHANGED:.0%}, set_bids in batches of "
              f"{B:,}), one user x {N:,}, {len(om)} objectives, top-{k} (float32)",
              columns=("x frozen [quartiles]", "numpy / this [quartiles]"))
    t.add("LiveCandidates float32, objectives", rounds["live"], (quartiles(over), quartiles(faster)))
    t.add("Candidates float32, objectives (frozen, new bids)", rounds["frozen"], ("1.00", ""))
    t.add("numpy  grouped matvecs+sigmoid+argpartition", rounds["numpy"])
    t.add("numpy  same, in place", rounds["numpy in place"])
    t.target(f"<= 1.5x a frozen set built with the new bids ({over[0]:.2f}x)", over[0] <= 1.5)
    t.target(f">= 10x faster than the best NumPy expression ({best}: {faster[0]:.2f}x)", faster[0] >= 10)
    t.notes.append(f"changed bids drawn anew from lognormal(0, {wl.BID_SIGMA:g}); no compact() after them; "
                   "identical answers to the frozen set's (checked)")
    tables.append(t)
    del value_frozen, peer
    ctx.progress.step("W10 by value")

    # (4) the rates of the batches, and (6) remove against FAISS remove_ids, in turns
    repeat = ctx.repeat_w10_rates
    stream = wl.live_changes(now_ids, B * (repeat + 1), B * (repeat + 1), seed=24)
    half = B // 2
    replaced, new = stream.upsert_ids[:len(stream.upsert_ids) // 2], stream.upsert_ids[len(stream.upsert_ids) // 2:]
    rows_replaced, rows_new = stream.upsert_rows[:len(replaced)], stream.upsert_rows[len(replaced):]
    upserts = [(np.concatenate([a, b]), np.concatenate([ra, rb])) for a, b, ra, rb in
               zip(_chunks(replaced, half, repeat + 1), _chunks(new, B - half, repeat + 1),
                   _chunks(rows_replaced, half, repeat + 1), _chunks(rows_new, B - half, repeat + 1))]
    removes = iter(_chunks(stream.remove_ids, B, repeat + 1))
    small = iter(_chunks(np.setdiff1d(now_ids, np.concatenate([stream.upsert_ids, stream.remove_ids]))[::7],
                         wl.LIVE_FAISS_REMOVE, repeat + 1))
    small_faiss = iter(_chunks(np.setdiff1d(now_ids, np.concatenate([stream.upsert_ids, stream.remove_ids]))[3::7],
                               wl.LIVE_FAISS_REMOVE, repeat + 1))
    rng = np.random.default_rng(25)
    bid_batches = iter([(np.sort(rng.choice(ids, B, replace=False)), rng.lognormal(0.0, wl.BID_SIGMA, B).astype(np.float32))
                        for _ in range(repeat + 1)])
    float32_live, int8_live = lives[wl.LIVE_SETS[0]], lives[wl.LIVE_SETS[1]]
    f32_batches, i8_batches = iter(upserts), iter(upserts)
    removed_small = []
    fns = {"set_bids": lambda: by_value.set_bids(*next(bid_batches)),
           "remove": lambda: float32_live.remove(next(removes)),
           "upsert float32": lambda: float32_live.upsert(*next(f32_batches)),
           "upsert int8 exact": lambda: int8_live.upsert(*next(i8_batches)),
           "remove small": lambda: removed_small.append(int8_live.remove(next(small)))}
    if index is not None:
        fns["faiss remove_ids"] = lambda: index.remove_ids(next(small_faiss))
    rounds = times_in_turns(fns, repeat, {name: _library(name) for name in fns})
    assert all(r == wl.LIVE_FAISS_REMOVE for r in removed_small), "W10: remove() did not find every present id"
    t = Table("W10", f"batches on live sets of {N:,} rows: the rates", columns=("per second [quartiles]",))
    rates = {}
    for name, what, size, unit, least in (("set_bids", "set_bids, float32 with objectives", B, "ids", 2e6),
                                          ("remove", "remove, float32", B, "ids", 1e6),
                                          ("upsert float32", "upsert, float32", B, "rows", 3e5),
                                          ("upsert int8 exact", "upsert, int8 exact", B, "rows", 1e5)):
        rates[name] = paired_ratio([size] * repeat, rounds[name])  # size over each round's seconds
        t.add(f"{what}: {size:,} {unit}", rounds[name], (_rate(rates[name]),))
        t.target(f"{what} >= {_rate((least,) * 3).split()[0]} {unit}/s ({_rate(rates[name]).split()[0]})",
                 rates[name][0] >= least)
    t.add(f"remove, int8 exact: {wl.LIVE_FAISS_REMOVE:,} ids", rounds["remove small"],
          (_rate(paired_ratio([wl.LIVE_FAISS_REMOVE] * repeat, rounds["remove small"])),))
    if index is not None:
        t.add(f"faiss  IndexIDMap2.remove_ids: {wl.LIVE_FAISS_REMOVE:,} ids", rounds["faiss remove_ids"],
              (_rate(paired_ratio([wl.LIVE_FAISS_REMOVE] * repeat, rounds["faiss remove_ids"])),))
        faster = paired_ratio(rounds["faiss remove_ids"], rounds["remove small"])
        t.target(f"removing {wl.LIVE_FAISS_REMOVE:,} ids >= 100x faster than FAISS remove_ids ({quartiles(faster)}x)",
                 faster[0] >= 100)
    t.notes.append(f"one batch per round, {repeat} rounds timed in turns (after one untimed batch each); upserts: half "
                   f"replace present ids, half add new ones; every id a batch names is present (rates of real work); "
                   f"FAISS removes from an IndexIDMap2 of the same {len(now_ids):,} rows, int64 id array, "
                   f"{ctx.threads} OpenMP threads")
    tables.append(t)
    ctx.progress.step("W10 rates")
    return tables


def _rate(ratio: tuple[float, float, float]) -> str:
    def short(x):
        return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" if x >= 1e4 else f"{x / 1e3:.2f}k"
    median, q1, q3 = ratio
    return f"{short(median)} [{short(q1)}, {short(q3)}]"




class Context:
    """What a run's workloads share: sizes and rounds (the default run's, --full's or --quick's),
    threads, the peers and the progress bar."""

    def __init__(self, full: bool, quick: bool, progress: Progress, facts: dict):
        self.full, self.quick = full, quick
        self.progress = progress
        self.threads = facts["threads"]
        self.cores = facts["cores"]
        self.n_cands = wl.QUICK_CANDIDATES if quick else wl.CANDIDATES
        self.n_pairs = wl.QUICK_PAIRS if quick else wl.PAIRS
        self.w7_bytes = wl.QUICK_W7_BYTES if quick else wl.W7_BYTES
        # rounds in turns: one-user tables (a few ms a call), 128-user tables (0.1-2 s a call), W7 at
        # each n, W9 (one user, many users)
        self.repeat = 3 if quick else 9
        self.repeat_slow = 3 if quick else 5 if full else 3
        self.repeat_w7 = 3 if quick else 9 if full else 5
        self.repeat_w9 = (3, 3) if quick else (15, 9) if full else (9, 3)
        # W10, kept short (about a minute on 2 cores at full size: FAISS's 128-user search alone takes
        # 1.8 s a call there): rounds in turns for one user and for many users; batches timed per
        # rate (after one untimed); rounds and calls per median of the reader beside a writer
        self.repeat_w10 = (3, 3) if quick else (5, 3)
        self.repeat_w10_rates = 3 if quick else 5
        self.rounds_w10_writer = (2, 5) if quick else (3, 21)
        self.peers = Peers()


RUNNERS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "W7": w7, "W8": w8, "W9": w9, "W10": w10}
# W7 steps the progress bar once per n, W9 once per kind of rows, W10 once per part
STEPS = {"W7": len(wl.W7_DIMS), "W9": len(wl.W9_DATA), "W10": 6}


def selection(workloads, full: bool, plot_path=None) -> list[str]:
    """The workloads a run measures: those named, else every one with full, else DEFAULT_WORKLOADS;
    a ValueError for an unknown name, names with full, or a plot without W7."""
    if workloads and full:
        raise ValueError("--full runs every workload: give --full or --workload, not both")
    chosen = [w.upper() for w in workloads or (WORKLOADS if full else DEFAULT_WORKLOADS)]
    unknown = [w for w in chosen if w not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown} (known: {', '.join(WORKLOADS)})")
    if plot_path and "W7" not in chosen:
        raise ValueError("--plot needs workload W7")
    return chosen


def run(workloads=None, full=False, quick=False, json_path=None, plot_path=None, show_progress=True, out=sys.stdout):
    """Runs `workloads` (default: DEFAULT_WORKLOADS, or every workload with full=True) and prints
    each table to `out` as soon as it is measured."""
    started = time.perf_counter()
    workloads = selection(workloads, full, plot_path)
    if sk.info()["isa_active"] is None:  # the compiled kernels did not load
        raise RuntimeError(f"the compiled kernels are not available: {sk.backends()['simd']['reason']}")
    progress = Progress(1 + sum(STEPS.get(w, 1) for w in workloads), show_progress)
    facts = machine_facts(quick)
    progress.step("floors: read bandwidth, sgemm")
    ctx = Context(full, quick, progress, facts)
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['num_threads']} threads)"
                     for b in facts["blas"]) or "unknown"
    scope = "--quick sizes" if quick else "--full rounds" if full else "the default run's rounds"
    print(f"CPU: {facts['cpu']} | {facts['threads']} threads | ISA {facts['isa']} | BLAS: {blas}", file=out)
    print(f"floors: read bandwidth {facts['read_bandwidth_GBps']:.1f} GB/s, sgemm {facts['sgemm_GFLOPs']:.0f} GFLOP/s "
          f"| {scope} | workloads {', '.join(workloads)}", file=out, flush=True)
    tables = []
    for w in workloads:
        result = RUNNERS[w](ctx)
        for table in result if isinstance(result, list) else [result]:
            tables.append(table)
            print("\n" + table.render(), file=out, flush=True)
        if w not in STEPS:
            progress.step(w)
    seconds = time.perf_counter() - started
    print(f"\nthe run took {seconds:.0f} s", file=out, flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"machine": facts, "quick": quick, "full": full, "workloads": workloads, "seconds": seconds,
                       "tables": [t.as_dict() for t in tables]}, f, indent=2)
    if plot_path:
        plot_w7(next(t for t in tables if t.workload == "W7"), plot_path)
    return tables
