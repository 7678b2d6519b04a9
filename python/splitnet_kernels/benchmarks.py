"""The benchmark driver behind `splitnet-kernels bench`: workloads W1-W7 of DESIGN.md.

Every table is measured in one run, side by side: our kernels, the other backends, and what a
user would pick instead (NumPy/BLAS, PyTorch, FAISS, Numba), each as a median time, its ratio to
ours, and ours against the physical floor this run measures itself: bytes over the measured
read bandwidth, flops over the measured sgemm rate. Ratios, not absolute times, are the result.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import splitnet_kernels as sk

from .backends._simd import _core

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7")


# ---- measurement --------------------------------------------------------------------------
def median_time(fn, repeat: int, min_seconds: float = 0.0) -> float:
    """Median seconds of one call of fn over `repeat` rounds, after one warm-up call. A round
    repeats fn until it lasts min_seconds, so microsecond calls are timed over many calls."""
    fn()
    calls = 1
    if min_seconds > 0:
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-9)
        calls = max(1, int(min_seconds / once))
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def median_times_in_turns(fns: dict, repeat: int) -> dict:
    """Median seconds of one call of each fn, timed in turns (every fn once per round, after a
    warm-up call each), so a drift in this host's memory bandwidth falls on all of them alike."""
    for fn in fns.values():
        fn()
    rounds = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            rounds[name].append(time.perf_counter() - start)
    return {name: statistics.median(r) for name, r in rounds.items()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(quick: bool) -> dict:
    """CPU, BLAS, threads, and the two floors: read bandwidth and sgemm rate, measured now."""
    threads = _core.max_threads()
    buffer = np.ones((64 if quick else 256) << 20 >> 3, np.float64)  # well beyond the L3
    read_s = median_time(lambda: _core.read_bytes(buffer, threads), 5)
    a = np.random.default_rng(0).standard_normal((2048, 512)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((512, 2048)).astype(np.float32)
    gemm_s = median_time(lambda: a @ b, 5)
    blas = []
    try:
        from threadpoolctl import threadpool_info

        blas = [{k: pool.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                for pool in threadpool_info() if pool.get("user_api") == "blas"]
    except ImportError:
        pass
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "isa": _core.active_isa(),
        "blas": blas,
        "read_bandwidth_GBps": buffer.nbytes / read_s / 1e9,
        "sgemm_GFLOPs": 2 * 2048 * 512 * 2048 / gemm_s / 1e9,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "splitnet_kernels": sk.__version__,
    }


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


# ---- tables ---------------------------------------------------------------------------------
class Table:
    def __init__(self, workload: str, title: str, floor_s: float | None, floor_note: str):
        self.workload, self.title, self.floor_s, self.floor_note = workload, title, floor_s, floor_note
        self.rows: list[tuple[str, float]] = []  # (name, median seconds); the first is ours
        self.targets: list[tuple[str, bool]] = []
        self.notes: list[str] = []

    def add(self, name: str, seconds: float):
        self.rows.append((name, seconds))

    def time_of(self, name: str) -> float | None:
        return next((s for n, s in self.rows if n == name), None)

    def target(self, text: str, ok: bool):
        self.targets.append((text, bool(ok)))

    def render(self) -> str:
        ours = self.rows[0][1] if self.rows else float("nan")
        lines = [f"{self.workload}: {self.title}"]
        if self.floor_s:
            lines.append(f"  floor {self.floor_s * 1e3:.3f} ms ({self.floor_note})")
        lines.append(f"  {'implementation':44s} {'median':>11s} {'x ours':>8s} {'floor/time':>10s}")
        for name, seconds in self.rows:
            efficiency = f"{self.floor_s / seconds:10.2f}" if self.floor_s else f"{'':10s}"
            lines.append(f"  {name:44s} {_fmt_time(seconds):>11s} {seconds / ours:8.2f} {efficiency}")
        for text, ok in self.targets:
            lines.append(f"  [{'met' if ok else 'MISSED'}] {text}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"workload": self.workload, "title": self.title, "floor_s": self.floor_s,
                "floor_note": self.floor_note, "rows": [{"name": n, "median_s": s} for n, s in self.rows],
                "targets": [{"target": t, "met": ok} for t, ok in self.targets], "notes": self.notes}


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.2f} us"


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled and total > 0

    def step(self, label: str):
        self.done += 1
        if self.enabled:
            width = 30
            filled = int(width * self.done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label:40.40s}")
            sys.stderr.flush()
            if self.done == self.total:
                sys.stderr.write("\n")


# ---- workloads ------------------------------------------------------------------------------
def _data(n_rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_rows, dim), dtype=np.float32)


