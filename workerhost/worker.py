"""One worker process: takes jobs for one handler from gearmand, runs them, writes back.

Ordering is the guarantee: the handler's writes are committed first, and only then is the job
reported complete to gearmand. A handler that raises rolls back, and the failure is counted and
turned into a delayed retry or a dead letter (failures.py) before gearmand hears WORK_FAIL.
A failure of the database itself is never the handler's fault: the work is re-run once the
database answers again, and if it does not answer in time the process exits without an answer,
so that gearmand gives the job to another worker.

Throughput comes from batches: the process runs up to `batch` jobs per gearmand server in one
transaction, commits once, then answers each. It holds up to twice that many (on one connection
per server, see gearconn.py), so that the next batch is already there when one commits and the
process never waits for gearmand while jobs are queued; slow jobs are held fewer at a time, down
to one (pace.py). When it stops, the jobs it holds but has not started go back to gearmand's
queue.
A batch never waits to fill up. When a job of the batch fails, the batch rolls back and its
jobs run again one by one, so that one bad job costs the others nothing but a second run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workerhost import db, failures, gearconn, handlers, logs, metrics, tables
from workerhost.config import Config, HandlerConfig
from workerhost.db import Connection, Database, is_transient
from workerhost.errors import JobError
from workerhost.exitcodes import EXIT_DATABASE, EXIT_OK
from workerhost.gearconn import Assigned, GearmanLost, WorkerConnection
from workerhost.job import Job, Outcome, parse_unique
from workerhost.pace import Pace

log = logging.getLogger("workerhost.worker")

# How often an idle worker wakes to look at its stop flag and its lifetime.
POLL_INTERVAL = 0.5
# How long held jobs wait for answers from servers still being asked for more, at most.
BATCH_WAIT = 0.002
# Jobs held per server, at most, in batches: one runs while the next one comes in.
PREFETCH = 2
# How long a stopping worker waits for gearmand to take its last answers.
ANSWER_TIMEOUT = 5.0
# Share of a job's timeout spent waiting for a lost database before leaving the job to gearmand.
DATABASE_WAIT_SHARE = 0.8
# Payload bytes a batch of sql: jobs may carry in one query, at most (handlers.run_sql_together);
# a larger batch runs job by job, well under any server's max_allowed_packet.
ONE_QUERY_BYTES = 1 << 20


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

    def end(self, count: int = 1) -> None:
        self.started.value = 0.0
        self.jobs.value += count


class DatabaseLost(Exception):
    """The database stayed unreachable; the job must go back to gearmand unanswered."""


class _BatchAborted(Exception):
    """A job of a batch failed: roll the batch back and run its jobs one at a time."""


# What a job ends with: bytes for WORK_COMPLETE, None for WORK_FAIL.
Answer = bytes | None
_DEFERRED = object()  # in a batch: a job with earlier failures, run on its own afterwards
_DONE_BEFORE = object()  # a job whose ledger row is gone: done already, or rolled back


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
        self._retry_at: dict[str, float] = {}  # per server: next connect attempt
        self._backoff: dict[str, float] = {}
        self._conns: list[WorkerConnection] = []

    def forked(self) -> None:
        """In a process a handler forked: let go of what is the worker's.

        Its gearmand connections are closed (the worker keeps its own copies): the child is no
        worker of the function, and nothing it does reaches gearmand in the worker's name. Its
        database connection is forgotten unused. SIGTERM ends it as it ends any process.
        """
        for conn in self._conns:
            conn.close()  # the fd only: gearmand hears nothing while the worker holds its copy
        self._conns = []
        self.db.forget()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def keep_going(self) -> bool:
        if self.handler.max_jobs and self.jobs_done >= self.handler.max_jobs:
            return False
        if self.retire_at is not None and time.monotonic() >= self.retire_at:
            return False
        return not self.stopping

    # -- the gearmand side ---------------------------------------------------------------
    def serve(self) -> int:
        """The work loop. Returns the process's exit code."""
        client_id = f"workerhost-{os.getpid()}".encode()
        function = self.handler.name.encode()
        servers = self.config.gearman.servers
        pace = Pace(self.handler.batch * PREFETCH * len(servers))
        conns = [WorkerConnection(server, function, client_id, pace.per_connection(len(servers)))
                 for server in servers]
        self._conns = conns
        limit = self.handler.batch * len(conns)  # jobs run in one transaction, at most
        held: list[Assigned] = []
        held_since = 0.0
        try:
            while self.keep_going():
                self._connect(conns)
                # Held jobs run once BATCH_WAIT has passed since the first of them came in.
                timeout = (max(0.0, held_since + BATCH_WAIT - time.monotonic()) if held
                           else POLL_INTERVAL)
                if not any(c.connected for c in conns):
                    time.sleep(min(timeout, 0.1))
                for conn in gearconn.wait(conns, timeout):
                    try:
                        fresh = conn.read()
                    except GearmanLost as exc:
                        self._lost(conn, exc)
                        held = [a for a in held if a.answerable]
                        continue
                    if fresh and not held:
                        held_since = time.monotonic()
                    held.extend(fresh)
                asking = any(c.asking and c.connected for c in conns)
                if held and (len(held) >= limit or not asking
                             or time.monotonic() - held_since >= BATCH_WAIT):
                    # A connection lost since (even while answering) took its jobs back.
                    held = [a for a in held if a.answerable]
                    batch, held = held[:limit], held[limit:]
                    if batch:
                        started = time.monotonic()
                        answers = self.run_batch([_job(a) for a in batch])
                        # One commit is the batch's own; the commits of jobs that had to run
                        # alone (after a failure) are theirs, and count in the pace.
                        pace.record(len(batch), time.monotonic() - started,
                                    self.db.last_commit_seconds)
                        # Before answering: answering asks for more, within the new capacity.
                        for conn in conns:
                            conn.capacity = pace.per_connection(len(conns))
                        self._answer(batch, answers)
                    # What is left arrived while that batch ran: it runs next, at once.
            self._say_goodbye(conns)
        except DatabaseLost as exc:
            log.error("%s; leaving %d held jobs to gearmand and exiting", exc, len(held))
            return EXIT_DATABASE
        finally:
            for conn in conns:
                conn.close()  # gearmand re-queues the jobs held and not started
        if held:
            log.info("stopping: %d jobs held and not started go back to gearmand", len(held))
        return EXIT_OK

    def _say_goodbye(self, conns: list[WorkerConnection]) -> None:
        """Make sure the last answers reach gearmand before the connections close."""
        for conn in conns:
            conn.grabbing = False
            try:
                conn.drain(ANSWER_TIMEOUT)
            except GearmanLost as exc:
                log.warning("%s; its last answers are lost, so those jobs run again", exc)

    def _connect(self, conns: list[WorkerConnection]) -> None:
        now = time.monotonic()
        for conn in conns:
            name = str(conn.server)
            if conn.connected or now < self._retry_at.get(name, 0.0):
                continue
            try:
                conn.connect()
                conn.flush()
            except GearmanLost as exc:
                self._lost(conn, exc)
                continue
            if name in self._backoff:
                log.info("connected to gearmand %s again", name)
                del self._backoff[name]

    def _lost(self, conn: WorkerConnection, exc: GearmanLost) -> None:
        """Reconnect later, with jittered doubling back-off per server."""
        conn.close()
        name = str(conn.server)
        gm = self.config.gearman
        backoff = min(self._backoff.get(name, gm.reconnect_backoff / 2) * 2,
                      gm.max_reconnect_backoff)
        self._backoff[name] = backoff
        delay = random.uniform(backoff / 2, backoff)
        self._retry_at[name] = time.monotonic() + delay
        log.warning("%s; reconnecting in %.1fs", exc, delay)

    def _answer(self, held: list[Assigned], answers: list[Answer]) -> None:
        """Answer each job on the connection that got it, then ask for more: one write each."""
        touched: set[WorkerConnection] = set()
        for assigned, answer in zip(held, answers, strict=True):
            if not assigned.answerable:
                continue  # gearmand has re-queued it already: it runs again elsewhere
            conn = assigned.conn
            if answer is None:
                conn.fail(assigned.handle)
            else:
                conn.complete(assigned.handle, answer)
            touched.add(conn)
        going = self.keep_going()
        for conn in touched:
            conn.grabbing = going
            conn.top_up()
            try:
                conn.flush()
            except GearmanLost as exc:
                self._lost(conn, exc)

    # -- the database side ---------------------------------------------------------------
    def run_batch(self, jobs: list[Job]) -> list[Answer]:
        """Run jobs in one transaction when they all succeed; else one at a time."""
        if len(jobs) == 1:
            return [self.execute(jobs[0])]
        deadline = time.monotonic() + self.handler.timeout * DATABASE_WAIT_SHARE
        try:
            results: list[object] = self._in_transaction(
                lambda conn: self._batch_attempt(conn, jobs), deadline, jobs[0])
        except _BatchAborted:
            return [self.execute(job) for job in jobs]
        gone = sum(1 for r in results if r is _DONE_BEFORE)
        completed = len(results) - results.count(_DEFERRED) - gone
        self.jobs_done += completed + gone
        metrics.job_finished(self.handler.name, Outcome.COMPLETE, completed)
        metrics.job_finished(self.handler.name, Outcome.DONE_BEFORE, gone)
        return [self.execute(job) if r is _DEFERRED else b"" if r is _DONE_BEFORE
                else r  # type: ignore[misc]
                for job, r in zip(jobs, results, strict=True)]

    def _batch_attempt(self, conn: Connection, jobs: list[Job]) -> list[object]:
        ledger, earlier = tables.claim_with_failures(
            conn, [job.ledger for job in jobs if job.ledger is not None],
            [job.key for job in jobs])
        results: list[object] = []
        runnable: list[Job] = []
        for job in jobs:
            origin = self._origin(job, ledger)
            if origin is not None or earlier.get(job.key):
                # Gone: answered at once. Refused, or failed before: dealt with on its own.
                results.append(_DONE_BEFORE if origin is _DONE_BEFORE else _DEFERRED)
            else:
                job.attempt = 1
                results.append(job)
                runnable.append(job)
        # The ledger rows go in the transaction that commits the effects.
        done = [job.ledger for job in runnable if job.ledger is not None]
        try:
            if (len(runnable) > 1 and handlers.runs_together(self.handler)
                    and sum(len(job.payload) for job in runnable) <= ONE_QUERY_BYTES):
                answers = self._run_together(conn, runnable, done)
            else:
                answers = [self._run_one(conn, job) for job in runnable]
                if done:
                    tables.delete_outbox(conn, done)
        except Exception as exc:  # a handler's failure, whatever it is
            if is_transient(exc):
                raise
            raise _BatchAborted from exc
        answered = iter(answers)
        return [next(answered) if isinstance(r, Job) else r for r in results]

    def _run_one(self, conn: Connection, job: Job) -> bytes:
        self._begin(job)
        try:
            return handlers.run(self.handler, job, conn, db.cursor(conn))
        finally:
            self._end()

    def _run_together(self, conn: Connection, jobs: list[Job], done: list[int]) -> list[bytes]:
        """The jobs' statements and the ledger rows' DELETE in one round trip.

        The supervisor times the query as one job and sees the first job's key: when the
        query runs past the handler's timeout, that job is counted as failed and runs on its
        own next time, where a job that hangs is found out.
        """
        self._begin(jobs[0], len(jobs))
        try:
            return handlers.run_sql_together(
                self.handler, jobs, db.cursor(conn),
                tables.delete_outbox_statement(done) if done else None)
        finally:
            self._end(len(jobs))

    def _claim(self, conn: Connection, jobs: list[Job]) -> dict[int, tuple[str, bytes]]:
        ids = [job.ledger for job in jobs if job.ledger is not None]
        return tables.claim(conn, ids) if ids else {}

    def _origin(self, job: Job, ledger: dict[int, tuple[str, bytes]]) -> object | None:
        """None when the job may run (its payload then is its ledger row's); _DONE_BEFORE
        when its ledger row is gone; else the Failure that refuses it."""
        if job.ledger is None:
            if self.handler.accept == "any":
                return None
            return failures.Failure(
                "refused: the job names no ledger row, so nothing proves that a trigger fired "
                "it (any SQL account can call the UDF, any client can reach gearmand); give "
                "the handler accept: any to run such jobs", final=True)
        row = ledger.get(job.ledger)
        if row is None:
            return _DONE_BEFORE
        function, payload = row
        if function != job.function:
            return failures.Failure(
                f"refused: ledger row {job.ledger} belongs to {function!r}, not to this "
                "function", final=True)
        job.use_payload(payload)
        return None

    def execute(self, job: Job) -> Answer:
        """Run one job to its end in its own transaction."""
        self._begin(job)
        try:
            return self._execute(job)
        finally:
            self.jobs_done += 1
            self._end()

    def _begin(self, job: Job, count: int = 1) -> None:
        """`count` jobs begin, together; the supervisor sees `job`'s key."""
        metrics.job_started(self.handler.name, count)
        if self.slot is not None:
            self.slot.begin(job.key)

    def _end(self, count: int = 1) -> None:
        metrics.job_ended(self.handler.name)
        if self.slot is not None:
            self.slot.end(count)

    def _execute(self, job: Job) -> Answer:
        deadline = time.monotonic() + self.handler.timeout * DATABASE_WAIT_SHARE
        policy = self.handler.retries

        def attempt(conn: Connection) -> tuple[Outcome | None, bytes | failures.Failure]:
            origin = self._origin(job, self._claim(conn, [job]))
            if origin is _DONE_BEFORE:
                return Outcome.DONE_BEFORE, b""
            if isinstance(origin, failures.Failure):
                # Refused: a ledger row it names is not its own, so it must stay as it is.
                failures.dead_letter(conn, dataclasses.replace(job, ledger=None), 0, origin)
                return Outcome.REFUSED, origin
            done = tables.failures_so_far(conn, job.key)
            job.attempt = done + 1
            if done >= policy.attempts:
                # Its worker died (or timed out) on the last attempt: never run it again.
                failure = failures.Failure(f"gave up after {done} failed attempts")
                last = failures.last_failure(conn, job.key) or failure
                failures.dead_letter(conn, job, done, last)
                return Outcome.DEAD, failure
            try:
                result = handlers.run(self.handler, job, conn)
            except Exception as exc:  # a handler's failure, whatever it is
                if is_transient(exc):
                    raise
                conn.rollback()  # what it wrote before it failed: it runs again from scratch
                return None, _failure(exc)
            if done:
                tables.forget(conn, job.key)
            if job.ledger is not None:
                tables.delete_outbox(conn, [job.ledger])  # with the effects, or not at all
            return Outcome.COMPLETE, result

        outcome, value = self._in_transaction(attempt, deadline, job)
        if outcome in (Outcome.COMPLETE, Outcome.DONE_BEFORE):
            assert isinstance(value, bytes)
            metrics.job_finished(job.function, outcome)
            return value
        assert isinstance(value, failures.Failure)
        if outcome is not None:  # dead or refused: a dead letter, the job never ran
            metrics.job_finished(job.function, outcome)
            log.error("job %s dead-lettered without running: %s", job.describe(), value.error,
                      extra=logs.job_fields(job))
            return None
        verdict = self._record_failure(job, value, deadline)
        how = "dead-lettered" if verdict == Outcome.DEAD else "will be retried"
        metrics.job_finished(job.function, verdict)
        log.error("job %s failed and %s: %s", job.describe(), how, value.error,
                  extra=logs.job_fields(job))
        return None

    def _record_failure(self, job: Job, failure: failures.Failure,
                        deadline: float) -> Outcome:
        """Count the failure and schedule its retry or dead letter. When the database refuses
        that as it is (a payload past max_allowed_packet, say), the job is dead-lettered in
        shortened form instead of being left to gearmand, which would hand it out forever."""
        policy = self.handler.retries
        try:
            verdict: Outcome = self.db.run(
                lambda conn: failures.handle_failure(conn, job, policy, failure),
                deadline=deadline)
            return verdict
        except db.ERRORS as exc:
            if is_transient(exc):
                raise DatabaseLost(f"job {job.describe()}: {self.db.describe()} failed: "
                                   f"{exc}") from exc
            refusal = str(db.translate(exc))
        log.error("job %s: recording its failure failed (%s); dead-lettering it in shortened "
                  "form", job.describe(), refusal, extra=logs.job_fields(job))
        self._in_transaction(lambda conn: failures.dead_letter_short(conn, job, failure, refusal),
                             deadline, job)
        return Outcome.DEAD

    def _in_transaction(self, work: Callable[[Connection], Any], deadline: float, job: Job) -> Any:
        try:
            return self.db.run(work, deadline=deadline)
        except db.RUN_ERRORS as exc:
            raise DatabaseLost(f"job {job.describe()}: {self.db.describe()} failed: {exc}") from exc


