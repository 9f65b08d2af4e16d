"""The host's own tables: their names, their DDL, and every statement run against them.

The host's tables live in the application's database beside its data (`sql/workerhost.sql`,
package data of this module): the outbox (the ledger) of jobs waiting or running, the failed
attempts of jobs in play, the dead letters, the refused deliveries, the paused functions, the
functions' concurrency slots, how far each schedule has got, and the worker processes'
heartbeats.
Every other module calls the functions here, so that the SQL that must run on MySQL and
MariaDB alike is written once: ``function`` is a column name and a reserved word in MySQL
since 8.0.1, so it is always quoted; no statement uses ``VALUES(col)`` in ``ON DUPLICATE KEY
UPDATE`` (deprecated by MySQL 8.0.20, while MariaDB lacks the row-alias form that replaces it).

Callers own the transaction: these functions run their statements on the connection's shared
cursor (db.cursor) and never commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from workerhost import db
from workerhost.db import Connection
from workerhost.job import ledger_key as ledger_key  # the console and its tests name it here

OUTBOX = "workerhost_outbox"
ATTEMPTS = "workerhost_attempts"
DEAD_LETTERS = "workerhost_dead_letters"
REFUSED = "workerhost_refused"
PAUSED = "workerhost_paused"
SLOTS = "workerhost_slots"
# When a paused function's ledger rows are due: a moment that never comes, so that no relay
# ships them; resume() finds them again through the index on not_before.
PARKED = "9999-12-31 00:00:00"
SCHEDULES = "workerhost_schedules"
WORKERS = "workerhost_workers"  # heartbeats: each worker process of each host
# Refused deliveries kept, the newest ones: forged jobs must not fill the disk.
REFUSED_KEPT = 1000
# Bytes of a refused delivery's payload kept to recognise it by (its digest covers the rest).
REFUSED_HEAD = 256
# Lock errors of a NOWAIT read: MariaDB answers a lock wait timeout, MySQL a NOWAIT error.
_LOCKED_ERRNOS = frozenset({1205, 3572})
SCHEMA_RESOURCE = "sql/workerhost.sql"

DEAD_LETTER_COLUMNS = ("id, `function`, payload, unique_key, attempts, error, traceback, "
                       "first_failed_at, failed_at")
# The columns a trigger's outbox INSERT names: a lone entry leaves unique_key NULL.
OUTBOX_TRIGGER_COLUMNS = "(`function`, `payload`)"
OUTBOX_TRIGGER_COLUMNS_UNIQUE = "(`function`, `payload`, `unique_key`)"
# Immediate delivery's row: shipped by the trigger itself, so leased from the start, with the
# token the trigger ships (every other writer leaves the token to the column's default).
OUTBOX_TRIGGER_COLUMNS_LEASED = ("(`function`, `payload`, `unique_key`, `not_before`, `ships`, "
                                 "`token`)")
# What a trigger makes a row's token of, as the column's default does (sql/workerhost.sql).
TOKEN_EXPRESSION = "HEX(RANDOM_BYTES(16))"


def _marks(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


# -- schema ------------------------------------------------------------------------------------
def schema_statements() -> list[str]:
    """The CREATE TABLE IF NOT EXISTS statements of sql/workerhost.sql, comments removed."""
    text = resources.files("workerhost").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in body.split(";") if statement.strip()]


def _created_table(statement: str) -> str:
    """The table a CREATE TABLE IF NOT EXISTS statement of the schema creates."""
    return statement.split("EXISTS", 1)[1].split("(", 1)[0].strip().strip("`")


# Columns added since the first layout, with the statements that add them: create() runs
# those of the columns that are missing. The token is added empty, filled, and only then given
# its default: MySQL refuses (with binary logging on) to fill existing rows from a default
# that differs from call to call.
MIGRATIONS = (
    (OUTBOX, "ships", (f"ALTER TABLE {OUTBOX} ADD COLUMN ships INT UNSIGNED NOT NULL DEFAULT 0",)),
    (OUTBOX, "token", (
        f"ALTER TABLE {OUTBOX} ADD COLUMN token CHAR(32) CHARACTER SET ascii NULL",
        f"UPDATE {OUTBOX} SET token = {TOKEN_EXPRESSION} WHERE token IS NULL",
        f"ALTER TABLE {OUTBOX} MODIFY COLUMN token CHAR(32) CHARACTER SET ascii NOT NULL "
        f"DEFAULT ({TOKEN_EXPRESSION})",
    )),
    (OUTBOX, "snoozes", (f"ALTER TABLE {OUTBOX} ADD COLUMN snoozes INT UNSIGNED NOT NULL "
                         "DEFAULT 0",)),
)
# Indexes added since the first layout: create() adds what is missing.
INDEX_MIGRATIONS = ((OUTBOX, "due", "(not_before)"),)


def create(conn: Connection) -> None:
    """Create the tables that are missing and bring older layouts up to date (re-runnable).

    Only what is missing is created: CREATE TABLE IF NOT EXISTS of a table that exists draws
    a note (a warning on MySQL) on every start of every host.
    """
    cursor = db.cursor(conn)
    cursor.execute("SELECT TABLE_NAME FROM information_schema.TABLES "
                   "WHERE TABLE_SCHEMA = DATABASE()")
    existing = {str(name) for (name,) in cursor.fetchall()}
    for statement in schema_statements():
        if _created_table(statement) not in existing:
            cursor.execute(statement)
    cursor.execute(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN "
        f"({_marks(MIGRATIONS)})", [table for table, _, _ in MIGRATIONS],
    )
    present = {(str(table), str(column)) for table, column in cursor.fetchall()}
    for table, column, statements in MIGRATIONS:
        if (table, column) not in present:
            for statement in statements:
                cursor.execute(statement)
    cursor.execute(
        "SELECT DISTINCT TABLE_NAME, INDEX_NAME FROM information_schema.STATISTICS "
        f"WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ({_marks(INDEX_MIGRATIONS)})",
        [table for table, _, _ in INDEX_MIGRATIONS],
    )
    indexed = {(str(table), str(index)) for table, index in cursor.fetchall()}
    for table, index, columns in INDEX_MIGRATIONS:
        if (table, index) not in indexed:
            cursor.execute(f"ALTER TABLE {table} ADD INDEX {index} {columns}")


# -- failed attempts ---------------------------------------------------------------------------
def failures_so_far(conn: Connection, key: bytes) -> int:
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT failures FROM {ATTEMPTS} WHERE job_key = %s", (key,))
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def failures_of(conn: Connection, keys: Sequence[bytes]) -> dict[bytes, int]:
    """Failures so far of several jobs in one round trip; jobs without any are left out."""
    cursor = db.cursor(conn)
    cursor.execute(
        f"SELECT job_key, failures FROM {ATTEMPTS} WHERE job_key IN ({_marks(keys)})", keys
    )
    return {bytes(key): int(count) for key, count in cursor.fetchall()}


def count_failure(conn: Connection, key: bytes, error: str, traceback: str | None) -> int:
    """Add one failed attempt for `key`; returns the failures counted so far."""
    cursor = db.cursor(conn)
    cursor.execute(
        f"INSERT INTO {ATTEMPTS} (job_key, failures, last_error, traceback) "
        "VALUES (%s, 1, %s, %s) ON DUPLICATE KEY UPDATE failures = failures + 1, "
        "last_error = %s, traceback = %s",
        (key, error, traceback, error, traceback),
    )
    return failures_so_far(conn, key)


def last_failure(conn: Connection, key: bytes) -> tuple[str, str | None] | None:
    """The error and traceback of the job's last counted failure, if it has one."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT last_error, traceback FROM {ATTEMPTS} WHERE job_key = %s", (key,))
    row = cursor.fetchone()
    return (str(row[0] or "unknown"), None if row[1] is None else str(row[1])) if row else None


