"""pytest-benchmark suites for workloads W1-W10 (docs/design.md), ours beside the peers.

Run: pytest bench --benchmark-only  (add --benchmark-group-by=group). Sizes follow
SPLITNET_BENCH_SCALE (default 1.0 = the reference sizes; 0.1 for a quick look). The workloads
(sizes, data, metrics) are those of splitnet_kernels.benchmark.workloads, which `splitnet-kernels
bench` also runs, with floors and targets.
"""

import os

import pytest

SCALE = float(os.environ.get("SPLITNET_BENCH_SCALE", "1.0"))


def scaled(n: int) -> int:
    return max(1000, int(n * SCALE))


def optional(name):
    module = pytest.importorskip(name)
    return module


def panorama(ads, probe):
    """FAISS's IndexFlatIPPanorama on these rows as the driver runs it (PCA-rotated rows, the
    fastest level count on `probe`); skipped where faiss lacks it."""
    faiss = optional("faiss")
    if not hasattr(faiss, "IndexFlatIPPanorama"):
        pytest.skip("this faiss has no IndexFlatIPPanorama (faiss 1.14 and later)")
    from splitnet_kernels.benchmark import driver

    return driver.Panorama(faiss, ads, probe)
