"""The console's chart samples (`workerhost_samples`): per minute, the jobs each function
completed and failed and the ledger's backlog, so that the charts outlive a restart of the
console (console/samples.py writes and reads them; console/charts.py draws them).

A row is keyed by its minute (since the epoch, UTC, by the console's clock) and its function;
the ledger's figures are in the row of LEDGER_ROW, a name no function has. Every statement
goes by the primary key: a write replaces rows, a deletion and a read are ranges of minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from workerhost.store import db
from workerhost.store.db import Connection
from workerhost.store.schema import SAMPLES

LEDGER_ROW = ""  # the `function` of a minute's ledger figures


@dataclass(frozen=True)
class SampleRow:
    """What one minute's samples said of one function, or of the ledger (LEDGER_ROW)."""

    minute: int  # since the epoch, UTC
    function: str
    completed: int = 0
    failed: int = 0
    backlog: int | None = None  # the ledger's rows at the minute's last count
    oldest: float | None = None  # seconds: the oldest row's age at that count


_COLUMNS = "epoch_minute, `function`, completed, failed, backlog, oldest"


def write_samples(conn: Connection, rows: Sequence[SampleRow]) -> None:
    """Write `rows` in one statement, each replacing what an earlier write (this console's,
    or another's on the same database) said of its minute and function. REPLACE is the
    multi-row upsert both servers take without VALUES() (schema.py)."""
    if not rows:
        return
    db.cursor(conn).execute(
        f"REPLACE INTO {SAMPLES} ({_COLUMNS}) VALUES "
        + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows)),
        [value for row in rows for value in (row.minute, row.function[:255], row.completed,
                                             row.failed, row.backlog, row.oldest)])


def forget_samples(conn: Connection, before: int) -> int:
    """Delete the rows of the minutes before `before`; rows deleted."""
    cursor = db.cursor(conn)
    cursor.execute(f"DELETE FROM {SAMPLES} WHERE epoch_minute < %s", (before,))
    return int(cursor.rowcount)


def sample_rows(conn: Connection, since: int) -> list[SampleRow]:
    """The rows of minute `since` and after, oldest first."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT {_COLUMNS} FROM {SAMPLES} WHERE epoch_minute >= %s "
                   "ORDER BY epoch_minute, `function`", (since,))
    return [SampleRow(int(minute), str(function), int(completed), int(failed),
                      None if backlog is None else int(backlog),
                      None if oldest is None else float(oldest))
            for minute, function, completed, failed, backlog, oldest in cursor.fetchall()]