def forget(conn: Connection, key: bytes) -> None:
    """The job is done (or dead-lettered): its failure count goes."""
    db.cursor(conn).execute(f"DELETE FROM {ATTEMPTS} WHERE job_key = %s", (key,))


# -- outbox ------------------------------------------------------------------------------------
def enqueue(
    conn: Connection, function: str, payload: bytes, unique: str | None, *, delay: float = 0.0,
    priority: str = "normal",
) -> int:
    """Put a job in the outbox, due `delay` seconds from now; its ledger row's id."""
    cursor = db.cursor(conn)
    cursor.execute(
        f"INSERT INTO {OUTBOX} (`function`, payload, unique_key, not_before, priority) "
        "VALUES (%s, %s, %s, NOW(6) + INTERVAL %s MICROSECOND, %s)",
        (function, payload, unique or None, int(delay * 1_000_000), priority),
    )
    return int(cursor.lastrowid)


def rekey_failures(conn: Connection, old: bytes, new: bytes) -> None:
    """The failures counted under `old` count under `new` from now on."""
    db.cursor(conn).execute(f"UPDATE {ATTEMPTS} SET job_key = %s WHERE job_key = %s", (new, old))


def lock_due(conn: Connection, limit: int) -> list[tuple[Any, ...]]:
    """Due outbox rows, the longest due first, locked for this transaction and skipped by
    other relays: (id, function, payload, unique_key, priority, token, ships, age in
    microseconds since the row was written). Read through the index on not_before, so a poll
    costs the due rows, not the leased backlog."""
    cursor = db.cursor(conn)
    # No gap locks: under REPEATABLE READ they deadlock the triggers' outbox INSERTs.
    cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    cursor.execute(
        f"SELECT id, `function`, payload, unique_key, priority, token, ships, "
        f"TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) FROM {OUTBOX} "
        "FORCE INDEX (due) WHERE not_before <= NOW(6) ORDER BY not_before, id LIMIT %s "
        "FOR UPDATE SKIP LOCKED",
        (limit,),
    )
    return list(cursor.fetchall())


# A DELETE of rows by id reads by the primary key only with ORDER BY id LIMIT: else, on a small
# table, the optimizer scans it, and under READ COMMITTED a DELETE (unlike an UPDATE) waits on
# every row another transaction holds (a trigger's row not yet committed), not only on its own.
_BY_IDS = "WHERE id IN ({}) ORDER BY id LIMIT {}"


