"""W5 (a million (user, ad) pairs: dot, diagonal, full) timed in turns with its floors and the
NumPy expressions a user would write, as ratios round by round (issue 26, part 2).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/pairs_turns.py [--repeat 15] [--kinds dot,full]

Each round times, after a pause: reading U and A once (`read_bytes`, the read floor), an OpenBLAS
sgemm of two 2048 x 2048 float32 matrices (the sgemm rate), ours, every NumPy expression, and for
full the fold-range check that ours runs before its kernel (Metric.check_fold_range).
Floors per round: dot and diagonal, the bytes of U and A plus the scores written, at that round's
read rate; full, 2 B n^2 flops of U S at that round's sgemm rate. Figures and what they mean:
bench/RESULTS.md, "W5: pairs at their floor (issue 26, part 2)".
"""

from __future__ import annotations

import argparse
import functools
import platform
from statistics import median

import numpy as np

import splitnet_kernels as sk
from splitnet_kernels.backends._simd import read_bytes
from splitnet_kernels.benchmark import workloads as wl
from splitnet_kernels.benchmark.timing import machine_facts, paired_ratio, times_in_turns

GEMM = 2048  # the square sgemm whose rate is the full kind's floor


def numpy_ways(kind: str, users, ads, factor) -> dict:
    """The NumPy expressions for one kind (the driver's W5 rows, and the one-pass einsum for full)."""
    if kind == "dot":
        return {"einsum('ij,ij->i')": lambda: np.einsum("ij,ij->i", users, ads),
                "(U * A).sum(1)": lambda: (users * ads).sum(1)}
    if kind == "diagonal":
        return {"einsum('ij,j,ij->i')": lambda: np.einsum("ij,j,ij->i", users, factor, ads),
                "((U * s) * A).sum(1)": lambda: ((users * factor) * ads).sum(1)}
    return {"einsum('ij,ij->i', U @ S, A)": lambda: np.einsum("ij,ij->i", users @ factor, ads),
            "((U @ S) * A).sum(1)": lambda: ((users @ factor) * ads).sum(1),
            "einsum('ij,jk,ik->i', U, S, A)": lambda: np.einsum("ij,jk,ik->i", users, factor, ads, optimize=True)}


def quartiles(ratio) -> str:
    median, q1, q3 = ratio
    return f"{median:.2f} [{q1:.2f}, {q3:.2f}]"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--pairs", type=int, default=wl.PAIRS)
    parser.add_argument("--kinds", default=",".join(wl.PAIR_KINDS))
    args = parser.parse_args(argv)
    facts = machine_facts(quick=True)
    threads = facts["threads"]
    users, ads = wl.pairs(args.pairs)
    metrics = wl.pair_metrics(wl.DIM)
    out = np.empty(args.pairs, np.float32)
    a = np.random.default_rng(0).standard_normal((GEMM, GEMM)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((GEMM, GEMM)).astype(np.float32)
    bytes_moved = users.nbytes + ads.nbytes + out.nbytes
    pair_flops = 2 * args.pairs * wl.DIM * wl.DIM
    blas = ", ".join(f"{p['internal_api']} {p['version']} ({p['architecture']}, {p['num_threads']} threads)"
                     for p in facts["blas"])
    print(f"CPU: {facts['cpu']} ({platform.machine()}) | {threads} threads | ISA {facts['isa']} | BLAS: {blas}")
    print(f"{args.pairs:,} pairs, n = {wl.DIM}, {args.repeat} rounds in turns; ratios: median [q1, q3] of rounds")
    for kind in args.kinds.split(","):
        metric, factor = metrics[kind]
        fns = {"read U": functools.partial(read_bytes, users, threads),
               "read A": functools.partial(read_bytes, ads, threads),
               "sgemm": lambda: a @ b,
               "ours": lambda: sk.score(users, ads, metric, pairwise=True, out=out)}
        if kind == "full":  # the part of ours that reads the users once before the kernel (issue 9)
            fns["fold-range check"] = functools.partial(metric.check_fold_range, users)
        theirs = numpy_ways(kind, users, ads, factor)
        rounds = times_in_turns({**fns, **theirs}, args.repeat)
        # per round: the read floor (U and A read, the scores written at the same rate) and the flop floor
        read_floor = [(u + v) * bytes_moved / (users.nbytes + ads.nbytes)
                      for u, v in zip(rounds["read U"], rounds["read A"])]
        flop_floor = [s * pair_flops / (2 * GEMM**3) for s in rounds["sgemm"]]
        floor = flop_floor if kind == "full" else read_floor
        gbps = median((users.nbytes + ads.nbytes) / (u + v) / 1e9 for u, v in zip(rounds["read U"], rounds["read A"]))
        gflops = median(2 * GEMM**3 / s / 1e9 for s in rounds["sgemm"])
        print(f"\n{kind}: ours {median(rounds['ours']) * 1e3:.1f} ms | read {gbps:.1f} GB/s "
              f"(floor {median(read_floor) * 1e3:.1f} ms) | sgemm {gflops:.0f} GFLOP/s "
              f"(floor {median(flop_floor) * 1e3:.1f} ms)")
        which = "sgemm" if kind == "full" else "read"
        print(f"  ours, of the {which} floor: {quartiles(paired_ratio(floor, rounds['ours']))}")
        if kind == "full":
            print(f"  ours, of the read floor: {quartiles(paired_ratio(read_floor, rounds['ours']))}")
            checks = rounds["fold-range check"]
            unchecked = [o - c for o, c in zip(rounds["ours"], checks)]
            print(f"  the fold-range check alone: {median(checks) * 1e3:.1f} ms; ours less it, "
                  f"of the sgemm floor: {quartiles(paired_ratio(floor, unchecked))}")
        for name in theirs:
            print(f"  numpy {name:32s} / ours: {quartiles(paired_ratio(rounds[name], rounds['ours']))}")


if __name__ == "__main__":
    main()
