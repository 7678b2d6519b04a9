"""The one progress display of the long commands (bench, experiment, offline): a bar on one line of
stderr, rewritten in place. A leaf: it imports nothing of the package, so every wing can use it."""

from __future__ import annotations

import sys

WIDTH = 30  # characters of the bar


class Progress:
    """`done` out of `total` as a bar on stderr, with what was counted (`unit`, e.g. "rows") and the
    label of the last step; a newline once the total is reached. Disabled (or with a total of 0) it
    still counts, and shows nothing."""

    def __init__(self, total: int, enabled: bool, unit: str = ""):
        self.total, self.done, self.unit = total, 0, unit
        self.enabled = enabled and total > 0

    def add(self, count: int, label: str = "") -> None:
        """`count` more done; `label` says what was just finished."""
        self.done += count
        if not self.enabled:
            return
        bar = ("#" * min(WIDTH, WIDTH * self.done // self.total)).ljust(WIDTH, ".")
        unit = f" {self.unit}" if self.unit else ""
        label = f" {label:40.40s}" if label else ""  # padded: a shorter label covers a longer one
        sys.stderr.write(f"\r[{bar}] {self.done:,}/{self.total:,}{unit}{label}")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def step(self, label: str) -> None:
        """One more done: `label`."""
        self.add(1, label)
