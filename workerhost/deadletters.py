"""Inspecting and replaying dead letters (`workerhost dead-letters ...`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workerhost.db import Connection, Database
from workerhost.failures import DEAD_LETTERS_TABLE, OUTBOX_TABLE


@dataclass(frozen=True)
class DeadLetter:
    id: int
    function: str
    payload: bytes
    unique: str | None
    attempts: int
    error: str
    traceback: str | None
    first_failed_at: datetime | None
    failed_at: datetime


COLUMNS = (
    "id, function, payload, unique_key, attempts, error, traceback, first_failed_at, failed_at"
)


def _row(row: tuple[Any, ...]) -> DeadLetter:
    ident, function, payload, unique, attempts, error, tb, first, failed = row
    return DeadLetter(int(ident), str(function), bytes(payload),
                      None if unique is None else str(unique), int(attempts), str(error),
                      None if tb is None else str(tb), first, failed)


def list_letters(db: Database, function: str | None = None, limit: int = 100) -> list[DeadLetter]:
    def query(conn: Connection) -> list[DeadLetter]:
        cursor = conn.cursor()
        where, args = ("WHERE function = %s", [function]) if function else ("", [])
        cursor.execute(f"SELECT {COLUMNS} FROM {DEAD_LETTERS_TABLE} {where} ORDER BY id "
                       "LIMIT %s", [*args, limit])
        return [_row(r) for r in cursor.fetchall()]

    result: list[DeadLetter] = db.run(query)
    return result


def get(db: Database, ident: int) -> DeadLetter | None:
    def query(conn: Connection) -> DeadLetter | None:
        cursor = conn.cursor()
        cursor.execute(f"SELECT {COLUMNS} FROM {DEAD_LETTERS_TABLE} WHERE id = %s", (ident,))
        row = cursor.fetchone()
        return _row(row) if row else None

    result: DeadLetter | None = db.run(query)
    return result


def retry(db: Database, ids: list[int] | None) -> int:
    """Move dead letters (all when `ids` is None) back to the outbox, with fresh attempts."""
    def move(conn: Connection) -> int:
        cursor = conn.cursor()
        where = f"WHERE id IN ({', '.join(['%s'] * len(ids))})" if ids else ""
        cursor.execute(
            f"SELECT id FROM {DEAD_LETTERS_TABLE} {where} ORDER BY id FOR UPDATE", ids or [])
        found = [int(r[0]) for r in cursor.fetchall()]
        if not found:
            return 0
        marks = ", ".join(["%s"] * len(found))
        cursor.execute(
            f"INSERT INTO {OUTBOX_TABLE} (function, payload, unique_key) SELECT function, "
            f"payload, unique_key FROM {DEAD_LETTERS_TABLE} WHERE id IN ({marks}) ORDER BY id",
            found)
        cursor.execute(f"DELETE FROM {DEAD_LETTERS_TABLE} WHERE id IN ({marks})", found)
        return len(found)

    moved: int = db.run(move)
    return moved


def purge(db: Database, ids: list[int] | None, function: str | None = None) -> int:
    def delete(conn: Connection) -> int:
        cursor = conn.cursor()
        if ids:
            cursor.execute(f"DELETE FROM {DEAD_LETTERS_TABLE} WHERE id IN "
                           f"({', '.join(['%s'] * len(ids))})", ids)
        elif function:
            cursor.execute(f"DELETE FROM {DEAD_LETTERS_TABLE} WHERE function = %s", (function,))
        else:
            cursor.execute(f"DELETE FROM {DEAD_LETTERS_TABLE}")
        return int(cursor.rowcount)

    deleted: int = db.run(delete)
    return deleted
