"""The offline engines side by side (issue 15): throughput of a bare loop of topk, the local engine
and the Ray engine over the same users and candidates, in turns; the Ray actors' memory (the
candidate file's pages shared between them); the local engine's peak RSS at N and 10 N users.

    python bench/offline.py                       # 200k users x 100k candidates, top-100, n = 64
    python bench/offline.py --users 20000 --candidates 10000 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import splitnet_kernels as sk
from splitnet_kernels import _offline

DIM, K = 64, 100


def write_users(path, count: int, files: int = 8, seed: int = 0) -> None:
    """count users in `files` Parquet files under the folder `path`, written a chunk at a time."""
    os.makedirs(path)
    rng = np.random.default_rng(seed)
    per_file = -(-count // files)
    for f in range(files):
        rows = range(f * per_file, min(count, (f + 1) * per_file))
        with pq.ParquetWriter(os.path.join(path, f"part-{f}.parquet"),
                              pa.schema([("user_id", pa.int64()), ("embedding", pa.list_(pa.float32(), DIM))])) as w:
            for begin in range(rows.start, rows.stop, 65536):
                end = min(rows.stop, begin + 65536)
                users = rng.standard_normal((end - begin, DIM)).astype(np.float32)
                w.write_table(pa.table({"user_id": np.arange(begin, end), "embedding": _offline.fixed_size_lists(users)}))


def make_candidates(path, count: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    sk.Candidates(rng.standard_normal((count, DIM)).astype(np.float32)).save(path)
    return sk.Metric.diagonal(rng.uniform(0.5, 1.5, DIM), bias=-1.0)


def bare_loop(users_folder, candidates, metric, batch_rows: int) -> float:
    """topk over the same batches as the local engine, the embeddings already in memory."""
    batches = [_offline.embeddings(t, "embedding", DIM, "users")
               for t in _offline.batches(_offline.users_dataset(users_folder), batch_rows)]
    cands = sk.Candidates.load(candidates, mmap=True)
    start = time.perf_counter()
    for users in batches:
        cands.topk(users, K, metric)
    return time.perf_counter() - start


def local_engine(users_folder, candidates, metric, batch_rows: int, out) -> float:
    job = _offline.TopkBatch(candidates, K, metric, keep_embeddings=False)  # what the command writes
    start = time.perf_counter()
    _offline.run_local(job, users_folder, out, batch_rows=batch_rows, show_progress=False)
    return time.perf_counter() - start


def parent(pid) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


class ActorMemory:
    """Samples the Ray Data actors' memory while a job runs: each one's RSS and, for the mapping of
    the candidate file, its resident and proportional (Pss: shared pages divided among the
    processes that map them) sizes, in MiB, the largest seen."""

    def __init__(self, candidates):
        self.candidates, self.seen, self.stop = os.path.realpath(candidates), {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(0.25):
            for entry in filter(str.isdigit, os.listdir("/proc")):
                try:  # this cluster's actors: children of the raylet that this process started
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if not f.read().startswith(b"ray::MapWorker") or parent(parent(entry)) != os.getpid():
                            continue
                    sample = self._sample(entry)
                except OSError:
                    continue
                old = self.seen.get(entry, {})
                self.seen[entry] = {key: max(value, old.get(key, 0.0)) for key, value in sample.items()}

    def _sample(self, pid) -> dict:
        sample = {"rss": 0.0, "file_rss": 0.0, "file_pss": 0.0}
        current = None
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                fields = line.split()
                if not fields[0].endswith(":"):  # a mapping's header: range, perms, offset, dev, inode, path
                    current = fields[5] if len(fields) > 5 else None
                elif fields[0] in ("Rss:", "Pss:"):
                    mib = int(fields[1]) / 1024
                    if fields[0] == "Rss:":
                        sample["rss"] += mib
                    if current == self.candidates:
                        sample["file_rss" if fields[0] == "Rss:" else "file_pss"] += mib
        return sample

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def ray_engine(users_folder, candidates, metric, batch_rows: int, out, concurrency: int):
    from splitnet_kernels import distributed

    job = _offline.TopkBatch(candidates, K, metric, threads=1, keep_embeddings=False)
    with ActorMemory(candidates) as memory:
        start = time.perf_counter()
        distributed.run_ray(job, users_folder, out, batch_size=batch_rows, concurrency=concurrency)
        elapsed = time.perf_counter() - start
    return elapsed, list(memory.seen.values())


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_child(users_folder, candidates, batch_rows: int, out) -> None:
    """In a child process: the local engine alone; on stdout as JSON, its peak RSS (MiB) and its
    RSS at each tenth of the run's time."""
    samples: list = []
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            samples.append(rss_mib())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _offline.run_local(_offline.TopkBatch(candidates, K, keep_embeddings=False), users_folder, out,
                       batch_rows=batch_rows, show_progress=False)
    stop.set()
    thread.join()
    tenths = [samples[min(len(samples) - 1, len(samples) * i // 10)] for i in range(1, 11)] if samples else []
    print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "by_tenth_of_the_run": [round(x, 1) for x in tenths]}))


