"""The default thread count: CPU affinity and cgroup quotas, sk.set_threads, SPLITNET_KERNELS_THREADS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import splitnet_kernels as sk
from splitnet_kernels import _threads
from splitnet_kernels.backends import _numba, _numpy, _simd, _torch

from conftest import backend_available

ENV = "SPLITNET_KERNELS_THREADS"
_REPORT = "import json, splitnet_kernels as sk; info = sk.info(); print(json.dumps({k: info[k] for k in " \
          "('default_threads', 'threads_source', 'threads_error')}))"


def _python(code: str, *prefix: str, **env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITNET_KERNELS_")}
    env.update(env_overrides)
    return subprocess.run([*prefix, sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def _report(*prefix: str, **env_overrides) -> dict:
    done = _python(_REPORT, *prefix, **env_overrides)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def restore_threads():
    previous = sk.set_threads(None)
    yield
    sk.set_threads(previous)


# ---- what the process may run on -----------------------------------------------------------------
def test_taskset_one_cpu_gives_one_default_thread():
    taskset = shutil.which("taskset")
    if taskset is None:
        pytest.skip("taskset (util-linux) is not installed")
    cpu = min(os.sched_getaffinity(0))
    report = _report(taskset, "-c", str(cpu))
    assert report == {"default_threads": 1, "threads_source": "cpu affinity", "threads_error": None}
    code = ("import numpy as np, splitnet_kernels as sk; rng = np.random.default_rng(0); "
            "ads = rng.standard_normal((100_000, 32)).astype(np.float32); "
            "print(sk.topk(ads[7], ads, 3)[1].tolist() == sk.topk(ads[7], ads, 3, backend='numpy')[1].tolist())")
    done = _python(code, taskset, "-c", str(cpu))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_default_is_the_smaller_of_affinity_and_cgroup_quota():
    quota = _threads.cgroup_cpus()
    expected = min(len(os.sched_getaffinity(0)), quota if quota is not None else sys.maxsize)
    report = _report()
    assert report["default_threads"] == expected
    assert report["threads_source"] in ("cpu affinity", "cgroup cpu quota")


def _write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota(tmp_path):
    root, membership = tmp_path / "cgroup", tmp_path / "self_cgroup"
    _write(membership, "0::/\n")
    _write(root / "cpu.max", "max 100000\n")
    assert _threads.cgroup_cpus(root, membership) is None
    for text, cpus in (("50000 100000\n", 1), ("100000 100000\n", 1), ("150000 100000\n", 2),
                       ("400000 100000\n", 4), ("1000 100000\n", 1), ("250000 50000", 5)):
        _write(root / "cpu.max", text)
        assert _threads.cgroup_cpus(root, membership) == cpus, text


def test_cgroup_v2_nested_group_and_parents(tmp_path):
    root, membership = tmp_path / "cgroup", tmp_path / "self_cgroup"
    _write(membership, "0::/kubepods/pod1/container\n")
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "kubepods" / "cpu.max", "800000 100000\n")
    _write(root / "kubepods" / "pod1" / "cpu.max", "250000 100000\n")
    _write(root / "kubepods" / "pod1" / "container" / "cpu.max", "max 100000\n")
    assert _threads.cgroup_cpus(root, membership) == 3  # the pod's quota, the tightest on the way up
    _write(root / "kubepods" / "cpu.max", "200000 100000\n")
    assert _threads.cgroup_cpus(root, membership) == 2


def test_cgroup_group_not_visible_reads_the_root(tmp_path):
    # a container sees its own group as the root; /proc/self/cgroup may still name the host's path
    root, membership = tmp_path / "cgroup", tmp_path / "self_cgroup"
    _write(membership, "0::/system.slice/docker-abc.scope\n")
    _write(root / "cpu.max", "150000 100000\n")
    assert _threads.cgroup_cpus(root, membership) == 2
    assert _threads.cgroup_cpus(root, tmp_path / "no such file") == 2


def test_cgroup_v1_quota(tmp_path):
    root, membership = tmp_path / "cgroup", tmp_path / "self_cgroup"
    _write(membership, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:cpuset:/\n1:name=systemd:/\n0::/\n")
    base = root / "cpu,cpuacct"
    _write(base / "cpu.cfs_quota_us", "-1\n")
    _write(base / "cpu.cfs_period_us", "100000\n")
    assert _threads.cgroup_cpus(root, membership) is None
    _write(base / "docker" / "abc" / "cpu.cfs_quota_us", "150000\n")
    _write(base / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert _threads.cgroup_cpus(root, membership) == 2
    _write(root / "memory" / "docker" / "abc" / "cpu.cfs_quota_us", "10000\n")  # not the cpu controller's
    _write(root / "memory" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert _threads.cgroup_cpus(root, membership) == 2


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert _threads.cgroup_cpus(tmp_path / "empty", tmp_path / "missing") is None


# ---- sk.set_threads ---------------------------------------------------------------------------------
def test_set_threads_round_trip(restore_threads):
    detected = sk.info()
    assert detected["threads_source"] in ("cpu affinity", "cgroup cpu quota")
    assert sk.set_threads(1) is None
    report = sk.info()
    assert (report["default_threads"], report["threads_source"], report["threads_error"]) == (1, "set_threads", None)
    rng = np.random.default_rng(0)
    ads = rng.standard_normal((5000, 16)).astype(np.float32)
    assert np.array_equal(sk.topk(ads[:4], ads, 5)[1], sk.topk(ads[:4], ads, 5, threads=2)[1])
    assert sk.set_threads(None) == 1
    assert sk.info()["default_threads"] == detected["default_threads"]
    assert sk.info()["threads_source"] == detected["threads_source"]
    assert sk.set_threads(10 ** 6) is None
    assert sk.info()["default_threads"] == os.cpu_count()  # more than the machine's CPUs: all of them


@pytest.mark.parametrize("bad, error", [("2", TypeError), (1.5, TypeError), (True, TypeError), (np.float32(2), TypeError),
                                        (0, ValueError), (-1, ValueError)])
def test_set_threads_bad_values(restore_threads, bad, error):
    sk.set_threads(1)
    with pytest.raises(error, match="threads"):
        sk.set_threads(bad)
    assert sk.info()["default_threads"] == 1  # unchanged


def test_set_threads_accepts_numpy_integers(restore_threads):
    sk.set_threads(np.int64(1))
    assert sk.info()["default_threads"] == 1


def test_every_backend_takes_the_setting_for_threads_none(restore_threads):
    sk.set_threads(1)
    assert _simd.SimdBackend._threads(None) == 1
    assert _simd.SimdBackend._threads(2) == 2  # a per-call count still wins
    with _numpy._blas_threads(None):
        from threadpoolctl import threadpool_info

        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
    if backend_available("numba"):
        import numba

        with _numba._thread_count(numba, None) as count:
            assert count == 1
    if backend_available("torch"):
        import torch

        with _torch._torch_threads(torch, None, torch.device("cpu")):
            assert torch.get_num_threads() == 1


# ---- SPLITNET_KERNELS_THREADS ---------------------------------------------------------------------------
def test_env_sets_the_default():
    assert _report(**{ENV: "1"}) == {"default_threads": 1, "threads_source": ENV, "threads_error": None}
    assert _report(**{ENV: " "})["threads_source"] in ("cpu affinity", "cgroup cpu quota")  # blank: unset


def test_set_threads_beats_env_and_none_goes_back_to_it():
    code = ("import splitnet_kernels as sk; sk.set_threads(2); a = sk.info()['default_threads']; "
            "sk.set_threads(None); print(a, sk.info()['default_threads'], sk.info()['threads_source'])")
    done = _python(code, **{ENV: "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(min(2, os.cpu_count())), "1", ENV]


_BAD_CALLS = """
import numpy as np, splitnet_kernels as sk
ads = np.ones((50, 8), np.float32)
for call in (lambda: sk.topk(ads[0], ads, 3), lambda: sk.score(ads[0], ads),
             lambda: sk.score(ads, ads, backend="numpy"), lambda: sk.Candidates(ads).topk(ads[:2], 3)):
    try:
        call()
    except ValueError as error:
        print("ValueError:", error)
    else:
        print("NO ERROR")
