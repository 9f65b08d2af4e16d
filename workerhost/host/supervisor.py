"""The parent process of `workerhost run`: starts, watches and restarts the worker processes.

Each child follows a small state machine (State, moved only by Child.to). A child that exits
within STARTSECS of its start failed to start: it is retried after a doubling back-off, and
after START_RETRIES such failures in a row it is FATAL and left stopped until the next reload.
A child that dies while running a job has its job counted as a failed attempt (the job's key
is in memory the two share), and so does one killed by the supervisor because its job ran past
the handler's timeout.

Signals: SIGTERM or SIGINT drains (children finish their job, then exit; those still running
after `host.shutdown_timeout` are killed); a second one kills every child at once. SIGHUP
re-reads the configuration and the handler modules (see reloading.py) and, if they load,
replaces the children one at a time.

Every few seconds the supervisor publishes its worker processes in the database, for the
console's workers page (heartbeat.py), and deletes them when it stops.
"""

from __future__ import annotations

import enum
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workerhost.config.settings import Config
from workerhost.errors import ConfigError
from workerhost.exitcodes import EXIT_OK, RET_KILLED, RET_OK, describe_child_exit
from workerhost.host import command, failures, relay, reloading, scheduler, worker
from workerhost.host.signals import Signals
from workerhost.model.job import Outcome
from workerhost.observe import events, heartbeat, logs, metrics
from workerhost.store.db import RUN_ERRORS, Database
from workerhost.store.worker_table import WorkerBeat

log = logging.getLogger("workerhost.supervisor")

STARTSECS = 1.0  # a child must live this long to count as started
START_RETRIES = 5  # failed starts in a row before a child is FATAL
START_BACKOFF = 0.5  # first delay before restarting a failed start; doubles each time
# A child that keeps dying after it started (a job that crashes its worker, a broken database)
# is restarted at once the first time, then after CRASH_BACKOFF, doubling up to
# MAX_CRASH_BACKOFF; a child that has run STABLE_SECS since its last start is forgiven.
CRASH_BACKOFF = 0.5
MAX_CRASH_BACKOFF = 30.0
STABLE_SECS = 10.0
TICK = 0.1  # seconds between two looks at the children
KEY_SIZE = 520  # bytes of a job key shared with the supervisor (see Job.key)
RELAY = "(relay)"  # the name under which the relay child is supervised
SCHEDULER = "(scheduler)"  # and the scheduler child, when the file has schedules
# Seconds the database gets to count a lost job; the supervisor's loop waits meanwhile.
COUNT_PATIENCE = 5.0
CONSOLE = "(console)"  # and the console child, when host.console.listen is set

_ctx = multiprocessing.get_context("fork")


class State(enum.Enum):
    """Where a child is in its life. A child has a process exactly in the LIVE states."""

    STOPPED = "STOPPED"  # not started yet, or gone for good (stopped, retired, drained)
    STARTING = "STARTING"  # forked less than STARTSECS ago
    RUNNING = "RUNNING"  # alive for STARTSECS: a start that worked
    BACKOFF = "BACKOFF"  # exited while STARTING; started again at next_start
    STOPPING = "STOPPING"  # asked to stop (SIGTERM; SIGKILL when time is up)
    EXITED = "EXITED"  # exited after it started (recycled, crashed); started again at next_start
    FATAL = "FATAL"  # START_RETRIES failed starts in a row; left stopped until a reload


LIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING})
WAITING = frozenset({State.STOPPED, State.BACKOFF, State.EXITED})  # started at next_start

# The moves Child.to allows, as in supervisor's process.py; any other is a bug.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.BACKOFF, State.EXITED, State.STOPPING}),
    State.RUNNING: frozenset({State.EXITED, State.STOPPING}),
    State.BACKOFF: frozenset({State.STARTING, State.FATAL, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.EXITED: frozenset({State.STARTING, State.STOPPED}),
    State.FATAL: frozenset({State.STOPPED}),
}


class IllegalTransition(AssertionError):
    """A child was moved between states the machine does not connect: a supervisor bug."""


@dataclass
class Child:
    handler: str
    index: int
    slot: worker.Slot
    state: State = State.STOPPED
    # The slots of its handler's lower-numbered processes when it started: it leaves new
    # jobs to them while they take them as they come (worker.py, Worker.sibling_takes).
    siblings: tuple[worker.Slot, ...] = ()
    process: Any = None
    config: Config | None = None  # what it was started with; a reload retires the others
    started_at: float = 0.0
    jobs_at_start: int = 0
    start_failures: int = 0
    crashes: int = 0  # deaths in a row after a start, none STABLE_SECS apart
    next_start: float = 0.0
    timed_out: float | None = None  # the timeout it was killed for; its job counts as such
    over_memory: int | None = None  # the bytes it used when killed for passing max_memory
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.handler}[{self.index}]"

    def to(self, state: State) -> None:
        """Move to `state`, checking the move and that a process exists exactly when LIVE."""
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.name}: {self.state.name} -> {state.name} "
                                    "is not a transition of the child state machine")
        if (state in LIVE) != (self.process is not None):
            has = "has a process" if self.process is not None else "has no process"
            raise IllegalTransition(f"{self.name}: {self.state.name} -> {state.name}, "
                                    f"but it {has}")
        log.debug("%s: %s -> %s", self.name, self.state.name, state.name)
        self.state = state