def _job(assigned: Assigned) -> Job:
    ledger, unique = parse_unique(assigned.unique.decode("utf-8", "replace"))
    return Job(
        function=assigned.function.decode("utf-8", "replace"), payload=assigned.data,
        unique=unique, handle=assigned.handle.decode("utf-8", "replace"), ledger=ledger,
    )


def _failure(exc: BaseException) -> failures.Failure:
    if isinstance(exc, handlers.CommandFailed):
        return failures.Failure(str(exc), exc.stderr)  # the program's stderr, not our stack
    if isinstance(exc, JobError):
        return failures.Failure(str(exc), final=not exc.retryable)
    return failures.Failure(
        f"{type(exc).__name__}: {exc}",
        "".join(traceback.format_exception(exc)),
    )


def main(config: Config, handler_name: str, slot: Slot | None) -> int:
    """Entry point of a worker process (forked by the supervisor)."""
    # The terminal's ^C reaches the whole process group; the supervisor decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handler = config.handlers[handler_name]
    worker = Worker(config, handler, slot)
    signal.signal(signal.SIGTERM, worker.request_stop)
    os.register_at_fork(after_in_child=worker.forked)
    log.info("worker for %s started (pid %d)", handler_name, os.getpid())
    code = worker.serve()
    worker.db.close()
    return code
