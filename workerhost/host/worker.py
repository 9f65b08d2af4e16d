"""One worker process: takes jobs for one handler from gearmand, runs them, writes back.

Ordering is the guarantee: the handler's writes are committed first, and only then is the job
reported complete to gearmand. What runs in the database, and how each job ends, is the
runner's (runner.py): this module is the gearmand side.

Throughput comes from batches: the process runs up to `batch` jobs per gearmand server in one
transaction, commits once, then answers each. It holds up to twice that many (on one connection
per server, see gearman/conn.py), so that the next batch is already there when one commits and the
process never waits for gearmand while jobs are queued; slow jobs are held fewer at a time, down
to one (pace.py). When it stops, the jobs it holds but has not started go back to gearmand's
queue. A job that comes alone runs at once; after a batch of several, the next one waits a
few milliseconds for more (BATCH_SPACING), so that a stream of small transactions is served
in batches that grow with it.

A job whose ledger row another transaction holds (a trigger's, not yet committed) comes back
from the runner as LATER: the worker holds it and tries it again a moment later, in a later
batch, while its other jobs run on, and leaves it to the relay (its row's lease) if the row
stays held past the lease. While many new jobs come back so, new jobs wait longer before their
first claim, about as long as those transactions take to commit (pace.FirstClaim): one claim
a job instead of several, and bigger batches. If the database does not answer in time, the
process exits without an answer, so that gearmand gives the job to another worker.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

from workerhost.config.settings import Config, HandlerConfig
from workerhost.exitcodes import EXIT_DATABASE, EXIT_OK
from workerhost.gearman import conn as gearconn
from workerhost.gearman.conn import Assigned, GearmanLost, WorkerConnection
from workerhost.host.pace import FirstClaim, Pace
from workerhost.host.runner import LATER, SESSION, Answer, DatabaseLost, Runner, Slot
from workerhost.model.job import Job, parse_unique
from workerhost.store.db import Database

__all__ = ["LATER", "DatabaseLost", "Slot", "Worker", "main"]

log = logging.getLogger("workerhost.worker")

# How often an idle worker wakes to look at its stop flag and its lifetime.
POLL_INTERVAL = 0.5
# How long held jobs wait for answers from servers still being asked for more, at most.
BATCH_WAIT = 0.002
# After a batch of n jobs, the next one waits until (n - 1) * BATCH_SPACING (BATCH_SPACING_MAX
# at most) has passed since it started, unless a full batch is there: under a stream of small
# transactions, jobs gather into batches that grow with the stream, and a commit, a claim and
# a wake-up serve many jobs instead of a few. A job that comes alone runs at once.
BATCH_SPACING = 0.001
BATCH_SPACING_MAX = 0.01
# Jobs held per server, at most, in batches: one runs while the next one comes in.
PREFETCH = 2
# A handler's processes on one host share a stream of small jobs out as little as its pace
# needs: a process leaves the new jobs gearmand wakes it for to a lower-numbered process of its
# handler that takes them as they come (Worker.sibling_takes), one whose batch has not run for
# TAKEN_WITHIN yet. Split over every process, a stream of single-row transactions makes a claim
# and a commit per job or two in each; gathered, one of each serves many. A process that left
# its jobs looks again every gearman/conn.py DEFER_RECHECK and asks for them once that sibling
# is idle or no longer takes them: gone, or still queued and its own. A sibling says until when
# it takes jobs (Slot.intake), INTAKE_FRESH ahead at each turn of its loop, so that one stopped
# or hung is passed over within that.
TAKEN_WITHIN = 0.02
INTAKE_FRESH = 2 * POLL_INTERVAL
# How long a stopping worker waits for gearmand to take its last answers.
ANSWER_TIMEOUT = 5.0
# A job whose ledger row another transaction holds is tried again after this long, doubled
# each time up to HOLD_MAX: a trigger's transaction commits within milliseconds, mostly.
HOLD_FIRST = 0.002
HOLD_MAX = 0.1


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
                 *, database: Database | None = None, siblings: Sequence[Slot] = ()) -> None:
        self.config = config
        self.handler = handler
        self.slot = slot
        self.siblings = [s for s in siblings if s.intake is not None and s.idle is not None]
        self.db = database or Database(config.database.connect_kwargs(), session=SESSION)
        self.runner = Runner(config, handler, slot, self.db)
        self.stopping = False
        lifetime = handler.max_lifetime
        # Jitter, so that workers started together are not all recycled at once.
        self.retire_at = (
            time.monotonic() + lifetime * random.uniform(0.9, 1.0) if lifetime else None
        )
        self._retry_at: dict[str, float] = {}  # per server: next connect attempt
        self._backoff: dict[str, float] = {}
        self._conns: list[WorkerConnection] = []

    @property
    def jobs_done(self) -> int:
        return self.runner.jobs_done

    def run_batch(self, jobs: list[Job]) -> list[Answer | object]:
        """The runner's run_batch (runner.py): an answer, or LATER, for each job."""
        return self.runner.run_batch(jobs)

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

    def sibling_takes(self, *, busy: bool = False) -> bool:
        """Whether a lower-numbered process of the handler takes new jobs as they come: its
        intake is ahead (it runs no batch, or one begun less than TAKEN_WITHIN ago: a longer
        one means a slow handler, whose jobs need every process). `busy`: one that is not
        idle as well, so that jobs may still wait for it."""
        now = time.monotonic()
        return any(sibling.intake.value > now and not (busy and sibling.idle.value)
                   for sibling in self.siblings)

    def _publish_intake(self, conns: list[WorkerConnection], held: int, waiting: int,
                        limit: int) -> None:
        """Until when this process takes new jobs as they come: not while it holds a full
        batch (jobs queue up behind it), stops, or is cut off from a server (the jobs there
        would wait for it). And whether it is idle: nothing held, every connection asleep."""
        if self.slot is None or self.slot.intake is None:
            return
        takes = held < limit and self.keep_going() and all(c.connected for c in conns)
        self.slot.intake.value = time.monotonic() + INTAKE_FRESH if takes else 0.0
        self.slot.idle.value = not held and not waiting and all(c.sleeping for c in conns)

    def _batch_begins(self, started: float, expected: float = 0.0) -> None:
        """Jobs that come while a batch runs wait for its end: past TAKEN_WITHIN, they are
        the siblings' (its intake lapses then), and at once when the batch is `expected` to
        take that long at the pace of the jobs before it (slow jobs: no job waits for one)."""
        if self.slot is not None and self.slot.intake is not None:
            until = started if expected >= TAKEN_WITHIN else started + TAKEN_WITHIN
            self.slot.intake.value = min(self.slot.intake.value, until)
            self.slot.idle.value = False

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
        first = FirstClaim(BATCH_WAIT)
        conns = [WorkerConnection(server, function, client_id, pace.per_connection(len(servers)))
                 for server in servers]
        if self.siblings:
            for conn in conns:
                conn.defer = self.sibling_takes
        self._conns = conns
        limit = self.handler.batch * len(conns)  # jobs run in one transaction, at most
        held: list[Assigned] = []
        held_since = 0.0
        waiting: list[_Held] = []  # jobs whose rows other transactions held
        spaced_until = 0.0  # when the next batch may start if it is not full
        try:
            while self.keep_going():
                self._connect(conns)
                self._publish_intake(conns, len(held), len(waiting), limit)
                # Held jobs run once the first claim's wait (BATCH_WAIT, or longer while
                # their rows were found held) has passed since the first of them came in.
                # A batch that is not full waits for the spacing after the last one as well.
                now = time.monotonic()
                spacing = spaced_until if len(held) < limit else 0.0
                timeout = (max(0.0, max(held_since + first.wait, spacing) - now) if held
                           else POLL_INTERVAL)
                if waiting:
                    timeout = min(timeout, max(0.0, min(w.next_try for w in waiting) - now))
                deferred = [c.deferred_until for c in conns if c.deferred_until]
                if deferred:
                    timeout = min(timeout, max(0.0, min(deferred) - now))
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
                now = time.monotonic()
                for conn in conns:
                    if conn.deferred_until and now >= conn.deferred_until:
                        # Asking resets gearmand's wake-up; while a sibling that takes the
                        # jobs is still at them, the answer would be one of its jobs.
                        if self.sibling_takes(busy=True):
                            conn.deferred_until = now + gearconn.DEFER_RECHECK
                        else:
                            conn.recheck()  # sent by the next wait
                asking = any(c.asking and c.connected for c in conns)
                now = time.monotonic()
                full = len(held) >= limit
                ready = bool(held) and (full or now >= spaced_until) and (
                    now - held_since >= first.wait or ((full or not asking) and not first.waiting))
                # A connection lost since (even while answering) took its jobs back.
                waiting = [w for w in waiting if w.assigned.answerable]
                again = [w for w in waiting if w.next_try <= now][:limit]
                if ready or again:
                    retried = {id(w) for w in again}
                    waiting = [w for w in waiting if id(w) not in retried]
                    held = [a for a in held if a.answerable]
                    room = limit - len(again)
                    fresh, held = (held[:room], held[room:]) if ready else ([], held)
                    batch = [w.assigned for w in again] + fresh
                    if batch:
                        started = time.monotonic()
                        if fresh:  # jobs tried again alone leave the spacing as it was
                            spaced_until = started + _spacing(len(fresh))
                        self._batch_begins(started, (pace.per_job or 0.0) * len(batch))
                        answers = self.run_batch([_job(a) for a in batch])
                        first.record(len(fresh), answers[len(again):].count(LATER))
                        # One commit is the batch's own; the commits of jobs that had to run
                        # alone (after a failure) are theirs, and count in the pace.
                        pace.record(len(batch), time.monotonic() - started,
                                    self.db.last_commit_seconds)
                        # Before answering: answering asks for more, within the new capacity.
                        for conn in conns:
                            conn.capacity = pace.per_connection(len(conns))
                        _wake(waiting, again, answers)
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

