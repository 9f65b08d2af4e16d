"""Enqueue a job from outside the host, in the caller's own transaction.

Two doors into the ledger (``workerhost_outbox``), with a generated trigger's guarantees:

``enqueue(connection, function, payload, ...)``
    For application code, on its own mysql-connector connection: writes the job's ledger row
    in the transaction the connection has open. The relay of ``workerhost run`` ships it once
    that transaction commits (at once, or after ``delay``); a rollback takes the row, and so
    the job, with it. The row's token comes from the column's default, so the job runs once,
    and passes ``accept: ledger``.
``CALL workerhost_enqueue(function, payload)``
    The same from SQL (a hand-written trigger, a stored procedure): a procedure with the
    rights of its creator (``sql/enqueue.sql``), so that EXECUTE on it is the right to enqueue,
    with no privilege on the ledger. ``workerhost triggers --apply`` creates it (install()).
``CALL workerhost_enqueue_with(function, payload, options)``
    The same with the helper's options as a JSON object: delay, run_at, unique, priority
    (``sql/enqueue_with.sql``), created beside it.

With a unique, both merge: a job of the function with that unique still pending takes the new
payload and the earlier of the two due times, and no row is added (ledger.enqueue).

Imported by ``import workerhost``, which exports the function as ``workerhost.enqueue``: it
imports nothing heavy until it is called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Literal

PRIORITIES = ("normal", "high", "low")  # the ledger's priority column, and gearmand's
Priority = Literal["normal", "high", "low"]
ROUTINE = "workerhost_enqueue"  # the procedure sql/enqueue.sql creates
ROUTINE_RESOURCE = "sql/enqueue.sql"
# Every procedure install() creates, in order, and the file that holds it.
ROUTINES = ((ROUTINE, ROUTINE_RESOURCE), ("workerhost_enqueue_with", "sql/enqueue_with.sql"),
            ("workerhost_pause", "sql/pause.sql"), ("workerhost_resume", "sql/resume.sql"))
MAX_UNIQUE = 255  # the ledger's unique_key and merge_key columns
ER_DBACCESS_DENIED_ERROR = 1044  # no CREATE ROUTINE on the database
ER_TABLEACCESS_DENIED_ERROR = 1142


def enqueue(connection: Any, function: str, payload: Any, *, delay: float | None = None,
            run_at: datetime | None = None, unique: str | None = None,
            priority: Priority = "normal") -> int:  # fmt: skip
    """Write a job's ledger row in the transaction open on ``connection``; its row's id.

    ``payload``: bytes as they are, a str as its UTF-8, anything else as JSON (a dict, most
    often). ``delay``: seconds from now, or ``run_at``: when (a naive datetime is the
    database session's time, as NOW() is; an aware one is converted); due at once by
    default. ``unique``: the job's unique as its handler sees it (``job.unique``), a key to
    make its effect once; by default the payload's ``event_id``, else
    ``workerhost-outbox-<row id>``. A job of the function with the same unique that is still
    pending is merged into: it gets this payload and the earlier due time, keeps its priority,
    and its id is returned (when it is running, this adds a new row at once).
    Nothing is committed here: the caller commits or rolls back, and only a committed row is
    shipped.
    """
    from workerhost.config import converters
    from workerhost.store import ledger

    function = converters.function_name(function)
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    if delay is not None and not delay >= 0:  # also refuses NaN
        raise ValueError(f"delay must be a number of seconds, 0 or more, got {delay!r}")
    if delay is not None and run_at is not None:
        raise ValueError("give delay or run_at, not both")
    if run_at is not None and not isinstance(run_at, datetime):
        raise ValueError(f"run_at must be a datetime, got {run_at!r}")
    if run_at is not None and run_at.tzinfo is not None:  # the server's zone is not known here
        delay, run_at = max(0.0, (run_at - datetime.now(timezone.utc)).total_seconds()), None
    if unique is not None and not 1 <= len(unique) <= MAX_UNIQUE:
        raise ValueError(f"unique must be 1 to {MAX_UNIQUE} characters, got {unique!r}")
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, str):
        data = payload.encode("utf-8")
    else:
        data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return ledger.enqueue(connection, function, data, unique, delay=delay or 0.0,
                          run_at=run_at, priority=priority, merge=unique is not None)


@dataclass(frozen=True)
class Installed:
    """What install() did: the procedures it created (none: all in place), or why it could
    not."""

    created: tuple[str, ...] = ()
    refused: str | None = None  # why the account could not create them, and what to grant

    def report(self) -> list[str]:
        if self.refused:
            return [f"skipped procedure {ROUTINE}: {self.refused}"]
        return [f"created procedure {name}" for name in self.created]


def routine_sql(resource: str = ROUTINE_RESOURCE) -> str:
    """The CREATE PROCEDURE statement of a file of sql/, without its comments and the
    mysql client's DELIMITER lines."""
    text = resources.files("workerhost").joinpath(resource).read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines()
                     if not line.lstrip().startswith(("--", "DELIMITER")))
    return body.strip().removesuffix("//").rstrip(";")


def install(conn: Any) -> Installed:
    """Create the procedures of ROUTINES in the connection's database, those that are
    missing: workerhost_enqueue and workerhost_enqueue_with, workerhost_pause and
    workerhost_resume.

    An account without CREATE ROUTINE gets the triggers all the same: the procedures are only
    for those who call them, so their absence is reported, with the grant that would allow it.
    """
    import mysql.connector

    cursor = conn.cursor()
    try:
        cursor.execute("SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE "
                       "ROUTINE_SCHEMA = DATABASE() AND ROUTINE_TYPE = 'PROCEDURE' AND "
                       "ROUTINE_NAME LIKE 'workerhost\\_%'")
        found = {str(name) for (name,) in cursor.fetchall()}
        created: list[str] = []
        for name, resource in ROUTINES:
            if name in found:
                continue
            try:
                cursor.execute(routine_sql(resource))
            except mysql.connector.Error as exc:
                if exc.errno not in (ER_DBACCESS_DENIED_ERROR, ER_TABLEACCESS_DENIED_ERROR):
                    raise
                cursor.execute("SELECT CURRENT_USER(), DATABASE()")
                account, database = cursor.fetchone()
                user, _, host = str(account).rpartition("@")
                return Installed(tuple(created), refused=(
                    f"{exc.msg}; CALL {ROUTINE} enqueues from SQL (the triggers do not need "
                    f"it): as an administrator run GRANT CREATE ROUTINE ON `{database}`.* TO "
                    f"'{user}'@'{host}' and apply again, or apply as an account that has it"))
            created.append(name)
        return Installed(tuple(created))
    finally:
        cursor.close()
