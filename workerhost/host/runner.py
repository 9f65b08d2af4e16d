"""The database side of a worker: runs jobs in transactions, exactly once, and settles how
each ended (answered, retried, dead-lettered, refused, snoozed or parked).

Exactly once, whatever arrives: a ledger job runs only in the transaction that locks its ledger
row and deletes it with the job's effect, and only when it carries the row's token (job.py).
Copies of one row in a batch run once; a copy whose row is gone, or waits for a retry's delay,
is answered without running; a forged one is refused and recorded in bounded form. The claim
never waits on a lock: a job whose row another transaction holds (a trigger's, not yet
committed) comes back as LATER, for the worker to hold and try again (worker.py), while the
batch's other jobs run on. Python handlers run in an XA transaction, so the server refuses
whatever they send that would end it early (COMMIT, DDL, SET autocommit, ...), and their
session is reset after each transaction.

A batch runs in one transaction when all its jobs succeed; when one fails, the batch rolls back
and its jobs run again one by one, so that one bad job costs the others nothing but a second
run. A batch of `sql:` jobs that run together (their writes undone with the transaction,
nothing done outside it) is halved instead, and each half run as a batch, down to ALONE_FROM
jobs: one bad job among 128 costs 5 rolled-back batches and 11 commits besides its own, not
127. A failure of the database itself is never the handler's fault: the work is re-run once
the database answers again, and DatabaseLost tells the worker to leave the jobs to gearmand
when it does not answer in time.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workerhost.config.settings import Config, HandlerConfig
from workerhost.errors import ConnectError, JobError, Snooze
from workerhost.host import command, failures, handlers
from workerhost.model.job import Job, Outcome, row_unique
from workerhost.observe import events, logs
from workerhost.store import db, job_control, ledger, letters, limit_rows
from workerhost.store.db import Connection, Database, is_transient

log = logging.getLogger("workerhost.worker")

# Share of a job's timeout spent waiting for a lost database before leaving the job to gearmand.
DATABASE_WAIT_SHARE = 0.8
# Payload bytes a batch of sql: jobs may carry in one query, at most (handlers.run_sql_together);
# a larger batch runs job by job, well under any server's max_allowed_packet.
ONE_QUERY_BYTES = 1 << 20
# A failed batch of jobs that run together (handlers.runs_together) is split in halves, each run
# as a batch, until it is this small; then its jobs run one by one. Only there: a Python or
# command: handler may act outside the transaction, and every run of a good job repeats that.
ALONE_FROM = 8
# How often one job may snooze (errors.Snooze) before a snooze counts as a failed attempt.
MAX_SNOOZES = 100
# What an sql: handler's SIGNAL says to snooze: MESSAGE_TEXT = 'workerhost snooze 30s'.
_SQL_SNOOZE = re.compile(r"workerhost snooze (\S+)")
# The session of every worker connection: no gap locks (a claim of a row not yet committed must
# not block the INSERTs of other triggers), and each statement sees what committed before it.
SESSION = ("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",)


@dataclass
class Slot:
    """What a worker tells its supervisor, through memory they share.

    `started` is the time.monotonic() the current job began (0.0 when idle), `key` its key;
    the supervisor reads them to enforce the timeout and to count a job whose process died.
    `intake` is until when the worker takes new jobs as they come (0.0: it does not, being
    full, stopping or cut off from a server), `idle` whether it holds no job and waits for
    gearmand to wake it; its handler's higher-numbered processes read them to leave new jobs
    to it (worker.py, Worker.sibling_takes).
    """

    started: Any  # multiprocessing Value('d')
    key: Any  # multiprocessing Array('c')
    jobs: Any  # multiprocessing Value('Q')
    intake: Any = None  # multiprocessing Value('d'); None: no sibling reads it
    idle: Any = None  # multiprocessing Value('b')

    def begin(self, key: bytes) -> None:
        self.key.raw = key[: len(self.key)].ljust(len(self.key), b"\0")
        # CLOCK_MONOTONIC is one clock for every process of the machine, and no clock step
        # (NTP, an operator's `date`) moves it: a timeout is the job's own time, nothing else.
        self.started.value = time.monotonic()

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
_DONE_BEFORE = object()  # a job whose ledger row is gone, or not due: nothing to run now
LATER = object()  # a job whose ledger row another transaction holds: held, tried again
_RATE_WAIT = object()  # in a batch: a job past its rate, its row due again when its token is


class Runner:
    """Runs one handler's jobs against the database, in batches or one at a time."""

    def __init__(self, config: Config, handler: HandlerConfig, slot: Slot | None,
                 database: Database) -> None:
        self.config = config
        self.handler = handler
        self.slot = slot
        self.db = database
        # A Python handler gets the connection: its transactions are guarded (db.run).
        self.guarded = handler.python is not None
        self.jobs_done = 0
        self._slots_set = False  # the function's concurrency slots written (limits:)
        # limits: a connection of its own, autocommitted: a rate's token bucket is locked for
        # one statement, and slots are written outside the claim's transaction.
        self._limits_db: Database | None = None
    def run_batch(self, jobs: list[Job]) -> list[Answer | object]:
        """Run jobs in one transaction when they all succeed; else one at a time. A job whose
        ledger row another transaction holds gets LATER instead of an answer.

        Copies of one delivery (a row shipped again, through another gearmand) run once: the
        others are answered as done, since their row is the first one's to settle."""
        seen: dict[tuple[int, str], int] = {}
        copies: dict[int, int] = {}  # index of a copy -> index of the job it copies
        for index, job in enumerate(jobs):
            if job.ledger is not None:
                copies_of = seen.setdefault((job.ledger, job.proof), index)
                if copies_of != index:
                    copies[index] = copies_of
        if copies:
            events.emit(events.JobsFinished(self.handler.name, Outcome.DONE_BEFORE, len(copies)))
            self.jobs_done += len(copies)
            firsts = [job for index, job in enumerate(jobs) if index not in copies]
            answered = iter(self.run_batch(firsts))
            answers = [None if index in copies else next(answered)
                       for index in range(len(jobs))]
            return [b"" if index in copies else answer for index, answer in enumerate(answers)]
        if len(jobs) == 1:
            return [self.execute(jobs[0])]
        deadline = time.monotonic() + self.handler.timeout * DATABASE_WAIT_SHARE
        try:
            results: list[object] = self._in_transaction(
                lambda conn: self._batch_attempt(conn, jobs), deadline, jobs[0])
        except _BatchAborted:
            return self._after_failure(jobs)
        gone = sum(1 for r in results if r is _DONE_BEFORE)
        waiting = sum(1 for r in results if r is _RATE_WAIT)
        completed = (len(results) - results.count(_DEFERRED) - results.count(LATER) - gone
                     - waiting)
        self.jobs_done += completed + gone + waiting
        events.emit(events.JobsFinished(self.handler.name, Outcome.COMPLETE, completed))
        events.emit(events.JobsFinished(self.handler.name, Outcome.DONE_BEFORE, gone))
        events.emit(events.JobsFinished(self.handler.name, Outcome.SNOOZED, waiting))
        return [self.execute(job) if r is _DEFERRED else b"" if r in (_DONE_BEFORE, _RATE_WAIT)
                else r for job, r in zip(jobs, results, strict=True)]

    def _after_failure(self, jobs: list[Job]) -> list[Answer | object]:
        """The jobs of a batch that failed and rolled back: each half run as a batch of its
        own while they run together and the batch is larger than ALONE_FROM, else each job on
        its own. A rate's tokens are spent by every run, so a rated handler's jobs run alone."""
        if (len(jobs) <= ALONE_FROM or self.handler.rate is not None
                or not handlers.runs_together(self.handler)):
            return [self.execute(job) for job in jobs]
        half = len(jobs) // 2
        return [*self.run_batch(jobs[:half]), *self.run_batch(jobs[half:])]

    def _batch_attempt(self, conn: Connection, jobs: list[Job]) -> list[object]:
        claim = ledger.claim(conn, [job.ledger for job in jobs if job.ledger is not None],
                             [job.key for job in jobs], self.handler.name)
        results: list[object] = []
        runnable: list[Job] = []
        for job in jobs:
            verdict = self._verdict(job, claim)
            if verdict is None and claim.paused:
                self._park(conn, job)
                results.append(_DONE_BEFORE)
            elif verdict is None and not claim.failures.get(job.key):
                job.attempt = 1
                results.append(job)
                runnable.append(job)
            elif verdict is _DONE_BEFORE or verdict is LATER:
                results.append(verdict)
            else:  # refused, or failed before: dealt with on its own
                results.append(_DEFERRED)
        if runnable and not self._take_slot(conn):
            # Every concurrency slot of the function is held: they wait, like a held row.
            results = [LATER if isinstance(r, Job) else r for r in results]
            runnable = []
        if runnable:
            # Past the rate: the jobs without a token wait in the ledger until their token is
            # due (held in the worker only when that cannot be written).
            granted = self._take_rate(len(runnable))
            over = runnable[granted:]
            waits = _RATE_WAIT if over and self._wait_for_rate(conn, over) else LATER
            results = [waits if any(r is job for job in over) else r for r in results]
            runnable = runnable[:granted]
        # The ledger rows go in the transaction that commits the effects.
        done = [job.ledger for job in runnable if job.ledger is not None]
        try:
            if (len(runnable) > 1 and handlers.runs_together(self.handler)
                    and sum(len(job.payload) for job in runnable) <= ONE_QUERY_BYTES):
                answers = self._run_together(conn, runnable, done)
            else:
                answers = [self._run_one(conn, job) for job in runnable]
                if done:
                    ledger.delete_ledger_rows(conn, done)
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
                ledger.delete_ledger_rows_statement(done) if done else None)
        finally:
            self._end(len(jobs))

    def _verdict(self, job: Job, claim: ledger.Claim) -> object | None:
        """None when the job may run (its payload and unique then are its ledger row's);
        _DONE_BEFORE when its row is gone, or waits for a retry's delay; LATER when another
        transaction holds its row; else the Failure that refuses it."""
        if job.ledger is None:
            if self.handler.accept == "any":
                return None
            return failures.Failure(
                "refused: the job names no ledger row, so nothing proves that a trigger fired "
                "it (any SQL account can call the UDF, any client can reach gearmand); give "
                "the handler accept: any to run such jobs", final=True)
        row = claim.rows.get(job.ledger)
        if row is None:
            return LATER if job.ledger in claim.held else _DONE_BEFORE
        if row.function != job.function:
            return failures.Failure(
                f"refused: ledger row {job.ledger} belongs to {row.function!r}, not to this "
                "function", final=True)
        if not hmac.compare_digest(row.token.encode(), job.proof.encode()):
            return failures.Failure(
                f"refused: the job names ledger row {job.ledger} without the row's token, so "
                "it was not shipped from the ledger (a forged or stale unique)", final=True)
        if not row.runnable:
            return _DONE_BEFORE  # a copy from before a failure: the relay ships the retry
        job.use_payload(row.payload)
        job.unique = row.unique or row_unique(row.payload, row.ident, job.json)
        job.snoozes = row.snoozes
        return None

    def _take_slot(self, conn: Connection) -> bool:
        """A concurrency slot of the function for this transaction (limits: concurrency);
        True when the handler has no such limit."""
        limit = self.handler.concurrency
        if limit is None:
            return True
        if not self._slots_set:
            # In a transaction of its own: writing slot rows waits on those held.
            self._limits().run(lambda other: limit_rows.set_slots(other, self.handler.name, limit))
            self._slots_set = True
        return limit_rows.take_slot(conn, self.handler.name)

    def _take_rate(self, wanted: int) -> int:
        """How many of `wanted` jobs may start now (limits: rate), all when there is no such
        limit. A token taken is spent though the transaction rolls back: the rate counts jobs
        started. A lost connection gives none: the jobs wait and ask again."""
        if self.handler.rate is None:
            return wanted
        limits = self._limits()
        try:
            with db.translating():
                return limit_rows.take_rate(limits.conn, self.handler.name, self.handler.rate,
                                            wanted)
        except db.RUN_ERRORS as exc:
            cause = exc.__cause__ if isinstance(exc, ConnectError) else db.translate(exc)
            if cause is None or not is_transient(cause):
                raise
            limits.reset()
            return 0

    def _wait_for_rate(self, conn: Connection, jobs: list[Job]) -> bool:
        """Jobs that got no token (limits: rate) wait in the ledger, in this transaction,
        until their token is due (limit_rows.book_rate), and their gearmand jobs are answered, so
        that a backlog waits in the ledger, not in workers, whatever the lease. False when
        that cannot be done: jobs from outside the ledger, or the limits connection lost; such
        jobs are held by their worker, which asks again soon."""
        rate = self.handler.rate
        ids = [job.ledger for job in jobs if job.ledger is not None]
        if rate is None or len(ids) < len(jobs):
            return False
        limits = self._limits()
        try:
            with db.translating():
                first = limit_rows.book_rate(limits.conn, self.handler.name, rate, len(ids))
        except db.RUN_ERRORS as exc:
            cause = exc.__cause__ if isinstance(exc, ConnectError) else db.translate(exc)
            if cause is None or not is_transient(cause):
                raise
            limits.reset()
            return False
        limit_rows.wait_for_rate(conn, ids, first, 1 / rate)
        log.debug("%d jobs of %s past the rate, due again in %.3gs and on", len(ids),
                  self.handler.name, first)
        return True

    def _limits(self) -> Database:
        if self._limits_db is None:
            self._limits_db = Database(self.config.database.connect_kwargs(),
                                       session=("SET SESSION autocommit = 1",))
        return self._limits_db

    def _snooze(self, conn: Connection, job: Job, seconds: float) -> tuple[object, object]:
        """The handler asked to run the job again after `seconds`: its row waits, no attempt
        is spent; past MAX_SNOOZES the snooze is a failed attempt."""
        ident = job.ledger
        if ident is None:  # from outside the ledger: it gets a row of its own there
            ident = ledger.enqueue(conn, job.function, job.payload, failures.stable_unique(job))
        snoozes = ledger.snooze(conn, ident, seconds)
        if snoozes > MAX_SNOOZES:
            return None, failures.Failure(
                f"snoozed {snoozes} times, past the limit of {MAX_SNOOZES}: counted as a "
                "failed attempt")
        log.info("job %s snoozed for %gs (%d so far)", job.describe(), seconds, snoozes,
                 extra=logs.job_fields(job))
        return Outcome.SNOOZED, b""

    def _park(self, conn: Connection, job: Job) -> None:
        """The function is paused: the job waits in the ledger, parked, until it is resumed
        (a job from outside the ledger gets a row of its own there first)."""
        ident = job.ledger
        if ident is None:
            ident = ledger.enqueue(conn, job.function, job.payload, failures.stable_unique(job))
        job_control.park(conn, [ident])
        log.info("job %s parked in the ledger: %s is paused", job.describe(), job.function,
                 extra=logs.job_fields(job))

    def execute(self, job: Job) -> Answer | object:
        """Run one job to its end in its own transaction (LATER: its row is held)."""
        outcome, value = self._execute(job)
        if outcome is not LATER:
            self.jobs_done += 1
        return value if outcome is LATER else self._settle(job, outcome, value)

    def _begin(self, job: Job, count: int = 1) -> None:
        """`count` jobs begin, together; the supervisor sees `job`'s key."""
        events.emit(events.JobsStarted(self.handler.name, count))
        if self.slot is not None:
            self.slot.begin(job.key)

    def _end(self, count: int = 1) -> None:
        events.emit(events.JobsEnded(self.handler.name))
        if self.slot is not None:
            self.slot.end(count)

    def _execute(self, job: Job) -> tuple[object, object]:
        deadline = time.monotonic() + self.handler.timeout * DATABASE_WAIT_SHARE
        policy = self.handler.retries

        def attempt(conn: Connection) -> tuple[object, object]:
            claim = ledger.claim(conn, [job.ledger] if job.ledger is not None else [],
                                 [job.key], self.handler.name)
            verdict = self._verdict(job, claim)
            if verdict is LATER:
                return LATER, LATER
            if verdict is None and claim.paused:
                self._park(conn, job)
                return Outcome.DONE_BEFORE, b""
            if verdict is _DONE_BEFORE:
                return Outcome.DONE_BEFORE, b""
            if isinstance(verdict, failures.Failure):
                # Refused: kept in bounded form, never as a job that could run again.
                letters.add_refused(conn, job.function, job.unique_sent.encode(), job.payload,
                                   verdict.error)
                return Outcome.REFUSED, verdict
            done = claim.failures.get(job.key, 0)
            job.attempt = done + 1
            if done >= policy.attempts:
                # Its worker died (or timed out) on the last attempt: never run it again.
                failure = failures.Failure(f"gave up after {done} failed attempts")
                last = failures.last_failure(conn, job.key) or failure
                failures.dead_letter(conn, job, done, last)
                return Outcome.DEAD, failure
            if not self._take_slot(conn):
                return LATER, LATER
            if not self._take_rate(1):
                waits = self._wait_for_rate(conn, [job])
                return (Outcome.SNOOZED, b"") if waits else (LATER, LATER)
            try:
                result = self._run_one(conn, job)
            except Exception as exc:  # a handler's failure, whatever it is
                if is_transient(exc):
                    raise
                self.db.restart()  # what it wrote before it failed: it runs again from scratch
                seconds = _snoozed(exc)
                if seconds is None:
                    return None, _failure(exc)
                return self._snooze(conn, job, seconds)
            if done:
                letters.forget(conn, job.key)
            if job.ledger is not None:
                ledger.delete_ledger_rows(conn, [job.ledger])  # with the effects, or not at all
            return Outcome.COMPLETE, result

        outcome, value = self._in_transaction(attempt, deadline, job)
        return outcome, value

    def _settle(self, job: Job, outcome: object, value: object) -> Answer:
        """Count, log and (for a failure) record how the job ended; its answer."""
        deadline = time.monotonic() + self.handler.timeout * DATABASE_WAIT_SHARE
        if outcome in (Outcome.COMPLETE, Outcome.DONE_BEFORE, Outcome.SNOOZED):
            assert isinstance(value, bytes) and isinstance(outcome, Outcome)
            events.emit(events.JobsFinished(job.function, outcome))
            return value
        assert isinstance(value, failures.Failure)
        if isinstance(outcome, Outcome):  # refused, or dead: a dead letter, the job never ran
            events.emit(events.JobsFinished(job.function, outcome, job=job, error=value.error,
                                            ran=False))
            return None
        verdict = self._record_failure(job, value, deadline)
        events.emit(events.JobsFinished(job.function, verdict, job=job, error=value.error))
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
            return self.db.run(work, deadline=deadline, guarded=self.guarded)
        except db.RUN_ERRORS as exc:
            raise DatabaseLost(f"job {job.describe()}: {self.db.describe()} failed: {exc}") from exc


