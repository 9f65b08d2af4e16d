"""The supervisor's state machine, with fake processes, clock, signals and database."""

from __future__ import annotations

import logging
import re
import signal
import time
from typing import Any

import pytest
from conftest import ROOT

from workerhost import exitcodes, metrics
from workerhost.config import parse_config
from workerhost.supervisor import (
    RELAY,
    STABLE_SECS,
    START_RETRIES,
    STARTSECS,
    Child,
    State,
    Supervisor,
)

CONFIG = {
    "gearman": {"servers": ["127.0.0.1:4999"]},
    "database": {"user": "u", "database": "d"},
    "host": {"relay": {"enabled": False}},
    "handlers": {"resize": {"sql": "UPDATE t SET a = 1 WHERE id = %(id)s", "processes": 2,
                            "timeout": "5s"}},
}


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self) -> None:
        assert self.exitcode is not None, "join() on a live fake would hang"


class FakeDatabase:
    def __init__(self) -> None:
        self.counted: list[tuple[bytes, str]] = []

    def run(self, work: Any, deadline: float | None = None) -> Any:
        recorder = self

        class Cursor:
            def execute(self, sql: str, args: tuple[Any, ...]) -> None:
                if sql.startswith("INSERT"):
                    recorder.counted.append((args[0], args[1]))

            def fetchone(self) -> tuple[int]:
                return (1,)

            def close(self) -> None:
                pass

        class Conn:
            def cursor(self, buffered: bool = False) -> Cursor:
                return Cursor()

        return work(Conn())

    def close(self) -> None:
        pass


class Harness:
    def __init__(self, config: dict[str, Any] = CONFIG) -> None:
        self.now = 1000.0
        self.pids = iter(range(100, 10_000))
        self.processes: list[FakeProcess] = []
        self.signals: list[tuple[int, int]] = []
        self.db = FakeDatabase()
        self.supervisor = Supervisor(
            parse_config(config, file="test.yaml"), clock=lambda: self.now,
            kill=self.kill,
            spawn=self.spawn, database=lambda cfg: self.db,  # type: ignore[arg-type,return-value]
        )

    def kill(self, pid: int, signum: int) -> None:
        self.signals.append((pid, signum))
        if signum == signal.SIGKILL:
            for process in self.processes:
                if process.pid == pid:
                    process.exitcode = -signal.SIGKILL

    def spawn(self, config: Any, child: Child) -> FakeProcess:
        process = FakeProcess(next(self.pids))
        self.processes.append(process)
        return process

    def child(self, index: int = 0) -> Child:
        return self.supervisor.children[("resize", index)]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.supervisor.tick()


def test_starts_the_configured_number_of_processes() -> None:
    h = Harness()
    h.supervisor.tick()
    assert sorted(h.supervisor.children) == [("resize", 0), ("resize", 1)]
    assert len(h.processes) == 2
    h.advance(STARTSECS)
    assert h.child().state == State.RUNNING


def test_the_relay_is_supervised_when_enabled() -> None:
    config = {**CONFIG, "host": {"relay": {"enabled": True}}}
    h = Harness(config)
    h.supervisor.tick()
    assert (RELAY, 0) in h.supervisor.children


def test_a_child_dying_at_start_backs_off_then_turns_fatal() -> None:
    h = Harness()
    h.supervisor.tick()
    delays = []
    for _ in range(START_RETRIES):
        h.child().process.exitcode = 1
        h.advance(0.1)
        if h.child().state == State.FATAL:
            break
        assert h.child().state == State.BACKOFF
        delays.append(h.child().next_start - h.now)
        h.advance(h.child().next_start - h.now)
        assert h.child().process is not None
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert h.child().state == State.FATAL
    started = len(h.processes)
    h.advance(60)
    assert len(h.processes) == started, "a FATAL child is not restarted"
    assert h.child(1).state == State.RUNNING


def test_a_running_child_that_dies_is_restarted_at_once() -> None:
    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS + 5)
    h.child().process.exitcode = -signal.SIGSEGV
    h.advance(0.1)
    assert h.child().process is not None
    assert h.child().restarts == 1


def test_a_job_running_past_its_timeout_is_killed_and_counted() -> None:
    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS)
    slot = h.child().slot
    slot.begin(b"resize\0job-1")
    slot.started.value = time.time() - 6  # the handler's timeout is 5s
    h.advance(0.1)
    assert (h.processes[0].pid, signal.SIGKILL) in h.signals
    h.advance(0.1)
    assert h.db.counted == [(b"resize\0job-1", "timed out after 5s; its worker process was killed")]


def test_a_child_that_dies_mid_job_has_the_job_counted() -> None:
    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS)
    h.child().slot.begin(b"resize\0job-2")
    h.child().process.exitcode = 17
    h.advance(0.1)
    assert h.db.counted == [
        (b"resize\0job-2", "its worker process died while running it (exit status 17)")
    ]


def test_drain_sends_sigterm_then_kills_after_the_deadline() -> None:
    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS)
    h.supervisor.begin_drain()
    assert sorted(sig for _, sig in h.signals) == [signal.SIGTERM, signal.SIGTERM]
    h.child(0).process.exitcode = 0
    h.advance(1)
    assert len(h.supervisor.alive()) == 1
    h.advance(h.supervisor.config.host.shutdown_timeout)
    assert (h.processes[1].pid, signal.SIGKILL) in h.signals
    assert h.supervisor.alive() == []


def test_a_recycled_child_is_not_a_start_failure() -> None:
    h = Harness()
    h.supervisor.tick()
    h.child().slot.jobs.value += 10  # it did its max_jobs quickly, then exited
    h.child().process.exitcode = 0
    h.advance(0.1)
    assert h.child().start_failures == 0
    assert h.child().process is not None


def test_a_child_that_keeps_crashing_backs_off_and_is_forgiven_once_stable() -> None:
    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS + 1)
    delays = []
    for _ in range(9):
        h.child().slot.jobs.value += 1  # it worked, then crashed: not a failed start
        h.child().process.exitcode = 1
        h.advance(0.01)
        delays.append(round(h.child().next_start - h.now, 2))
        h.advance(h.child().next_start - h.now)
        assert h.child().process is not None
        h.advance(STARTSECS + 0.1)
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert h.child().crashes == 9 and h.child().state != State.FATAL
    h.advance(STABLE_SECS)
    assert h.child().crashes == 0
    h.child().process.exitcode = 1
    h.advance(0.01)
    assert h.child().next_start == h.now, "after a stable run, a crash restarts at once"


def test_a_worker_that_lost_the_database_is_logged_as_such_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS + 5)
    h.child().process.exitcode = exitcodes.EXIT_DATABASE
    with caplog.at_level(logging.WARNING, logger="workerhost.supervisor"):
        h.advance(0.1)
    assert "resize[0] exited (exit status 4: the database stayed unreachable); restarting in " \
        "0.0s" in caplog.text
    assert h.child().process is not None
    assert h.db.counted == [], "the worker left its job to gearmand uncounted"


def test_the_readme_lists_every_exit_code_by_name_and_value() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = {name: int(code) for code, name in
                  re.findall(r"^\| (\d+) \| `((?:RET|EXIT)_[A-Z_]+)` \|", readme, re.MULTILINE)}
    defined = {name: value for name, value in vars(exitcodes).items()
               if name.startswith(("RET_", "EXIT_"))}
    assert documented == defined
    assert set(exitcodes.CHILD_EXITS) == {v for k, v in defined.items() if k.startswith("EXIT_")}
    assert metrics.EXIT_START_FAILED == exitcodes.EXIT_START_FAILED