def delete_outbox(conn: Connection, ids: Sequence[int]) -> None:
    db.cursor(conn).execute(f"DELETE FROM {OUTBOX} {_BY_IDS.format(_marks(ids), len(ids))}",
                            list(ids))


def lease(conn: Connection, ids: Sequence[int], seconds: float) -> None:
    """Shipped rows come due again after their lease: `seconds` the first time, doubled on
    every ship after it up to 16 times, so that a long backlog in gearmand is not shipped
    over and over."""
    db.cursor(conn).execute(
        f"UPDATE {OUTBOX} SET not_before = NOW(6) + INTERVAL (%s << LEAST(ships, 4)) "
        f"MICROSECOND, ships = ships + 1 WHERE id IN ({_marks(ids)})",
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
          f"(ships > 0 OR not_before <= NOW(6)), snoozes FROM {OUTBOX} FORCE INDEX (PRIMARY) "
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
        statements.append(_CLAIM.format(_marks(ids)))
        args += ids
    if keys:
        statements.append(f"SELECT job_key, failures FROM {ATTEMPTS} "
                          f"WHERE job_key IN ({_marks(keys)})")
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
            db.cursor(conn).execute(f"SELECT id FROM {OUTBOX} FORCE INDEX (PRIMARY) WHERE id IN "
                                    f"({_marks(ids)}) FOR UPDATE NOWAIT", list(ids))
            # Rows unlocked since the claim are locked now: held all the same, by this
            # transaction until it ends, and claimed next time.
            return frozenset(int(row[0]) for row in db.cursor(conn).fetchall())
    except db.ERRORS as exc:
        error = db.translate(exc)
        if getattr(error, "errno", None) in _LOCKED_ERRNOS:
            return frozenset(ids)  # only the statement failed: the transaction goes on
        raise


def delete_outbox_statement(ids: Sequence[int]) -> tuple[str, dict[str, int]]:
    """delete_outbox as a statement with named parameters, to send along with others."""
    names = [f"ledger_{index}" for index in range(len(ids))]
    marks = ", ".join(f"%({name})s" for name in names)
    return (f"DELETE FROM {OUTBOX} {_BY_IDS.format(marks, len(ids))}",
            dict(zip(names, ids, strict=True)))


def snooze(conn: Connection, ident: int, delay: float) -> int:
    """A job asked to run again later: its row due after `delay`, with no attempt spent;
    how many times it has snoozed, this one included."""
    cursor = db.cursor(conn)
    cursor.execute(f"UPDATE {OUTBOX} SET not_before = NOW(6) + INTERVAL %s MICROSECOND, "
                   "ships = 0, snoozes = snoozes + 1 WHERE id = %s",
                   (int(delay * 1_000_000), ident))  # fmt: skip
    cursor.execute(f"SELECT snoozes FROM {OUTBOX} WHERE id = %s", (ident,))
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def set_slots(conn: Connection, function: str, count: int) -> None:
    """The function's concurrency slots are 0..count-1 (the last host to start decides)."""
    cursor = db.cursor(conn)
    cursor.execute(f"INSERT IGNORE INTO {SLOTS} (`function`, slot) VALUES "
                   + ", ".join(["(%s, %s)"] * count),
                   [value for slot in range(count) for value in (function, slot)])
    cursor.execute(f"DELETE FROM {SLOTS} WHERE `function` = %s AND slot >= %s", (function, count))


def take_slot(conn: Connection, function: str) -> bool:
    """Lock a free concurrency slot of the function until the transaction ends; False when
    every slot is held (by transactions running its jobs, on any host)."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT slot FROM {SLOTS} WHERE `function` = %s LIMIT 1 FOR UPDATE "
                   "SKIP LOCKED", (function,))  # fmt: skip
    return cursor.fetchone() is not None


def reschedule(conn: Connection, ident: int, delay: float) -> None:
    """A failed attempt: the job's ledger row is due again `delay` seconds from now."""
    db.cursor(conn).execute(
        f"UPDATE {OUTBOX} SET not_before = NOW(6) + INTERVAL %s MICROSECOND, ships = 0 "
        "WHERE id = %s", (int(delay * 1_000_000), ident),
    )


def outbox_figures(conn: Connection) -> tuple[int, int, int, int, Any, Any]:
    """Rows; due rows, leased ones (shipped, lease running) and delayed ones (a retry not yet
    due); the age in microseconds of the oldest row and of the most overdue due row (None
    when there is none)."""
    cursor = db.cursor(conn)
    cursor.execute(
        "SELECT COUNT(*), COALESCE(SUM(not_before <= NOW(6)), 0), "
        "COALESCE(SUM(not_before > NOW(6) AND ships > 0), 0), "
        "COALESCE(SUM(not_before > NOW(6) AND ships = 0), 0), "
        "TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)), "
        "TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN not_before <= NOW(6) THEN not_before END), "
        f"NOW(6)) FROM {OUTBOX}"
    )
    rows, due, leased, delayed, oldest, overdue = cursor.fetchone()
    return int(rows), int(due), int(leased), int(delayed), oldest, overdue


def unserved_rows(conn: Connection, older_than: float) -> dict[str, tuple[int, int]]:
    """Rows written `older_than` seconds ago or earlier, per function: (rows, age in
    microseconds of the oldest). One scan of the ledger, as outbox_figures makes."""
    cursor = db.cursor(conn)
    cursor.execute(
        "SELECT `function`, COUNT(*), TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)) "
        f"FROM {OUTBOX} WHERE created_at <= NOW(6) - INTERVAL %s MICROSECOND "
        "GROUP BY `function` ORDER BY `function`", (int(older_than * 1_000_000),),
    )
    return {str(function): (int(rows), int(oldest))
            for function, rows, oldest in cursor.fetchall()}


# -- dead letters ------------------------------------------------------------------------------
def add_dead_letter(
    conn: Connection, key: bytes, function: str, payload: bytes, unique: str | None,
    attempts: int, error: str, traceback: str | None,
) -> None:
    """A dead letter for the job under `key`; its failed attempts are forgotten."""
    db.cursor(conn).execute(
        f"INSERT INTO {DEAD_LETTERS} (`function`, payload, unique_key, attempts, error, "
        f"traceback, first_failed_at) SELECT %s, %s, %s, %s, %s, %s, "
        f"(SELECT first_at FROM {ATTEMPTS} WHERE job_key = %s)",
        (function, payload, unique or None, attempts, error, traceback, key),
    )
    forget(conn, key)


def outbox_to_dead_letters(conn: Connection, ident: int, error: str) -> None:
    """Move one outbox row to the dead letters, with `error` as the reason."""
    cursor = db.cursor(conn)
    cursor.execute(
        f"INSERT INTO {DEAD_LETTERS} (`function`, payload, unique_key, attempts, error, "
        f"first_failed_at) SELECT `function`, payload, unique_key, 0, %s, NOW(6) "
        f"FROM {OUTBOX} WHERE id = %s", (error, ident),
    )
    cursor.execute(f"DELETE FROM {OUTBOX} WHERE id = %s", (ident,))


def dead_letters(conn: Connection, function: str | None, limit: int) -> list[tuple[Any, ...]]:
    """Dead letters in id order (DEAD_LETTER_COLUMNS), of one function or of all."""
    where, args = ("WHERE `function` = %s", [function]) if function else ("", [])
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT {DEAD_LETTER_COLUMNS} FROM {DEAD_LETTERS} {where} ORDER BY id "
                   "LIMIT %s", [*args, limit])  # fmt: skip
    return list(cursor.fetchall())


