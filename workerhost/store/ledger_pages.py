"""The ledger read a page at a time, for the console and `workerhost jobs`: each page a
range of ids (the ledger has no index but its primary key and `due`, since triggers pay for
each index), never an OFFSET, so that a page costs the same at a million rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workerhost.model.job import ledger_key
from workerhost.model.ledger_state import LedgerState
from workerhost.store import db
from workerhost.store.db import Connection
from workerhost.store.letters import like_pattern, masked
from workerhost.store.schema import (
    ATTEMPTS,
    DEAD_LETTERS,
    LEDGER,
    marks,
)

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
