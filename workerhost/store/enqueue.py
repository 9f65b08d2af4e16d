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

Imported by ``import workerhost``, which exports the function as ``workerhost.enqueue``: it
imports nothing heavy until it is called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

PRIORITIES = ("normal", "high", "low")  # the ledger's priority column, and gearmand's
Priority = Literal["normal", "high", "low"]
ROUTINE = "workerhost_enqueue"  # the procedure sql/enqueue.sql creates
ROUTINE_RESOURCE = "sql/enqueue.sql"
ER_DBACCESS_DENIED_ERROR = 1044  # no CREATE ROUTINE on the database
ER_TABLEACCESS_DENIED_ERROR = 1142


def enqueue(connection: Any, function: str, payload: Any, *, delay: float | None = None,
            unique: str | None = None, priority: Priority = "normal") -> int:  # fmt: skip
    """Write a job's ledger row in the transaction open on ``connection``; its row's id.

    ``payload``: bytes as they are, a str as its UTF-8, anything else as JSON (a dict, most
    often). ``delay``: seconds from now (due at once by default). ``unique``: the job's
    unique as its handler sees it (``job.unique``), a key to make its effect once; by
    default the payload's ``event_id``, else ``workerhost-outbox-<row id>``. Nothing is
    committed here: the caller commits or rolls back, and only a committed row is shipped.
    """
    from workerhost.config import converters
    from workerhost.store import ledger

    function = converters.function_name(function)
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    if delay is not None and not delay >= 0:  # also refuses NaN
        raise ValueError(f"delay must be a number of seconds, 0 or more, got {delay!r}")
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, str):
        data = payload.encode("utf-8")
    else:
        data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return ledger.enqueue(connection, function, data, unique, delay=delay or 0.0,
                          priority=priority)


@dataclass(frozen=True)
class Installed:
    """What install() did: created the procedure, found it in place, or could not."""

    created: bool
    refused: str | None = None  # why the account could not create it, and what to grant

    def report(self) -> list[str]:
        if self.refused:
            return [f"skipped procedure {ROUTINE}: {self.refused}"]
        return [f"created procedure {ROUTINE}"] if self.created else []


def routine_sql() -> str:
    """The CREATE PROCEDURE statement of sql/enqueue.sql, its comments removed."""
    text = resources.files("workerhost").joinpath(ROUTINE_RESOURCE).read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return body.strip().rstrip(";")


def install(conn: Any) -> Installed:
    """Create workerhost_enqueue in the connection's database when it is missing.

    An account without CREATE ROUTINE gets the triggers all the same: the procedure is only
    for those who call it, so its absence is reported, with the grant that would allow it.
    """
    import mysql.connector

    cursor = conn.cursor()
    try:
        cursor.execute("SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA "
                       "= DATABASE() AND ROUTINE_NAME = %s AND ROUTINE_TYPE = 'PROCEDURE'",
                       (ROUTINE,))
        (found,) = cursor.fetchone()
        if found:
            return Installed(created=False)
        try:
            cursor.execute(routine_sql())
        except mysql.connector.Error as exc:
            if exc.errno not in (ER_DBACCESS_DENIED_ERROR, ER_TABLEACCESS_DENIED_ERROR):
                raise
            cursor.execute("SELECT CURRENT_USER(), DATABASE()")
            account, database = cursor.fetchone()
            user, _, host = str(account).rpartition("@")
            return Installed(created=False, refused=(
                f"{exc.msg}; CALL {ROUTINE} enqueues from SQL (the triggers do not need it): "
                f"as an administrator run GRANT CREATE ROUTINE ON `{database}`.* TO "
                f"'{user}'@'{host}' and apply again, or apply as an account that has it"))
        return Installed(created=True)
    finally:
        cursor.close()
