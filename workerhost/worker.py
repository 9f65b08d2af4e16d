"""One worker process: takes jobs for one handler from gearmand, runs them, writes back.

Ordering is the guarantee: the handler's writes are committed first, and only then is the job
reported complete to gearmand. A handler that raises rolls back, and the failure is counted and
turned into a delayed retry or a dead letter (failures.py) before gearmand hears WORK_FAIL.
A failure of the database itself is never the handler's fault: the work is re-run once the
database answers again, and if it does not answer in time the process exits without an answer,
so that gearmand gives the job to another worker.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gearman
import mysql.connector
from gearman.errors import ServerUnavailable

from workerhost import failures, handlers
from workerhost.config import Config, HandlerConfig
from workerhost.db import Connection, Database, is_transient
from workerhost.errors import ConnectError, JobError
from workerhost.job import Job

log = logging.getLogger("workerhost.worker")

# Exit codes of a worker process, read by the supervisor.
EXIT_OK = 0  # stopped on request, or recycled (max_jobs, max_lifetime)
EXIT_DATABASE = 4  # the database stayed unreachable while a job waited; job left to gearmand
# How often an idle worker wakes to look at its stop flag and its lifetime.
POLL_INTERVAL = 0.5
# Share of a job's timeout spent waiting for a lost database before leaving the job to gearmand.
DATABASE_WAIT_SHARE = 0.8


@dataclass
class Slot:
    """What a worker tells its supervisor, through memory they share.

    `started` is the wall time the current job began (0.0 when idle) and `key` the job's key;
    the supervisor reads them to enforce the timeout and to count a job whose process died.
    """

    started: Any  # multiprocessing Value('d')
    key: Any  # multiprocessing Array('c')
    jobs: Any  # multiprocessing Value('Q')

    def begin(self, key: bytes) -> None:
        self.key.raw = key[: len(self.key)].ljust(len(self.key), b"\0")
        self.started.value = time.time()

    def end(self) -> None:
        self.started.value = 0.0
        self.jobs.value += 1


class _GearmanWorker(gearman.GearmanWorker):  # type: ignore[misc]
    """pygearman's worker, with its exception-swallowing and endless loop taken over."""

    def __init__(self, servers: list[str], execute: Callable[[Any], bytes | None],
                 keep_going: Callable[[], bool]) -> None:
        super().__init__(servers)
        self._execute = execute
        self._keep_going = keep_going

    def on_job_execute(self, current_job: Any) -> bool:
        # `execute` never raises for a handler's failure; it returns None for WORK_FAIL.
        result = self._execute(current_job)
        if result is None:
            self.send_job_failure(current_job)
            return False
        self.send_job_complete(current_job, result)
        return True

    def after_poll(self, any_activity: bool) -> bool:
        return self._keep_going()


