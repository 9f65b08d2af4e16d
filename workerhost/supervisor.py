"""The parent process of `workerhost run`: starts, watches and restarts the worker processes.

Each child follows a small state machine. A child that exits within STARTSECS of its start
failed to start: it is retried after a doubling back-off, and after START_RETRIES such failures
in a row it is FATAL and left stopped until the next reload. A child that dies while running a
job has its job counted as a failed attempt (the job's key is in memory the two share), and so
does one killed by the supervisor because its job ran past the handler's timeout.

Signals: SIGTERM or SIGINT drains (children finish their job, then exit; those still running
after `host.shutdown_timeout` are killed); a second one kills every child at once. SIGHUP
re-reads the configuration and, if it is valid, replaces the children one at a time.
"""

from __future__ import annotations

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

from workerhost import failures, metrics, relay, worker
from workerhost.config import Config, load_config
from workerhost.db import RUN_ERRORS, Database
from workerhost.errors import ConfigError
from workerhost.exitcodes import EXIT_OK, RET_KILLED, RET_OK, describe_child_exit
from workerhost.signals import Signals

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
RELAY = "(outbox relay)"  # the name under which the relay child is supervised

_ctx = multiprocessing.get_context("fork")


class State:
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    FATAL = "FATAL"


@dataclass
class Child:
    handler: str
    index: int
    slot: worker.Slot
    state: str = State.STARTING
    process: Any = None
    started_at: float = 0.0
    jobs_at_start: int = 0
    start_failures: int = 0
    crashes: int = 0  # deaths in a row after a start, none STABLE_SECS apart
    next_start: float = 0.0
    retiring: bool = False  # replaced after a reload, or its handler is gone
    killed_for_timeout: float | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.handler}[{self.index}]"


def new_slot() -> worker.Slot:
    return worker.Slot(
        started=_ctx.Value("d", 0.0, lock=False),
        key=_ctx.Array("c", KEY_SIZE, lock=False),
        jobs=_ctx.Value("Q", 0, lock=False),
    )


def _child_main(config: Config, handler: str, slot: worker.Slot) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if handler == RELAY:
        sys.exit(relay.main(config))
    if handler == metrics.SERVER:
        sys.exit(metrics.main(config))
    sys.exit(worker.main(config, handler, slot))


def fork_child(config: Config, child: Child) -> Any:
    process = _ctx.Process(
        target=_child_main, args=(config, child.handler, child.slot),
        name=f"workerhost {child.name}", daemon=False,
    )
    process.start()
    return process


