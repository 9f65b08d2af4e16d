"""Inspecting and replaying dead letters (`workerhost dead-letters ...`).

The table keeps a handler's error, traceback and payload as they were; what is read here for
a person has the database password masked (***) wherever one of them quotes it, as the log
does (a connection string in an exception, a statement quoted by the server).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workerhost.observe import logs
from workerhost.store import letters
from workerhost.store.db import Database


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


def letter_of_row(row: tuple[Any, ...], password: str) -> DeadLetter:
    ident, function, payload, unique, attempts, error, tb, first, failed = row

    def mask(text: object) -> str:
        return logs.mask(str(text), password)

    # surrogateescape: a payload that is not UTF-8 comes back byte for byte.
    shown = mask(bytes(payload).decode("utf-8", "surrogateescape"))
    return DeadLetter(int(ident), str(function), shown.encode("utf-8", "surrogateescape"),
                      None if unique is None else mask(unique), int(attempts), mask(error),
                      None if tb is None else mask(tb), first, failed)


def payload_text(payload: bytes, limit: int) -> str:
    """A payload for a terminal: its text when it is UTF-8, else escaped (\\xNN for a byte
    that is not); control characters other than newline and tab escaped either way, so that
    a payload cannot move the cursor or recolour the screen. Past `limit` bytes, cut and
    said so."""
    head = payload[:limit]
    try:
        text, note = head.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and len(payload) > limit:  # cut at the limit
            text, note = head[:exc.start].decode("utf-8"), ""
        else:
            text, note = head.decode("utf-8", "backslashreplace"), " (not UTF-8: \\xNN escapes)"
    text = "".join(c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode()
                   for c in text)
    if len(payload) > limit:
        note += f" (the first {limit} of {len(payload)} bytes)"
    return text + note


def list_letters(db: Database, function: str | None = None, limit: int = 100) -> list[DeadLetter]:
    rows = db.run(lambda conn: letters.dead_letters(conn, function, limit))
    return [letter_of_row(row, _password(db)) for row in rows]


def get(db: Database, ident: int) -> DeadLetter | None:
    row = db.run(lambda conn: letters.dead_letter(conn, ident))
    return letter_of_row(row, _password(db)) if row else None


def _password(db: Database) -> str:
    return str(db.param("password") or "")


def retry(db: Database, ids: list[int] | None) -> int:
    """Move dead letters (all when `ids` is None) back to the ledger, with fresh attempts."""
    moved: int = db.run(lambda conn: letters.requeue_dead_letters(conn, ids))
    return moved


def purge(db: Database, ids: list[int] | None, function: str | None = None) -> int:
    deleted: int = db.run(lambda conn: letters.purge_dead_letters(conn, ids, function))
    return deleted