class Worker:
    """Runs one handler's jobs until told to stop or due for recycling."""

    def __init__(self, config: Config, handler: HandlerConfig, slot: Slot | None = None,
                 *, database: Database | None = None) -> None:
        self.config = config
        self.handler = handler
        self.slot = slot
        self.db = database or Database(config.database.connect_kwargs())
        self.stopping = False
        self.jobs_done = 0
        lifetime = handler.max_lifetime
        # Jitter, so that workers started together are not all recycled at once.
        self.retire_at = (
            time.monotonic() + lifetime * random.uniform(0.9, 1.0) if lifetime else None
        )

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def keep_going(self) -> bool:
        if self.handler.max_jobs and self.jobs_done >= self.handler.max_jobs:
            return False
        if self.retire_at is not None and time.monotonic() >= self.retire_at:
            return False
        return not self.stopping

    def serve(self) -> int:
        """The work loop, reconnecting to gearmand with jittered back-off. Returns an exit code."""
        servers = [str(server) for server in self.config.gearman.servers]
        backoff = self.config.gearman.reconnect_backoff
        while self.keep_going():
            gm = _GearmanWorker(servers, self.execute, self.keep_going)
            gm.set_client_id(f"workerhost-{os.getpid()}")
            gm.register_task(self.handler.name.encode(), lambda _w, _j: b"")
            try:
                gm.work(poll_timeout=POLL_INTERVAL)
                backoff = self.config.gearman.reconnect_backoff
            except ServerUnavailable:
                delay = random.uniform(backoff / 2, backoff)
                log.warning("no gearmand reachable among %s; retrying in %.1fs",
                            ", ".join(servers), delay)
                self._sleep(delay)
                backoff = min(backoff * 2, self.config.gearman.max_reconnect_backoff)
            except DatabaseLost as exc:
                log.error("%s; leaving the job to gearmand and exiting", exc)
                return EXIT_DATABASE
            finally:
                gm.shutdown()
        return EXIT_OK

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def execute(self, gjob: Any) -> bytes | None:
        """Run one job to its end; bytes for WORK_COMPLETE, None for WORK_FAIL."""
        job = Job(
            function=_text(gjob.task), payload=_bytes(gjob.data),
            unique=_text(gjob.unique), handle=_text(gjob.handle),
        )
        if self.slot is not None:
            self.slot.begin(job.key)
        try:
            return self._execute(job)
        finally:
            self.jobs_done += 1
            if self.slot is not None:
                self.slot.end()

    def _execute(self, job: Job) -> bytes | None:
        deadline = time.monotonic() + self.handler.timeout * DATABASE_WAIT_SHARE
        policy = self.handler.retries

        def attempt(conn: Connection) -> tuple[str, bytes | failures.Failure]:
            done = failures.failures_so_far(conn, job.key)
            job.attempt = done + 1
            if done >= policy.attempts:
                # Its worker died (or timed out) on the last attempt: never run it again.
                failure = failures.Failure(f"gave up after {done} failed attempts")
                failures.dead_letter(conn, job, done, _last_failure(conn, job) or failure)
                return "dead", failure
            try:
                result = handlers.run(self.handler, job, conn)
            except mysql.connector.Error as exc:
                if is_transient(exc):
                    raise
                return "failed", _failure(exc)
            except Exception as exc:
                return "failed", _failure(exc)
            if done:
                failures.forget(conn, job.key)
            return "done", result

        outcome, value = self._in_transaction(attempt, deadline, job)
        if outcome == "done":
            assert isinstance(value, bytes)
            return value
        assert isinstance(value, failures.Failure)
        if outcome == "dead":
            log.error("job %s dead-lettered without running: %s", job.describe(), value.error)
            return None
        verdict = self._in_transaction(
            lambda conn: failures.handle_failure(conn, job, policy, value), deadline, job
        )
        how = "dead-lettered" if verdict == "dead" else "will be retried"
        log.error("job %s failed and %s: %s", job.describe(), how, value.error)
        return None

    def _in_transaction(self, work: Callable[[Connection], Any], deadline: float, job: Job) -> Any:
        try:
            return self.db.run(work, deadline=deadline)
        except (mysql.connector.Error, ConnectError) as exc:
            raise DatabaseLost(f"job {job.describe()}: {self.db.describe()} failed: {exc}") from exc


class DatabaseLost(Exception):
    """The database stayed unreachable; the job must go back to gearmand unanswered."""


def _failure(exc: BaseException) -> failures.Failure:
    if isinstance(exc, JobError):
        return failures.Failure(str(exc), final=not exc.retryable)
    return failures.Failure(
        f"{type(exc).__name__}: {exc}",
        "".join(traceback.format_exception(exc)),
    )


def _last_failure(conn: Connection, job: Job) -> failures.Failure | None:
    cursor = conn.cursor()
    cursor.execute(
        f"SELECT last_error, traceback FROM {failures.ATTEMPTS_TABLE} WHERE job_key = %s",
        (job.key,),
    )
    row = cursor.fetchone()
    cursor.close()
    return failures.Failure(row[0] or "unknown", row[1]) if row else None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()


def main(config: Config, handler_name: str, slot: Slot | None) -> int:
    """Entry point of a worker process (forked by the supervisor)."""
    # The terminal's ^C reaches the whole process group; the supervisor decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handler = config.handlers[handler_name]
    worker = Worker(config, handler, slot)
    signal.signal(signal.SIGTERM, worker.request_stop)
    log.info("worker for %s started (pid %d)", handler_name, os.getpid())
    code = worker.serve()
    worker.db.close()
    return code
