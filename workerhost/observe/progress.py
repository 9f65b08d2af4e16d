"""Progress of a long CLI operation: a bar redrawn in place on a terminal, plain lines otherwise.

Plain lines are for logs and pipes: at most one a second (`every`), then a final one, so
that a log of a cron job shows the operation moving without a line per batch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

BAR_WIDTH = 30  # characters of the bar itself
PLAIN_EVERY = 1.0  # seconds between two plain lines


class Progress:
    """Counts `done` of `total` things, showing `label`; use as a context manager."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None,
                 every: float = PLAIN_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self.clock = clock
        self.last_shown: float | None = None

    def __enter__(self) -> Progress:
        self.show()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    def advance(self, count: int) -> None:
        self.done += count
        now = self.clock()
        if self.tty or self.last_shown is None or now - self.last_shown >= self.every:
            self.show()

    def show(self) -> None:
        self.last_shown = self.clock()
        if self.tty:
            self.stream.write(f"\r{self.label} {self._bar()} {self._count()}")
        else:
            self.stream.write(f"{self.label}: {self._count()}\n")
        self.stream.flush()

    def close(self) -> None:
        """The final figure; on a terminal, the line is ended so later output starts afresh."""
        self.show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _count(self) -> str:
        return f"{self.done}/{self.total}" if self.done <= self.total else str(self.done)

    def _bar(self) -> str:
        share = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = round(share * BAR_WIDTH)
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%}"
