"""The benchmark driver behind `splitnet-kernels bench`: workloads W1-W10 of docs/design.md.

Every table is measured in one run, side by side: our kernels, the other backends, and what a
user would pick instead (NumPy/BLAS, PyTorch, FAISS, Numba), each as a median time, its ratio to
ours, and ours against the physical floor this run measures itself: bytes over the measured
read bandwidth, flops over the measured sgemm rate. Ratios, not absolute times, are the result.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import numpy as np

import splitnet_kernels as sk

from .._progress import Progress
from . import workloads as wl
from .report import Table, plot_w7
from .timing import (floor_and_rounds, floor_beside, machine_facts, median_time, median_times_in_turns, medians,
                     paired_ratio, times_in_turns)

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10")


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


# ---- workloads ------------------------------------------------------------------------------
def w1(ctx) -> Table:
    n, N = wl.DIM, ctx.n_cands
    ads, user = wl.one_user(N)
    out = np.empty(N, np.float32)
    floor, ours = ctx.floor_beside({"ours": lambda: sk.score(user, ads, out=out)}, ads, extra_bytes=N * 4)
    t = Table("W1", f"one user x {N:,} candidates, all scores (n={n})", floor,
              "reading the candidates once, timed in turns with ours, + writing the scores")
    t.add("splitnet_kernels simd", ours["ours"])
    t.add("numpy  A @ u", median_time(lambda: ads @ user, ctx.repeat))
    if ctx.peers.torch is not None:
        ta, tu = ctx.peers.torch.from_numpy(ads), ctx.peers.torch.from_numpy(user)
        t.add("torch  A @ u", median_time(lambda: ta @ tu, ctx.repeat))
    if ctx.peers.numba_ok:
        t.add("splitnet_kernels numba", median_time(lambda: sk.score(user, ads, backend="numba"), ctx.repeat))
    t.add("splitnet_kernels numpy (float64 reference)", median_time(lambda: sk.score(user, ads, backend="numpy"), 1))
    ours = t.rows[0][1]
    t.target(">= 0.90 x the read-bandwidth floor", floor / ours >= 0.90)
    t.target("not slower than numpy A @ u", ours <= t.seconds_of("numpy  A @ u"))
    return t


def w2(ctx) -> Table:
    N, k = ctx.n_cands, wl.TOP_K
    ads, user = wl.one_user(N)
    floor, ours = ctx.floor_beside({"ours": lambda: sk.topk(user, ads, k)}, ads)
    t = Table("W2", f"one user x {N:,} candidates, top-{k}", floor, "reading the candidates once, timed in turns with ours")
    t.add("splitnet_kernels simd", ours["ours"])
    t.add("numpy  A @ u + argpartition", median_time(lambda: wl.numpy_topk(ads @ user, k), ctx.repeat))
    if ctx.peers.faiss is not None:
        index = ctx.peers.faiss_index(ads)
        t.add("faiss  IndexFlatIP.search", median_time(lambda: index.search(user[None], k), ctx.repeat))
    if ctx.peers.torch is not None:
        torch = ctx.peers.torch
        ta, tu = torch.from_numpy(ads), torch.from_numpy(user)
        t.add("torch  topk(A @ u)", median_time(lambda: torch.topk(ta @ tu, k), ctx.repeat))
    if ctx.peers.numba_ok:
        t.add("splitnet_kernels numba", median_time(lambda: sk.topk(user, ads, k, backend="numba"), ctx.repeat))
    ours = t.rows[0][1]
    faiss = t.time_of("faiss  IndexFlatIP.search")  # None without faiss
    if faiss:
        t.target(">= 2x faster than FAISS IndexFlatIP.search", faiss >= 2 * ours)
    t.target(">= 1.2x faster than A @ u + argpartition", t.seconds_of("numpy  A @ u + argpartition") >= 1.2 * ours)
    return t


def w3(ctx) -> list[Table]:
    N, k = ctx.n_cands, wl.TOP_K
    ads, user = wl.one_user(N)
    _, exact = sk.topk(user, ads, k)
    sets = {dtype: sk.Candidates(ads, dtype=dtype) for dtype in wl.DTYPES}
    floor, times = ctx.floor_beside({dtype: functools.partial(cands.topk, user, k) for dtype, cands in sets.items()}, ads)
    t = Table("W3", f"W2 with reduced-precision candidates (one user x {N:,}, top-{k})", floor,
              "reading the float32 candidates once, timed in turns with the sets")
    for dtype, cands in sets.items():
        t.add(f"Candidates {dtype}", times[dtype])
        recall = len(np.intersect1d(cands.topk(user, k)[1], exact)) / k
        t.notes.append(f"{dtype}: {cands.nbytes / 2**20:.0f} MiB, recall@{k} {recall:.3f}")
        if dtype == "int8":
            t.target(f"int8 >= 3x faster than float32 ({times['float32'] / times[dtype]:.2f}x), recall >= 0.95 ({recall:.3f})",
                     times["float32"] >= 3 * times[dtype] and recall >= 0.95)
        elif dtype != "float32":
            t.target(f"{dtype} >= 1.7x faster than float32 ({times['float32'] / times[dtype]:.2f}x), recall >= 0.99 "
                     f"({recall:.3f})", times["float32"] >= 1.7 * times[dtype] and recall >= 0.99)
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

    t = Table("W3", f"serving: {calls} top-100 calls (1 user x 100,000 bfloat16, threads=1 each) from Python threads",
              None, "")
    one = median_time(lambda: work(calls), 3)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        two = median_time(lambda: list(pool.map(work, [calls // 2, calls - calls // 2])), 3)
    t.add("1 Python thread", one)
    t.add("2 Python threads", two)
    t.target(f"2 threads >= 1.6x the throughput of 1 ({one / two:.2f}x)", one >= 1.6 * two)
    return t


def w4(ctx) -> list[Table]:
    n, N, M, k = wl.DIM, ctx.n_cands, wl.USERS, wl.TOP_K
    ads, users = wl.many_users(N)
    floor = 2 * M * N * n / ctx.gemm_flops
    t = Table("W4", f"{M} users x {N:,} candidates, top-{k} each", floor, "flops over measured sgemm rate")
    t.add("splitnet_kernels simd", median_time(lambda: sk.topk(users, ads, k), ctx.repeat_slow))
    t.add("numpy  U @ A.T (scores only)", median_time(lambda: users @ ads.T, ctx.repeat_slow))
    if ctx.peers.faiss is not None:
        index = ctx.peers.faiss_index(ads)
        t.add("faiss  IndexFlatIP.search", median_time(lambda: index.search(users, k), ctx.repeat_slow))
    if ctx.peers.torch is not None:
        torch = ctx.peers.torch
        tu, ta = torch.from_numpy(users), torch.from_numpy(ads)
        t.add("torch  topk(U @ A.T)", median_time(lambda: torch.topk(tu @ ta.T, k, dim=1), ctx.repeat_slow))
    if ctx.peers.numba_ok:
        t.add("splitnet_kernels numba", median_time(lambda: sk.topk(users, ads, k, backend="numba"), ctx.repeat_slow))
    ours = t.rows[0][1]
    faiss = t.time_of("faiss  IndexFlatIP.search")  # None without faiss
    if faiss:
        t.target(">= 10x faster than FAISS", faiss >= 10 * ours)
    t.target("<= 1.2x the time of numpy U @ A.T alone", ours <= 1.2 * t.seconds_of("numpy  U @ A.T (scores only)"))
    return [t, _many_users_on_candidates(ctx, ads, users, k, floor)]


def _many_users_on_candidates(ctx, ads, users, k, floor) -> Table:
    """W4 on prepared sets: each storage type read once for all users (int8 on its own tile)."""
    t = Table("W4", f"W4 on prepared candidate sets ({users.shape[0]} users x {ads.shape[0]:,}, top-{k} each)", floor,
              "float32 flops over measured sgemm rate")
    _, exact = sk.topk(users, ads, k)
    for dtype in wl.DTYPES:
        cands = sk.Candidates(ads, dtype=dtype)
        t.add(f"Candidates {dtype}", median_time(lambda: cands.topk(users, k), ctx.repeat_slow))
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
        stream_floor, ours = ctx.floor_beside({"ours": lambda: sk.score(users, ads, metric, pairwise=True, out=out)},
                                              users, ads, extra_bytes=B * 4)
        if kind == "full":
            floor = max(2 * B * n * n / ctx.gemm_flops, stream_floor)
            note = "max(flops over sgemm rate, bytes over read bandwidth)"
        else:
            floor, note = stream_floor, "reading both inputs once, timed in turns with ours, + writing the scores"
        t = Table("W5", f"{B:,} (user, ad) pairs, {kind} (n={n})", floor, note)
        t.add("splitnet_kernels simd", ours["ours"])
        if kind == "dot":
            numpy_ways = {"numpy  einsum('ij,ij->i')": lambda: np.einsum("ij,ij->i", users, ads),
                          "numpy  (U * A).sum(1)": lambda: (users * ads).sum(1)}
        elif kind == "diagonal":
            numpy_ways = {"numpy  einsum('ij,j,ij->i')": lambda: np.einsum("ij,j,ij->i", users, s, ads),
                          "numpy  ((U * s) * A).sum(1)": lambda: ((users * s) * ads).sum(1)}
        else:
            numpy_ways = {"numpy  einsum('ij,ij->i', U @ S, A)": lambda: np.einsum("ij,ij->i", users @ S, ads),
                          "numpy  ((U @ S) * A).sum(1)": lambda: ((users @ S) * ads).sum(1)}
        numpy_times = {name: median_time(fn, ctx.repeat) for name, fn in numpy_ways.items()}
        for name, seconds in numpy_times.items():
            t.add(name, seconds)
        if torch is not None:
            tu, ta = torch.from_numpy(users), torch.from_numpy(ads)
            factor = {"dot": None, "diagonal": torch.from_numpy(s), "full": torch.from_numpy(S)}[kind]
            if kind == "full":
                fn = lambda: ((tu @ factor) * ta).sum(1)  # noqa: E731
            elif kind == "diagonal":
                fn = lambda: (tu * factor * ta).sum(1)  # noqa: E731
            else:
                fn = lambda: (tu * ta).sum(1)  # noqa: E731
            t.add("torch  expression", median_time(fn, ctx.repeat))
        if ctx.peers.numba_ok:
            t.add("splitnet_kernels numba",
                  median_time(lambda: sk.score(users, ads, metric, pairwise=True, backend="numba"), ctx.repeat))
        ours = t.rows[0][1]
        best_numpy = min(numpy_times.values())
        if kind == "full":
            t.target(">= 2x faster than the best NumPy expression", best_numpy >= 2 * ours)
        else:
            t.target(">= 0.85 x the read-bandwidth floor", floor / ours >= 0.85)
        tables.append(t)
    return tables


def w6(ctx) -> Table:
    N, k = wl.REQUEST_CANDIDATES, wl.REQUEST_K
    ads, user = wl.one_request()
    t = Table("W6", f"one user x {N:,} candidates, top-{k}: latency of one Python call", None, "")
    fast = 0.2 if not ctx.quick else 0.05
    t.add("splitnet_kernels sk.topk", median_time(lambda: sk.topk(user, ads, k), ctx.repeat, fast))
    t.add("numpy  A @ u + argpartition", median_time(lambda: wl.numpy_topk(ads @ user, k), ctx.repeat, fast))
    if ctx.peers.faiss is not None:
        index = ctx.peers.faiss_index(ads)
        query = user[None]
        t.add("faiss  IndexFlatIP.search", median_time(lambda: index.search(query, k), ctx.repeat, fast))
    if ctx.peers.torch is not None:
        torch = ctx.peers.torch
        ta, tu = torch.from_numpy(ads), torch.from_numpy(user)
        t.add("torch  topk(A @ u)", median_time(lambda: torch.topk(ta @ tu, k), ctx.repeat, fast))
    ours = t.rows[0][1]
    t.target(">= 2x faster than A @ u + argpartition", t.seconds_of("numpy  A @ u + argpartition") >= 2 * ours)
    faiss = t.time_of("faiss  IndexFlatIP.search")  # None without faiss
    if faiss:
        t.target(">= 3x faster than FAISS", faiss >= 3 * ours)
    return t


def w7(ctx) -> Table:
    dims = wl.W7_DIMS
    budget = ctx.w7_bytes
    t = Table("W7", "cost per candidate (ns) against n, folded (one user vs many) vs per pair", None, "")
    rng = np.random.default_rng(9)
    grid: dict[tuple[int, str], tuple[float, float]] = {}
    for n in dims:
        N = wl.w7_rows(n, budget)
        ads, users = wl.w7_data(N, n)
        out = np.empty(N, np.float32)
        sk.score(users, ads, pairwise=True, out=out)  # touch every page before timing
        metrics = wl.metrics_for(n, rng)
        time.sleep(0.2)  # lets the idle BLAS threads of the peers measured before stop spinning first
        folded = median_times_in_turns({kind: functools.partial(sk.score, users[0], ads, m, out=out)
                                        for kind, m in metrics.items()}, 2 * ctx.repeat_w7)
        for kind, m in metrics.items():
            grid[(n, kind)] = (folded[kind] / N, median_time(lambda: sk.score(users, ads, m, pairwise=True, out=out),
                                                             ctx.repeat_w7) / N)
        ctx.progress.step(f"W7 n={n}")
    kinds = list(wl.metrics_for(16, rng))
    header = "  n    " + "".join(f"{k + ' fold':>14s}{k + ' pair':>14s}" for k in kinds)
    lines = [header] + ["  " + f"{n:<5d}" + "".join(f"{grid[(n, k)][0] * 1e9:14.3f}{grid[(n, k)][1] * 1e9:14.3f}"
                                                  for k in kinds) for n in dims]
    t.notes.append("table (ns per candidate):\n" + "\n".join(lines))
    t.grid = grid
    worst = max(grid[(n, "full")][0] / grid[(n, "dot")][0] for n in dims)
    t.target(f"folded full within 1.1x of dot at every n (worst {worst:.2f}x)", worst <= 1.1)
    ratio = {n: grid[(n, "full")][1] / grid[(n, "full")][0] for n in dims}  # per pair over folded
    growth = ratio[512] / ratio[64]
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

    # one user: every set, the NumPy expressions and W2 timed in turns with the float32 read floor
    fns: dict = {key: functools.partial(cands.topk, user, k, om) for key, cands in sets.items()}
    for b, peer in peers.items():
        fns[("numpy", b)] = functools.partial(peer.topk, user, k)
        fns[("numpy in place", b)] = functools.partial(peer.topk_in_place, user, k)
    fns["W2"] = lambda: sk.topk(user, ads, k, single)
    floor, times = ctx.floor_beside(fns, ads)
    numpy_best = {b: min(times[("numpy", b)], times[("numpy in place", b)]) for b in bid_sets}
    w2_time = times["W2"]

    results = {key: cands.topk(user, k, om) for key, cands in sets.items()}
    skips = {key: _skipped(cands, functools.partial(cands.topk, user, k, om)) for key, cands in sets.items()}
    for b in bid_sets:
        _check_exact(sets[("float32", b)], user, om, k, results[("float32", b)][1], results[("float32", b)][0],
                     f"float32 {b} bids")
    t = Table("W8", f"one user x {N:,} candidates, {len(om)} objectives, top-{k} by value = bid x p (n={n})", floor,
              "reading the float32 candidates once, timed in turns with ours")
    t.add("Candidates float32, lognormal bids", times[("float32", "lognormal")])
    t.add("Candidates float32, unit bids", times[("float32", "unit")])
    for b in bid_sets:
        t.add(f"numpy  grouped matvecs+sigmoid+argpartition ({b})", times[("numpy", b)])
        t.add(f"numpy  same, in place ({b})", times[("numpy in place", b)])
    t.add("W2  sk.topk(user, ads, k, metric), same rows", w2_time)
    ours, ours_unit = times[("float32", "lognormal")], times[("float32", "unit")]
    t.target(f"lognormal bids >= 3x faster than the best NumPy expression ({numpy_best['lognormal'] / ours:.2f}x)",
             numpy_best["lognormal"] >= 3 * ours)
    t.target(f"lognormal bids within 1.25x of W2 ({ours / w2_time:.2f}x W2)", ours <= 1.25 * w2_time)
    t.target(f"unit bids >= 1.4x faster than the best NumPy expression ({numpy_best['unit'] / ours_unit:.2f}x)",
             numpy_best["unit"] >= 1.4 * ours_unit)
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

    # every storage type
    s = Table("W8", f"W8 on every storage type (one user x {N:,}, top-{k} by value)", floor,
              "reading the float32 candidates once, timed in turns with the sets",
              columns=("x numpy", "x W2", "skipped", "recall"))
    for dtype in wl.DTYPES:
        for b in bid_sets:
            key = (dtype, b)
            recall = len(np.intersect1d(results[key][1], results[("float32", b)][1])) / k
            s.add(f"Candidates {dtype}, {b} bids", times[key],
                  (f"{numpy_best[b] / times[key]:.2f}", f"{times[key] / w2_time:.2f}", f"{skips[key][0]:.1%}",
                   f"{recall:.3f}"))
    s.add("numpy  best expression, lognormal bids", numpy_best["lognormal"])
    s.add("numpy  best expression, unit bids", numpy_best["unit"])
    s.add("W2  sk.topk(user, ads, k, metric), same rows", w2_time)
    s.notes.append("x numpy: the best NumPy expression (same bids) over ours; x W2: ours over W2; skipped: the "
                   "candidate bytes the scan did not read; recall: against the float32 set's top-k (same bids)")
    return [t, s, _w8_many_users(ctx, ads, users, objectives, bid_sets, om, k, sets)]


def _w8_many_users(ctx, ads, users, objectives, bid_sets, om, k, sets) -> Table:
    M, N = users.shape[0], ads.shape[0]
    floor = 2 * M * N * ads.shape[1] / ctx.gemm_flops
    fns: dict = {b: functools.partial(sets[("float32", b)].topk, users, k, om) for b in bid_sets}
    fns["W4"] = lambda: sk.topk(users, ads, k)
    times = median_times_in_turns(fns, ctx.repeat_slow)
    t = Table("W8", f"{M} users x {N:,} candidates, {len(om)} objectives, top-{k} by value each (float32)", floor,
              "flops over measured sgemm rate")
    t.add("Candidates float32, lognormal bids", times["lognormal"])
    t.add("Candidates float32, unit bids", times["unit"])
    t.add("W4  sk.topk(users, ads, k), same rows", times["W4"])
    t.target(f"lognormal bids within 1.3x of W4 ({times['lognormal'] / times['W4']:.2f}x W4)",
             times["lognormal"] <= 1.3 * times["W4"])
    cands = sets[("float32", "lognormal")]
    values, _ = cands.topk(users, k, om)
    kth = float(values[:, -1].min())
    must = _must_read(objectives, bid_sets["lognormal"], kth, len(om))
    t.notes.append(_scan_note("lognormal bids", _skipped(cands, fns["lognormal"]), N, cands._store.nbytes, must, kth, k,
                              "lowest (over users)"))
    t.notes.append(_scan_note("unit bids", _skipped(sets[("float32", "unit")], fns["unit"]), N, cands._store.nbytes))
    return t


def w9(ctx) -> list[Table]:
    """W2 and W4 on exact sets, beside the float32 set and FAISS, on three kinds of rows; every
    exact result is checked bit for bit against the float32 set's."""
    N, k = ctx.n_cands, wl.TOP_K
    tables = []
    for kind in wl.W9_DATA:
        try:
            ads, user, users, source = wl.w9_data(kind, N)  # campaign: a trained model's ads and its users
        except wl.NeedsTorch as missing:
            skipped = Table("W9", f"exact sets, {N:,} {kind} candidates: skipped", None, "")
            skipped.notes.append(str(missing))
            tables.append(skipped)
            continue
        plain = sk.Candidates(ads, "float32")
        sets = {dtype: sk.Candidates(ads, dtype, exact=True) for dtype in wl.EXACT_DTYPES}
        index = ctx.peers.faiss_index(ads) if ctx.peers.faiss is not None else None
        for label, who, repeat in (("one user", user, ctx.repeat_w9[0]), (f"{users.shape[0]} users", users, ctx.repeat_w9[1])):
            fns: dict = {"float32": functools.partial(plain.topk, who, k)}
            fns.update({dtype: functools.partial(cands.topk, who, k) for dtype, cands in sets.items()})
            if index is not None:
                fns["faiss"] = functools.partial(index.search, np.atleast_2d(who), k)
            if who.ndim == 1:
                floor, rounds = floor_and_rounds(fns, (ads,), repeat, ctx.threads)
            else:
                floor, rounds = 2 * who.shape[0] * N * wl.DIM / ctx.gemm_flops, times_in_turns(fns, repeat)
            times = medians(rounds)
            faster = {name: paired_ratio(rounds["float32"], r) for name, r in rounds.items()}  # (median, q1, q3)
            t = Table("W9", f"exact sets, {label} x {N:,} {kind} candidates, top-{k}", floor,
                      "reading the float32 candidates once, timed in turns" if who.ndim == 1
                      else "flops over measured sgemm rate", columns=("x float32 [quartiles]", "re-scored", "identical"))
            want = plain.topk(who, k)
            t.add("Candidates float32", times["float32"], ("1.00", "", ""))
            for dtype, cands in sets.items():
                got = cands.topk(who, k)
                same = all(np.array_equal(g, w) for g, w in zip(got, want))
                assert same, f"W9 {kind} {label}: the exact {dtype} set differs from the float32 set"
                rescored = cands.last_rescored / max(1, np.atleast_2d(who).shape[0])
                t.add(f"Candidates {dtype}, exact=True", times[dtype],
                      (_quartiles(faster[dtype]), f"{rescored:,.0f} per user ({rescored / N:.2%})", "yes"))
            if "faiss" in times:
                t.add("faiss  IndexFlatIP.search (float32)", times["faiss"], (_quartiles(faster["faiss"]), "", ""))
            many = who.ndim == 2
            int8 = faster["int8"][0]
            if kind == "gaussian":
                if many:
                    t.target(f"int8 exact >= 1.6x faster than float32 ({int8:.2f}x)", int8 >= 1.6)
                else:
                    t.target(f"int8 exact >= 2.5x faster than float32 ({int8:.2f}x)", int8 >= 2.5)
                    if "faiss" in rounds:
                        over_faiss = paired_ratio(rounds["faiss"], rounds["int8"])[0]
                        t.target(f"int8 exact >= 2.5x faster than FAISS ({over_faiss:.2f}x)", over_faiss >= 2.5)
                    for dtype in ("bfloat16", "float16"):
                        t.target(f"{dtype} exact >= 1.6x faster than float32 ({faster[dtype][0]:.2f}x)",
                                 faster[dtype][0] >= 1.6)
            t.notes.append(f"x float32: the float32 set's time over this one's, round by round in {repeat} rounds "
                           "timed in turns: median [first quartile, third quartile]; the targets read the median")
            t.notes.append("identical: ids and scores bit for bit those of the float32 set (checked in this run); "
                           "re-scored: rows the certified scan could not rule out")
            if source:
                t.notes.append(source)
            tables.append(t)
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
    rounds = times_in_turns(fns, repeat)
    times = medians(rounds)
    t = Table("W10", title, None, "", columns=("x frozen [quartiles]", "faiss / this [quartiles]"))
    for name, frozen_name in pair.items():
        over = paired_ratio(rounds[name], rounds[frozen_name])
        over_faiss = _quartiles(paired_ratio(rounds["faiss"], rounds[name])) if index is not None else ""
        t.add(name, times[name], (_quartiles(over), over_faiss))
        t.add(frozen_name, times[frozen_name], ("1.00", ""))
        t.target(f"{name} <= {limit:.2f}x the frozen set ({over[0]:.2f}x)", over[0] <= limit)
    if index is not None:
        t.add("faiss  IndexIDMap2(IndexFlatIP).search", times["faiss"], ("", "1.00"))
        name = next(n for n in pair if "float32" in n)  # FAISS's like: float32 rows, a flat scan
        faster = paired_ratio(rounds["faiss"], rounds[name])[0]
        t.target(f"{name} >= 2x faster than FAISS IndexIDMap2 search ({faster:.2f}x)", faster >= 2)
    t.notes.append(f"x frozen: the live set's time over the frozen set's, round by round in {repeat} rounds timed in "
                   "turns: median [first quartile, third quartile]"
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
              f"every {period * 1e3:.0f} ms", None, "", columns=("x idle [quartiles]",))
    t.add("reader, no writer (median call)", float(np.median(idle)), ("1.00",))
    t.add("reader, writer running (median call)", float(np.median(busy)), (_quartiles(over),))
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
    rounds = times_in_turns(fns, repeat)
    times = medians(rounds)
    dense, sparse = f"{wl.FILTER_DENSE:.0%}", f"{wl.FILTER_SPARSE:.0%}"
    t = Table("W10", f"filters per request (allowed=) on frozen sets of the {N:,} rows, one user and the first {M} "
              f"users, top-{k} (n={wl.DIM})", None, "",
              columns=("x unfiltered [quartiles]", "x shared [quartiles]", "loop / this [quartiles]"))

    def ratio(key, a, b):
        return paired_ratio(rounds[(names[key], a)], rounds[(names[key], b)])

    for key in frozen:
        name = names[key]
        over = {form: ratio(key, form, "one") for form in ("mask", "ids", "sparse")}
        over["shared"], over["own"] = ratio(key, "shared", "many"), ratio(key, "own", "many")
        own_shared, loop_own = ratio(key, "own", "shared"), ratio(key, "loop", "own")
        rows = ((f"{name}: one user, unfiltered", "one", ("1.00", "", "")),
                (f"{name}: one user, a {dense} mask", "mask", (_quartiles(over["mask"]), "", "")),
                (f"{name}: one user, the {dense} as shuffled int64 ids", "ids", (_quartiles(over["ids"]), "", "")),
                (f"{name}: one user, a {sparse} mask", "sparse", (_quartiles(over["sparse"]), "", "")),
                (f"{name}: {M} users, unfiltered", "many", ("1.00", "", "")),
                (f"{name}: {M} users sharing the {dense} mask", "shared", (_quartiles(over["shared"]), "1.00", "")),
                (f"{name}: {M} users, a {dense} mask each, one call", "own",
                 (_quartiles(over["own"]), _quartiles(own_shared), _quartiles(loop_own))),
                (f"{name}: {M} one-user calls, a mask each (Python loop)", "loop", ("", "", "1.00")))
        for row, form, extras in rows:
            t.add(row, times[(name, form)], extras)
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
    t.notes.append(f"x unfiltered: the time over the unfiltered call of the same users, x shared: over the call with "
                   f"the shared mask, loop / this: the loop's time over this one's; each round by round in {repeat} "
                   "rounds timed in turns: median [first quartile, third quartile]")
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
    rounds = times_in_turns(fns, one)
    times = medians(rounds)
    best = min(("numpy", "numpy in place"), key=lambda name: times[name])
    over, faster = paired_ratio(rounds["live"], rounds["frozen"]), paired_ratio(rounds[best], rounds["live"])
    t = Table("W10", f"by value after {len(moved):,} bids changed ({wl.LIVE_BIDS_CHANGED:.0%}, set_bids in batches of "
              f"{B:,}), one user x {N:,}, {len(om)} objectives, top-{k} (float32)", None, "",
              columns=("x frozen [quartiles]", "numpy / this [quartiles]"))
    t.add("LiveCandidates float32, objectives", times["live"], (_quartiles(over), _quartiles(faster)))
    t.add("Candidates float32, objectives (frozen, new bids)", times["frozen"], ("1.00", ""))
    t.add("numpy  grouped matvecs+sigmoid+argpartition", times["numpy"])
    t.add("numpy  same, in place", times["numpy in place"])
    t.target(f"<= 1.5x a frozen set built with the new bids ({over[0]:.2f}x)", over[0] <= 1.5)
    t.target(f">= 10x faster than the best NumPy expression ({best}: {faster[0]:.2f}x)", faster[0] >= 10)
    t.notes.append(f"changed bids drawn anew from lognormal(0, {wl.BID_SIGMA:g}); no compact() after them; ratios "
                   f"round by round in {one} rounds timed in turns; identical answers to the frozen set's (checked)")
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
    rounds = times_in_turns(fns, repeat)
    assert all(r == wl.LIVE_FAISS_REMOVE for r in removed_small), "W10: remove() did not find every present id"
    times = medians(rounds)
    t = Table("W10", f"batches on live sets of {N:,} rows: the rates", None, "", columns=("per second [quartiles]",))
    rates = {}
    for name, what, size, unit, least in (("set_bids", "set_bids, float32 with objectives", B, "ids", 2e6),
                                          ("remove", "remove, float32", B, "ids", 1e6),
                                          ("upsert float32", "upsert, float32", B, "rows", 3e5),
                                          ("upsert int8 exact", "upsert, int8 exact", B, "rows", 1e5)):
        rates[name] = paired_ratio([size] * repeat, rounds[name])  # size over each round's seconds
        t.add(f"{what}: {size:,} {unit}", times[name], (_rate(rates[name]),))
        t.target(f"{what} >= {_rate((least,) * 3).split()[0]} {unit}/s ({_rate(rates[name]).split()[0]})",
                 rates[name][0] >= least)
    t.add(f"remove, int8 exact: {wl.LIVE_FAISS_REMOVE:,} ids", times["remove small"],
          (_rate(paired_ratio([wl.LIVE_FAISS_REMOVE] * repeat, rounds["remove small"])),))
    if index is not None:
        t.add(f"faiss  IndexIDMap2.remove_ids: {wl.LIVE_FAISS_REMOVE:,} ids", times["faiss remove_ids"],
              (_rate(paired_ratio([wl.LIVE_FAISS_REMOVE] * repeat, rounds["faiss remove_ids"])),))
        faster = paired_ratio(rounds["faiss remove_ids"], rounds["remove small"])
        t.target(f"removing {wl.LIVE_FAISS_REMOVE:,} ids >= 100x faster than FAISS remove_ids ({_quartiles(faster)}x)",
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


def _quartiles(ratio: tuple[float, float, float]) -> str:
    median, q1, q3 = ratio
    return f"{median:.2f} [{q1:.2f}, {q3:.2f}]"


class Context:
    def floor_beside(self, fns: dict, *arrays, extra_bytes: int = 0):
        """timing.floor_beside at this run's repeat count and threads: (floor, {name: seconds})."""
        return floor_beside(fns, arrays, self.repeat, self.threads, extra_bytes)

    def __init__(self, quick: bool, progress: Progress, facts: dict):
        self.quick = quick
        self.progress = progress
        self.gemm_flops = facts["sgemm_GFLOPs"] * 1e9
        self.threads = facts["threads"]
        self.n_cands = wl.QUICK_CANDIDATES if quick else wl.CANDIDATES
        self.n_pairs = wl.QUICK_PAIRS if quick else wl.PAIRS
        self.repeat = 3 if quick else 7
        self.repeat_slow = 3 if quick else 5
        self.w7_bytes = wl.QUICK_W7_BYTES if quick else wl.W7_BYTES
        self.repeat_w7 = 3 if quick else 9
        self.repeat_w9 = (3, 3) if quick else (15, 9)  # rounds in turns: one user, many users
        # W10, kept short (about a minute on 2 cores at full size: FAISS's 128-user search alone takes
        # 1.8 s a call there): rounds in turns for one user and for many users; batches timed per
        # rate (after one untimed); rounds and calls per median of the reader beside a writer
        self.repeat_w10 = (3, 3) if quick else (5, 3)
        self.repeat_w10_rates = 3 if quick else 5
        self.rounds_w10_writer = (2, 5) if quick else (3, 21)
        self.cores = facts["cores"]
        self.peers = Peers()


RUNNERS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "W7": w7, "W8": w8, "W9": w9, "W10": w10}
STEPS = {"W7": len(wl.W7_DIMS), "W10": 6}  # W7 steps the progress bar once per n, W10 once per part


