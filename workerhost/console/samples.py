"""The charts' History kept in the database (`workerhost_samples`, store/sample_table.py),
so that a restarted console shows the last hour and day, not only the time since it started.

The Sampler's thread calls `restore` once, before its first reading, and `keep` after each
reading: at most once every KEEP_EVERY seconds, `keep` writes the slots changed since it last
wrote (usually the minute before and the one under way) in one REPLACE, and once every
PRUNE_EVERY minutes deletes, in the same transaction, the rows older than the History's day.
What it costs the database is in the console's docstring (console/__init__.py).

Keeping them is never needed for the console to work: when the database does not answer, or
the table is missing (a database whose host has not started since it was added), the charts
stay in memory as before, a line in the log says so once, and `keep` tries again a minute later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from workerhost.console.charts import MINUTES_KEPT, History
from workerhost.store import sample_table, schema
from workerhost.store.db import RUN_ERRORS, Database

log = logging.getLogger("workerhost.console")

KEEP_EVERY = 60.0  # seconds between two writes of the History, at least
PRUNE_EVERY = 60  # minutes between two deletions of rows older than MINUTES_KEPT
DEADLINE = 2.0  # seconds a write or the read may retry through transient errors


class Keeper:
    """Writes a History's changed slots to the database, and reads them back at a start.

    Used by the Sampler's thread alone; `clock` is the Sampler's (monotonic).
    """

    def __init__(self, history: History, clock: Callable[[], float] = time.monotonic) -> None:
        self.history = history
        self.clock = clock
        self.kept_at: float | None = None  # when `keep` last wrote, or tried to
        self.pruned: int | None = None  # the minute of the last deletion of old rows
        self.failing = False  # the last write or read failed (and was logged)

    def restore(self, db: Database) -> None:
        """Read the last day of samples into the History (once, as the console starts)."""
        since = int(self.history.wall() // 60) - MINUTES_KEPT + 1
        try:
            rows = db.run(lambda conn: sample_table.sample_rows(conn, since),
                          deadline=time.monotonic() + DEADLINE)  # fmt: skip
        except RUN_ERRORS as exc:
            db.reset()
            self._failed("read", exc)
            return
        self.history.load(rows)

    def keep(self, db: Database) -> None:
        """Write the slots changed since the last write, when KEEP_EVERY has passed since."""
        now = self.clock()
        if self.kept_at is not None and now - self.kept_at < KEEP_EVERY:
            return
        rows = self.history.take_changed()
        if not rows:
            return
        self.kept_at = now
        minute = int(self.history.wall() // 60)
        prune = self.pruned is None or minute - self.pruned >= PRUNE_EVERY

        def write(conn: object) -> None:
            sample_table.write_samples(conn, rows)
            if prune:
                sample_table.forget_samples(conn, minute - MINUTES_KEPT + 1)

        try:
            db.run(write, deadline=time.monotonic() + DEADLINE)
        except RUN_ERRORS as exc:
            db.reset()
            self.history.mark_changed({row.minute for row in rows})
            self._failed("write", exc)
            return
        if prune:
            self.pruned = minute
        if self.failing:
            log.info("console: the charts' samples are kept in the database again")
            self.failing = False

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self.failing:
            log.warning("console: cannot %s the charts' samples in %s (they stay in memory, "
                        "and are tried again in a minute): %s", what,
                        schema.SAMPLES, exc)
        self.failing = True