def dead_letter(conn: Connection, ident: int) -> tuple[Any, ...] | None:
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT {DEAD_LETTER_COLUMNS} FROM {DEAD_LETTERS} WHERE id = %s", (ident,))
    row = cursor.fetchone()
    return tuple(row) if row else None


# Dead letters that a host older than the refused table wrote for refused deliveries: never
# moved back into the ledger, since nothing proves where their payloads came from.
_NOT_REFUSED = "NOT (attempts = 0 AND error LIKE 'refused:%')"


def requeue_dead_letters(conn: Connection, ids: Sequence[int] | None) -> int:
    """Move dead letters (all when `ids` is None) back to the outbox; how many moved."""
    cursor = db.cursor(conn)
    where = f"WHERE id IN ({_marks(ids)}) AND {_NOT_REFUSED}" if ids else f"WHERE {_NOT_REFUSED}"
    cursor.execute(f"SELECT id FROM {DEAD_LETTERS} {where} ORDER BY id FOR UPDATE", ids or [])
    found = [int(row[0]) for row in cursor.fetchall()]
    if not found:
        return 0
    cursor.execute(
        f"INSERT INTO {OUTBOX} (`function`, payload, unique_key) SELECT `function`, payload, "
        f"unique_key FROM {DEAD_LETTERS} WHERE id IN ({_marks(found)}) ORDER BY id", found,
    )
    cursor.execute(f"DELETE FROM {DEAD_LETTERS} WHERE id IN ({_marks(found)})", found)
    return len(found)


def purge_dead_letters(conn: Connection, ids: Sequence[int] | None, function: str | None) -> int:
    """Delete dead letters by id, else of one function, else all; how many went."""
    cursor = db.cursor(conn)
    if ids:
        cursor.execute(f"DELETE FROM {DEAD_LETTERS} WHERE id IN ({_marks(ids)})", list(ids))
    elif function:
        cursor.execute(f"DELETE FROM {DEAD_LETTERS} WHERE `function` = %s", (function,))
    else:
        cursor.execute(f"DELETE FROM {DEAD_LETTERS}")
    return int(cursor.rowcount)


