"""Inspecting and replaying dead letters (`workerhost dead-letters ...`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workerhost import tables
from workerhost.db import Database


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


def _row(row: tuple[Any, ...]) -> DeadLetter:
    ident, function, payload, unique, attempts, error, tb, first, failed = row
    return DeadLetter(int(ident), str(function), bytes(payload),
                      None if unique is None else str(unique), int(attempts), str(error),
                      None if tb is None else str(tb), first, failed)


def list_letters(db: Database, function: str | None = None, limit: int = 100) -> list[DeadLetter]:
    rows = db.run(lambda conn: tables.dead_letters(conn, function, limit))
    return [_row(row) for row in rows]


def get(db: Database, ident: int) -> DeadLetter | None:
    row = db.run(lambda conn: tables.dead_letter(conn, ident))
    return _row(row) if row else None


def retry(db: Database, ids: list[int] | None) -> int:
    """Move dead letters (all when `ids` is None) back to the outbox, with fresh attempts."""
    moved: int = db.run(lambda conn: tables.requeue_dead_letters(conn, ids))
    return moved


def purge(db: Database, ids: list[int] | None, function: str | None = None) -> int:
    deleted: int = db.run(lambda conn: tables.purge_dead_letters(conn, ids, function))
    return deleted
