"""Every statement against the ledger (`workerhost_outbox`): jobs waiting or running.

A row is a job from its enqueue (a trigger, `workerhost_enqueue`, a schedule, a retry) until
the transaction that commits its effect deletes it. Shipping, leasing, claiming, snoozing,
pausing and cancelling are statements here; the tables and their DDL are schema.py's. Callers
own the transaction (schema.py says why and how the SQL stays portable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workerhost.model.ledger_state import PARKED, LedgerState
from workerhost.store import db
from workerhost.store.db import Connection
from workerhost.store.schema import (
    _LOCKED_ERRNOS,
    ATTEMPTS,
    LEDGER,
    PAUSED,
    marks,
)


# -- ledger ------------------------------------------------------------------------------------
def enqueue(
    conn: Connection, function: str, payload: bytes, unique: str | None, *, delay: float = 0.0,
    priority: str = "normal", merge: bool = False, run_at: datetime | None = None,
) -> int:
    """Put a job in the ledger, due `delay` seconds from now (or at `run_at`, the database
    server's time); its ledger row's id.

    `merge`: a job of the function with this unique that is pending (its row not being run)
    takes this one's payload and the earlier of the two due times, keeping its priority, and
    no row is added: its id is returned. When that job is running (its row locked), a row is
    added that merges nothing: the running job may have read its data already, and waiting
    for it would deadlock with its DELETE (this would hold the unique index's entry it must
    remove). The pending row is locked by its id, never through the unique index, for that
    reason; the unique index only settles two enqueues racing to add the first row."""
    due = "%s" if run_at is not None else "NOW(6) + INTERVAL %s MICROSECOND"
    when = run_at if run_at is not None else int(delay * 1_000_000)
    cursor = db.cursor(conn)
    if merge and unique:
        cursor.execute(f"SELECT id FROM {LEDGER} WHERE `function` = %s AND merge_key = %s",
                       (function, unique))
        found = cursor.fetchone()
        pending = _lock_pending(conn, int(found[0])) if found else None
        if pending is True and found:
            cursor.execute(
                f"UPDATE {LEDGER} SET not_before = IF(ships = 0 AND not_before < '{PARKED}', "
                f"LEAST(not_before, {due}), not_before), payload = %s WHERE id = %s",
                (when, payload, int(found[0])))
            return int(found[0])
        merge = pending is None  # gone since: add the first row; running: add one apart
    values = [function, payload, unique or None, (unique or None) if merge else None, when,
              priority]
    merging = ""
    if merge and unique:
        # A leased row (shipped, in gearmand) keeps its lease: made due, it would ship twice.
        merging = (f" ON DUPLICATE KEY UPDATE not_before = IF(ships = 0 AND not_before < "
                   f"'{PARKED}', LEAST(not_before, {due}), not_before), payload = %s, "
                   "id = LAST_INSERT_ID(id)")
        values += [when, payload]
    cursor.execute(
        f"INSERT INTO {LEDGER} (`function`, payload, unique_key, merge_key, not_before, "
        f"priority) VALUES (%s, %s, %s, %s, {due}, %s){merging}", values,
    )
    return int(cursor.lastrowid)


def _lock_pending(conn: Connection, ident: int) -> bool | None:
    """Lock a ledger row by its id without waiting: True when locked, False when another
    transaction holds it (a worker running its job), None when it is gone."""
    try:
        with db.translating():
            db.cursor(conn).execute(f"SELECT id FROM {LEDGER} WHERE id = %s FOR UPDATE NOWAIT",
                                    (ident,))
            return True if db.cursor(conn).fetchall() else None
    except db.ERRORS as exc:
        if getattr(db.translate(exc), "errno", None) in _LOCKED_ERRNOS:
            return False
        raise


def lock_due(conn: Connection, limit: int) -> list[tuple[Any, ...]]:
    """Due ledger rows, the longest due first, locked for this transaction and skipped by
    other relays: (id, function, payload, unique_key, priority, token, ships, age in
    microseconds since the row was written). Read through the index on not_before, so a poll
    costs the due rows, not the leased backlog."""
    cursor = db.cursor(conn)
    # No gap locks: under REPEATABLE READ they deadlock the triggers' ledger INSERTs.
    cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    cursor.execute(
        f"SELECT id, `function`, payload, unique_key, priority, token, ships, "
        f"TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) FROM {LEDGER} "
        "FORCE INDEX (due) WHERE not_before <= NOW(6) ORDER BY not_before, id LIMIT %s "
        "FOR UPDATE SKIP LOCKED",
        (limit,),
    )
    return list(cursor.fetchall())


# A DELETE of rows by id reads by the primary key only with ORDER BY id LIMIT: else, on a small
# table, the optimizer scans it, and under READ COMMITTED a DELETE (unlike an UPDATE) waits on
# every row another transaction holds (a trigger's row not yet committed), not only on its own.
_BY_IDS = "WHERE id IN ({}) ORDER BY id LIMIT {}"


def delete_ledger_rows(conn: Connection, ids: Sequence[int]) -> None:
    db.cursor(conn).execute(f"DELETE FROM {LEDGER} {_BY_IDS.format(marks(ids), len(ids))}",
                            list(ids))


def lease(conn: Connection, ids: Sequence[int], seconds: float) -> None:
    """Shipped rows come due again after their lease: `seconds` the first time, doubled on
    every ship after it up to 16 times, so that a long backlog in gearmand is not shipped
    over and over."""
    db.cursor(conn).execute(
        f"UPDATE {LEDGER} SET not_before = NOW(6) + INTERVAL (%s << LEAST(ships, 4)) "
        f"MICROSECOND, ships = ships + 1 WHERE id IN ({marks(ids)})",
        [int(seconds * 1_000_000), *ids],
    )


@dataclass(frozen=True)
class LedgerRow:
    """A ledger row claimed for its job: locked until the transaction ends."""

    ident: int
    function: str
    payload: bytes
    unique: str | None  # unique_key
    token: str
    runnable: bool  # shipped (leased) or due; False: a retry whose delay is not over
    snoozes: int = 0  # how often its job asked to run later (errors.Snooze)


@dataclass(frozen=True)
class Claim:
    """What a claim found: rows locked for this transaction; ids held by another open
    transaction (a trigger's not yet committed, or another worker's); failures so far by key.
    An id in neither is gone: done already, or its transaction rolled back."""

    rows: dict[int, LedgerRow]
    held: frozenset[int]
    failures: dict[bytes, int]
    paused: bool = False  # the function is paused: nothing of it runs, its rows are parked


_CLAIM = ("SELECT id, `function`, payload, unique_key, token, "
          f"(ships > 0 OR not_before <= NOW(6)), snoozes FROM {LEDGER} FORCE INDEX (PRIMARY) "
          "WHERE id IN ({}) FOR UPDATE SKIP LOCKED")


def claim(conn: Connection, ids: Sequence[int], keys: Sequence[bytes],
          function: str | None = None) -> Claim:
    """Lock the ledger rows of jobs about to run, without waiting on any, and read the jobs'
    failures so far, in one round trip (a multi-statement query); then tell the rows another
    transaction holds from the rows that are gone, in one more when some are missing.

    A row another transaction holds is never waited for: its job waits in the worker instead,
    and every other job runs on. The session must read committed (no gap locks), as
    Database sessions of the worker do.
    """
    statements: list[str] = []
    args: list[Any] = []
    if ids:
        statements.append(_CLAIM.format(marks(ids)))
        args += ids
    if keys:
        statements.append(f"SELECT job_key, failures FROM {ATTEMPTS} "
                          f"WHERE job_key IN ({marks(keys)})")
        args += keys
    if function is not None:
        statements.append(f"SELECT COUNT(*) FROM {PAUSED} WHERE `function` = %s")
        args.append(function)
    if not statements:
        return Claim({}, frozenset(), {})
    cursor = db.cursor(conn)
    rows: dict[int, LedgerRow] = {}
    failed: dict[bytes, int] = {}
    paused = False
    with db.translating():
        # One round trip: each statement on a line of its own (db._as_written).
        cursor.execute(";\n".join(statements), args)
        for index in range(len(statements)):
            if index:
                cursor.nextset()
            found = cursor.fetchall()
            if ids and index == 0:
                rows = {int(row[0]): LedgerRow(
                    int(row[0]), str(row[1]), bytes(row[2]),
                    None if row[3] is None else str(row[3]), str(row[4]), bool(row[5]),
                    int(row[6])) for row in found}
            elif function is not None and index == len(statements) - 1:
                paused = bool(found[0][0])
            else:
                failed = {bytes(key): int(count) for key, count in found}
    missing = [ident for ident in dict.fromkeys(ids) if ident not in rows]
    return Claim(rows, _held(conn, missing), failed, paused)


def _held(conn: Connection, ids: Sequence[int]) -> frozenset[int]:
    """Which of `ids` (rows SKIP LOCKED passed over) another transaction holds. A row being
    inserted by an open transaction is invisible to reads, so only a lock tells it from a
    row that is gone: NOWAIT fails at once on any held row. When it fails for several, all
    count as held; the gone among them are told apart on the next claim."""
    if not ids:
        return frozenset()
    try:
        with db.translating():
            db.cursor(conn).execute(f"SELECT id FROM {LEDGER} FORCE INDEX (PRIMARY) WHERE id IN "
                                    f"({marks(ids)}) FOR UPDATE NOWAIT", list(ids))
            # Rows unlocked since the claim are locked now: held all the same, by this
            # transaction until it ends, and claimed next time.
            return frozenset(int(row[0]) for row in db.cursor(conn).fetchall())
    except db.ERRORS as exc:
        error = db.translate(exc)
        if getattr(error, "errno", None) in _LOCKED_ERRNOS:
            return frozenset(ids)  # only the statement failed: the transaction goes on
        raise


def delete_ledger_rows_statement(ids: Sequence[int]) -> tuple[str, dict[str, int]]:
    """delete_ledger_rows as a statement with named parameters, to send along with others."""
    names = [f"ledger_{index}" for index in range(len(ids))]
    marks = ", ".join(f"%({name})s" for name in names)
    return (f"DELETE FROM {LEDGER} {_BY_IDS.format(marks, len(ids))}",
            dict(zip(names, ids, strict=True)))


def snooze(conn: Connection, ident: int, delay: float) -> int:
    """A job asked to run again later: its row due after `delay`, with no attempt spent;
    how many times it has snoozed, this one included."""
    cursor = db.cursor(conn)
    cursor.execute(f"UPDATE {LEDGER} SET not_before = NOW(6) + INTERVAL %s MICROSECOND, "
                   "ships = 0, snoozes = snoozes + 1 WHERE id = %s",
                   (int(delay * 1_000_000), ident))  # fmt: skip
    cursor.execute(f"SELECT snoozes FROM {LEDGER} WHERE id = %s", (ident,))
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def reschedule(conn: Connection, ident: int, delay: float) -> None:
    """A failed attempt: the job's ledger row is due again `delay` seconds from now."""
    db.cursor(conn).execute(
        f"UPDATE {LEDGER} SET not_before = NOW(6) + INTERVAL %s MICROSECOND, ships = 0 "
        "WHERE id = %s", (int(delay * 1_000_000), ident),
    )


def ledger_figures(conn: Connection) -> tuple[int, int, int, int, Any, Any]:
    """Rows; due rows, leased ones (shipped, lease running) and delayed ones (a retry not yet
    due); the age in microseconds of the oldest row and of the most overdue due row (None
    when there is none)."""
    cursor = db.cursor(conn)
    cursor.execute(
        "SELECT COUNT(*), COALESCE(SUM(not_before <= NOW(6)), 0), "
        f"COALESCE(SUM({LedgerState.LEASED.condition}), 0), "
        f"COALESCE(SUM({LedgerState.DELAYED.condition}), 0), "
        "TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)), "
        "TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN not_before <= NOW(6) THEN not_before END), "
        f"NOW(6)) FROM {LEDGER}"
    )
    rows, due, leased, delayed, oldest, overdue = cursor.fetchone()
    return int(rows), int(due), int(leased), int(delayed), oldest, overdue


def unserved_rows(conn: Connection, older_than: float) -> dict[str, tuple[int, int]]:
    """Rows written `older_than` seconds ago or earlier, per function: (rows, age in
    microseconds of the oldest). One scan of the ledger, as ledger_figures makes."""
    cursor = db.cursor(conn)
    cursor.execute(
        "SELECT `function`, COUNT(*), TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)) "
        f"FROM {LEDGER} WHERE created_at <= NOW(6) - INTERVAL %s MICROSECOND "
        "GROUP BY `function` ORDER BY `function`", (int(older_than * 1_000_000),),
    )
    return {str(function): (int(rows), int(oldest))
            for function, rows, oldest in cursor.fetchall()}


def enqueue_many(conn: Connection, jobs: Sequence[tuple[str, bytes, str | None]]) -> None:
    """Put (function, payload, unique) jobs in the ledger, due now, their ids in this order."""
    if jobs:
        db.cursor(conn).execute(
            f"INSERT INTO {LEDGER} (`function`, payload, unique_key) VALUES "
            + ", ".join(["(%s, %s, %s)"] * len(jobs)),
            [value for job in jobs for value in job],
        )
