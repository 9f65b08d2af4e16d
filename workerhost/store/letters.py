"""Failed attempts, dead letters and refused deliveries: every statement against them.

Attempts count per job key until the job succeeds or becomes a dead letter; dead letters keep
a handler's error, traceback and payload as they were; refused deliveries are kept in bounded
form only and can never be moved back into the ledger. Callers own the transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from workerhost.store import db
from workerhost.store.db import Connection
from workerhost.store.schema import (
    ATTEMPTS,
    DEAD_LETTERS,
    LEDGER,
    REFUSED,
    REFUSED_HEAD,
    REFUSED_KEPT,
    marks,
)

DEAD_LETTER_COLUMNS = ("id, `function`, payload, unique_key, attempts, error, traceback, "
                       "first_failed_at, failed_at")


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
        f"SELECT job_key, failures FROM {ATTEMPTS} WHERE job_key IN ({marks(keys)})", keys
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


def rekey_failures(conn: Connection, old: bytes, new: bytes) -> None:
    """The failures counted under `old` count under `new` from now on."""
    db.cursor(conn).execute(f"UPDATE {ATTEMPTS} SET job_key = %s WHERE job_key = %s", (new, old))


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


def unshippable_to_dead_letters(conn: Connection, ident: int, error: str) -> None:
    """Move one ledger row that gearmand refused to the dead letters, with `error` as the reason."""
    cursor = db.cursor(conn)
    cursor.execute(
        f"INSERT INTO {DEAD_LETTERS} (`function`, payload, unique_key, attempts, error, "
        f"first_failed_at) SELECT `function`, payload, unique_key, 0, %s, NOW(6) "
        f"FROM {LEDGER} WHERE id = %s", (error, ident),
    )
    cursor.execute(f"DELETE FROM {LEDGER} WHERE id = %s", (ident,))


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
    """Move dead letters (all when `ids` is None) back to the ledger; how many moved."""
    cursor = db.cursor(conn)
    where = f"WHERE id IN ({marks(ids)}) AND {_NOT_REFUSED}" if ids else f"WHERE {_NOT_REFUSED}"
    cursor.execute(f"SELECT id FROM {DEAD_LETTERS} {where} ORDER BY id FOR UPDATE", ids or [])
    found = [int(row[0]) for row in cursor.fetchall()]
    if not found:
        return 0
    cursor.execute(
        f"INSERT INTO {LEDGER} (`function`, payload, unique_key) SELECT `function`, payload, "
        f"unique_key FROM {DEAD_LETTERS} WHERE id IN ({marks(found)}) ORDER BY id", found,
    )
    cursor.execute(f"DELETE FROM {DEAD_LETTERS} WHERE id IN ({marks(found)})", found)
    return len(found)


def purge_dead_letters(conn: Connection, ids: Sequence[int] | None, function: str | None) -> int:
    """Delete dead letters by id, else of one function, else all; how many went."""
    cursor = db.cursor(conn)
    if ids:
        cursor.execute(f"DELETE FROM {DEAD_LETTERS} WHERE id IN ({marks(ids)})", list(ids))
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


def dead_letters_by_function(conn: Connection) -> dict[str, int]:
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT `function`, COUNT(*) FROM {DEAD_LETTERS} GROUP BY `function` "
                   "ORDER BY `function`")  # fmt: skip
    return {str(function): int(count) for function, count in cursor.fetchall()}
MASKED = "***"  # what a page shows for a secret (logs.MASK)


def like_pattern(text: str) -> str:
    """`text` as a LIKE pattern that matches it anywhere, with ! escaping the wildcards (not
    a backslash, whose meaning depends on NO_BACKSLASH_ESCAPES)."""
    return "%" + text.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def masked(column: str, secrets: Sequence[str]) -> tuple[str, list[str]]:
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
        error, error_args = masked("error", secrets)
        payload, payload_args = masked("payload", secrets)
        clauses.append(f"({error} LIKE %s ESCAPE '!' OR {payload} LIKE %s ESCAPE '!')")
        args += [*error_args, like_pattern(search), *payload_args, like_pattern(search)]
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
    failed_at). A search matches the text with `secrets` masked (masked)."""
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


def dead_letters_among(conn: Connection, ids: Sequence[int]) -> list[int]:
    """Which of `ids` are dead letters."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT id FROM {DEAD_LETTERS} WHERE id IN ({marks(ids)}) ORDER BY id",
                   list(ids))
    return [int(row[0]) for row in cursor.fetchall()]
