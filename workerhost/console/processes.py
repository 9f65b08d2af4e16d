"""The workers page's figures: every worker process of every host, as the hosts' heartbeats
left them in `workerhost_workers` (heartbeat.py).

One statement reads the whole table (a row per worker process, no index needed); rows not
seen for heartbeat.GONE_AFTER are of hosts that are gone, and are left out. How long a job
has run is its time at the last heartbeat plus the time since, so it grows between two.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workerhost.config.settings import Config
from workerhost.console import deadlines, figures
from workerhost.observe import heartbeat, logs
from workerhost.store import worker_table
from workerhost.store.db import RUN_ERRORS, Database

_LEDGER_JOB = re.compile(r"L(\d{1,19})")  # a ledger row's job: its key after the function


@dataclass(frozen=True)
class Process:
    """One worker process as its host's last heartbeat saw it."""

    host: str
    supervisor_pid: int
    pid: int
    function: str
    index: int
    state: str  # the supervisor's: STARTING, RUNNING or STOPPING
    job: str | None  # the job it runs (its key after the function, secrets masked); None: idle
    job_seconds: float | None  # how long that job has run by now
    jobs: int  # jobs it has done
    resident_bytes: int | None
    uptime: float  # seconds since it started
    seen: float  # seconds since its host's last heartbeat

    @property
    def ledger_id(self) -> int | None:
        """The ledger row whose job it runs, when it runs one of the ledger."""
        found = _LEDGER_JOB.fullmatch(self.job or "")
        return int(found.group(1)) if found else None


@dataclass(frozen=True)
class Processes:
    processes: tuple[Process, ...]
    error: str | None  # the database's answer when it gave no rows
    gone_after: float = heartbeat.GONE_AFTER


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def read(config: Config, db: Database, secrets: Sequence[str]) -> Processes:
    """The worker processes of every host seen within heartbeat.GONE_AFTER."""
    try:
        rows = db.run(lambda conn: worker_table.worker_rows(conn, heartbeat.GONE_AFTER),
                      deadline=time.monotonic() + deadlines.PAGE_DEADLINE)  # fmt: skip
    except RUN_ERRORS as exc:
        db.reset()
        return Processes((), logs.mask(str(exc), config.database.password))
    return Processes(tuple(
        Process(str(host), int(supervisor), int(pid), str(function), int(index), str(state),
                None if job is None else figures.masked(str(job), secrets), _number(seconds),
                int(jobs), None if resident is None else int(resident), float(uptime),
                float(seen))
        for host, supervisor, pid, function, index, state, job, seconds, jobs, resident,
        uptime, seen in rows), None)