# -- refused deliveries ------------------------------------------------------------------------
def add_refused(conn: Connection, function: str, unique: bytes, payload: bytes,
                reason: str) -> None:
    """Record a refused delivery in bounded form (function, size, digest, first bytes), and
    drop the oldest beyond REFUSED_KEPT."""
    cursor = db.cursor(conn)
    cursor.execute(
        f"INSERT INTO {REFUSED} (`function`, unique_key, size, sha256, head, reason) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (function[:255], unique[:64], len(payload), hashlib.sha256(payload).hexdigest(),
         payload[:REFUSED_HEAD], reason[:512]),
    )
    cursor.execute(f"DELETE FROM {REFUSED} WHERE id + %s <= LAST_INSERT_ID()", (REFUSED_KEPT,))


def refused(conn: Connection, limit: int) -> list[tuple[Any, ...]]:
    """The newest refused deliveries: (id, function, unique_key, size, sha256, head, reason,
    refused_at)."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT id, `function`, unique_key, size, sha256, head, reason, refused_at "
                   f"FROM {REFUSED} ORDER BY id DESC LIMIT %s", (limit,))
    return list(cursor.fetchall())


def count_refused(conn: Connection) -> int:
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT COUNT(*) FROM {REFUSED}")
    return int(cursor.fetchone()[0])


# -- paused functions --------------------------------------------------------------------------
def is_paused(conn: Connection, function: str) -> bool:
    """Whether the function is paused (a primary-key read of a small table)."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT COUNT(*) FROM {PAUSED} WHERE `function` = %s", (function,))
    return bool(cursor.fetchone()[0])


def pause(conn: Connection, function: str, by: str) -> int:
    """Pause a function and park its ledger rows; how many were parked. Rows a worker is
    running now are left to finish; rows written later are parked by the worker that gets
    their job."""
    cursor = db.cursor(conn)
    # Semi-consistent reads: the UPDATE waits on no row it does not change.
    cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    cursor.execute(f"INSERT INTO {PAUSED} (`function`, paused_by) VALUES (%s, %s) "
                   "ON DUPLICATE KEY UPDATE paused_by = paused_by", (function, by[:255]))
    cursor.execute(f"UPDATE {OUTBOX} SET not_before = %s WHERE `function` = %s AND "
                   "not_before < %s", (PARKED, function, PARKED))  # fmt: skip
    return int(cursor.rowcount)


def park(conn: Connection, ids: Sequence[int]) -> None:
    """Park ledger rows this transaction holds (their function is paused)."""
    db.cursor(conn).execute(f"UPDATE {OUTBOX} SET not_before = %s WHERE id IN ({_marks(ids)})",
                            [PARKED, *ids])


def resume(conn: Connection, function: str) -> tuple[bool, int]:
    """Resume a function: (whether it was paused, how many parked rows are due again)."""
    cursor = db.cursor(conn)
    cursor.execute(f"DELETE FROM {PAUSED} WHERE `function` = %s", (function,))
    was_paused = bool(cursor.rowcount)
    cursor.execute(f"UPDATE {OUTBOX} SET not_before = NOW(6), ships = 0 WHERE not_before >= %s "
                   "AND `function` = %s", (PARKED, function))  # fmt: skip
    return was_paused, int(cursor.rowcount)