def _wake(waiting: list[_Held], again: list[_Held], answers: list[Answer | object]) -> None:
    """A job tried again found its row no longer held: the jobs held since as long or
    longer are tried again at once, not at the end of their back-off. Their rows were
    written no later, most often by the same transaction (a bulk INSERT's), which has
    committed; a row still held costs one more claim, in the next batch, with the others."""
    freed = [w.since for w, answer in zip(again, answers, strict=False) if answer is not LATER]
    if not freed:
        return
    now = time.monotonic()
    for held in waiting:
        if held.since <= max(freed):
            held.next_try = min(held.next_try, now)


def _spacing(jobs: int) -> float:
    """How long after a batch of `jobs` new jobs starts the next one may start, unless full."""
    return min(BATCH_SPACING_MAX, max(0, jobs - 1) * BATCH_SPACING)


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


def main(config: Config, handler_name: str, slot: Slot | None,
         siblings: Sequence[Slot] = ()) -> int:
    """Entry point of a worker process (forked by the supervisor)."""
    # The terminal's ^C reaches the whole process group; the supervisor decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handler = config.handlers[handler_name]
    worker = Worker(config, handler, slot, siblings=siblings)
    signal.signal(signal.SIGTERM, worker.request_stop)
    os.register_at_fork(after_in_child=worker.forked)
    log.info("worker for %s started (pid %d)", handler_name, os.getpid())
    code = worker.serve()
    worker.db.close()
    return code
