"""The clock behind every figure: median times, times taken in turns, and the two floors a run
measures on its own host (read bandwidth, sgemm rate) with the machine facts beside them."""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Hashable

import numpy as np

import splitnet_kernels as sk

from ..backends._simd import read_bytes


# Worker threads of the last library timed (OpenBLAS, OpenMP in torch and FAISS, our pool) keep
# spinning for a while after a call and take the cores from the next: W2 read 15.4 ms right after
# NumPy's A @ u and 7.3 ms after a pause (Sapphire Rapids). Every switch to another function waits.
PAUSE_S = 0.2


def median_time(fn, repeat: int, min_seconds: float = 0.0) -> float:
    """Median seconds of one call of fn over `repeat` rounds, after a pause (PAUSE_S) and one
    warm-up call. A round repeats fn until it lasts min_seconds, so microsecond calls are timed
    over many calls."""
    time.sleep(PAUSE_S)
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


def times_in_turns(fns: dict, repeat: int) -> dict:
    """{name: seconds of each round}: every fn called once per round, after a warm-up call each,
    each call after a pause (PAUSE_S), so a drift in this host's memory bandwidth falls on all of
    them alike, and round i of one fn is comparable with round i of another."""
    for fn in fns.values():
        fn()
    rounds: dict[Hashable, list[float]] = {name: [] for name in fns}  # names, or ("read", i) from floor_beside
    for _ in range(repeat):
        for name, fn in fns.items():
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            fn()
            rounds[name].append(time.perf_counter() - start)
    return rounds


def median_times_in_turns(fns: dict, repeat: int) -> dict:
    """Median seconds of one call of each fn, timed in turns (times_in_turns)."""
    return medians(times_in_turns(fns, repeat))


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


def floor_beside(fns: dict, arrays, repeat: int, threads: int, extra_bytes: int = 0):
    """(floor, {name: seconds}): the seconds to read these arrays once (plus extra_bytes at the
    same rate) and of one call of each fn, timed in turns, so that this host's drifting memory
    bandwidth (41-78 GB/s seen) falls on the floor and the kernels alike."""
    floor, rounds = floor_and_rounds(fns, arrays, repeat, threads, extra_bytes)
    return floor, medians(rounds)


def floor_and_rounds(fns: dict, arrays, repeat: int, threads: int, extra_bytes: int = 0):
    """floor_beside with every round's seconds of each fn: (floor, {name: [seconds]})."""
    reads = {("read", i): functools.partial(read_bytes, a, threads) for i, a in enumerate(arrays)}
    rounds = times_in_turns({**reads, **fns}, repeat)
    floor = sum(statistics.median(rounds.pop(key)) for key in reads) * (1 + extra_bytes / sum(a.nbytes for a in arrays))
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
        "isa": report["isa_active"],
        "blas": blas,
        "read_bandwidth_GBps": buffer.nbytes / read_s / 1e9,
        "sgemm_GFLOPs": 2 * 2048 * 512 * 2048 / gemm_s / 1e9,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "splitnet_kernels": sk.__version__,
    }