def paused_functions(conn: Connection) -> list[tuple[str, datetime, str | None]]:
    """Every paused function: (function, paused_at, paused_by)."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT `function`, paused_at, paused_by FROM {PAUSED} ORDER BY `function`")
    return [(str(f), at, None if by is None else str(by)) for f, at, by in cursor.fetchall()]


def cancel_ledger_row(conn: Connection, ident: int, function: str) -> int:
    """Delete a ledger row (locked by lock_ledger_row) and its failed attempts: its job never
    runs, though a copy may sit in gearmand (it finds no row). Rows deleted (0 or 1)."""
    cursor = db.cursor(conn)
    cursor.execute(f"DELETE FROM {OUTBOX} WHERE id = %s", (ident,))
    deleted = int(cursor.rowcount)
    cursor.execute(f"DELETE FROM {ATTEMPTS} WHERE job_key = %s", (ledger_key(function, ident),))
    return deleted


def dead_letters_by_function(conn: Connection) -> dict[str, int]:
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT `function`, COUNT(*) FROM {DEAD_LETTERS} GROUP BY `function` "
                   "ORDER BY `function`")  # fmt: skip
    return {str(function): int(count) for function, count in cursor.fetchall()}


# -- the console: pages of big tables, each read by a key, never by OFFSET ---------------------
# The ledger has no index but its primary key (triggers pay for each index), so every read of
# it is a range of ids; the dead letters are read by id, or by (`function`, id).
LEDGER_STATES = {  # a row's state, as a condition on its columns
    "due": "not_before <= NOW(6)",
    "leased": "not_before > NOW(6) AND ships > 0",
    "delayed": "not_before > NOW(6) AND ships = 0",
}
MASKED = "***"  # what a page shows for a secret (logs.MASK)
LEDGER_COLUMNS = ("id, `function`, unique_key, priority, not_before, created_at, ships, "
                  "LENGTH(payload), LEFT(payload, %s), not_before <= NOW(6)")


def _like(text: str) -> str:
    """`text` as a LIKE pattern that matches it anywhere, with ! escaping the wildcards (not
    a backslash, whose meaning depends on NO_BACKSLASH_ESCAPES)."""
    return "%" + text.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def _masked(column: str, secrets: Sequence[str]) -> tuple[str, list[str]]:
    """`column` as a page shows it: each of `secrets` replaced by ***, in the order given.
    A search goes through this, never through the raw text: otherwise it would find what
    the page hides, and a prefix of a password at a time would give the password away.
    REPLACE, like Python's str.replace, matches case-sensitively, left to right, without
    overlaps, so with the page's list in the page's order it leaves what the page shows."""
    args: list[str] = []
    for secret in secrets:
        column = f"REPLACE({column}, %s, %s)"
        args += [secret, MASKED]
    return column, args


def _letter_filter(function: str | None, search: str | None, upto: int | None,
                   above: int | None = None, secrets: Sequence[str] = ()
                   ) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if function:
        clauses.append("`function` = %s")
        args.append(function)
    if search:
        error, error_args = _masked("error", secrets)
        payload, payload_args = _masked("payload", secrets)
        clauses.append(f"({error} LIKE %s ESCAPE '!' OR {payload} LIKE %s ESCAPE '!')")
        args += [*error_args, _like(search), *payload_args, _like(search)]
    if upto is not None:
        clauses.append("id <= %s")
        args.append(upto)
    if above is not None:
        clauses.append("id > %s")
        args.append(above)
    return clauses, args


def _where(clauses: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


def dead_letter_page(conn: Connection, function: str | None, search: str | None,
                     before: int | None, floor: int | None, limit: int, preview: int,
                     secrets: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """Dead letters newest first, below id `before` and from id `floor` on: (id, function,
    attempts, the error's first `preview` characters, the payload's first `preview` bytes,
    failed_at). A search matches the text with `secrets` masked (_masked)."""
    clauses, args = _letter_filter(function, search, None,
                                   None if floor is None else floor - 1, secrets)
    if before is not None:
        clauses.append("id < %s")
        args.append(before)
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT id, `function`, attempts, LEFT(error, %s), LEFT(payload, %s), "
                   f"failed_at FROM {DEAD_LETTERS} {_where(clauses)} ORDER BY id DESC LIMIT %s",
                   [preview, preview, *args, limit])  # fmt: skip
    return list(cursor.fetchall())


def dead_letter_ids(conn: Connection) -> tuple[int, int]:
    """The lowest and the highest dead letter id ((1, 0) when there is none)."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT COALESCE(MIN(id), 1), COALESCE(MAX(id), 0) FROM {DEAD_LETTERS}")
    low, high = cursor.fetchone()
    return int(low), int(high)


def count_dead_letters(conn: Connection, function: str | None, search: str | None,
                       above: int, upto: int, secrets: Sequence[str] = ()) -> int:
    """Dead letters of a filter with above < id <= upto."""
    clauses, args = _letter_filter(function, search, upto, above, secrets)
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT COUNT(*) FROM {DEAD_LETTERS} {_where(clauses)}", args)
    return int(cursor.fetchone()[0])


def lock_dead_letters(conn: Connection, function: str | None, search: str | None, after: int,
                      upto: int, limit: int, secrets: Sequence[str] = ()) -> list[int]:
    """Ids of the next `limit` dead letters of a filter above `after`, locked."""
    clauses, args = _letter_filter(function, search, upto, None, secrets)
    clauses.append("id > %s")
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT id FROM {DEAD_LETTERS} {_where(clauses)} ORDER BY id LIMIT %s "
                   "FOR UPDATE", [*args, after, limit])  # fmt: skip
    return [int(row[0]) for row in cursor.fetchall()]