class Supervisor:
    def __init__(self, config: Config, config_path: str | Path | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 kill: Callable[[int, int], None] = os.kill,
                 spawn: Callable[[Config, Child], Any] | None = None,
                 database: Callable[[Config], Database] | None = None,
                 signals: Signals | None = None) -> None:
        self.config = config
        self.config_path = config_path
        # Seams: unit tests replace the clock, signals, processes and the database.
        self.clock = clock
        self.kill = kill
        self.spawn = spawn or fork_child
        self.database = database or (lambda cfg: Database(cfg.database.connect_kwargs()))
        self.children: dict[tuple[str, int], Child] = {}
        self.signals = signals or Signals()
        self.drain_deadline: float | None = None

    # -- what should run ---------------------------------------------------------------
    def wanted(self) -> list[tuple[str, int]]:
        names = [(name, i) for name, h in self.config.handlers.items() for i in range(h.processes)]
        if self.config.host.relay.enabled:
            names.append((RELAY, 0))
        if self.config.host.metrics is not None:
            names.append((metrics.SERVER, 0))
        return names

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> int:
        signals = self.signals.install()
        log.info("workerhost %d starting: %s", os.getpid(), ", ".join(
            f"{name} x{h.processes}" for name, h in self.config.handlers.items()))
        while True:
            if signals.stops >= 2:
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

    def tick(self) -> None:
        now = self.clock()
        for child in list(self.children.values()):
            self.watch(child, now)
        if self.drain_deadline is not None:
            if now >= self.drain_deadline and self.alive():
                log.warning("shutdown_timeout passed; killing %d workers",
                            len(self.alive()))
                self.kill_all()
            return
        for key in self.wanted():
            existing = self.children.get(key)
            if existing is None:
                fresh = self.children[key] = Child(key[0], key[1], new_slot())
                self.start(fresh)
            elif existing.process is None and existing.state != State.FATAL:
                if now >= existing.next_start:
                    self.start(existing)
        self.roll()

    def alive(self) -> list[Child]:
        return [c for c in self.children.values() if c.process is not None]

    def start(self, child: Child) -> None:
        child.slot.started.value = 0.0
        child.process = self.spawn(self.config, child)
        child.started_at = self.clock()
        child.jobs_at_start = child.slot.jobs.value
        child.state = State.STARTING
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def watch(self, child: Child, now: float) -> None:
        process = child.process
        if process is None:
            return
        if process.is_alive():
            if child.state == State.STARTING and now - child.started_at >= STARTSECS:
                child.state = State.RUNNING
                child.start_failures = 0
            if child.crashes and now - child.started_at >= STABLE_SECS:
                child.crashes = 0
            self.enforce_timeout(child)
            return
        process.join()
        metrics.process_dead(process.pid)
        code = process.exitcode
        child.process = None
        child.exit_codes = [*child.exit_codes[-9:], code]
        self.count_lost_job(child, code)
        if child.retiring or child.state == State.STOPPING or self.drain_deadline is not None:
            del self.children[(child.handler, child.index)]
            return
        worked = child.slot.jobs.value - child.jobs_at_start
        quick = now - child.started_at < STARTSECS and not worked
        if code == EXIT_OK and not quick:
            log.info("%s recycled after %d jobs", child.name, worked)
            child.next_start = now  # max_jobs or max_lifetime reached
            return
        child.restarts += 1
        metrics.worker_restarted(child.handler)
        if quick:
            child.start_failures += 1
            if child.start_failures >= START_RETRIES:
                child.state = State.FATAL
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
        child.state = State.BACKOFF
        child.next_start = now + delay
        log.warning("%s exited (%s%s); restarting in %.1fs", child.name, describe_child_exit(code),
                    how, delay)

    def enforce_timeout(self, child: Child) -> None:
        started = child.slot.started.value
        handler = self.config.handlers.get(child.handler)
        if not started or handler is None or child.killed_for_timeout is not None:
            return
        if time.time() - started > handler.timeout:
            child.killed_for_timeout = handler.timeout
            log.error("%s: job ran past its timeout of %gs; killing pid %d",
                      child.name, handler.timeout, child.process.pid)
            self._signal(child, signal.SIGKILL)

    def count_lost_job(self, child: Child, code: int | None) -> None:
        """A job was running when its process ended: count it as a failed attempt."""
        timed_out, child.killed_for_timeout = child.killed_for_timeout, None
        if not child.slot.started.value:
            return
        key = child.slot.key.raw.rstrip(b"\0")
        child.slot.started.value = 0.0
        if self.drain_deadline is not None and timed_out is None:
            return  # we killed it ourselves at shutdown: not the job's fault
        if timed_out is not None:
            reason = f"timed out after {timed_out:g}s; its worker process was killed"
        else:
            reason = f"its worker process died while running it ({describe_child_exit(code)})"
        metrics.job_lost(child.handler, "timeout" if timed_out is not None else "crashed")
        log.error("%s: job %r %s", child.name, key.replace(b"\0", b" ").decode(errors="replace"),
                  reason)
        db = self.database(self.config)
        try:
            db.run(lambda conn: failures.count_failure(conn, key, failures.Failure(reason)),
                   deadline=self.clock() + 5)
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
            child.state = State.STOPPING
            self._signal(child, signal.SIGTERM)

    def kill_all(self) -> None:
        for child in self.alive():
            self._signal(child, signal.SIGKILL)
        for child in self.alive():
            child.process.join()
            child.process = None

    def reload(self) -> None:
        if self.config_path is None:
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        self.config = new
        for key, child in list(self.children.items()):
            if child.process is None:
                del self.children[key]  # FATAL or waiting to restart: start afresh
            else:
                child.retiring = True
        log.info("configuration reloaded; replacing workers one at a time")

    def roll(self) -> None:
        """Replace retiring children one at a time, so capacity never drops to zero."""
        if any(c.retiring and c.state == State.STOPPING for c in self.children.values()):
            return
        for child in self.children.values():
            if child.retiring and child.process is not None:
                child.state = State.STOPPING
                self._signal(child, signal.SIGTERM)
                return

    def _signal(self, child: Child, signum: int) -> None:
        try:
            self.kill(child.process.pid, signum)
        except ProcessLookupError:
            pass