def _numpy_topk(scores: np.ndarray, k: int):
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def w1(ctx) -> Table:
    n, N = 64, ctx.n_cands
    ads, user = _data(N, n, 1), _data(1, n, 2)[0]
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
    t.target("not slower than numpy A @ u", ours <= t.time_of("numpy  A @ u"))
    return t


def w2(ctx) -> Table:
    n, N, k = 64, ctx.n_cands, 100
    ads, user = _data(N, n, 1), _data(1, n, 2)[0]
    floor, ours = ctx.floor_beside({"ours": lambda: sk.topk(user, ads, k)}, ads)
    t = Table("W2", f"one user x {N:,} candidates, top-{k}", floor, "reading the candidates once, timed in turns with ours")
    t.add("splitnet_kernels simd", ours["ours"])
    t.add("numpy  A @ u + argpartition", median_time(lambda: _numpy_topk(ads @ user, k), ctx.repeat))
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
    if t.time_of("faiss  IndexFlatIP.search"):
        t.target(">= 2x faster than FAISS IndexFlatIP.search", t.time_of("faiss  IndexFlatIP.search") >= 2 * ours)
    t.target(">= 1.2x faster than A @ u + argpartition", t.time_of("numpy  A @ u + argpartition") >= 1.2 * ours)
    return t


def w3(ctx) -> list[Table]:
    n, N, k = 64, ctx.n_cands, 100
    ads, user = _data(N, n, 1), _data(1, n, 2)[0]
    _, exact = sk.topk(user, ads, k)
    sets = {dtype: sk.Candidates(ads, dtype=dtype) for dtype in ("float32", "bfloat16", "float16", "int8")}
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
    n, N, M, k = 64, ctx.n_cands, 128, 100
    ads, users = _data(N, n, 1), _data(M, n, 3)
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
    if t.time_of("faiss  IndexFlatIP.search"):
        t.target(">= 10x faster than FAISS", t.time_of("faiss  IndexFlatIP.search") >= 10 * ours)
    t.target("<= 1.2x the time of numpy U @ A.T alone", ours <= 1.2 * t.time_of("numpy  U @ A.T (scores only)"))
    return [t, _many_users_on_candidates(ctx, ads, users, k, floor)]


def _many_users_on_candidates(ctx, ads, users, k, floor) -> Table:
    """W4 on prepared sets: each storage type read once for all users (int8 on its own tile)."""
    t = Table("W4", f"W4 on prepared candidate sets ({users.shape[0]} users x {ads.shape[0]:,}, top-{k} each)", floor,
              "float32 flops over measured sgemm rate")
    _, exact = sk.topk(users, ads, k)
    for dtype in ("float32", "bfloat16", "float16", "int8"):
        cands = sk.Candidates(ads, dtype=dtype)
        t.add(f"Candidates {dtype}", median_time(lambda: cands.topk(users, k), ctx.repeat_slow))
        found = cands.topk(users, k)[1]
        recall = np.mean([len(np.intersect1d(f, e)) / k for f, e in zip(found, exact)])
        t.notes.append(f"{dtype}: recall@{k} {recall:.3f} (mean over users)")
    return t


def w5(ctx) -> list[Table]:
    n, B = 64, ctx.n_pairs
    users, ads = _data(B, n, 4), _data(B, n, 5)
    rng = np.random.default_rng(6)
    s = rng.standard_normal(n).astype(np.float32)
    S = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    torch = ctx.peers.torch
    tables = []
    out = np.empty(B, np.float32)
    for kind, metric in (("dot", None), ("diagonal", sk.Metric.diagonal(s)), ("full", sk.Metric.full(S))):
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
    n, N, k = 64, 1000, 10
    ads, user = _data(N, n, 7), _data(1, n, 8)[0]
    t = Table("W6", f"one user x {N:,} candidates, top-{k}: latency of one Python call", None, "")
    fast = 0.2 if not ctx.quick else 0.05
    t.add("splitnet_kernels sk.topk", median_time(lambda: sk.topk(user, ads, k), ctx.repeat, fast))
    t.add("numpy  A @ u + argpartition", median_time(lambda: _numpy_topk(ads @ user, k), ctx.repeat, fast))
    if ctx.peers.faiss is not None:
        index = ctx.peers.faiss_index(ads)
        query = user[None]
        t.add("faiss  IndexFlatIP.search", median_time(lambda: index.search(query, k), ctx.repeat, fast))
    if ctx.peers.torch is not None:
        torch = ctx.peers.torch
        ta, tu = torch.from_numpy(ads), torch.from_numpy(user)
        t.add("torch  topk(A @ u)", median_time(lambda: torch.topk(ta @ tu, k), ctx.repeat, fast))
    ours = t.rows[0][1]
    t.target(">= 2x faster than A @ u + argpartition", t.time_of("numpy  A @ u + argpartition") >= 2 * ours)
    if t.time_of("faiss  IndexFlatIP.search"):
        t.target(">= 3x faster than FAISS", t.time_of("faiss  IndexFlatIP.search") >= 3 * ours)
    return t


