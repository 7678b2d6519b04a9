"""How a run shows its figures: one Table per workload (ours first, ratios, floor and targets),
and W7 as a log-log plot. (The progress bar is the package's one, _progress.py.)"""

from __future__ import annotations

from .._metric import KINDS


class Table:
    # W7 only (set by driver.w7, read by plot_w7): {(n, kind): (folded, per-pair) seconds per candidate}.
    # Declared, not defaulted, so other tables still have no such attribute.
    grid: dict[tuple[int, str], tuple[float, float]]

    def __init__(self, workload: str, title: str, floor_s: float | None, floor_note: str, columns: tuple = ()):
        self.workload, self.title, self.floor_s, self.floor_note = workload, title, floor_s, floor_note
        self.rows: list[tuple[str, float]] = []  # (name, median seconds); the first is ours
        self.columns = tuple(columns)  # the names of extra columns, shown after floor/time
        self.extras: dict[str, tuple] = {}  # row name -> its texts in those columns (rows may have none)
        self.targets: list[tuple[str, bool]] = []
        self.notes: list[str] = []

    def add(self, name: str, seconds: float, extras: tuple = ()):
        self.rows.append((name, seconds))
        if extras:
            if len(extras) != len(self.columns):
                raise ValueError(f"{self.workload}: row {name!r} has {len(extras)} extra values for columns "
                                 f"{self.columns}")
            self.extras[name] = tuple(str(e) for e in extras)

    def time_of(self, name: str) -> float | None:
        return next((s for n, s in self.rows if n == name), None)

    def seconds_of(self, name: str) -> float:
        """time_of for a row the caller added itself: a KeyError naming it if it is missing."""
        seconds = self.time_of(name)
        if seconds is None:
            raise KeyError(f"{self.workload}: no row {name!r} (rows: {[n for n, _ in self.rows]})")
        return seconds

    def target(self, text: str, ok: bool):
        self.targets.append((text, bool(ok)))

    def render(self) -> str:
        ours = self.rows[0][1] if self.rows else float("nan")
        lines = [f"{self.workload}: {self.title}"]
        if self.floor_s:
            lines.append(f"  floor {self.floor_s * 1e3:.3f} ms ({self.floor_note})")
        width = max([44] + [len(name) for name, _ in self.rows])
        widths = [max([9, len(c)] + [len(e[j]) for e in self.extras.values()]) for j, c in enumerate(self.columns)]
        extra_head = "".join(f" {c:>{w}s}" for c, w in zip(self.columns, widths))
        lines.append(f"  {'implementation':{width}s} {'median':>11s} {'x ours':>8s} {'floor/time':>10s}{extra_head}")
        for name, seconds in self.rows:
            efficiency = f"{self.floor_s / seconds:10.2f}" if self.floor_s else f"{'':10s}"
            extra = "".join(f" {e:>{w}s}" for e, w in zip(self.extras.get(name, ("",) * len(self.columns)), widths))
            lines.append(f"  {name:{width}s} {_fmt_time(seconds):>11s} {seconds / ours:8.2f} {efficiency}{extra}".rstrip())
        for text, ok in self.targets:
            lines.append(f"  [{'met' if ok else 'MISSED'}] {text}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"workload": self.workload, "title": self.title, "floor_s": self.floor_s,
                "floor_note": self.floor_note,
                "rows": [{"name": n, "median_s": s, **({"extras": dict(zip(self.columns, self.extras[n]))}
                                                        if n in self.extras else {})} for n, s in self.rows],
                "targets": [{"target": t, "met": ok} for t, ok in self.targets], "notes": self.notes}


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
