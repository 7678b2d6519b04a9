"""The benchmark driver behind `splitnet-kernels bench`: which workloads a run measures, the clock
(turns, pauses, floors), the tables' ratios round by round, and whole runs at tiny sizes (FAISS's
Panorama among the peers where faiss has it). Sizes are shrunk and pauses cut: no figure here is a
timing claim, only that the driver runs and reports what it says."""

from __future__ import annotations

import io

import numpy as np
import pytest

from splitnet_kernels import _storage as storage
from splitnet_kernels import cli
from splitnet_kernels.benchmark import driver, timing
from splitnet_kernels.benchmark import workloads as wl
from splitnet_kernels.benchmark.report import Table


def test_the_default_run_and_full():
    assert cli.BENCH_DEFAULT == driver.DEFAULT_WORKLOADS
    assert set(driver.DEFAULT_WORKLOADS) < set(driver.WORKLOADS)
    assert driver.selection([], full=False) == list(driver.DEFAULT_WORKLOADS)
    assert driver.selection([], full=True) == list(driver.WORKLOADS)
    assert driver.selection(["w2", "W9"], full=False) == ["W2", "W9"]


@pytest.mark.parametrize("argv, message", [
    (["--workload", "W0"], "unknown workload"),
    (["--full", "--workload", "W1"], "not both"),
    (["--workload", "W1", "--plot", "w7.png"], "--plot needs workload W7"),
])
def test_bad_bench_arguments_are_one_line_before_any_timing(capsys, argv, message):
    assert cli.main(["bench", *argv, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and len(captured.err.splitlines()) == 1


def _recorded_pauses(monkeypatch) -> list:
    pauses: list = []
    monkeypatch.setattr(timing.time, "sleep", pauses.append)
    return pauses


def test_a_call_waits_only_after_another_librarys_call(monkeypatch):
    pauses = _recorded_pauses(monkeypatch)
    order: list = []
    fns = {name: (lambda name=name: order.append(name)) for name in ("ours", "also ours", "numpy", "after numpy")}
    rounds = timing.times_in_turns(fns, 3, {"numpy": "numpy"})
    assert order == list(fns) * 4  # a warm-up call each, then three rounds in turns
    assert {name: len(r) for name, r in rounds.items()} == dict.fromkeys(fns, 3)
    # the first call waits (whatever ran before), then only the call after numpy's, in each pass
    assert pauses == [timing.PAUSE_S] * (1 + 1 + 3)


def test_microsecond_calls_are_timed_over_many(monkeypatch):
    _recorded_pauses(monkeypatch)
    calls = []
    rounds = timing.times_in_turns({"tiny": lambda: calls.append(1)}, 2, min_seconds=0.01)
    assert len(calls) > 10 and all(0 < r < 0.01 for r in rounds["tiny"])


def test_floors_are_timed_in_the_same_turns(monkeypatch):
    _recorded_pauses(monkeypatch)
    rows = np.ones((4096, 64), np.float32)
    floor, rounds = timing.floor_and_rounds({"f": lambda: rows.sum()}, 3, 1, arrays=(rows,), extra_bytes=rows.nbytes)
    assert list(rounds) == ["f"] and len(floor) == 3 and all(f > 0 for f in floor)
    computed, _ = timing.floor_and_rounds({"f": lambda: None}, 2, 1, arrays=(rows,), flops=1e12)
    assert all(f > 1e-3 for f in computed)  # a teraflop takes longer than reading 1 MiB: the larger floor
    with pytest.raises(ValueError, match="no floor"):
        timing.floor_and_rounds({"f": lambda: None}, 2, 1)


def test_table_ratios_are_round_by_round():
    t = Table("W0", "test", floor=[1.0, 2.0, 1.0], floor_note="a floor")
    t.add("ours", [2.0, 4.0, 2.0])
    t.add("peer", [4.0, 8.0, 6.0], ())
    assert t.ratio("peer", "ours") == (2.0, 2.0, 2.5)  # the drift of round 2 cancels out
    assert t.of_floor("ours") == (0.5, 0.5, 0.5)
    assert t.seconds_of("peer") == 6.0
    text = t.render()
    assert "2.00 [2.00, 2.50]" in text and "floor/time [quartiles]" in text and "0.50 [0.50, 0.50]" in text
    with pytest.raises(ValueError, match="rounds"):
        t.add("short", [1.0, 2.0])
    with pytest.raises(KeyError, match="absent"):
        t.ratio("absent", "ours")
    with pytest.raises(ValueError, match="extra values"):
        t.annotate("peer", ("one",))
    row = t.as_dict()["rows"][1]
    assert row["x_ours"] == [2.0, 2.0, 2.5] and row["rounds_s"] == [4.0, 8.0, 6.0]


@pytest.fixture
def tiny(monkeypatch):
    """Tiny sizes, no pauses, two kinds of W9 rows (the campaign rows would train a model)."""
    monkeypatch.setattr(timing, "PAUSE_S", 0.0)
    monkeypatch.setattr(wl, "QUICK_CANDIDATES", 3000)
    monkeypatch.setattr(wl, "QUICK_PAIRS", 3000)
    monkeypatch.setattr(wl, "QUICK_W7_BYTES", 1 << 16)
    monkeypatch.setattr(wl, "W9_DATA", ("gaussian", "decaying, rotated"))
    monkeypatch.setattr(driver, "STEPS", {**driver.STEPS, "W9": len(wl.W9_DATA)})


def _panorama() -> bool:
    faiss = pytest.importorskip("faiss")
    return hasattr(faiss, "IndexFlatIPPanorama")


def test_the_default_run_at_tiny_sizes(tiny, tmp_path):
    out = io.StringIO()
    tables = driver.run(quick=True, show_progress=False, out=out, json_path=tmp_path / "run.json")
    text = out.getvalue()
    assert {t.workload for t in tables} == set(driver.DEFAULT_WORKLOADS)
    for table in tables:
        assert table.render() in text  # each printed as it completed
        for name, _ in table.rows[1:]:
            assert table.ratio(name, table.rows[0][0])  # every row timed in the same turns as ours
    assert "x ours [quartiles]" in text and "the run took" in text
    assert sum("exact sets, one user" in t.title for t in tables) == 2


def test_panorama_joins_w2_and_w9(tiny):
    if not _panorama():
        pytest.skip("this faiss has no IndexFlatIPPanorama (faiss 1.14 and later)")
    out = io.StringIO()
    tables = driver.run(["W2", "W9"], quick=True, show_progress=False, out=out)
    for table in tables:
        assert any(name.startswith("faiss  IndexFlatIPPanorama.search (") for name, _ in table.rows), table.title
    one_user = [t for t in tables if "one user" in t.title]
    assert len(one_user) == 3
    for table in one_user:  # Panorama's answer checked against ours: Gaussian rows have no ties
        assert any("top-100 ids: the same 100 as ours" in note for note in table.notes), table.notes


def test_w9_shows_the_exact_sets_last_scan(tiny, monkeypatch):
    """The exact sets' `last_scan` (issue 26's progressive scan) gives W9 its columns: the flat
    scan of Gaussian rows, the progressive one of decaying rows (heads made at any size here)."""
    monkeypatch.setattr(wl, "W9_DATA", ("gaussian", "decaying"))
    monkeypatch.setattr(storage, "LEVELS_MIN_ROWS", 0)
    tables = driver.run(["W9"], quick=True, show_progress=False, out=io.StringIO())
    layouts = set()
    for table in tables:
        assert table.columns[-4:] == ("scan", "bytes/row", "refined", "re-scored")
        layouts.add(table.extras["Candidates int8, exact=True"][-4].split(",")[0])
    assert layouts == {"flat", "progressive"}


def test_w7_plot(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "w7.png"
    (table,) = driver.run(["W7"], quick=True, show_progress=False, out=io.StringIO(), plot_path=path)
    assert set(table.grid) == {(n, kind) for n in wl.W7_DIMS for kind in wl.metrics_for(16, np.random.default_rng(0))}
    assert path.stat().st_size > 0
