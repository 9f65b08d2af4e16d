"""Limits across every host, held in the database: a function's concurrency slots
(`workerhost_slots`) and its rate's token bucket (`workerhost_rates`). Each is taken in one
short statement, autocommitted on a connection of its own, so that no host holds a limit's row
for longer than that statement.
"""

from __future__ import annotations

from collections.abc import Sequence

from workerhost.store import db
from workerhost.store.db import Connection
from workerhost.store.schema import (
    LEDGER,
    RATES,
    SLOTS,
    marks,
)


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