print(sk.score(ads[0], ads, threads=1)[0])  # an explicit count does not depend on it
sk.set_threads(1)
print(sk.topk(ads[0], ads, 3)[1].tolist(), sk.info()["threads_error"])
"""


@pytest.mark.parametrize("text, parsed", [("1", (1, "")), (" 2 ", (min(2, os.cpu_count()), "")), ("", (None, "")),
                                          (str(10 ** 6), (os.cpu_count(), ""))])
def test_env_parsing(monkeypatch, text, parsed):
    monkeypatch.setenv(ENV, text)
    assert _threads._from_env() == parsed


@pytest.mark.parametrize("bad", ["abc", "0", "-2", "1.5", "auto", "true"])
def test_env_bad_values(monkeypatch, bad):
    monkeypatch.setenv(ENV, bad)
    count, error = _threads._from_env()
    assert count is None and ENV in error and repr(bad) in error and "positive integer" in error


def test_env_bad_value_is_an_error_not_a_fallback():
    bad = "abc"
    report = _report(**{ENV: bad})
    assert report["default_threads"] is None and report["threads_source"] == ENV
    assert ENV in report["threads_error"] and repr(bad) in report["threads_error"]
    done = _python(_BAD_CALLS, **{ENV: bad})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6, done.stdout
    for line in lines[:4]:
        assert line.startswith("ValueError:") and ENV in line and repr(bad) in line, line
    assert lines[4] == "8.0"
    assert lines[5] == "[0, 1, 2] None"  # set_threads replaces the bad value
