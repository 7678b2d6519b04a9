"""The command line (`splitnet-kernels info`, what each command imports) and the environment
overrides read at import."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import splitnet_kernels as sk
from splitnet_kernels import cli

PACKAGE_ROOT = str(pathlib.Path(sk.__file__).resolve().parents[1])  # the directory holding the package
NAMES = ("simd", "numba", "torch", "numpy")


def _run_python(code: str, **env_overrides) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for name in ("SPLITNET_KERNELS_ISA", "SPLITNET_KERNELS_BACKEND"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_info_lists_every_backend(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert sk.__version__ in text
    for name in NAMES:
        assert name in text
    assert "ISA" in text


def test_info_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(NAMES) <= set(report["backends"])
    assert report["version"] == sk.__version__
    for state in report["backends"].values():
        assert isinstance(state["available"], bool) and isinstance(state["reason"], str)
    assert report["backends"]["numpy"]["available"]


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "info" in capsys.readouterr().out


def test_unknown_command_exits_with_an_error(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["frobnicate"])
    assert raised.value.code != 0


def test_python_dash_m_info():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    env.pop("SPLITNET_KERNELS_ISA", None)
    env.pop("SPLITNET_KERNELS_BACKEND", None)
    done = subprocess.run([sys.executable, "-m", "splitnet_kernels", "info"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in NAMES:
        assert name in done.stdout


_MODULES_AFTER = """
import sys
from splitnet_kernels import cli
try:
    cli.main({argv!r})
except ValueError:
    pass
print("MODULES " + " ".join(sorted(sys.modules)))
"""


def _modules_after(argv) -> set:
    done = _run_python(_MODULES_AFTER.format(argv=argv))
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split("MODULES ", 1)[1].split())


def test_info_imports_no_other_command():
    modules = _modules_after(["info"])
    loaded = sorted(m for m in modules if m.startswith(("splitnet_kernels.experiment", "splitnet_kernels.benchmark",
                                                        "splitnet_kernels.nn")))
    assert not loaded, f"`splitnet-kernels info` imported {loaded}"
    # torch only where sk.info() itself needs it: the torch backend's status reports its version
    info_alone = _run_python("import sys, splitnet_kernels as sk; sk.info(); print('torch' in sys.modules)")
    assert info_alone.returncode == 0, info_alone.stderr
    assert ("torch" in modules) == (info_alone.stdout.strip() == "True")


def test_bench_imports_no_experiment():
    modules = _modules_after(["bench", "--workload", "W0", "--no-progress"])  # unknown: stops before timing
    assert "splitnet_kernels.benchmark.driver" in modules
    loaded = sorted(m for m in modules if m.startswith(("splitnet_kernels.experiment", "splitnet_kernels.nn")))
    assert not loaded, f"`splitnet-kernels bench` imported {loaded}"


def test_experiment_variants_in_the_help_are_the_experiments():
    from splitnet_kernels import experiment

    assert cli.EXPERIMENT_VARIANTS == tuple(v.name for v in experiment.VARIANTS)


def test_info_keys():
    report = sk.info()
    for key in ("version", "isa_detected", "isa_active", "isa_supported", "isa_known", "backends", "default_threads"):
        assert key in report
    assert report["default_threads"] >= 1
    if report["backends"]["simd"]["available"]:
        assert report["isa_supported"][0] == "scalar"
        assert report["isa_detected"] in report["isa_supported"]
        assert report["isa_active"] in report["isa_supported"]
        assert report["isa_known"][0] == "scalar" and set(report["isa_supported"]) <= set(report["isa_known"])


_SCORE_CALL = """
import numpy as np, splitnet_kernels as sk
try:
    sk.score(np.ones(4, np.float32), np.ones((3, 4), np.float32), backend={backend!r})
except Exception as error:
    print(type(error).__name__ + ": " + str(error))
else:
    print("NO ERROR")
"""


@pytest.mark.parametrize("backend", ("simd", "auto"))
@pytest.mark.parametrize("isa", ("bogus", "neon_or_other"))
def test_bad_isa_environment_is_a_clear_error(backend, isa):
    if not sk.backends()["simd"]["available"]:
        pytest.skip("compiled kernels not available")
    if isa == "neon_or_other":  # a known ISA name this CPU cannot run, if there is one
        missing = [name for name in sk.info()["isa_known"] if name not in sk.info()["isa_supported"]]
        if not missing:
            pytest.skip("this CPU runs every known ISA")
        isa = missing[0]
    done = _run_python(_SCORE_CALL.format(backend=backend), SPLITNET_KERNELS_ISA=isa)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line != "NO ERROR", f"SPLITNET_KERNELS_ISA={isa} fell back silently with backend={backend}"
    assert line.split(":")[0] in ("ValueError", "RuntimeError"), line
    assert "SPLITNET_KERNELS_ISA" in line and isa in line, line


def test_bad_isa_environment_leaves_other_backends_working():
    done = _run_python(_SCORE_CALL.format(backend="numpy"), SPLITNET_KERNELS_ISA="bogus")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "NO ERROR"


def test_isa_environment_forces_a_lower_isa():
    if not sk.backends()["simd"]["available"]:
        pytest.skip("compiled kernels not available")
    code = "import splitnet_kernels as sk; i = sk.info(); print(i['isa_active'], i['isa_error'])"
    for isa in sk.info()["isa_supported"]:
        done = _run_python(code, SPLITNET_KERNELS_ISA=isa.upper())
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [isa, "None"]


def test_backend_environment():
    code = ("import numpy as np, splitnet_kernels as sk\n"
            "try:\n"
            "    sk.score(np.ones(4, np.float32), np.ones((3, 4), np.float32))\n"
            "except Exception as error:\n"
            "    print(type(error).__name__, str(error))\n"
            "else:\n"
            "    print('NO ERROR')\n"
            "print(sk.score(np.ones(4, np.float32), np.ones((3, 4), np.float32), backend='numpy').tolist())\n")
    done = _run_python(code, SPLITNET_KERNELS_BACKEND="bogus")
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert first.startswith("ValueError") and "SPLITNET_KERNELS_BACKEND" in first, first
    assert second == "[4.0, 4.0, 4.0]"
    done = _run_python(code, SPLITNET_KERNELS_BACKEND="numpy")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[0] == "NO ERROR"


def test_paired_ratio_is_taken_round_by_round():
    from splitnet_kernels.benchmark.timing import paired_ratio

    # a drift that slows both in round 2 cancels out round by round
    assert paired_ratio([10.0, 40.0, 10.0], [5.0, 20.0, 5.0]) == (2.0, 2.0, 2.0)
    median, q1, q3 = paired_ratio([10.0, 4.0, 6.0, 16.0, 2.0], [1.0, 1.0, 1.0, 2.0, 1.0])
    assert (q1, median, q3) == (4.0, 6.0, 8.0)
    assert paired_ratio([3.0], [2.0]) == (1.5, 1.5, 1.5)
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no rounds"):
        paired_ratio([], [])