def ledger_ids(conn: Connection) -> tuple[int, int] | None:
    """The lowest and highest id in the ledger, None when it is empty."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT MIN(id), MAX(id) FROM {OUTBOX}")
    low, high = cursor.fetchone()
    return None if low is None else (int(low), int(high))


def ledger_figures_between(conn: Connection, low: int, high: int) -> tuple[Any, ...]:
    """For ids low < id <= high: rows, due, leased, delayed, the oldest created_at and the
    earliest not_before of a due row (None when there are none)."""
    cursor = db.cursor(conn)
    cursor.execute(
        "SELECT COUNT(*), COALESCE(SUM(not_before <= NOW(6)), 0), "
        f"COALESCE(SUM({LEDGER_STATES['leased']}), 0), "
        f"COALESCE(SUM({LEDGER_STATES['delayed']}), 0), MIN(created_at), "
        "MIN(CASE WHEN not_before <= NOW(6) THEN not_before END), NOW(6) "
        f"FROM {OUTBOX} WHERE id > %s AND id <= %s", (low, high),
    )
    return tuple(cursor.fetchone())


def ledger_page(conn: Connection, state: str | None, after: int, limit: int, scan: int,
                preview: int, function: str | None = None, search: str | None = None,
                secrets: Sequence[str] = (), newest: bool = False
                ) -> tuple[list[tuple[Any, ...]], int | None]:  # fmt: skip
    """Ledger rows in id order past `after` (above it; with `newest`, newest first below it,
    0 for the newest row), of one state (LEDGER_STATES) or all, of one function or all,
    whose payload (with `secrets` masked) holds `search` or any, reading at most `scan` rows
    when one of these is given: (the rows as LEDGER_COLUMNS, the id the next page starts
    past; None at the end of the table)."""
    cursor = db.cursor(conn)
    conditions: list[str] = [LEDGER_STATES[state]] if state else []
    args: list[Any] = []
    if function:
        conditions.append("`function` = %s")
        args.append(function)
    if search:
        payload, payload_args = _masked("payload", secrets)
        conditions.append(f"{payload} LIKE %s ESCAPE '!'")
        args += [*payload_args, _like(search)]
    order = "DESC" if newest else "ASC"
    if newest and not after:
        past, past_args = "", []
    else:
        past, past_args = ("WHERE id < %s" if newest else "WHERE id > %s"), [after]
    if not conditions:  # every row: the next `limit` ids are the page
        cursor.execute(f"SELECT id FROM {OUTBOX} {past} ORDER BY id {order} LIMIT %s",
                       (*past_args, limit))
    else:  # no index serves these: look through the next `scan` rows
        columns = "id, `function`, not_before, ships" + (", payload" if search else "")
        cursor.execute(f"SELECT id FROM (SELECT {columns} FROM {OUTBOX} {past} ORDER BY id "
                       f"{order} LIMIT %s) AS scanned WHERE {' AND '.join(conditions)} "
                       f"ORDER BY id {order} LIMIT %s",
                       (*past_args, scan, *args, limit))  # fmt: skip
    ids = [int(row[0]) for row in cursor.fetchall()]
    if len(ids) == limit:
        following: int | None = ids[-1]
    else:  # the window held fewer: go on past its last row, if the table goes on
        cursor.execute(f"SELECT {'MIN' if newest else 'MAX'}(id), COUNT(*) FROM (SELECT id "
                       f"FROM {OUTBOX} {past} ORDER BY id {order} LIMIT %s) AS scanned",
                       (*past_args, scan))  # fmt: skip
        last, read = cursor.fetchone()
        following = int(last) if last is not None and int(read) == scan else None
    if not ids:
        return [], following
    cursor.execute(f"SELECT {LEDGER_COLUMNS} FROM {OUTBOX} WHERE id IN ({_marks(ids)}) "
                   f"ORDER BY id {order}", [preview, *ids])  # fmt: skip
    return list(cursor.fetchall()), following


def dead_letters_among(conn: Connection, ids: Sequence[int]) -> list[int]:
    """Which of `ids` are dead letters."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT id FROM {DEAD_LETTERS} WHERE id IN ({_marks(ids)}) ORDER BY id",
                   list(ids))
    return [int(row[0]) for row in cursor.fetchall()]


def ledger_row(conn: Connection, ident: int, head: int
               ) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:  # fmt: skip
    """One ledger row, its payload's first `head` bytes: (id, function, unique_key, priority,
    not_before, created_at, ships, LENGTH(payload), LEFT(payload, head), due) or None; and
    its job's failed attempts so far: (failures, first_at, last_error, traceback) or None."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT {LEDGER_COLUMNS} FROM {OUTBOX} WHERE id = %s", (head, ident))
    row = cursor.fetchone()
    if row is None:
        return None, None
    cursor.execute(f"SELECT failures, first_at, last_error, traceback FROM {ATTEMPTS} "
                   "WHERE job_key = %s", (ledger_key(str(row[1]), ident),))  # fmt: skip
    attempts = cursor.fetchone()
    return tuple(row), None if attempts is None else tuple(attempts)


def functions_seen(conn: Connection, window: int) -> set[str]:
    """Every function of a dead letter (read on their index, one entry per function), and of
    the newest `window` ledger rows (the ledger has no index on `function`)."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT DISTINCT `function` FROM {DEAD_LETTERS}")
    found = {str(row[0]) for row in cursor.fetchall()}
    cursor.execute(f"SELECT DISTINCT `function` FROM (SELECT `function` FROM {OUTBOX} ORDER BY "
                   "id DESC LIMIT %s) AS recent", (window,))  # fmt: skip
    return found | {str(row[0]) for row in cursor.fetchall()}


def lock_ledger_row(conn: Connection, ident: int) -> tuple[str, str] | None:
    """Lock a ledger row for an action, without waiting: (its function, its state: one of
    LEDGER_STATES, or "held" while another transaction holds it, a worker running its job);
    None when there is no such row."""
    cursor = db.cursor(conn)
    states = " ".join(f"WHEN {condition} THEN '{name}'"
                       for name, condition in LEDGER_STATES.items())
    try:
        with db.translating():
            cursor.execute(f"SELECT `function`, CASE {states} END FROM {OUTBOX} WHERE id = %s "
                           "FOR UPDATE NOWAIT", (ident,))  # fmt: skip
            row = cursor.fetchone()
    except db.ERRORS as exc:
        if getattr(db.translate(exc), "errno", None) in _LOCKED_ERRNOS:
            return None if _gone(conn, ident) else ("", "held")
        raise
    return None if row is None else (str(row[0]), str(row[1]))