def _snoozed(exc: BaseException) -> float | None:
    """The delay a handler's exception asks for (errors.Snooze, an sql: handler's SIGNAL
    'workerhost snooze 30s', a command: program's exit status 75), else None."""
    if isinstance(exc, Snooze):
        return exc.seconds
    error = db.translate(exc)
    if getattr(error, "errno", None) == db.ER_SIGNAL_EXCEPTION:
        match = _SQL_SNOOZE.search(str(getattr(error, "msg", "")))
        if match:
            from workerhost.config.converters import positive_duration

            try:
                return positive_duration(match.group(1))
            except ValueError:
                return None
    return None


def _failure(exc: BaseException) -> failures.Failure:
    if getattr(db.translate(exc), "errno", None) == db.ER_XAER_RMFAIL:
        return failures.Failure(
            "the handler tried to end the host's transaction through SQL (COMMIT, ROLLBACK, "
            "START TRANSACTION, DDL, LOCK TABLES or SET autocommit), which the server refused: "
            "the host commits a job's effect together with its ledger row, so a handler must "
            f"not; raise an exception to roll back ({exc})",
            "".join(traceback.format_exception(exc)))
    if isinstance(exc, command.CommandFailed):
        return failures.Failure(str(exc), exc.stderr)  # the program's stderr, not our stack
    if isinstance(exc, JobError):
        return failures.Failure(str(exc), final=not exc.retryable)
    return failures.Failure(
        f"{type(exc).__name__}: {exc}",
        "".join(traceback.format_exception(exc)),
    )
