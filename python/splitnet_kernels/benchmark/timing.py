"""The clock behind every figure: median times, times taken in turns, and the two floors a run
measures on its own host (read bandwidth, sgemm rate) with the machine facts beside them."""

from __future__ import annotations

import functools
import math
import os
import platform
import statistics
import time
from collections.abc import Hashable

import numpy as np

import splitnet_kernels as sk

from ..backends._simd import read_bytes


# Worker threads of another library (OpenBLAS, OpenMP in torch and FAISS, Numba's) keep spinning
# for a while after its call and take the cores from the next: W2 read 15.4 ms right after NumPy's
# A @ u and 7.3 ms after a pause (Sapphire Rapids). So a call waits this long when the call before
# it ran in another library, and only then: our own pool's threads sleep on a condition variable
# (kernels/splitnet_kernels/parallel.h), and a library's threads still spinning from its own last
# call take its next call's work (bench/RESULTS.md, issue 26: what the pauses cost and what they buy).
PAUSE_S = 0.2
OURS = "splitnet_kernels"  # the library of every timed function not named otherwise


def median_time(fn, repeat: int) -> float:
    """Median seconds of one call of fn over `repeat` calls, after a pause (PAUSE_S) and one
    warm-up call, fn alone: the rates machine_facts reports, and one side of a round of W10's
    reader beside a writer (whose rounds are then paired)."""
    return statistics.median(times_in_turns({"fn": fn}, repeat, {"fn": "unknown"})["fn"])


def times_in_turns(fns: dict, repeat: int, libraries: dict | None = None, min_seconds: float = 0.0) -> dict:
    """{name: seconds of each round}: every fn called once per round, after a warm-up call each,
    so a drift in this host's memory bandwidth falls on all of them alike, and round i of one fn is
    comparable with round i of another (paired_ratio). libraries: {name: library} for the fns that
    run in another library than ours ("numpy", "torch", "faiss", "numba"); a call waits PAUSE_S
    when the call before it ran in another library than ours and than its own (and the first call
    waits). With min_seconds, a round repeats each fn as many times as it takes to last that long
    (counted at the warm-up), so microsecond calls are timed over many calls, and gives the
    seconds of one call."""
    library = {name: (libraries or {}).get(name, OURS) for name in fns}
    previous = None

    def settle(name):
        nonlocal previous
        if previous is None or previous not in (OURS, library[name]):
            time.sleep(PAUSE_S)
        previous = library[name]

    calls = {}
    for name, fn in fns.items():
        settle(name)
        fn()
        calls[name] = 1
        if min_seconds > 0:
            start = time.perf_counter()
            fn()
            calls[name] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-9)))
    rounds: dict[Hashable, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            settle(name)
            count = calls[name]
            start = time.perf_counter()
            for _ in range(count):
                fn()
            rounds[name].append((time.perf_counter() - start) / count)
    return rounds


def medians(rounds: dict) -> dict:
    return {name: statistics.median(r) for name, r in rounds.items()}


def paired_ratio(slow: list[float], fast: list[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of slow[i] / fast[i], rounds timed in turns: the
    speed-up round by round, so that a drift between rounds cancels out."""
    ratios = [a / b for a, b in zip(slow, fast, strict=True)]
    if not ratios:
        raise ValueError("paired_ratio: no rounds")
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q2, q1, q3


# The sgemm a compute floor is taken against, timed in turns like everything else: (M, K) x (K, N).
GEMM_SHAPE = (2048, 512, 2048)


def _gemm_probe():
    m, k, n = GEMM_SHAPE
    a = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32)
    return lambda: a @ b


def floor_and_rounds(fns: dict, repeat: int, threads: int, *, arrays=(), extra_bytes: int = 0, flops: float = 0,
                     libraries: dict | None = None):
    """(floor, rounds): {name: [seconds]} of each fn (times_in_turns), and in the same turns the
    floor of each round: the seconds to read `arrays` once (plus extra_bytes at the same rate), or
    `flops` at the rate of an sgemm (GEMM_SHAPE through NumPy's BLAS), whichever is longer. This
    host's memory bandwidth drifts (41-78 GB/s seen), and falls on the floor and the kernels alike;
    floor/time is then a ratio round by round like any other (paired_ratio)."""
    if not arrays and not flops:
        raise ValueError("floor_and_rounds: no floor (give arrays to read or flops)")
    probes: dict = {("read", i): functools.partial(read_bytes, a, threads) for i, a in enumerate(arrays)}
    if flops:
        probes["sgemm"] = _gemm_probe()
    rounds = times_in_turns({**probes, **fns}, repeat, {**(libraries or {}), "sgemm": "numpy"})
    floor = [0.0] * repeat
    if arrays:
        scale = 1 + extra_bytes / sum(a.nbytes for a in arrays)
        floor = [sum(r) * scale for r in zip(*(rounds.pop(("read", i)) for i in range(len(arrays))))]
    if flops:
        m, k, n = GEMM_SHAPE
        floor = [max(f, flops * s / (2 * m * k * n)) for f, s in zip(floor, rounds.pop("sgemm"))]
    return floor, rounds


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
    report = sk.info()
    threads = report["default_threads"]
    buffer = np.ones((64 if quick else 256) << 20 >> 3, np.float64)  # well beyond the L3
    read_s = median_time(lambda: read_bytes(buffer, threads), 5)
    gemm_s = median_time(_gemm_probe(), 5)
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
        "isa": report["isa_active"],
        "blas": blas,
        "read_bandwidth_GBps": buffer.nbytes / read_s / 1e9,
        "sgemm_GFLOPs": 2 * math.prod(GEMM_SHAPE) / gemm_s / 1e9,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "splitnet_kernels": sk.__version__,
    }