def peak_rss(work, users: int, candidates, batch_rows: int) -> dict:
    folder = os.path.join(work, f"memory-users-{users}")
    write_users(folder, users, seed=users)
    out = os.path.join(work, f"memory-top-{users}.parquet")
    done = subprocess.run([sys.executable, __file__, "--peak-rss-child", folder, candidates, str(batch_rows), out],
                          check=True, capture_output=True, text=True)
    os.unlink(out)
    shutil.rmtree(folder)
    return json.loads(done.stdout.splitlines()[-1])


def throughput(work, args) -> dict:
    """The three engines in turns over the same users and candidates (a local 2-CPU-style cluster
    with one actor per CPU, one kernel thread each)."""
    import ray

    users, candidates = os.path.join(work, "users"), os.path.join(work, "ads.skc")
    write_users(users, args.users)
    metric = make_candidates(candidates, args.candidates)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    times: dict = {"bare loop": [], "local engine": [], "ray engine": []}
    actors: list = []
    for r in range(args.repeats):
        times["bare loop"].append(bare_loop(users, candidates, metric, args.batch_rows))
        times["local engine"].append(local_engine(users, candidates, metric, args.batch_rows,
                                                  os.path.join(work, f"local-{r}.parquet")))
        elapsed, actors = ray_engine(users, candidates, metric, args.batch_rows, os.path.join(work, f"ray-{r}"),
                                     os.cpu_count() or 1)
        times["ray engine"].append(elapsed)
        print(f"round {r + 1}: " + ", ".join(f"{name} {t[-1]:.1f} s" for name, t in times.items()), flush=True)
    ray.shutdown()
    best = {name: min(t) for name, t in times.items()}
    return {"users": args.users, "candidates": args.candidates, "seconds": times,
            "users_per_second": {name: args.users / t for name, t in best.items()},
            "local_over_bare": best["bare loop"] / best["local engine"],
            "ray_over_local": best["local engine"] / best["ray engine"], "ray_actors_mib": actors}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (bare loop, local, ray), in turns")
    parser.add_argument("--batch-rows", type=int, default=_offline.BATCH_ROWS)
    parser.add_argument("--memory-users", type=int, default=200_000, help="N of the peak RSS check (and 10 N)")
    parser.add_argument("--checks", default="throughput,memory", help="throughput, memory or both (default)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--peak-rss-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_rss_child:
        folder, candidates, batch_rows, out = args.peak_rss_child
        peak_rss_child(folder, candidates, int(batch_rows), out)
        return 0

    work = tempfile.mkdtemp(prefix="splitnet-offline-")
    report: dict = {"dim": DIM, "k": K, "batch_rows": args.batch_rows, "cpus": os.cpu_count(),
                    "isa": sk.info()["isa_active"]}
    if "throughput" in args.checks:
        report.update(throughput(work, args))
    if "memory" in args.checks:
        small = os.path.join(work, "memory-ads.skc")
        make_candidates(small, 1000)
        report["local_peak_rss_mib"] = {n: peak_rss(work, n, small, args.batch_rows)
                                        for n in (args.memory_users, 10 * args.memory_users)}
    shutil.rmtree(work)
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
