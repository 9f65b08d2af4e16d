"""Handlers that the worker host tests run, each showing one behaviour."""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

from workerhost import Job


def record(job: Job, db: Any) -> dict[str, Any]:
    """Writes one row per job, keyed by the payload's id; replays are harmless (idempotent)."""
    data = job.json()
    cursor = db.cursor()
    cursor.execute(
        "INSERT INTO results (id, attempt, unique_key) VALUES (%s, %s, %s) "
        "ON DUPLICATE KEY UPDATE runs = runs + 1",
        (data["id"], job.attempt, job.unique),
    )
    return {"id": data["id"], "attempt": job.attempt}


def fail_until_third(job: Job, db: Any) -> str:
    """Raises on attempts 1 and 2, then writes its row."""
    if job.attempt < 3:
        raise RuntimeError(f"flaky failure on attempt {job.attempt}")
    record(job, db)
    return "ok"


def always_fails(job: Job, db: Any) -> None:
    db.cursor().execute("INSERT INTO results (id, attempt) VALUES (%s, %s)", (999999, 0))
    raise ValueError("this handler always fails")


def fails_until_flag(job: Job, db: Any) -> None:
    """Fails while the `flags` table says so; lets a test fix the cause and replay."""
    cursor = db.cursor()
    cursor.execute("SELECT broken FROM flags WHERE name = 'handler'")
    row = cursor.fetchone()
    if row and row[0]:
        raise RuntimeError("the flag says broken")
    record(job, db)


def sleeps(job: Job, db: Any) -> None:
    time.sleep(float(job.json().get("seconds", 3600)))
    record(job, db)


def exits(job: Job, db: Any) -> None:
    os._exit(17)


def segfaults(job: Job, db: Any) -> None:
    ctypes.string_at(0)


def slow_record(job: Job, db: Any) -> dict[str, Any]:
    time.sleep(float(job.json().get("seconds", 0.2)))
    return record(job, db)


def crashes_at_import_time() -> None:  # pragma: no cover - referenced by a broken config
    raise AssertionError("never called")


def record_unless_told_to_fail(job: Job, db: Any) -> dict[str, Any]:
    if job.json().get("fail"):
        raise RuntimeError(f"told to fail: {job.json()['id']}")
    return record(job, db)


def raises_huge(job: Job, db: Any) -> None:
    raise ValueError("x" * 200_000)


def record_pid(job: Job, db: Any) -> None:
    """Notes which worker process ran the job."""
    db.cursor().execute("INSERT INTO ran_by (id, pid) VALUES (%s, %s)",
                        (job.json()["id"], os.getpid()))


def slow_record_pid(job: Job, db: Any) -> None:
    """Sleeps, then notes which worker process ran the job."""
    time.sleep(float(job.json()["seconds"]))
    db.cursor().execute("INSERT INTO ran_by (id, pid) VALUES (%s, %s)",
                        (job.json()["id"], os.getpid()))


def closes_its_connection(job: Job, db: Any) -> None:
    """Ends the host's connection under it: a handler bug the host must survive."""
    db.cursor().execute("INSERT INTO results (id, attempt) VALUES (%s, %s)", (777, job.attempt))
    db.close()


def forks_a_child(job: Job, db: Any) -> str:
    """Leaves a child process behind (it sleeps), as handlers that fork sometimes do."""
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    return str(pid)


def grows(job: Job, db: Any) -> None:
    """Takes the payload's `mb` megabytes of memory, then sleeps: past any max_memory below."""
    held = b"x" * (job.json()["mb"] << 20)
    time.sleep(5)
    del held
