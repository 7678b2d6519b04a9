"""README.md, docs/*.md and the CLI help: every figure names its CPU and its run, every workload is listed."""

from __future__ import annotations

import pathlib
import re

import pytest

from splitnet_kernels import cli
from splitnet_kernels.benchmark import driver

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Wording that only its writer can place: a session, "this 2-core ...", a figure measured "here".
SESSION = re.compile(r"\bsession", re.IGNORECASE)
THIS_HOST = re.compile(r"\bthis (\d+-core|host|vm|cpu)\b", re.IGNORECASE)
FIGURE_HERE = re.compile(r"\d(\.\d+)?\s*(×|x|%|ms|µs|us|ns|s|GB/s)\b[^.;]*?\bhere\b", re.IGNORECASE)
WORKLOAD_RANGE = re.compile(r"\bW(\d+)\s*(?:-|–|\.\.)\s*W(\d+)\b")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_wording_only_its_writer_can_place(path):
    text = path.read_text(encoding="utf-8")
    prose = " ".join(text.split())  # sentences broken across lines read as one
    for pattern in (SESSION, THIS_HOST, FIGURE_HERE):
        found = [m.group(0) for m in pattern.finditer(prose)]
        assert not found, f"{path.name}: {found} (name the CPU and the run, e.g. its commit)"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_tables_have_no_empty_cells(path):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("|") and not set(line) <= set("|-: "):
            cells = line.strip().strip("|").split("|")
            assert all(cell.strip() for cell in cells), f"{path.name}:{number}: an empty cell (say 'not measured')"


def test_readme_figures_name_their_runs():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    how_fast = text[text.index("## How fast"):text.index("\n## ", text.index("## How fast") + 1)]
    items = [" ".join(item.split()) for item in how_fast.split("\n- ")[1:]]
    for host in ("Zen 5", "Zen 3", "Sapphire Rapids", "Zen 4"):  # the table's columns
        item = next(item for item in items if item.startswith(f"**{host}:**"))
        assert re.search(r"commit [0-9a-f]{7}", item), item


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _workloads(text: str) -> set:
    named = set(re.findall(r"\bW\d+\b", text))
    for first, last in WORKLOAD_RANGE.findall(text):
        named |= {f"W{i}" for i in range(int(first), int(last) + 1)}
    return named


def test_cli_help_names_every_workload(capsys):
    assert driver.WORKLOADS == tuple(driver.RUNNERS)
    for argv in ((), ("bench",)):
        assert _workloads(_help(capsys, *argv)) == set(driver.WORKLOADS), argv


def test_every_list_of_the_workloads_is_complete():
    last = int(driver.WORKLOADS[-1][1:])
    bench = ROOT / "python" / "splitnet_kernels" / "benchmark"
    assert list(bench.glob("*.py")), f"{bench}: no driver files (renamed?)"
    sources = [*DOCS, ROOT / "python" / "splitnet_kernels" / "cli.py", *bench.glob("*.py"), *(ROOT / "bench").glob("*.py")]
    for path in sources:
        for match in re.finditer(r"workloads? W1\s*(?:-|–|\.\.)\s*W(\d+)", path.read_text(encoding="utf-8")):
            assert int(match.group(1)) == last, f"{path.relative_to(ROOT)}: {match.group(0)!r}"


def _python_blocks(heading: str) -> list:
    """The ```python blocks of the README section under `heading`, as printed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return re.findall(r"```python\n(.*?)```", text[start:end if end >= 0 else None], re.S)


def test_the_readme_tour_and_exact_sets_run_as_printed():
    """The tour runs as printed, and the exact-set block after it on the tour's names: the merged
    shards and the exact set give what one call over every ad gives."""
    import numpy as np

    import splitnet_kernels as sk

    names: dict = {}
    for block in _python_blocks("## A short tour") + _python_blocks("## Serving: prepared candidate sets")[:1]:
        exec(compile(block, "README.md", "exec"), names)
    want = sk.topk(names["user"], names["ads"], 100, names["m"])
    for got in (names["best"], (names["scores"], names["ids"])):
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    # the batch of requests with their own filters: each row is its own call
    exec(compile(_python_blocks("## Serving: prepared candidate sets")[1], "README.md", "exec"), names)
    for u, eligible in enumerate(names["eligible"]):
        want = sk.Candidates(names["ads"][eligible]).topk(names["batch"][u], 100, names["m"])
        np.testing.assert_array_equal(names["ids"][u], eligible[want[1]])
        np.testing.assert_array_equal(names["scores"][u], want[0])


def test_the_readme_live_serving_loop_runs_as_printed(tmp_path, monkeypatch):
    """The serving loop of a live set runs as printed (in a directory of its own, for its file),
    and what it ends with is the oracle's: a Candidates of the present rows in ascending id order,
    rebuilt here by replaying the feed; the file it published loads and answers the same."""
    import numpy as np

    import splitnet_kernels as sk

    monkeypatch.chdir(tmp_path)
    names: dict = {}
    for block in _python_blocks("## Serving a changing inventory"):
        exec(compile(block, "README.md", "exec"), names)

    first = zip(names["ad_ids"], names["ads"], names["objective"], names["bid"])
    present = {i: (row, o, b) for i, row, o, b in first}
    for new, rows, objectives, bids, paused, paced, paced_bids in names["feed"]:
        present.update(zip(new, zip(rows, objectives, bids)))
        for i in paused:
            present.pop(i, None)
        for i, b in zip(paced, paced_bids):
            present[i] = (*present[i][:2], b)
    ids = np.array(sorted(present), np.int64)
    rows, objectives, bids = (np.array([present[i][j] for i in ids]) for j in range(3))
    oracle = sk.Candidates(rows, "int8", exact=True, objectives=objectives, bids=bids.astype(np.float32))
    live, om, users, eligible = names["live"], names["om"], names["users"], names["eligible"]
    np.testing.assert_array_equal(live.ids(), ids)

    for got in (live, sk.LiveCandidates.load(tmp_path / "ads.skc", mmap=True)):
        values, found = got.topk(users, 100, om, allowed=eligible)
        want = oracle.topk(users, 100, om, allowed=np.flatnonzero(np.isin(ids, eligible)))
        np.testing.assert_array_equal(values, want[0])
        np.testing.assert_array_equal(found, ids[want[1]])
    for u in range(len(users)):  # one filter per user, padded where a user has fewer than k
        want = oracle.topk(users[u], 100, om, allowed=np.flatnonzero(np.isin(ids, eligible[u::8])))
        np.testing.assert_array_equal(names["values"][u][:len(want[0])], want[0])
        np.testing.assert_array_equal(names["ids"][u][:len(want[1])], ids[want[1]])
        assert np.all(names["ids"][u][len(want[1]):] == -1)
    probability = oracle.score(users[0], om, output="probability")
    np.testing.assert_array_equal(names["probs"], probability[np.searchsorted(ids, names["ids"][0])])
