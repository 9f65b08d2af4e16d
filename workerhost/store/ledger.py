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

from workerhost.model.job import ledger_key  # the console and its tests name it here
from workerhost.model.ledger_state import PARKED, LedgerState
from workerhost.store import db
from workerhost.store.db import Connection
from workerhost.store.letters import like_pattern, masked
from workerhost.store.schema import (
    _LOCKED_ERRNOS,
    ATTEMPTS,
    DEAD_LETTERS,
    LEDGER,
    PAUSED,
    RATES,
    SLOTS,
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


# How many of a rate's jobs may start at once after a lull: a fifth of a second's worth (at
# least one), twice a relay's default poll, so that the bucket seldom overflows while jobs
# booked past the rate come back (the rate is kept) and a burst stays small.
RATE_BURST_SECONDS = 0.2
# The row of workerhost_rates that books the function's jobs past its rate (book_rate): a name
# no function has (function names hold no whitespace), within the column's 255 characters.
_BOOKED = "{:.240} booked"


def rate_burst(per_second: float) -> float:
    return max(1.0, per_second * RATE_BURST_SECONDS)


def take_rate(conn: Connection, function: str, per_second: float, wanted: int) -> int:
    """Take up to `wanted` tokens from the function's bucket (limits: rate); how many it
    gave. One UPDATE, which the caller's connection must commit at once (autocommit), so
    that the row is locked for that statement only: hosts take turns on it, one statement
    each, not one job each. The count comes back as LAST_INSERT_ID(count), in the statement's
    own answer. tokens is assigned first, so it reads the row's old refilled_at on both
    servers (assigned left to right, or all at once under MariaDB's SIMULTANEOUS_ASSIGNMENT)."""
    burst = rate_burst(per_second)
    refilled = ("LEAST(%s, tokens + %s * GREATEST(0, TIMESTAMPDIFF(MICROSECOND, refilled_at, "
                "NOW(6))) / 1000000)")
    cursor = db.cursor(conn)
    for _ in range(2):
        cursor.execute(
            f"UPDATE {RATES} SET tokens = {refilled} - LAST_INSERT_ID(LEAST(%s, "
            f"FLOOR({refilled}))), refilled_at = NOW(6) WHERE `function` = %s",
            (burst, per_second, wanted, burst, per_second, function),
        )
        if cursor.rowcount:
            return int(cursor.lastrowid or 0)
        # The function's first take: its bucket starts full.
        cursor.execute(f"INSERT IGNORE INTO {RATES} (`function`, tokens, refilled_at) "
                       "VALUES (%s, %s, NOW(6))", (function, burst))
    return 0


def book_rate(conn: Connection, function: str, per_second: float, count: int) -> float:
    """Book `count` jobs that got no token (limits: rate) into the function's queue of jobs
    past its rate: the seconds from now after which the first is due, each next one a token's
    time (1 / per_second) later. The queue is the time its last booking is due, in a row of
    workerhost_rates of its own: jobs booked by every host at once come back one token's time
    apart, in the order they were booked, instead of all at the moment the bucket refills. It
    only spreads the jobs out: each one still takes a token from the bucket when it comes back
    (take_rate), and one that gets none is booked again, after the others. One UPDATE, like
    take_rate: the caller's connection commits at once."""
    step = int(1_000_000 / per_second)
    key = _BOOKED.format(function)
    cursor = db.cursor(conn)
    for _ in range(2):
        # LAST_INSERT_ID carries the queue's end as it was, in microseconds from now.
        cursor.execute(
            f"UPDATE {RATES} SET refilled_at = NOW(6) + INTERVAL "
            "(LAST_INSERT_ID(GREATEST(0, TIMESTAMPDIFF(MICROSECOND, NOW(6), refilled_at))) "
            "+ %s) MICROSECOND WHERE `function` = %s", (step * count, key))
        if cursor.rowcount:
            return (int(cursor.lastrowid or 0) + step) / 1_000_000
        cursor.execute(f"INSERT IGNORE INTO {RATES} (`function`, tokens, refilled_at) "
                       "VALUES (%s, 0, NOW(6))", (key,))
    return step / 1_000_000


def wait_for_rate(conn: Connection, ids: Sequence[int], first: float, step: float) -> None:
    """Jobs past their function's rate wait in the ledger: the rows `ids` come due `first`
    seconds from now, each next one `step` seconds after the one before, with no attempt
    spent and no snooze counted (MAX_SNOOZES is for handlers that ask), and unleased: the
    relay ships each when it is due."""
    db.cursor(conn).execute(
        f"UPDATE {LEDGER} SET not_before = NOW(6) + INTERVAL (%s + %s * (FIELD(id, "
        f"{marks(ids)}) - 1)) MICROSECOND, ships = 0 WHERE id IN ({marks(ids)})",
        [int(first * 1_000_000), int(step * 1_000_000), *ids, *ids])


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
    cursor.execute(f"UPDATE {LEDGER} SET not_before = %s WHERE `function` = %s AND "
                   "not_before < %s", (PARKED, function, PARKED))  # fmt: skip
    return int(cursor.rowcount)


def park(conn: Connection, ids: Sequence[int]) -> None:
    """Park ledger rows this transaction holds (their function is paused)."""
    db.cursor(conn).execute(f"UPDATE {LEDGER} SET not_before = %s WHERE id IN ({marks(ids)})",
                            [PARKED, *ids])


def resume(conn: Connection, function: str) -> tuple[bool, int]:
    """Resume a function: (whether it was paused, how many parked rows are due again)."""
    cursor = db.cursor(conn)
    cursor.execute(f"DELETE FROM {PAUSED} WHERE `function` = %s", (function,))
    was_paused = bool(cursor.rowcount)
    cursor.execute(f"UPDATE {LEDGER} SET not_before = NOW(6), ships = 0 WHERE not_before >= %s "
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
    cursor.execute(f"DELETE FROM {LEDGER} WHERE id = %s", (ident,))
    deleted = int(cursor.rowcount)
    cursor.execute(f"DELETE FROM {ATTEMPTS} WHERE job_key = %s", (ledger_key(function, ident),))
    return deleted


# -- the console: pages of big tables, each read by a key, never by OFFSET ---------------------
# The ledger has no index but its primary key (triggers pay for each index), so every read of
# it is a range of ids; the dead letters are read by id, or by (`function`, id).
LEDGER_COLUMNS = ("id, `function`, unique_key, priority, not_before, created_at, ships, "
                  "LENGTH(payload), LEFT(payload, %s), not_before <= NOW(6)")


def ledger_ids(conn: Connection) -> tuple[int, int] | None:
    """The lowest and highest id in the ledger, None when it is empty."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT MIN(id), MAX(id) FROM {LEDGER}")
    low, high = cursor.fetchone()
    return None if low is None else (int(low), int(high))


def ledger_figures_between(conn: Connection, low: int, high: int) -> tuple[Any, ...]:
    """For ids low < id <= high: rows, due, leased, delayed, the oldest created_at and the
    earliest not_before of a due row (None when there are none)."""
    cursor = db.cursor(conn)
    cursor.execute(
        "SELECT COUNT(*), COALESCE(SUM(not_before <= NOW(6)), 0), "
        f"COALESCE(SUM({LedgerState.LEASED.condition}), 0), "
        f"COALESCE(SUM({LedgerState.DELAYED.condition}), 0), MIN(created_at), "
        "MIN(CASE WHEN not_before <= NOW(6) THEN not_before END), NOW(6) "
        f"FROM {LEDGER} WHERE id > %s AND id <= %s", (low, high),
    )
    return tuple(cursor.fetchone())


def ledger_page(conn: Connection, state: str | None, after: int, limit: int, scan: int,
                preview: int, function: str | None = None, search: str | None = None,
                secrets: Sequence[str] = (), newest: bool = False,
                older_than: float | None = None,
                ) -> tuple[list[tuple[Any, ...]], int | None]:  # fmt: skip
    """Ledger rows in id order past `after` (above it; with `newest`, newest first below it,
    0 for the newest row), of one state (LedgerState) or all, of one function or all,
    whose payload (with `secrets` masked) holds `search` or any, written at least
    `older_than` seconds ago (created_at, the database server's clock) or any, reading at
    most `scan` rows when one of these is given: (the rows as LEDGER_COLUMNS, the id the next
    page starts past; None at the end of the table)."""
    cursor = db.cursor(conn)
    conditions: list[str] = [LedgerState(state).condition] if state else []
    args: list[Any] = []
    if function:
        conditions.append("`function` = %s")
        args.append(function)
    if search:
        payload, payload_args = masked("payload", secrets)
        conditions.append(f"{payload} LIKE %s ESCAPE '!'")
        args += [*payload_args, like_pattern(search)]
    if older_than is not None:
        conditions.append("created_at <= NOW(6) - INTERVAL %s MICROSECOND")
        args.append(int(older_than * 1_000_000))
    order = "DESC" if newest else "ASC"
    if newest and not after:
        past, past_args = "", []
    else:
        past, past_args = ("WHERE id < %s" if newest else "WHERE id > %s"), [after]
    if not conditions:  # every row: the next `limit` ids are the page
        cursor.execute(f"SELECT id FROM {LEDGER} {past} ORDER BY id {order} LIMIT %s",
                       (*past_args, limit))
    else:  # no index serves these: look through the next `scan` rows
        columns = "id, `function`, not_before, ships, created_at" + (", payload" if search
                                                                      else "")
        cursor.execute(f"SELECT id FROM (SELECT {columns} FROM {LEDGER} {past} ORDER BY id "
                       f"{order} LIMIT %s) AS scanned WHERE {' AND '.join(conditions)} "
                       f"ORDER BY id {order} LIMIT %s",
                       (*past_args, scan, *args, limit))  # fmt: skip
    ids = [int(row[0]) for row in cursor.fetchall()]
    if len(ids) == limit:
        following: int | None = ids[-1]
    else:  # the window held fewer: go on past its last row, if the table goes on
        cursor.execute(f"SELECT {'MIN' if newest else 'MAX'}(id), COUNT(*) FROM (SELECT id "
                       f"FROM {LEDGER} {past} ORDER BY id {order} LIMIT %s) AS scanned",
                       (*past_args, scan))  # fmt: skip
        last, read = cursor.fetchone()
        following = int(last) if last is not None and int(read) == scan else None
    if not ids:
        return [], following
    cursor.execute(f"SELECT {LEDGER_COLUMNS} FROM {LEDGER} WHERE id IN ({marks(ids)}) "
                   f"ORDER BY id {order}", [preview, *ids])  # fmt: skip
    return list(cursor.fetchall()), following


def ledger_row(conn: Connection, ident: int, head: int
               ) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:  # fmt: skip
    """One ledger row, its payload's first `head` bytes: (id, function, unique_key, priority,
    not_before, created_at, ships, LENGTH(payload), LEFT(payload, head), due) or None; and
    its job's failed attempts so far: (failures, first_at, last_error, traceback) or None."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT {LEDGER_COLUMNS} FROM {LEDGER} WHERE id = %s", (head, ident))
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
    cursor.execute(f"SELECT DISTINCT `function` FROM (SELECT `function` FROM {LEDGER} ORDER BY "
                   "id DESC LIMIT %s) AS recent", (window,))  # fmt: skip
    return found | {str(row[0]) for row in cursor.fetchall()}


def lock_ledger_row(conn: Connection, ident: int) -> tuple[str, str] | None:
    """Lock a ledger row for an action, without waiting: (its function, its state: one of
    LedgerState's values, or "held" while another transaction holds it, a worker running its job);
    None when there is no such row."""
    cursor = db.cursor(conn)
    states = " ".join(f"WHEN {state.condition} THEN '{state.value}'" for state in LedgerState)
    try:
        with db.translating():
            cursor.execute(f"SELECT `function`, CASE {states} END FROM {LEDGER} WHERE id = %s "
                           "FOR UPDATE NOWAIT", (ident,))  # fmt: skip
            row = cursor.fetchone()
    except db.ERRORS as exc:
        if getattr(db.translate(exc), "errno", None) in _LOCKED_ERRNOS:
            return None if _gone(conn, ident) else ("", "held")
        raise
    return None if row is None else (str(row[0]), str(row[1]))


def _gone(conn: Connection, ident: int) -> bool:
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT COUNT(*) FROM {LEDGER} WHERE id = %s", (ident,))
    return not int(cursor.fetchone()[0])


def run_ledger_row_now(conn: Connection, ident: int) -> int:
    """A delayed row (a retry waiting out its back-off) due now: rows changed (0 or 1)."""
    cursor = db.cursor(conn)
    cursor.execute(f"UPDATE {LEDGER} SET not_before = NOW(6) WHERE id = %s AND "
                   f"{LedgerState.DELAYED.condition}", (ident,))  # fmt: skip
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
        f"FROM {LEDGER} AS o LEFT JOIN {ATTEMPTS} AS a ON a.job_key = %s WHERE o.id = %s",
        (error, key, ident))  # fmt: skip
    moved = int(cursor.rowcount)
    cursor.execute(f"DELETE FROM {LEDGER} WHERE id = %s", (ident,))
    cursor.execute(f"DELETE FROM {ATTEMPTS} WHERE job_key = %s", (key,))
    return moved


def enqueue_many(conn: Connection, jobs: Sequence[tuple[str, bytes, str | None]]) -> None:
    """Put (function, payload, unique) jobs in the ledger, due now, their ids in this order."""
    if jobs:
        db.cursor(conn).execute(
            f"INSERT INTO {LEDGER} (`function`, payload, unique_key) VALUES "
            + ", ".join(["(%s, %s, %s)"] * len(jobs)),
            [value for job in jobs for value in job],
        )
