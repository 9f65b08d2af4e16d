"""Jobs as objects: pausing and resuming a function (its rows parked in the ledger), and
acting on one ledger row (cancel, run now, move to the dead letters) without waiting on a row
that a worker holds. Callers own the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from workerhost.model.job import ledger_key
from workerhost.model.ledger_state import PARKED, LedgerState
from workerhost.store import db
from workerhost.store.db import Connection
from workerhost.store.schema import (
    _LOCKED_ERRNOS,
    ATTEMPTS,
    DEAD_LETTERS,
    LEDGER,
    PAUSED,
    marks,
)


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
