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

Exactly once, whatever arrives: a ledger job runs only in the transaction that locks its ledger
row and deletes it with the job's effect, and only when it carries the row's token (job.py).
Copies of one row in a batch run once; a copy whose row is gone, or waits for a retry's delay,
is answered without running; a forged one is refused and recorded in bounded form. The claim
never waits on a lock: a job whose row another transaction holds (a trigger's, not yet
committed) is held by the worker and tried again a moment later, while its other jobs run on,
and is left to the relay (its row's lease) if the row stays held past the lease. The wait is
neither an attempt nor part of the job's timeout. Python handlers run in an XA transaction, so
the server refuses whatever they send that would end it early (COMMIT, DDL, SET autocommit,
...), and their session is reset after each transaction.
"""

from __future__ import annotations

import hmac
import logging
import os
import random
import re
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workerhost import db, failures, gearconn, handlers, logs, metrics, tables
from workerhost.config import Config, HandlerConfig
from workerhost.db import Connection, Database, is_transient
from workerhost.errors import JobError, Snooze
from workerhost.exitcodes import EXIT_DATABASE, EXIT_OK
from workerhost.gearconn import Assigned, GearmanLost, WorkerConnection
from workerhost.job import Job, Outcome, parse_unique, row_unique
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
# A job whose ledger row another transaction holds is tried again after this long, doubled
# each time up to HOLD_MAX: a trigger's transaction commits within milliseconds, mostly.
HOLD_FIRST = 0.002
HOLD_MAX = 0.1
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
    """

    started: Any  # multiprocessing Value('d')
    key: Any  # multiprocessing Array('c')
    jobs: Any  # multiprocessing Value('Q')

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


@dataclass
class _Held:
    """A job whose ledger row another transaction held at its last claim."""

    assigned: Assigned
    since: float
    delay: float = HOLD_FIRST
    next_try: float = 0.0


class Worker:
    """Runs one handler's jobs until told to stop or due for recycling."""

    def __init__(self, config: Config, handler: HandlerConfig, slot: Slot | None = None,
                 *, database: Database | None = None) -> None:
        self.config = config
        self.handler = handler
        self.slot = slot
        self.db = database or Database(config.database.connect_kwargs(), session=SESSION)
        # A Python handler gets the connection: its transactions are guarded (db.run).
        self.guarded = handler.callable is not None
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
        self._slots_set = False  # the function's concurrency slots written (limits:)

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
        waiting: list[_Held] = []  # jobs whose rows other transactions held
        try:
            while self.keep_going():
                self._connect(conns)
                # Held jobs run once BATCH_WAIT has passed since the first of them came in.
                now = time.monotonic()
                timeout = max(0.0, held_since + BATCH_WAIT - now) if held else POLL_INTERVAL
                if waiting:
                    timeout = min(timeout, max(0.0, min(w.next_try for w in waiting) - now))
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
                now = time.monotonic()
                ready = bool(held) and (len(held) >= limit or not asking
                                        or now - held_since >= BATCH_WAIT)
                # A connection lost since (even while answering) took its jobs back.
                waiting = [w for w in waiting if w.assigned.answerable]
                again = [w for w in waiting if w.next_try <= now][:limit]
                if ready or again:
                    waiting = [w for w in waiting if w not in again]
                    held = [a for a in held if a.answerable]
                    room = limit - len(again)
                    fresh, held = (held[:room], held[room:]) if ready else ([], held)
                    batch = [w.assigned for w in again] + fresh
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
                        waiting += self._hold(batch, answers, again)
                        # A connection whose jobs all wait asks for more all the same.
                        self._answer(*_answered(batch, answers), {a.conn for a in batch})
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

    def _hold(self, batch: list[Assigned], answers: list[Answer | object],
              again: list[_Held]) -> list[_Held]:
        """The jobs of a batch whose rows another transaction still holds, to try again; one
        held past the relay's lease is answered instead (as done, without running), and its
        row shipped again by the relay once it is due."""
        before = {id(w.assigned): w for w in again}
        now = time.monotonic()
        holding: list[_Held] = []
        for index, (assigned, answer) in enumerate(zip(batch, answers, strict=True)):
            if answer is not LATER:
                continue
            held = before.get(id(assigned)) or _Held(assigned, now)
            if now - held.since >= self.config.host.relay.lease:
                log.warning("job %s: its ledger row stayed held by another transaction for "
                            "%.0fs; leaving it to the relay", _job(assigned).describe(),
                            now - held.since)
                answers[index] = b""
                continue
            held.next_try = now + held.delay
            held.delay = min(held.delay * 2, HOLD_MAX)
            holding.append(held)
        return holding

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

    def _answer(self, held: list[Assigned], answers: list[Answer],
                touched: set[WorkerConnection] | None = None) -> None:
        """Answer each job on the connection that got it, then ask for more (on `touched` as
        well): one write each."""
        touched = set() if touched is None else {c for c in touched if c.connected}
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
            metrics.job_finished(self.handler.name, Outcome.DONE_BEFORE, len(copies))
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
            return [self.execute(job) for job in jobs]
        gone = sum(1 for r in results if r is _DONE_BEFORE)
        completed = len(results) - results.count(_DEFERRED) - results.count(LATER) - gone
        self.jobs_done += completed + gone
        metrics.job_finished(self.handler.name, Outcome.COMPLETE, completed)
        metrics.job_finished(self.handler.name, Outcome.DONE_BEFORE, gone)
        return [self.execute(job) if r is _DEFERRED else b"" if r is _DONE_BEFORE
                else r for job, r in zip(jobs, results, strict=True)]

    def _batch_attempt(self, conn: Connection, jobs: list[Job]) -> list[object]:
        claim = tables.claim(conn, [job.ledger for job in jobs if job.ledger is not None],
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

    def _verdict(self, job: Job, claim: tables.Claim) -> object | None:
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
        job.unique = row.unique or row_unique(row.payload, row.ident)
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
            self.db.run(lambda other: tables.set_slots(other, self.handler.name, limit))
            self._slots_set = True
        return tables.take_slot(conn, self.handler.name)

    def _snooze(self, conn: Connection, job: Job, seconds: float) -> tuple[object, object]:
        """The handler asked to run the job again after `seconds`: its row waits, no attempt
        is spent; past MAX_SNOOZES the snooze is a failed attempt."""
        ident = job.ledger
        if ident is None:  # from outside the ledger: it gets a row of its own there
            ident = tables.enqueue(conn, job.function, job.payload, failures.stable_unique(job))
        snoozes = tables.snooze(conn, ident, seconds)
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
            ident = tables.enqueue(conn, job.function, job.payload, failures.stable_unique(job))
        tables.park(conn, [ident])
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
        metrics.job_started(self.handler.name, count)
        if self.slot is not None:
            self.slot.begin(job.key)

    def _end(self, count: int = 1) -> None:
        metrics.job_ended(self.handler.name)
        if self.slot is not None:
            self.slot.end(count)

    def _execute(self, job: Job) -> tuple[object, object]:
        deadline = time.monotonic() + self.handler.timeout * DATABASE_WAIT_SHARE
        policy = self.handler.retries

        def attempt(conn: Connection) -> tuple[object, object]:
            claim = tables.claim(conn, [job.ledger] if job.ledger is not None else [],
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
                tables.add_refused(conn, job.function, job.unique_sent.encode(), job.payload,
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
                tables.forget(conn, job.key)
            if job.ledger is not None:
                tables.delete_outbox(conn, [job.ledger])  # with the effects, or not at all
            return Outcome.COMPLETE, result

        outcome, value = self._in_transaction(attempt, deadline, job)
        return outcome, value

    def _settle(self, job: Job, outcome: object, value: object) -> Answer:
        """Count, log and (for a failure) record how the job ended; its answer."""
        deadline = time.monotonic() + self.handler.timeout * DATABASE_WAIT_SHARE
        if outcome in (Outcome.COMPLETE, Outcome.DONE_BEFORE, Outcome.SNOOZED):
            assert isinstance(value, bytes) and isinstance(outcome, Outcome)
            metrics.job_finished(job.function, outcome)
            return value
        assert isinstance(value, failures.Failure)
        if outcome is Outcome.REFUSED:
            metrics.job_finished(job.function, Outcome.REFUSED)
            log.error("job %s refused without running: %s", job.describe(), value.error,
                      extra=logs.job_fields(job))
            return None
        if isinstance(outcome, Outcome):  # dead: a dead letter, the job never ran
            metrics.job_finished(job.function, outcome)
            log.error("job %s dead-lettered without running: %s", job.describe(), value.error,
                      extra=logs.job_fields(job))
            return None
        verdict = self._record_failure(job, value, deadline)
        how = "dead-lettered" if verdict == Outcome.DEAD else "will be retried"
        metrics.job_finished(job.function, verdict)
        # A retry is the system working as meant; only a dead letter needs a person.
        log.log(logging.ERROR if verdict == Outcome.DEAD else logging.WARNING,
                "job %s failed and %s: %s", job.describe(), how, value.error,
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
            return self.db.run(work, deadline=deadline, guarded=self.guarded)
        except db.RUN_ERRORS as exc:
            raise DatabaseLost(f"job {job.describe()}: {self.db.describe()} failed: {exc}") from exc


def _job(assigned: Assigned) -> Job:
    sent = assigned.unique.decode("utf-8", "replace")
    ledger, rest = parse_unique(sent)
    return Job(
        function=assigned.function.decode("utf-8", "replace"), payload=assigned.data,
        unique=rest, handle=assigned.handle.decode("utf-8", "replace"), ledger=ledger,
        proof=rest if ledger is not None else "", unique_sent=sent,
    )


def _answered(batch: list[Assigned], answers: list[Answer | object]
              ) -> tuple[list[Assigned], list[Answer]]:
    """The jobs of a batch that have their answer, and those answers."""
    pairs = [(a, answer) for a, answer in zip(batch, answers, strict=True) if answer is not LATER]
    return [a for a, _ in pairs], [answer for _, answer in pairs]  # type: ignore[misc]


def _snoozed(exc: BaseException) -> float | None:
    """The delay a handler's exception asks for (errors.Snooze, an sql: handler's SIGNAL
    'workerhost snooze 30s', a command: program's exit status 75), else None."""
    if isinstance(exc, Snooze):
        return exc.seconds
    error = db.translate(exc)
    if getattr(error, "errno", None) == db.ER_SIGNAL_EXCEPTION:
        match = _SQL_SNOOZE.search(str(getattr(error, "msg", "")))
        if match:
            from workerhost.converters import positive_duration

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
