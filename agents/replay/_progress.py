"""A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise."""

from __future__ import annotations

import sys
from typing import TextIO

WIDTH = 40


class ProgressBar:
    def __init__(self, label: str, out: TextIO | None = None) -> None:
        self.label = label
        self.out = out or sys.stderr
        self.interactive = self.out.isatty()
        self._last_tenth = -1

    def __call__(self, done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        if self.interactive:
            filled = int(fraction * WIDTH)
            self.out.write(f"\r{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total}")
            if done >= total:
                self.out.write("\n")
            self.out.flush()
            return
        tenth = int(fraction * 10)
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.out.write(f"{self.label}: {done}/{total} ({fraction:.0%})\n")
            self.out.flush()
