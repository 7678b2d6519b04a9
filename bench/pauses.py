"""What the pause before a timed call (splitnet_kernels.benchmark.timing.PAUSE_S) buys, in two
parts (bench/RESULTS.md, "The bench in turns, and its default run"):

1. after: one user x 1M top-100 (ours) timed right after one call of each library, with no pause
   and with a PAUSE_S pause between the two, 15 rounds, medians;
2. policy: the driver's W2 and W3 tables (the default run's rounds) with a pause only after
   another library's call (as shipped) and with every contender treated as a library of its own
   (a pause before every call), alternated twice: the seconds and the ratios of each.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/pauses.py [after|policy]
"""

import io
import statistics
import sys
import time

import splitnet_kernels as sk
from splitnet_kernels.backends._simd import read_bytes
from splitnet_kernels.benchmark import driver, timing
from splitnet_kernels.benchmark import workloads as wl


def after():
    import faiss
    import torch

    ads, user = wl.one_user(wl.CANDIDATES)
    index = faiss.IndexFlatIP(wl.DIM)
    index.add(ads)
    ta, tu = torch.from_numpy(ads), torch.from_numpy(user)
    threads = sk.info()["default_threads"]
    before = {"ours (sk.topk)": lambda: sk.topk(user, ads, 100),
              "ours (the floor's read_bytes)": lambda: read_bytes(ads, threads),
              "numpy A @ u": lambda: ads @ user,
              "faiss IndexFlatIP.search": lambda: index.search(user[None], 100),
              "torch topk(A @ u)": lambda: torch.topk(ta @ tu, 100)}
    seconds = {(name, pause): [] for name in before for pause in (0.0, timing.PAUSE_S)}
    for fn in before.values():
        fn()
    for _ in range(15):
        for name, fn in before.items():
            for pause in (0.0, timing.PAUSE_S):
                time.sleep(0.3)  # whatever ran before settles
                fn()
                time.sleep(pause)
                start = time.perf_counter()
                sk.topk(user, ads, 100)
                seconds[(name, pause)].append(time.perf_counter() - start)
    for name in before:
        without, with_pause = (statistics.median(seconds[(name, p)]) for p in (0.0, timing.PAUSE_S))
        print(f"ours right after {name:30s}: no pause {without * 1e3:6.2f} ms, {timing.PAUSE_S:g} s pause "
              f"{with_pause * 1e3:6.2f} ms, ratio {without / with_pause:.2f}")


def policy():
    shipped = driver._library
    for run in (1, 2):
        for rule in ("after another library", "before every call"):
            driver._library = shipped if rule.startswith("after") else (lambda name: f"library of {name}")
            start = time.perf_counter()
            tables = driver.run(["W2", "W3"], show_progress=False, out=io.StringIO())
            print(f"--- run {run}, a pause {rule}: {time.perf_counter() - start:.0f} s")
            for t in tables[:2]:
                ours = t.rows[0][0]
                for name, _ in t.rows:
                    median, q1, q3 = t.ratio(name, ours)
                    print(f"  {t.workload} {name:46s} median {t.seconds_of(name) * 1e3:7.2f} ms  x ours {median:5.2f} "
                          f"[{q1:.2f}, {q3:.2f}]  floor/time {t.of_floor(name)[0]:.2f}")
    driver._library = shipped


if __name__ == "__main__":
    parts = sys.argv[1:] or ["after", "policy"]
    for part in parts:
        {"after": after, "policy": policy}[part]()
