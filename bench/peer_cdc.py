"""A peer: a binlog CDC reader (python-mysql-replication), as teams build one without triggers.

A thread follows the server's binary log (ROW format) from its current end and queues the ids
of the rows inserted into bench_rows; the main thread takes whatever is queued (up to BATCH
rows), runs each one's write-back (the same UPDATE as the project's bench handler, one
statement per row) and commits (the whole batch again after a deadlock): batches grow with
the backlog, as the project's workers' do, instead of one commit per binlog event.

Run as: python peer_cdc.py DB-JSON SERVER-ID mariadb|mysql
"""

from __future__ import annotations

import json
import queue
import sys
import threading

import mysql.connector
from mysql.connector import errorcode
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import WriteRowsEvent

UPDATE = "UPDATE bench_rows SET done_at = NOW(6) WHERE id = %s"
BATCH = 1000
_STOP = -1  # queued when the stream ends
RETRIED = (errorcode.ER_LOCK_DEADLOCK, errorcode.ER_LOCK_WAIT_TIMEOUT)


def follow(db: dict[str, object], server_id: int, server: str,
           ids: queue.SimpleQueue[int]) -> None:
    conn = mysql.connector.connect(**db)
    cursor = conn.cursor()
    # From the log's current end, as a replica resumes. Without a position the library would
    # start at the first binlog and replay every earlier write.
    start: dict[str, object]
    if server == "mariadb":  # by GTID
        cursor.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        start = {"is_mariadb": True, "auto_position": cursor.fetchone()[0]}
    else:  # by file and offset (MySQL 8.0 names the statement differently)
        try:
            cursor.execute("SHOW BINARY LOG STATUS")
        except mysql.connector.Error:
            cursor.execute("SHOW MASTER STATUS")
        log_file, log_pos, *_ = cursor.fetchone()
        start = {"log_file": log_file, "log_pos": int(log_pos), "resume_stream": True}
    conn.close()
    stream = BinLogStreamReader(
        connection_settings={"host": db["host"], "port": db["port"], "user": db["user"],
                             "passwd": db["password"]},
        server_id=server_id, blocking=True, **start,
        only_events=[WriteRowsEvent], only_schemas=[db["database"]], only_tables=["bench_rows"],
    )
    try:
        for event in stream:
            for row in event.rows:
                # By position: column names need binlog_row_metadata=FULL, which every
                # system measured would then pay for.
                (row_id, *_rest) = row["values"].values()
                ids.put(int(row_id))
    finally:
        ids.put(_STOP)


def main() -> None:
    db = json.loads(sys.argv[1])
    ids: queue.SimpleQueue[int] = queue.SimpleQueue()
    threading.Thread(target=follow, args=(db, int(sys.argv[2]), sys.argv[3], ids),
                     daemon=True).start()
    conn = mysql.connector.connect(**db, autocommit=False)
    cursor = conn.cursor()
    while True:
        batch = [ids.get()]
        while len(batch) < BATCH and not ids.empty():
            batch.append(ids.get())
        if _STOP in batch:
            raise SystemExit("the binlog stream ended")
        while True:
            try:
                for row_id in batch:
                    cursor.execute(UPDATE, (row_id,))
                conn.commit()
                break
            except mysql.connector.Error as exc:
                if exc.errno not in RETRIED:
                    raise
                conn.rollback()


if __name__ == "__main__":
    main()
