"""Handlers for the trigger and delivery tests: they record what arrived, keyed by event id."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from workerhost import Job

CAPTURED = """CREATE TABLE captured (
    `function` VARCHAR(255) NOT NULL, event_id CHAR(36) NOT NULL, unique_key VARCHAR(255),
    payload LONGBLOB NOT NULL, row_id BIGINT, host_pid INT, worker_pid INT, attempt INT,
    runs INT NOT NULL DEFAULT 1, PRIMARY KEY (`function`, event_id))"""


def capture(job: Job, db: Any) -> str:
    """Stores the job as it arrived; a second run of the same event only counts in `runs`."""
    event = job.json()
    cursor = db.cursor()
    cursor.execute(
        "INSERT INTO captured (`function`, event_id, unique_key, payload, row_id, host_pid, "
        "worker_pid, attempt) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
        "ON DUPLICATE KEY UPDATE runs = runs + 1",
        (job.function, event["event_id"], job.unique, job.payload, event.get("id"),
         os.getppid(), os.getpid(), job.attempt),
    )
    cursor.close()
    return "ok"


def capture_slowly(job: Job, db: Any) -> str:
    """Writes its row first, then sleeps inside the open transaction; only the first run does.

    The process running the first run writes its pid to the payload's `pidfile`, so a test
    can kill it mid-job; a later run finds the file and finishes at once.
    """
    event = job.json()
    capture(job, db)
    if event["pidfile"] is None:
        return "ok"
    pidfile = Path(event["pidfile"])
    if not pidfile.exists():
        staging = pidfile.with_suffix(".new")
        staging.write_text(str(os.getpid()))
        staging.replace(pidfile)
        time.sleep(float(event["seconds"]))
    return "ok"


def fail_once_per_row(job: Job, db: Any) -> str:
    """Fails its first attempt, then captures like `capture`."""
    if job.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return capture(job, db)


def capture_with_pause(job: Job, db: Any) -> str:
    """Captures like `capture`, then takes 50 ms: a backlog builds up behind it."""
    capture(job, db)
    time.sleep(0.05)
    return "ok"


def commit_on_first_attempt(job: Job, db: Any) -> str:
    """Captures, then tries to end the host's transaction through SQL on its first attempt
    (the statement is in the payload's `end`), and leaves a session variable behind."""
    capture(job, db)
    cursor = db.cursor()
    cursor.execute("SET @left_behind = 'by an earlier job'")
    if job.attempt == 1:
        cursor.execute(job.json()["end"])
    cursor.close()
    return "ok"


def report_session(job: Job, db: Any) -> str:
    """Captures, with what the session carried in from earlier jobs as its unique_key
    (@left_behind, autocommit, the sql_mode holding ANSI_QUOTES), then leaves a variable and a
    setting behind for the next job."""
    cursor = db.cursor()
    cursor.execute("SELECT CONCAT_WS(',', COALESCE(@left_behind, '-'), @@autocommit + 0, "
                   "FIND_IN_SET('ANSI_QUOTES', @@sql_mode) > 0)")
    (seen,) = cursor.fetchone()
    cursor.execute("SET @left_behind = 'by an earlier job', "
                   "SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")
    cursor.close()
    event = job.json()
    cursor = db.cursor()
    cursor.execute(
        "INSERT INTO captured (`function`, event_id, unique_key, payload, row_id, attempt) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE runs = runs + 1",
        (job.function, event["event_id"], seen, job.payload, event.get("id"), job.attempt))
    cursor.close()
    return "ok"


def leave_rows_unread(job: Job, db: Any) -> str:
    """Captures, then reads one row of a many-row SELECT on an unbuffered cursor."""
    capture(job, db)
    cursor = db.cursor()
    cursor.execute("SELECT seq FROM (SELECT 1 AS seq UNION ALL SELECT 2 UNION ALL SELECT 3) s")
    cursor.fetchone()
    return "ok"


def snooze_first(job: Job, db: Any) -> str:
    """Writes a row, then snoozes its first run for half a second (the write rolls back with
    it); captures on the next."""
    from workerhost.errors import Snooze

    cursor = db.cursor()
    cursor.execute("INSERT INTO captured (`function`, event_id, payload) VALUES ('snoozed', "
                   "UUID(), '') ")
    cursor.close()
    if job.snoozes == 0:
        raise Snooze(0.5)
    return capture(job, db)


def count_at_once(job: Job, db: Any) -> str:
    """Counts, in a file of the database's own, how many runs of it are under way at once,
    keeping the most; takes 200 ms; then captures."""
    import fcntl
    import tempfile

    cursor = db.cursor()
    cursor.execute("SELECT DATABASE()")
    (name,) = cursor.fetchone()
    cursor.close()
    path = Path(tempfile.gettempdir()) / f"workerhost-at-once-{name}"

    def change(step: int) -> None:
        with open(path, "a+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            now, most = (int(part) for part in (file.read().split() or ["0", "0"]))
            now += step
            file.seek(0)
            file.truncate()
            file.write(f"{now} {max(most, now)}")

    change(+1)
    try:
        time.sleep(0.2)
    finally:
        change(-1)
    return capture(job, db)
