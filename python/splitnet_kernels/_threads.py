"""How many threads a call with threads=None uses: the one place that works it out.

In order: sk.set_threads(n); else SPLITNET_KERNELS_THREADS (read once, at import); else what
this process may run on: its CPU affinity (taskset, cpusets) and its cgroup's CPU quota (a
container's --cpus), whichever is smaller. A bad SPLITNET_KERNELS_THREADS is an error at the
first call that depends on it (as a bad SPLITNET_KERNELS_ISA is), never a silent fallback.
"""

from __future__ import annotations

import numbers
import os
import pathlib

import numpy as np

ENV = "SPLITNET_KERNELS_THREADS"
CPUS = os.cpu_count() or 1  # an explicit count above this means all of the machine's CPUs


def check(threads, name: str = "threads") -> int:
    """A positive integer, capped at the machine's CPUs; TypeError or ValueError naming `name`."""
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"{name}: expected None or an integer, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"{name}: must be >= 1, got {threads}")
    return min(int(threads), CPUS)


def _quota(directory: pathlib.Path) -> int | None:
    """Whole CPUs of one cgroup's quota, ceil(quota / period); None without a quota."""
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]  # v2: "quota period" or "max period"
    except (OSError, ValueError):
        try:  # v1: a quota of -1 is none
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max"
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return -(-quota_us // period_us)


def cgroup_cpus(root="/sys/fs/cgroup", membership="/proc/self/cgroup") -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (at least 1), or None without one.

    root is where the cgroup file systems are mounted, membership a file laid out like
    /proc/self/cgroup ("0::/path" for v2, "N:cpu,cpuacct:/path" for v1). The group and each of
    its parents count, the tightest quota wins; a group that is not there (a container sees its
    own group as the root) is skipped.
    """
    root = pathlib.Path(root)
    try:
        lines = pathlib.Path(membership).read_text().splitlines()
    except OSError:
        lines = ["0::/", "1:cpu:/"]  # the mount roots only
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base = root
        elif "cpu" in controllers.split(","):
            base = next((root / d for d in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (root / d).is_dir()), root)
        else:
            continue
        parts = pathlib.PurePosixPath(path.strip()).parts[1:]
        limits += [_quota(base.joinpath(*parts[:i])) for i in range(len(parts) + 1)]
    return min((limit for limit in limits if limit is not None), default=None)


def _detected() -> tuple[int, str]:
    try:
        cpus, source = len(os.sched_getaffinity(0)), "cpu affinity"
    except AttributeError:  # no affinity call (macOS, Windows)
        cpus, source = CPUS, "cpu count"
    quota = cgroup_cpus()
    if quota is not None and quota < cpus:
        return quota, "cgroup cpu quota"
    return max(1, cpus), source


def _from_env() -> tuple[int | None, str]:
    """(count, '') from SPLITNET_KERNELS_THREADS, (None, '') when unset, (None, error) when bad."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None, ""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        return None, f"{ENV}={text!r}: expected a positive integer (or unset: this process's CPUs)"
    return min(count, CPUS), ""


ENV_THREADS, ERROR = _from_env()
_chosen: int | None = None  # set_threads(n)
_default: int | None = None  # the count threads=None means, worked out at first use


def default() -> int:
    """The thread count of a call with threads=None (ValueError for a bad SPLITNET_KERNELS_THREADS)."""
    global _default
    if _default is None:
        if _chosen is None and ERROR:
            raise ValueError(ERROR)
        _default = _chosen or ENV_THREADS or _detected()[0]
    return _default


def report() -> dict:
    """sk.info()'s default_threads, threads_source and threads_error."""
    try:
        count, error = default(), None
    except ValueError as bad:
        count, error = None, str(bad)
    if _chosen is not None:
        source = "set_threads"
    elif ENV_THREADS is not None or ERROR:
        source = ENV
    else:
        source = _detected()[1]
    return {"default_threads": count, "threads_source": source, "threads_error": error}


def set_threads(threads: int | None) -> int | None:
    """Sets the process-wide thread count of calls made with threads=None; returns the previous setting.

    threads: a positive integer (above the machine's CPUs means all of them), or None to go back
    to the default (SPLITNET_KERNELS_THREADS, else this process's CPU affinity and cgroup quota).
    A per-call threads= still wins. While a count is set, a bad SPLITNET_KERNELS_THREADS is not raised.
    """
    global _chosen, _default
    chosen = None if threads is None else check(threads)
    previous, _chosen, _default = _chosen, chosen, None
    for watcher in _watchers:
        watcher()
    return previous


_watchers: list = []


def watch(watcher) -> None:
    """Calls watcher() after every set_threads (the custom ops' C++ kernels keep their own copy of
    threads=None's count)."""
    _watchers.append(watcher)
