"""Jobs as objects (`workerhost jobs ...`, `workerhost pause`, `workerhost resume`).

A job waiting or running is its ledger row (schema.LEDGER): listing, showing, cancelling or
running one now acts on that row, on every host at once, since every host reads the same
ledger. A cancelled job never runs, even when a copy of it already sits in gearmand: the copy
finds no row. Pausing a function parks its rows (no relay ships them, no worker runs them)
until it is resumed; nothing is lost or run twice meanwhile.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workerhost.model.ledger_state import LedgerState
from workerhost.observe import logs
from workerhost.store import job_control, ledger_pages
from workerhost.store.db import Database

# Bytes of a payload `jobs list` shows; `jobs show` shows it whole.
PREVIEW = 80
# Ledger rows one `jobs list` looks through when it filters (the ledger has no index on
# function or state: a page is a window of ids).
LIST_SCAN = 100_000
SHOW_BYTES = 1 << 20


@dataclass(frozen=True)
class JobRow:
    """A ledger row as `jobs list` and `jobs show` print it (secrets masked)."""

    id: int
    function: str
    unique: str | None
    priority: str
    state: str  # due, leased, delayed or paused
    not_before: datetime
    created_at: datetime
    ships: int
    size: int
    payload: str  # the first bytes (list) or all of it up to SHOW_BYTES (show), as text
    failures: int = 0
    last_error: str | None = None


def _row(row: tuple[Any, ...], password: str) -> JobRow:
    ident, function, unique, priority, not_before, created_at, ships, size, head, due = row
    text = logs.mask(bytes(head).decode("utf-8", "replace"), password)
    return JobRow(int(ident), str(function), None if unique is None else str(unique),
                  str(priority), LedgerState.of(not_before, due, int(ships)).value, not_before,
                  created_at, int(ships), int(size), text)


def _password(db: Database) -> str:
    return str(db.param("password") or "")


def list_jobs(db: Database, function: str | None, state: str | None, search: str | None,
              limit: int, older_than: float | None = None) -> list[JobRow]:
    """The newest jobs of the ledger, of one function, state or payload text, or all; with
    `older_than`, only those written at least that many seconds ago."""
    password = _password(db)
    secrets = [password] if password else []
    rows, _ = db.run(lambda conn: ledger_pages.ledger_page(
        conn, state, 0, limit, LIST_SCAN, PREVIEW, function,
        search, secrets, newest=True, older_than=older_than))
    found = [_row(tuple(row), password) for row in rows]
    return found


def show(db: Database, ident: int) -> JobRow | None:
    password = _password(db)
    row, attempts = db.run(lambda conn: ledger_pages.ledger_row(conn, ident, SHOW_BYTES))
    if row is None:
        return None
    job = _row(row, password)
    if attempts is None:
        return job
    failures, _first, error, _traceback = attempts
    return JobRow(**{**job.__dict__, "failures": int(failures),
                     "last_error": None if error is None else logs.mask(str(error), password)})


def _on_row(db: Database, ident: int, act: Callable[[Any, str], str]) -> str:
    """`act(conn, function)` on a job's ledger row, locked without waiting: its answer, or
    "running" (a worker runs the job now: the row is left alone) or "missing" (no such row:
    done, cancelled, or never there)."""

    def work(conn: Any) -> str:
        found = job_control.lock_ledger_row(conn, ident)
        if found is None:
            return "missing"
        function, state = found
        return "running" if state == "held" else act(conn, function)

    outcome: str = db.run(work)
    return outcome


def cancel(db: Database, ident: int) -> str:
    """Cancel one job: "cancelled", "running" or "missing" (_on_row)."""
    return _on_row(db, ident, lambda conn, function: "cancelled" if job_control.cancel_ledger_row(
        conn, ident, function) else "missing")


def run_now(db: Database, ident: int) -> str:
    """Make a delayed job (a retry waiting out its back-off) due now: "due", "running",
    "missing" (_on_row), or "not delayed" (due or leased already: the relay has it)."""
    return _on_row(db, ident, lambda conn, _function: "due" if job_control.run_ledger_row_now(
        conn, ident) else "not delayed")


def pause(db: Database, function: str) -> int:
    """Pause a function on every host; how many waiting jobs were parked."""
    by = f"{socket.gethostname()}:{os.getpid()}"
    parked: int = db.run(lambda conn: job_control.pause(conn, function, by))
    return parked


def resume(db: Database, function: str) -> tuple[bool, int]:
    """Resume a function: (whether it was paused, how many parked jobs are due again)."""
    resumed: tuple[bool, int] = db.run(lambda conn: job_control.resume(conn, function))
    return resumed


def paused(db: Database) -> list[tuple[str, datetime, str | None]]:
    found: list[tuple[str, datetime, str | None]] = db.run(job_control.paused_functions)
    return found