def _gone(conn: Connection, ident: int) -> bool:
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT COUNT(*) FROM {OUTBOX} WHERE id = %s", (ident,))
    return not int(cursor.fetchone()[0])


def run_ledger_row_now(conn: Connection, ident: int) -> int:
    """A delayed row (a retry waiting out its back-off) due now: rows changed (0 or 1)."""
    cursor = db.cursor(conn)
    cursor.execute(f"UPDATE {OUTBOX} SET not_before = NOW(6) WHERE id = %s AND "
                   f"{LEDGER_STATES['delayed']}", (ident,))  # fmt: skip
    return int(cursor.rowcount)


def ledger_row_to_dead_letters(conn: Connection, ident: int, function: str, error: str) -> int:
    """Move a ledger row (locked by lock_ledger_row) to the dead letters with its failures so
    far, which are forgotten: rows moved (0 or 1). Its job, shipped already, finds no row
    and does nothing."""
    key = ledger_key(function, ident)
    cursor = db.cursor(conn)
    cursor.execute(
        f"INSERT INTO {DEAD_LETTERS} (`function`, payload, unique_key, attempts, error, "
        "traceback, first_failed_at) SELECT o.`function`, o.payload, o.unique_key, "
        "COALESCE(a.failures, 0), %s, a.traceback, COALESCE(a.first_at, NOW(6)) "
        f"FROM {OUTBOX} AS o LEFT JOIN {ATTEMPTS} AS a ON a.job_key = %s WHERE o.id = %s",
        (error, key, ident))  # fmt: skip
    moved = int(cursor.rowcount)
    cursor.execute(f"DELETE FROM {OUTBOX} WHERE id = %s", (ident,))
    cursor.execute(f"DELETE FROM {ATTEMPTS} WHERE job_key = %s", (key,))
    return moved


# -- schedules ---------------------------------------------------------------------------------
# Slots are stored as DATETIME in UTC, whatever the session's time zone: they are written as
# values, never with NOW().


@dataclass(frozen=True)
class ScheduleRow:
    """How far a schedule has got: no slot at or before `last_slot` fires again; `fired_slot`
    is the newest slot that fired, when, and by which host."""

    last_slot: datetime
    fired_slot: datetime | None
    fired_at: datetime | None
    fired_by: str | None


def _utc(value: Any) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)


def _stored(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def lock_schedule(conn: Connection, name: str, start: datetime) -> datetime:
    """The schedule's last_slot, its row locked until the transaction ends, so that no other
    host fires a slot of it meanwhile. A schedule new to the database starts at `start`."""
    cursor = db.cursor(conn)
    cursor.execute(f"INSERT INTO {SCHEDULES} (name, last_slot) VALUES (%s, %s) "
                   "ON DUPLICATE KEY UPDATE name = name", (name, _stored(start)))
    cursor.execute(f"SELECT last_slot FROM {SCHEDULES} WHERE name = %s FOR UPDATE", (name,))
    last_slot: datetime = cursor.fetchone()[0]
    return last_slot.replace(tzinfo=timezone.utc)


def advance_schedule(conn: Connection, name: str, last_slot: datetime,
                     fired_slot: datetime | None, fired_by: str) -> None:  # fmt: skip
    """Move the locked schedule past `last_slot`; `fired_slot`, if any, is the newest of the
    slots whose jobs this transaction writes to the outbox."""
    cursor = db.cursor(conn)
    if fired_slot is None:
        cursor.execute(f"UPDATE {SCHEDULES} SET last_slot = %s WHERE name = %s",
                       (_stored(last_slot), name))
    else:
        cursor.execute(f"UPDATE {SCHEDULES} SET last_slot = %s, fired_slot = %s, "
                       "fired_at = UTC_TIMESTAMP(6), fired_by = %s WHERE name = %s",
                       (_stored(last_slot), _stored(fired_slot), fired_by[:255], name))


def enqueue_many(conn: Connection, jobs: Sequence[tuple[str, bytes, str | None]]) -> None:
    """Put (function, payload, unique) jobs in the outbox, due now, their ids in this order."""
    if jobs:
        db.cursor(conn).execute(
            f"INSERT INTO {OUTBOX} (`function`, payload, unique_key) VALUES "
            + ", ".join(["(%s, %s, %s)"] * len(jobs)),
            [value for job in jobs for value in job],
        )


def schedule_rows(conn: Connection) -> dict[str, ScheduleRow]:
    """Every schedule the database knows, by name (also those no file lists any more)."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT name, last_slot, fired_slot, fired_at, fired_by FROM {SCHEDULES}")
    return {str(name): ScheduleRow(last_slot.replace(tzinfo=timezone.utc), _utc(fired_slot),
                                   _utc(fired_at), None if fired_by is None else str(fired_by))
            for name, last_slot, fired_slot, fired_at, fired_by in cursor.fetchall()}


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
        where += f" AND pid IN ({_marks(pids)})"
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
