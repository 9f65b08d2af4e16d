"""The worker processes' heartbeats (`workerhost_workers`): one row per worker process of
each host, as the supervisors publish them and the console reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workerhost.store import db
from workerhost.store.db import Connection
from workerhost.store.schema import WORKERS, marks

# -- heartbeats --------------------------------------------------------------------------------
# Every time here is the server's UTC_TIMESTAMP(6): no host's clock is compared with another's,
# and the session's time zone changes nothing.


@dataclass(frozen=True)
class WorkerBeat:
    """One worker process as its supervisor publishes it."""

    pid: int
    function: str
    index: int
    state: str  # the supervisor's state of the child (supervisor.State)
    job: str | None  # its job's key after the function (L<ledger id>, or the unique); None: idle
    job_seconds: float | None  # how long that job has run
    jobs: int  # jobs done by the process
    resident_bytes: int | None  # None: not read
    uptime: float  # seconds since the process started


_WORKER_COLUMNS = ("host, supervisor_pid, pid, `function`, `index`, state, job, job_seconds, "
                   "jobs, resident_bytes, started_at, seen_at")
_WORKER_VALUES = ("(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                  "UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND, UTC_TIMESTAMP(6))")


def publish_workers(conn: Connection, host: str, supervisor_pid: int,
                    workers: Sequence[WorkerBeat]) -> None:
    """Write the rows of `workers`, seen now, in one statement. REPLACE is the multi-row
    upsert both servers take without VALUES() (see above); every column is written, so that
    a row left by a host that died, whose pid a process has again, is overwritten whole."""
    if not workers:
        return
    db.cursor(conn).execute(
        f"REPLACE INTO {WORKERS} ({_WORKER_COLUMNS}) VALUES "
        + ", ".join([_WORKER_VALUES] * len(workers)),
        [value for w in workers for value in (
            host[:255], supervisor_pid, w.pid, w.function, w.index, w.state, w.job,
            w.job_seconds, w.jobs, w.resident_bytes, int(w.uptime * 1_000_000))],
    )


def forget_workers(conn: Connection, host: str, supervisor_pid: int,
                   pids: Sequence[int] | None = None) -> None:
    """Delete the rows of this supervisor's processes `pids` (ended); all of its rows when
    None (it stops)."""
    where, args = "host = %s AND supervisor_pid = %s", [host[:255], supervisor_pid]
    if pids is not None:
        if not pids:
            return
        where += f" AND pid IN ({marks(pids)})"
        args += list(pids)
    db.cursor(conn).execute(f"DELETE FROM {WORKERS} WHERE {where}", args)


def sweep_workers(conn: Connection, gone_after: float) -> int:
    """Delete the rows, of any host, not seen for `gone_after` seconds: their host died
    without a word. Rows deleted."""
    cursor = db.cursor(conn)
    cursor.execute(f"DELETE FROM {WORKERS} WHERE seen_at < UTC_TIMESTAMP(6) - INTERVAL %s "
                   "MICROSECOND", (int(gone_after * 1_000_000),))  # fmt: skip
    return int(cursor.rowcount)


def worker_rows(conn: Connection, gone_after: float) -> list[tuple[Any, ...]]:
    """The rows seen within `gone_after` seconds, by host, supervisor, function and index:
    (host, supervisor_pid, pid, function, index, state, job, seconds the job has run by now
    (as of the row, plus the time since), jobs, resident_bytes, seconds since the process
    started, seconds since the row was written). The table holds a row per worker process:
    read whole, no index needed."""
    since = "TIMESTAMPDIFF(MICROSECOND, {}, UTC_TIMESTAMP(6)) / 1000000"
    cursor = db.cursor(conn)
    cursor.execute(
        "SELECT host, supervisor_pid, pid, `function`, `index`, state, job, "
        f"job_seconds + {since.format('seen_at')}, jobs, resident_bytes, "
        f"{since.format('started_at')}, {since.format('seen_at')} FROM {WORKERS} "
        "WHERE seen_at >= UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND "
        "ORDER BY host, supervisor_pid, `function`, `index`, pid",
        (int(gone_after * 1_000_000),))  # fmt: skip
    return list(cursor.fetchall())
