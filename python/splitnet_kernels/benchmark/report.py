"""How a run shows its figures: one Table per workload (ours first, ratios, floor and targets),
and W7 as a log-log plot. (The progress bar is the package's one, _progress.py.)"""

from __future__ import annotations

import statistics

from .._metric import KINDS
from .timing import paired_ratio


class Table:
    """One workload's table. Every row holds the seconds of each round, timed in turns with the
    other rows (timing.times_in_turns); every ratio it shows is taken round by round (paired_ratio):
    its median, with the first and third quartiles."""

    # W7 only (set by driver.w7, read by plot_w7): {(n, kind): (folded, per-pair) seconds per candidate}.
    # Declared, not defaulted, so other tables still have no such attribute.
    grid: dict[tuple[int, str], tuple[float, float]]

    def __init__(self, workload: str, title: str, floor: list[float] | None = None, floor_note: str = "",
                 columns: tuple = ()):
        self.workload, self.title, self.floor_note = workload, title, floor_note
        self.floor = list(floor) if floor is not None else None  # the floor's seconds in each round
        self.rows: list[tuple[str, list[float]]] = []  # (name, seconds of each round); the first is ours
        self.columns = tuple(columns)  # the names of extra columns, shown after the ratios
        self.extras: dict[str, tuple] = {}  # row name -> its texts in those columns (rows may have none)
        self.targets: list[tuple[str, bool]] = []
        self.notes: list[str] = []

    def add(self, name: str, rounds, extras: tuple = ()):
        rounds = [float(r) for r in rounds]
        want = len(self.rows[0][1]) if self.rows else len(self.floor) if self.floor is not None else len(rounds)
        if not rounds or len(rounds) != want:
            raise ValueError(f"{self.workload}: row {name!r} has {len(rounds)} rounds; the table's rows are timed in "
                             f"{want} rounds, in turns")
        self.rows.append((name, rounds))
        if extras:
            self.annotate(name, extras)

    def annotate(self, name: str, extras: tuple):
        """A row's texts in the extra columns."""
        self.rounds_of(name)
        if len(extras) != len(self.columns):
            raise ValueError(f"{self.workload}: row {name!r} has {len(extras)} extra values for columns {self.columns}")
        self.extras[name] = tuple(str(e) for e in extras)

    def rounds_of(self, name: str) -> list[float]:
        """A row's seconds of each round: a KeyError naming it if it is missing."""
        rounds = next((r for n, r in self.rows if n == name), None)
        if rounds is None:
            raise KeyError(f"{self.workload}: no row {name!r} (rows: {[n for n, _ in self.rows]})")
        return rounds

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.rows)

    def seconds_of(self, name: str) -> float:
        """A row's median seconds."""
        return statistics.median(self.rounds_of(name))

    def ratio(self, slow: str, fast: str) -> tuple[float, float, float]:
        """How many times faster row `fast` is than row `slow`, round by round: (median, q1, q3)."""
        return paired_ratio(self.rounds_of(slow), self.rounds_of(fast))

    def of_floor(self, name: str) -> tuple[float, float, float]:
        """The floor's time over this row's, round by round: (median, q1, q3)."""
        if self.floor is None:
            raise ValueError(f"{self.workload}: the table has no floor")
        return paired_ratio(self.floor, self.rounds_of(name))

    def target(self, text: str, ok: bool):
        self.targets.append((text, bool(ok)))

    def render(self) -> str:
        lines = [f"{self.workload}: {self.title}"]
        if self.floor is not None:
            lines.append(f"  floor {statistics.median(self.floor) * 1e3:.3f} ms ({self.floor_note})")
        ours = self.rows[0][0] if self.rows else ""
        floor = self.floor is not None
        cells = {name: (_fmt_time(statistics.median(r)), "1.00" if name == ours else quartiles(self.ratio(name, ours)),
                        *((quartiles(self.of_floor(name)),) if floor else ()))
                 for name, r in self.rows}
        heads = ("median", "x ours [quartiles]", *(("floor/time [quartiles]",) if floor else ()))
        width = max([44] + [len(name) for name, _ in self.rows])
        fixed = [max([len(h)] + [len(c[j]) for c in cells.values()]) for j, h in enumerate(heads)]
        widths = [max([9, len(c)] + [len(e[j]) for e in self.extras.values()]) for j, c in enumerate(self.columns)]
        if self.rows:
            lines.append(f"  {'implementation':{width}s}" + "".join(f" {h:>{w}s}" for h, w in zip(heads, fixed))
                         + "".join(f" {c:>{w}s}" for c, w in zip(self.columns, widths)))
        for name, _ in self.rows:
            extra = self.extras.get(name, ("",) * len(self.columns))
            lines.append((f"  {name:{width}s}" + "".join(f" {c:>{w}s}" for c, w in zip(cells[name], fixed))
                          + "".join(f" {e:>{w}s}" for e, w in zip(extra, widths))).rstrip())
        for text, ok in self.targets:
            lines.append(f"  [{'met' if ok else 'MISSED'}] {text}")
        if len(self.rows) > 1 or self.floor is not None:
            lines.append(f"  note: every ratio round by round over {len(self.rows[0][1]) if self.rows else 0} rounds "
                         "timed in turns: median [first quartile, third quartile]")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def as_dict(self) -> dict:
        ours = self.rows[0][0] if self.rows else ""

        def row(name, rounds):
            out = {"name": name, "median_s": statistics.median(rounds), "rounds_s": rounds,
                   "x_ours": list(self.ratio(name, ours))}
            if self.floor is not None:
                out["floor_over_time"] = list(self.of_floor(name))
            if name in self.extras:
                out["extras"] = dict(zip(self.columns, self.extras[name]))
            return out

        return {"workload": self.workload, "title": self.title,
                "floor_s": statistics.median(self.floor) if self.floor is not None else None,
                "floor_note": self.floor_note, "rows": [row(n, r) for n, r in self.rows],
                "targets": [{"target": t, "met": ok} for t, ok in self.targets], "notes": self.notes}


def quartiles(ratio: tuple[float, float, float]) -> str:
    """A ratio round by round as printed: median [first quartile, third quartile]."""
    median, q1, q3 = ratio
    return f"{median:.2f} [{q1:.2f}, {q3:.2f}]"


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.2f} us"


def plot_w7(table: Table, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({n for n, _ in table.grid})
    kinds = sorted({k for _, k in table.grid}, key=KINDS.index)
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, kind in enumerate(kinds):
        color = f"C{i}"
        ax.plot(dims, [table.grid[(n, kind)][0] * 1e9 for n in dims], "-o", color=color, label=f"{kind}, folded")
        ax.plot(dims, [table.grid[(n, kind)][1] * 1e9 for n in dims], "--s", color=color, label=f"{kind}, per pair")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("embedding dimension n")
    ax.set_ylabel("ns per candidate")
    ax.set_title("W7: one user vs many (folded) against per-pair scoring")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