def run(workloads=WORKLOADS, quick=False, json_path=None, plot_path=None, show_progress=True, out=sys.stdout):
    if sk.info()["isa_active"] is None:  # the compiled kernels did not load
        raise RuntimeError(f"the compiled kernels are not available: {sk.backends()['simd']['reason']}")
    workloads = [w.upper() for w in workloads]
    unknown = [w for w in workloads if w not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown} (known: {', '.join(WORKLOADS)})")
    progress = Progress(1 + sum(STEPS.get(w, 1) for w in workloads), show_progress)
    facts = machine_facts(quick)
    progress.step("floors: read bandwidth, sgemm")
    ctx = Context(quick, progress, facts)
    tables = []
    for w in workloads:
        result = RUNNERS[w](ctx)
        tables.extend(result if isinstance(result, list) else [result])
        if w not in STEPS:
            progress.step(w)
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['num_threads']} threads)"
                     for b in facts["blas"]) or "unknown"
    print(f"CPU: {facts['cpu']} | {facts['threads']} threads | ISA {facts['isa']} | BLAS: {blas}", file=out)
    print(f"floors: read bandwidth {facts['read_bandwidth_GBps']:.1f} GB/s, "
          f"sgemm {facts['sgemm_GFLOPs']:.0f} GFLOP/s{' | --quick sizes' if quick else ''}", file=out)
    for table in tables:
        print("\n" + table.render(), file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"machine": facts, "quick": quick, "tables": [t.as_dict() for t in tables]}, f, indent=2)
    if plot_path:
        w7_table = next((t for t in tables if t.workload == "W7"), None)
        if w7_table is None:
            raise ValueError("--plot needs workload W7")
        plot_w7(w7_table, plot_path)
    return tables