def new_slot() -> worker.Slot:
    return worker.Slot(
        started=_ctx.Value("d", 0.0, lock=False),
        key=_ctx.Array("c", KEY_SIZE, lock=False),
        jobs=_ctx.Value("Q", 0, lock=False),
        intake=_ctx.Value("d", 0.0, lock=False),
        idle=_ctx.Value("b", 0, lock=False),
    )


def _child_main(config: Config, handler: str, slot: worker.Slot,
                siblings: tuple[worker.Slot, ...] = ()) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if handler == RELAY:
        sys.exit(relay.main(config))
    if handler == SCHEDULER:
        sys.exit(scheduler.main(config))
    if handler == metrics.SERVER:
        sys.exit(metrics.main(config))
    if handler == CONSOLE:
        from workerhost import console  # here: a host without a console never imports Flask

        sys.exit(console.main(config))
    sys.exit(worker.main(config, handler, slot, siblings))


def fork_child(config: Config, child: Child) -> Any:
    process = _ctx.Process(
        target=_child_main, args=(config, child.handler, child.slot, child.siblings),
        name=f"workerhost {child.name}", daemon=False,
    )
    process.start()
    return process


class Supervisor:
    def __init__(self, config: Config, config_path: str | Path | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 job_clock: Callable[[], float] = time.monotonic,
                 kill: Callable[[int, int], None] = os.kill,
                 spawn: Callable[[Config, Child], Any] | None = None,
                 database: Callable[[Config], Database] | None = None,
                 load: Callable[[str | Path, Config], Config] = reloading.load_fresh,
                 signals: Signals | None = None,
                 memory: Callable[[int], int | None] = command.resident_bytes) -> None:
        self.config = config
        self.config_path = config_path
        # Seams: unit tests replace the clocks, signals, processes, loading and the database.
        # `clock` times everything of the supervisor's own; `job_clock` is only compared with
        # a job's start, which the worker writes into the slot from time.monotonic() (one
        # clock for every process of the machine, which no clock step moves).
        self.clock = clock
        self.job_clock = job_clock
        self.kill = kill
        self.spawn = spawn or fork_child
        self.database = database or (lambda cfg: Database(cfg.database.connect_kwargs()))
        # Every few seconds, the worker processes in the database for the console (heartbeat.py).
        self.heartbeat = heartbeat.Heartbeat(
            lambda: (database or heartbeat.database)(self.config))
        self.load = load
        self.memory = memory
        self.children: dict[tuple[str, int], Child] = {}
        self.signals = signals or Signals()
        self.drain_deadline: float | None = None  # set once a stop signal came

    # -- what should run ---------------------------------------------------------------
    def wanted(self) -> list[tuple[str, int]]:
        names = [(name, i) for name, h in self.config.handlers.items() for i in range(h.processes)]
        if self.config.host.relay.enabled:
            names.append((RELAY, 0))
        if self.config.schedules and self.config.host.scheduler.enabled:
            names.append((SCHEDULER, 0))
        if self.config.host.metrics is not None:
            names.append((metrics.SERVER, 0))
        if self.config.host.console.listen is not None:
            names.append((CONSOLE, 0))
        return names

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> int:
        signals = self.signals.install()
        log.info("workerhost %d starting: %s", os.getpid(), ", ".join(
            f"{name} x{h.processes}" for name, h in self.config.handlers.items()))
        try:
            while True:
                if signals.stops >= 2:
                    log.warning("second stop signal: killing %d processes without waiting for "
                                "their jobs", len(self.alive()))
                    self.kill_all()
                    return RET_KILLED
                if signals.stops == 1 and self.drain_deadline is None:
                    self.begin_drain()
                if signals.reload and self.drain_deadline is None:
                    signals.reload = False
                    self.reload()
                self.tick()
                if self.drain_deadline is not None and not self.alive():
                    log.info("all workers stopped; bye")
                    return RET_OK
                time.sleep(TICK)
        finally:
            self.heartbeat.stop(self.clock())

    def tick(self) -> None:
        now = self.clock()
        for child in list(self.children.values()):
            self.watch(child, now)
        if self.drain_deadline is not None:
            if now >= self.drain_deadline and self.alive():
                log.warning("shutdown_timeout passed; killing %d workers",
                            len(self.alive()))
                self.kill_all()
        else:
            for key in self.wanted():
                wanted = self.children.get(key)
                if wanted is None:
                    wanted = self.children[key] = Child(key[0], key[1], new_slot())
                if wanted.state in WAITING and now >= wanted.next_start:
                    self.start(wanted, now)
            self.roll()
        self.heartbeat.tick(now, self.worker_beats)

    def alive(self) -> list[Child]:
        return [c for c in self.children.values() if c.state in LIVE]

    def worker_beats(self) -> list[WorkerBeat]:
        """What the heartbeat publishes of each worker process (the relay, scheduler, metrics
        and console children run no jobs, and are left out)."""
        now, job_now = self.clock(), self.job_clock()
        beats = []
        for child in self.alive():
            if child.handler not in (child.config or self.config).handlers:
                continue
            started = child.slot.started.value
            # Read while the worker goes on: a job that ended meanwhile shows until next time.
            key = child.slot.key.raw.rstrip(b"\0") if started else None
            beats.append(WorkerBeat(
                pid=child.process.pid, function=child.handler, index=child.index,
                state=child.state.name,
                job=None if key is None else key.partition(b"\0")[2].decode(errors="replace"),
                job_seconds=max(0.0, job_now - started) if started else None,
                jobs=child.slot.jobs.value - child.jobs_at_start,
                resident_bytes=self.memory(child.process.pid), uptime=now - child.started_at))
        return beats

    def retiring(self, child: Child) -> bool:
        """Started before the last reload: it runs a configuration no longer in force."""
        return child.config is not self.config

    def start(self, child: Child, now: float) -> None:
        child.slot.started.value = 0.0
        child.slot.intake.value = 0.0
        child.siblings = tuple(
            self.children[(child.handler, index)].slot for index in range(child.index)
            if (child.handler, index) in self.children)
        child.process = self.spawn(self.config, child)
        child.config = self.config
        child.started_at = now
        child.jobs_at_start = child.slot.jobs.value
        child.to(State.STARTING)
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def watch(self, child: Child, now: float) -> None:
        if child.process is None:
            return
        if child.process.is_alive():
            if child.state is State.STARTING and now - child.started_at >= STARTSECS:
                child.to(State.RUNNING)
                child.start_failures = 0
            if child.crashes and now - child.started_at >= STABLE_SECS:
                child.crashes = 0
            self.enforce_timeout(child)
            self.enforce_memory(child)
            return
        self.reap(child, now)

    def reap(self, child: Child, now: float) -> None:
        """The child's process ended: count its job if it had one, then decide what next."""
        process = child.process
        process.join()
        events.emit(events.ProcessGone(process.pid))
        code = process.exitcode
        child.process = None
        child.slot.intake.value = 0.0  # its siblings take its share of new jobs from now on
        child.exit_codes = [*child.exit_codes[-9:], code]
        self.count_lost_job(child, code)
        if child.state is State.STOPPING:
            self.remove(child)
            return
        worked = child.slot.jobs.value - child.jobs_at_start
        quick = now - child.started_at < STARTSECS and not worked
        if quick:
            child.to(State.BACKOFF)
        else:
            child.to(State.EXITED)
        if self.retiring(child) or self.drain_deadline is not None:
            self.remove(child)  # its replacement, if any, starts from the configuration now
            return
        if code == EXIT_OK and not quick:
            log.info("%s recycled after %d jobs", child.name, worked)
            child.next_start = now  # max_jobs or max_lifetime reached
            return
        child.restarts += 1
        events.emit(events.WorkerRestarted(child.handler))
        if quick:
            child.start_failures += 1
            if child.start_failures >= START_RETRIES:
                child.to(State.FATAL)
                log.error("%s is FATAL: it exited %d times in a row right after starting "
                          "(last exit %s); fix it and send SIGHUP to retry",
                          child.name, child.start_failures, describe_child_exit(code))
                return
            delay = START_BACKOFF * 2 ** (child.start_failures - 1)
            how = ""
        else:
            child.crashes += 1
            delay = (min(CRASH_BACKOFF * 2 ** (child.crashes - 2), MAX_CRASH_BACKOFF)
                     if child.crashes > 1 else 0.0)
            how = f", {child.crashes} times in a row" if child.crashes > 1 else ""
        child.next_start = now + delay
        log.warning("%s exited (%s%s); restarting in %.1fs", child.name,
                    describe_child_exit(code), how, delay)

    def remove(self, child: Child) -> None:
        if child.state is not State.STOPPED:
            child.to(State.STOPPED)
        del self.children[(child.handler, child.index)]

    def enforce_timeout(self, child: Child) -> None:
        started = child.slot.started.value
        handler = (child.config or self.config).handlers.get(child.handler)
        if not started or handler is None or child.timed_out is not None:
            return
        if self.job_clock() - started > handler.timeout:
            child.timed_out = handler.timeout
            log.error("%s: job ran past its timeout of %gs; killing pid %d",
                      child.name, handler.timeout, child.process.pid)
            self._signal(child, signal.SIGKILL)

    def enforce_memory(self, child: Child) -> None:
        """A worker past its handler's max_memory is killed; its job, if it runs one, counts
        as a failed attempt (the job is what made it grow, most likely)."""
        handler = (child.config or self.config).handlers.get(child.handler)
        if handler is None or handler.max_memory is None or child.over_memory is not None:
            return
        used = self.memory(child.process.pid)
        if used is not None and used > handler.max_memory:
            child.over_memory = used
            log.error("%s: pid %d uses %d MB, past max_memory (%d MB); killing it",
                      child.name, child.process.pid, used >> 20, handler.max_memory >> 20)
            self._signal(child, signal.SIGKILL)

    def count_lost_job(self, child: Child, code: int | None) -> None:
        """A job was running when its process ended: count it as a failed attempt."""
        timed_out, child.timed_out = child.timed_out, None
        over_memory, child.over_memory = child.over_memory, None
        if not child.slot.started.value:
            return
        key = child.slot.key.raw.rstrip(b"\0")
        child.slot.started.value = 0.0
        ours = timed_out is not None or over_memory is not None
        if self.drain_deadline is not None and not ours:
            return  # we killed it ourselves at shutdown: not the job's fault
        if timed_out is not None:
            reason = f"timed out after {timed_out:g}s; its worker process was killed"
            outcome = Outcome.TIMEOUT
        elif over_memory is not None:
            reason = (f"its worker process grew to {over_memory >> 20} MB, past max_memory, "
                      "and was killed")
            outcome = Outcome.OVER_MEMORY
        else:
            reason = f"its worker process died while running it ({describe_child_exit(code)})"
            outcome = Outcome.CRASHED
        events.emit(events.JobLost(child.handler, outcome))
        log.error("%s: job %r %s", child.name, key.replace(b"\0", b" ").decode(errors="replace"),
                  reason)
        db = self.database(self.config)
        try:
            # db.run's deadline is on time.monotonic(), whatever clock the supervisor is given.
            db.run(lambda conn: failures.count_failure(conn, key, failures.Failure(reason)),
                   deadline=time.monotonic() + COUNT_PATIENCE)
        except RUN_ERRORS as exc:
            log.error("could not count that failure in the database (%s); gearmand will "
                      "hand the job out again uncounted", exc)
        finally:
            db.close()

    # -- stop, reload ------------------------------------------------------------------
    def begin_drain(self) -> None:
        self.drain_deadline = self.clock() + self.config.host.shutdown_timeout
        log.info("stopping: workers finish their current job (up to %gs)",
                 self.config.host.shutdown_timeout)
        for child in self.alive():
            self.stop(child)

    def stop(self, child: Child) -> None:
        if child.state is not State.STOPPING:
            child.to(State.STOPPING)
            self._signal(child, signal.SIGTERM)

    def kill_all(self) -> None:
        """SIGKILL every child and wait for each; their jobs are not counted (we ended them)."""
        alive = self.alive()
        for child in alive:
            if child.state is not State.STOPPING:
                child.to(State.STOPPING)
            self._signal(child, signal.SIGKILL)
        for child in alive:
            child.process.join()
            events.emit(events.ProcessGone(child.process.pid))
            child.process = None
            self.remove(child)

    def reload(self) -> None:
        if self.config_path is None:
            return
        try:
            new = self.load(self.config_path, self.config)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        logs.redact(new.database.password)  # before anything can log it; the old one stays
        self.config = new
        self.heartbeat.close()  # the next one connects with the new file's settings
        for child in list(self.children.values()):
            if child.state not in LIVE:
                self.remove(child)  # FATAL or waiting to restart: start afresh
        log.info("configuration reloaded; replacing workers one at a time")

    def roll(self) -> None:
        """Replace retiring children one at a time, so capacity never drops to zero."""
        retiring = [c for c in self.children.values() if self.retiring(c)]
        if any(c.state is State.STOPPING for c in retiring):
            return
        for child in retiring:
            if child.state in LIVE:
                self.stop(child)
                return

    def _signal(self, child: Child, signum: int) -> None:
        try:
            if signum == signal.SIGKILL:
                # With every process below it: what its command: programs started and left.
                command.kill_tree(child.process.pid, self.kill)
            else:
                self.kill(child.process.pid, signum)
        except ProcessLookupError:
            pass