def _metrics_for(n: int, rng) -> dict:
    rank = max(1, n // 8)
    return {
        "dot": sk.Metric.dot(n),
        "scaled": sk.Metric.scaled(n, 0.5),
        "diagonal": sk.Metric.diagonal(rng.standard_normal(n)),
        "low_rank": sk.Metric.low_rank(rng.standard_normal((n, rank)), rng.standard_normal((n, rank)),
                                       d=rng.standard_normal(n)),
        "full": sk.Metric.full(rng.standard_normal((n, n)) / np.sqrt(n)),
    }


def w7(ctx) -> Table:
    dims = (16, 32, 64, 128, 256, 512)
    budget = ctx.w7_bytes
    t = Table("W7", "cost per candidate (ns) against n, folded (one user vs many) vs per pair", None, "")
    rng = np.random.default_rng(9)
    grid = {}
    for n in dims:
        N = max(1024, budget // (4 * n))
        ads, users = _data(N, n, 10), _data(N, n, 11)
        out = np.empty(N, np.float32)
        sk.score(users, ads, pairwise=True, out=out)  # touch every page before timing
        metrics = _metrics_for(n, rng)
        time.sleep(0.2)  # lets the idle BLAS threads of the peers measured before stop spinning first
        folded = median_times_in_turns({kind: functools.partial(sk.score, users[0], ads, m, out=out)
                                        for kind, m in metrics.items()}, 2 * ctx.repeat_w7)
        for kind, m in metrics.items():
            grid[(n, kind)] = (folded[kind] / N, median_time(lambda: sk.score(users, ads, m, pairwise=True, out=out),
                                                             ctx.repeat_w7) / N)
        ctx.progress.step(f"W7 n={n}")
    kinds = list(_metrics_for(16, rng))
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


def plot_w7(table: Table, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({n for n, _ in table.grid})
    kinds = sorted({k for _, k in table.grid}, key=["dot", "scaled", "diagonal", "low_rank", "full"].index)
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, kind in enumerate(kinds):
        color = f"C{i}"
        ax.plot(dims, [table.grid[(n, kind)][0] * 1e9 for n in dims], "-o", color=color, label=f"{kind}, folded")
        ax.plot(dims, [table.grid[(n, kind)][1] * 1e9 for n in dims], "--s", color=color, label=f"{kind}, per pair")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("embedding dimension n")
    ax.set_ylabel("ns per candidate")
    ax.set_title("W7: one user vs many (folded) against per-pair scoring")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class Context:
    def floor_beside(self, fns: dict, *arrays, extra_bytes: int = 0):
        """(floor, {name: seconds}): the seconds to read these arrays once (plus extra_bytes at the
        same rate) and of one call of each fn, timed in turns, so that this host's drifting memory
        bandwidth (41-78 GB/s seen) falls on the floor and the kernels alike."""
        reads = {("read", i): functools.partial(_core.read_bytes, a, _core.max_threads()) for i, a in enumerate(arrays)}
        times = median_times_in_turns({**reads, **fns}, self.repeat)
        floor = sum(times.pop(key) for key in reads) * (1 + extra_bytes / sum(a.nbytes for a in arrays))
        return floor, times

    def __init__(self, quick: bool, progress: Progress, facts: dict):
        self.quick = quick
        self.progress = progress
        self.gemm_flops = facts["sgemm_GFLOPs"] * 1e9
        self.n_cands = 100_000 if quick else 1_000_000
        self.n_pairs = 100_000 if quick else 1_000_000
        self.repeat = 3 if quick else 7
        self.repeat_slow = 3 if quick else 5
        self.w7_bytes = (4 if quick else 64) << 20  # default: past the L3, as in serving
        self.repeat_w7 = 3 if quick else 9
        self.peers = Peers()


RUNNERS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "W7": w7}
STEPS = {"W7": 6}


def run(workloads=WORKLOADS, quick=False, json_path=None, plot_path=None, show_progress=True, out=sys.stdout):
    if _core is None:
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
