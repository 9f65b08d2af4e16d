"""A peer: the textbook polling outbox worker, as a team writes it without this project.

An AFTER INSERT trigger writes each job into a plain outbox table (peers.py creates both).
Each process loops: in one READ COMMITTED transaction, lock the oldest BATCH outbox rows
that no other process holds (FOR UPDATE SKIP LOCKED), run each job's write-back (the same
UPDATE as the project's bench handler, one statement per job), delete the rows, commit.
An empty poll sleeps IDLE_SLEEP; a deadlock or lock wait timeout rolls back and polls again.

Run as: python peer_poller.py DB-JSON
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import mysql.connector
from mysql.connector import errorcode

OUTBOX = "peer_outbox"
BATCH = 100
IDLE_SLEEP = 0.05  # seconds; a poller that spins on an empty table costs the server CPU
UPDATE = "UPDATE bench_rows SET done_at = NOW(6) WHERE id = %(id)s"
RETRIED = (errorcode.ER_LOCK_DEADLOCK, errorcode.ER_LOCK_WAIT_TIMEOUT)


def main() -> None:
    conn = mysql.connector.connect(**json.loads(sys.argv[1]), autocommit=False)
    cursor = conn.cursor()
    cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    while True:
        try:
            if not poll_once(conn, cursor):
                time.sleep(IDLE_SLEEP)
        except mysql.connector.Error as exc:
            if exc.errno not in RETRIED:
                raise
            conn.rollback()


def poll_once(conn: Any, cursor: Any) -> int:
    """One batch: rows written back and deleted, in one transaction; how many."""
    cursor.execute("START TRANSACTION")
    cursor.execute(f"SELECT id, payload FROM {OUTBOX} ORDER BY id LIMIT {BATCH} "
                   "FOR UPDATE SKIP LOCKED")
    rows = cursor.fetchall()
    if not rows:
        conn.rollback()
        return 0
    for _id, payload in rows:
        cursor.execute(UPDATE, json.loads(payload))
    ids = ", ".join(str(int(row_id)) for row_id, _payload in rows)
    cursor.execute(f"DELETE FROM {OUTBOX} WHERE id IN ({ids})")
    conn.commit()
    return len(rows)


if __name__ == "__main__":
    main()
