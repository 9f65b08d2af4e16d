"""The supervisor's state machine, with fake processes, clocks, signals and database; reloading
handler code, in this process and in a real host."""

from __future__ import annotations

import importlib
import logging
import os
import random
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gearman
import pytest
import yaml
from conftest import ROOT, RunningHost, host_config, host_env

from workerhost import exitcodes
from workerhost.config.load import load_config, parse_config
from workerhost.config.settings import Config
from workerhost.errors import ConfigError
from workerhost.host import reloading
from workerhost.host.supervisor import (
    LIVE,
    RELAY,
    STABLE_SECS,
    START_RETRIES,
    STARTSECS,
    TRANSITIONS,
    Child,
    IllegalTransition,
    State,
    Supervisor,
    new_slot,
)
from workerhost.observe import metrics
from workerhost.sandbox.stack import Sandbox

WALL_EPOCH = 1.9e9  # the fake wall clock reads this plus the fake monotonic one
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
    """Failures counted, and workerhost_workers as the heartbeat's statements leave it."""

    def __init__(self) -> None:
        self.counted: list[tuple[bytes, str]] = []
        self.deadlines: list[float | None] = []  # of the runs that counted a failure
        self.workers: dict[int, dict[str, Any]] = {}  # the heartbeat's rows by pid
        self.beats: list[float | None] = []  # deadlines of the runs that wrote rows
        self.swept = 0  # sweeps of rows whose host is gone
        self.down: Exception | None = None  # raised by every run while set

    def run(self, work: Any, deadline: float | None = None) -> Any:
        if self.down is not None:
            raise self.down
        recorder = self
        counted, workers = len(self.counted), dict(self.workers)

        class Cursor:
            rowcount = 0

            def execute(self, sql: str, args: Any) -> None:
                if sql.startswith("INSERT INTO workerhost_attempts"):
                    recorder.counted.append((args[0], args[1]))
                elif "workerhost_workers" in sql:
                    recorder.heartbeat(sql, list(args))

            def fetchone(self) -> tuple[int]:
                return (1,)

            def close(self) -> None:
                pass

        class Conn:
            def cursor(self, buffered: bool = False) -> Cursor:
                return Cursor()

        result = work(Conn())
        if len(self.counted) > counted:
            self.deadlines.append(deadline)
        if self.workers != workers:
            self.beats.append(deadline)
        return result

    def heartbeat(self, sql: str, args: list[Any]) -> None:
        if sql.startswith("REPLACE"):
            columns = [c.strip(" `") for c in sql.split("(", 1)[1].split(")", 1)[0].split(",")]
            columns.remove("seen_at")  # UTC_TIMESTAMP(6), no value sent
            for at in range(0, len(args), len(columns)):
                row = dict(zip(columns, args[at:at + len(columns)], strict=True))
                self.workers[row["pid"]] = row
        elif "seen_at <" in sql:
            self.swept += 1
        else:  # DELETE ... WHERE host = %s AND supervisor_pid = %s [AND pid IN (...)]
            host, supervisor, *pids = args
            for pid, row in list(self.workers.items()):
                if ((row["host"], row["supervisor_pid"]) == (host, supervisor)
                        and (not pids or pid in pids)):
                    del self.workers[pid]

    def close(self) -> None:
        pass


class Harness:
    """A supervisor with fake processes, clocks, kill and database; `reload_to` stands for the
    file on disk at the next reload (None: it does not load)."""

    def __init__(self, config: dict[str, Any] = CONFIG) -> None:
        self.now = 1000.0  # the supervisor's clock; the wall clock is far from the real one
        self.pids = iter(range(100, 10_000))
        self.processes: list[FakeProcess] = []
        self.signals: list[tuple[int, int]] = []
        self.db = FakeDatabase()
        self.reload_to: dict[str, Any] | None = config
        self.resident: dict[int, int] = {}  # pid -> bytes; 50 MB when not set
        self.supervisor = Supervisor(
            parse_config(config, file="test.yaml"), "test.yaml", clock=lambda: self.now,
            job_clock=self.wall, kill=self.kill, spawn=self.spawn, load=self.load,
            database=lambda cfg: self.db,  # type: ignore[arg-type,return-value]
            memory=lambda pid: self.resident.get(pid, 50 << 20),
        )

    def wall(self) -> float:
        return WALL_EPOCH + self.now

    def load(self, path: Any, running: Config) -> Config:
        if self.reload_to is None:
            raise ConfigError("cannot import module 'jobs': SyntaxError", file=str(path))
        return parse_config(self.reload_to, file=str(path))

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


def test_each_process_knows_its_lower_numbered_siblings_and_a_dead_one_takes_no_jobs() -> None:
    """A worker leaves new jobs to a lower-numbered process of its handler that takes them
    (worker.py): each is started with their slots, and the slot of a process that died or
    starts again says it takes nothing until the process itself says so."""
    h = Harness({**CONFIG, "handlers": {"resize": {**CONFIG["handlers"]["resize"],
                                                   "processes": 3}}})
    h.supervisor.tick()
    assert h.child(0).siblings == ()
    assert h.child(1).siblings == (h.child(0).slot,)
    assert h.child(2).siblings == (h.child(0).slot, h.child(1).slot)
    h.advance(STARTSECS + 5)
    h.child(0).slot.intake.value = h.now + 60  # as its process would
    h.child(0).process.exitcode = -signal.SIGKILL
    h.advance(0.1)
    assert h.child(0).slot.intake.value == 0.0
    assert h.child(0).process is not None, "restarted, with the slot its siblings read"
    assert h.child(2).siblings[0] is h.child(0).slot


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
    slot.started.value = h.wall() - 6  # the handler's timeout is 5s
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


def test_the_docs_list_every_exit_code_by_name_and_value() -> None:
    page = (ROOT / "docs" / "operations.md").read_text()
    documented = {name: int(code) for code, name in
                  re.findall(r"^\| (\d+) \| `((?:RET|EXIT)_[A-Z_]+)` \|", page, re.MULTILINE)}
    defined = {name: value for name, value in vars(exitcodes).items()
               if name.startswith(("RET_", "EXIT_"))}
    assert documented == defined
    assert set(exitcodes.CHILD_EXITS) == {v for k, v in defined.items() if k.startswith("EXIT_")}
    assert metrics.EXIT_START_FAILED == exitcodes.EXIT_START_FAILED


# -- the state machine -----------------------------------------------------------------------


def moves(caplog: pytest.LogCaptureFixture, name: str = "resize[0]") -> list[str]:
    """The state changes of one child, in order, as the supervisor logs them at debug level."""
    pattern = re.compile(re.escape(name) + r": (\w+ -> \w+)$")
    found = (pattern.match(r.getMessage()) for r in caplog.records)
    return [m.group(1) for m in found if m]


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="workerhost.supervisor")
    return caplog


def test_a_move_outside_the_table_raises_and_changes_nothing() -> None:
    for before in State:
        for after in State:
            child = Child("resize", 0, new_slot(), state=before,
                          process=FakeProcess(1) if after in LIVE else None)
            if after in TRANSITIONS[before]:
                child.to(after)
                assert child.state is after
            else:
                with pytest.raises(IllegalTransition, match=f"{before.name} -> {after.name}"):
                    child.to(after)
                assert child.state is before


def test_a_child_has_a_process_exactly_in_the_live_states() -> None:
    child = Child("resize", 0, new_slot())
    with pytest.raises(IllegalTransition, match="STOPPED -> STARTING, but it has no process"):
        child.to(State.STARTING)
    child.process = FakeProcess(1)
    child.to(State.STARTING)
    with pytest.raises(IllegalTransition, match="STARTING -> EXITED, but it has a process"):
        child.to(State.EXITED)
    assert child.state is State.STARTING


def test_a_recycled_child_is_exited_without_a_process_then_started_again(
    debug_log: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS)
    h.child().slot.jobs.value += 3
    h.child().process.exitcode = 0
    h.supervisor.watch(h.child(), h.now + 1)
    assert h.child().state is State.EXITED and h.child().process is None
    h.advance(1)
    assert moves(debug_log) == ["STOPPED -> STARTING", "STARTING -> RUNNING",
                                "RUNNING -> EXITED", "EXITED -> STARTING"]
    assert h.child().restarts == 0


def test_failed_starts_go_through_backoff_to_fatal_and_a_reload_starts_afresh(
    debug_log: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    h.supervisor.tick()
    for _ in range(START_RETRIES):
        h.child().process.exitcode = 1
        h.advance(0.1)
        h.advance(h.child().next_start - h.now)
    assert moves(debug_log)[-3:] == ["BACKOFF -> STARTING", "STARTING -> BACKOFF",
                                     "BACKOFF -> FATAL"]
    h.supervisor.reload()
    h.advance(0.1)
    assert moves(debug_log)[-2:] == ["FATAL -> STOPPED", "STOPPED -> STARTING"]
    assert h.child().start_failures == 0


def test_a_drain_stops_every_child_and_a_kill_ends_the_rest(
    debug_log: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS)
    h.supervisor.begin_drain()
    h.child(0).process.exitcode = 0
    h.advance(0.1)
    assert ("resize", 0) not in h.supervisor.children
    h.supervisor.kill_all()
    assert h.supervisor.children == {}
    assert moves(debug_log, "resize[0]")[-2:] == ["RUNNING -> STOPPING", "STOPPING -> STOPPED"]
    assert moves(debug_log, "resize[1]")[-2:] == ["RUNNING -> STOPPING", "STOPPING -> STOPPED"]


def test_a_second_stop_signal_kills_at_once_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS)

    class TwoStops:
        stops, reload = 2, False

        def install(self) -> TwoStops:
            return self

    h.supervisor.signals = TwoStops()  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="workerhost.supervisor"):
        assert h.supervisor.run() == exitcodes.RET_KILLED
    assert "second stop signal: killing 2 processes without waiting for their jobs" \
        in caplog.text
    assert h.supervisor.children == {}


def test_a_reload_replaces_running_children_one_at_a_time() -> None:
    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS)
    old = [h.child(0).process, h.child(1).process]
    h.supervisor.reload()
    h.advance(0.1)
    assert [h.child(i).state for i in (0, 1)] == [State.STOPPING, State.RUNNING]
    assert old[0].pid in [pid for pid, sig in h.signals if sig == signal.SIGTERM]
    old[0].exitcode = 0
    h.advance(0.1)  # the first replaced, the second asked to stop
    assert h.child(0).process is not old[0] and h.child(0).state is State.STARTING
    assert h.child(1).state is State.STOPPING
    old[1].exitcode = 0
    h.advance(0.1)
    assert h.child(1).process is not old[1]
    assert not any(h.supervisor.retiring(c) for c in h.supervisor.children.values())


def test_a_reload_that_does_not_load_keeps_every_child(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS)
    h.reload_to = None
    h.supervisor.reload()
    h.advance(0.1)
    assert "reload refused, the running configuration stays: test.yaml: cannot import " \
        "module 'jobs'" in caplog.text
    assert [h.child(i).state for i in (0, 1)] == [State.RUNNING, State.RUNNING]
    assert not h.signals


def test_the_lost_job_is_counted_with_a_deadline_on_the_monotonic_clock() -> None:
    h = Harness()  # its clock reads 1000.0, far from time.monotonic()
    h.supervisor.tick()
    h.advance(STARTSECS)
    h.child().slot.begin(b"resize\0job-3")
    h.child().process.exitcode = -signal.SIGSEGV
    h.advance(0.1)
    [deadline] = h.db.deadlines
    assert deadline is not None and 0 < deadline - time.monotonic() <= 5


def test_the_states_hold_through_a_random_life(seed: int = 7) -> None:
    """Exits of every kind, timeouts, reloads (some refused) and a drain, in random order: no
    move is illegal, and the supervisor tracks exactly the processes that run."""
    rng = random.Random(seed)
    bigger = {**CONFIG, "handlers": {"resize": {**CONFIG["handlers"]["resize"], "processes": 3}}}
    h = Harness(bigger)
    h.supervisor.tick()
    for step in range(3000):
        event = rng.random()
        live = [c for c in h.supervisor.children.values() if c.process is not None]
        if event < 0.1 and live:
            child = rng.choice(live)
            child.slot.jobs.value += rng.choice([0, 1])
            if rng.random() < 0.3:
                child.slot.begin(b"resize\0job")
            child.process.exitcode = rng.choice([0, 1, exitcodes.EXIT_DATABASE, -9])
        elif event < 0.12:
            h.reload_to = rng.choice([CONFIG, bigger, None])
            h.supervisor.reload()
        elif event < 0.13 and live:
            child = rng.choice(live)
            child.slot.begin(b"resize\0slow")
            child.slot.started.value = h.wall() - 60
        h.advance(rng.choice([0.01, 0.1, 0.5, 2.0]))
        children = h.supervisor.children.values()
        for child in children:
            assert (child.process is not None) == (child.state in LIVE), (step, child)
        # No process is lost track of; one ends tracked only if killed in this tick (reaped
        # in the next).
        running = {p.pid for p in h.processes if p.exitcode is None}
        tracked = {c.process.pid for c in children if c.process is not None}
        killed = {pid for pid, signum in h.signals if signum == signal.SIGKILL}
        assert running <= tracked and tracked - running <= killed, step
    h.supervisor.begin_drain()
    for process in h.processes:
        if process.exitcode is None:
            process.exitcode = 0
    h.advance(0.1)
    assert h.supervisor.alive() == []


# -- reloading handler code --------------------------------------------------------------------


@pytest.fixture
def code_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for handler modules of unique names; forgotten again after the test."""
    directory = tmp_path / "code"
    directory.mkdir()
    sys.path.insert(0, str(directory))
    before = set(sys.modules)
    yield directory
    sys.path.remove(str(directory))
    for name in set(sys.modules) - before:
        del sys.modules[name]


def handler_file(code_dir: Path, body: str, *, name: str = "") -> tuple[Path, str]:
    """A config file whose one handler is module `name`'s `run`; returns (config, module)."""
    name = name or "jobs_" + uuid.uuid4().hex[:8]
    (code_dir / f"{name}.py").write_text(body)
    config = {**CONFIG, "handlers": {"work": {"python": f"{name}:run"}}}
    path = code_dir.parent / "workerhost.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, name


def run_handler(config: Config) -> object:
    handler = config.handlers["work"].callable
    assert handler is not None
    return handler(None, None)


def test_a_reload_imports_the_edited_handler_and_its_helpers_anew(code_dir: Path) -> None:
    helper = "helper_" + uuid.uuid4().hex[:8]
    (code_dir / "pkg").mkdir()
    (code_dir / "pkg" / "__init__.py").write_text("")
    (code_dir / "pkg" / f"{helper}.py").write_text("WORD = 'one'\n")
    path, name = handler_file(code_dir, f"from pkg.{helper} import WORD\n"
                                        "def run(job, db):\n    return 'v1 ' + WORD\n")
    running = load_config(path)
    assert run_handler(running) == "v1 one"
    (code_dir / f"{name}.py").write_text(f"from pkg.{helper} import WORD\n"
                                         "def run(job, db):\n    return 'v2: ' + WORD\n")
    (code_dir / "pkg" / f"{helper}.py").write_text("WORD = 'two'\n")
    assert run_handler(reloading.load_fresh(path, running)) == "v2: two"
    assert run_handler(running) == "v1 one", "what runs keeps its code"


def test_a_handler_that_no_longer_imports_is_refused_and_the_old_modules_stay(
    code_dir: Path,
) -> None:
    path, name = handler_file(code_dir, "def run(job, db):\n    return 'v1'\n")
    running = load_config(path)
    old = sys.modules[name]
    (code_dir / f"{name}.py").write_text("def run(job, db):\n    return 'v2' +\n")
    with pytest.raises(ConfigError, match=f"cannot import module '{name}': SyntaxError"):
        reloading.load_fresh(path, running)
    assert sys.modules[name] is old


def test_workerhost_and_installed_libraries_beside_a_handler_are_kept(code_dir: Path) -> None:
    site = code_dir / ".venv" / "lib" / "python3" / "site-packages"
    site.mkdir(parents=True)
    library = "library_" + uuid.uuid4().hex[:8]
    (site / f"{library}.py").write_text("")
    sys.path.append(str(site))
    try:
        path, name = handler_file(code_dir, f"import json, {library}\n"
                                            "def run(job, db):\n    return 1\n")
        stale = reloading.stale_modules(load_config(path))
    finally:
        sys.path.remove(str(site))
    assert name in stale
    assert library in sys.modules and library not in stale
    assert "json" not in stale and not [m for m in stale if m.startswith("workerhost")]


def test_a_handler_package_installed_in_site_packages_is_imported_anew(code_dir: Path) -> None:
    package = "installed_" + uuid.uuid4().hex[:8]
    root = code_dir / "lib" / "site-packages"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "jobs.py").write_text("def run(job, db):\n    return 1\n")
    (root / f"{package}_neighbour.py").write_text("")
    sys.path.append(str(root))
    try:
        importlib.import_module(f"{package}_neighbour")
        config = {**CONFIG, "handlers": {"work": {"python": f"{package}.jobs:run"}}}
        stale = reloading.stale_modules(parse_config(config, file="test.yaml"))
    finally:
        sys.path.remove(str(root))
    assert stale == [package, f"{package}.jobs"]


VERSIONED = "def answer(job, db):\n    return {!r}\n"


def answers(sandbox: Sandbox, count: int) -> set[str]:
    """What `count` foreground jobs of `versioned` answer."""
    client = gearman.GearmanClient([sandbox.gearman_server])
    try:
        requests = client.submit_multiple_jobs(
            [{"task": "versioned", "data": "{}"} for _ in range(count)],
            background=False, wait_until_complete=True, poll_timeout=30)
    finally:
        client.shutdown()
    assert all(r.complete for r in requests), [r.state for r in requests]
    return {r.result.decode() if isinstance(r.result, bytes) else r.result for r in requests}


def test_sighup_runs_the_handler_as_edited_and_a_broken_edit_leaves_the_workers_serving(
    sandbox: Sandbox, db: Any, tmp_path: Path
) -> None:
    code, etc = tmp_path / "code", tmp_path / "etc"
    code.mkdir()
    etc.mkdir()
    module = code / "versioned.py"
    module.write_text(VERSIONED.format("v1"))
    config = etc / "workerhost.yaml"
    config.write_text(yaml.safe_dump(host_config(sandbox, db.database, {
        "versioned": {"python": "versioned:answer", "processes": 2}})))
    env = host_env(sandbox)
    env["PYTHONPATH"] = os.pathsep.join([str(code), env["PYTHONPATH"]])
    host = RunningHost(config, tmp_path / "host.log", env)
    try:
        host.wait_for_log("worker for", count=2)
        assert answers(sandbox, 4) == {"v1"}

        module.write_text(VERSIONED.format("version 2"))
        host.signal(signal.SIGHUP)
        host.wait_for_log("configuration reloaded")
        host.wait_for_log("worker for", count=4)  # both replaced, one after the other
        assert answers(sandbox, 4) == {"version 2"}
        host.wait_for_log(f"started {RELAY}[0]", count=2)  # and the relay, last

        workers = sorted(host.worker_pids())
        module.write_text("def answer(job, db):\n    return 'v3' +\n")
        host.signal(signal.SIGHUP)
        host.wait_for_log("reload refused, the running configuration stays")
        assert "cannot import module 'versioned': SyntaxError" in host.log()
        assert answers(sandbox, 4) == {"version 2"}
        assert sorted(host.worker_pids()) == workers, "the running workers stay"

        # A worker that dies now is replaced from the running configuration, not the file.
        os.kill(workers[0], signal.SIGKILL)
        host.wait_for_log("worker for", count=5)
        assert answers(sandbox, 4) == {"version 2"}
        assert host.stop() == 0
    finally:
        host.kill()
    assert "Traceback" not in host.log()


def test_a_worker_past_max_memory_is_killed_and_its_job_counted() -> None:
    config = {**CONFIG, "handlers": {"resize": {**CONFIG["handlers"]["resize"],
                                                "max_memory": "200MB"}}}
    h = Harness(config)
    h.supervisor.tick()
    h.advance(STARTSECS)
    assert h.signals == [], "50 MB is under the cap"
    h.child().slot.begin(b"resize\0job-9")
    h.child().slot.started.value = h.wall()
    h.resident[h.processes[0].pid] = 300 << 20
    h.advance(0.1)
    assert (h.processes[0].pid, signal.SIGKILL) in h.signals
    assert (h.processes[1].pid, signal.SIGKILL) not in h.signals
    h.advance(0.1)
    assert h.db.counted == [
        (b"resize\0job-9", "its worker process grew to 300 MB, past max_memory, and was killed")
    ]
    assert h.child().process is not None, "restarted"


def test_the_scheduler_is_supervised_when_the_file_has_schedules() -> None:
    from workerhost.host.supervisor import SCHEDULER

    schedules = [{"name": "tick", "function": "resize", "every": "1m"}]
    h = Harness({**CONFIG, "schedules": schedules})
    h.supervisor.tick()
    assert (SCHEDULER, 0) in h.supervisor.children
    h.advance(STARTSECS)
    assert h.supervisor.children[(SCHEDULER, 0)].state == State.RUNNING
    for config in (CONFIG, {**CONFIG, "schedules": schedules,
                            "host": {"relay": {"enabled": False},
                                     "scheduler": {"enabled": False}}}):
        h = Harness(config)
        h.supervisor.tick()
        assert (SCHEDULER, 0) not in h.supervisor.children


# -- heartbeats ------------------------------------------------------------------------------


def shown(h: Harness) -> dict[tuple[str, int], dict[str, Any]]:
    """The heartbeat's rows by (function, index)."""
    return {(row["function"], row["index"]): row for row in h.db.workers.values()}


def test_the_heartbeat_publishes_each_worker_process_and_updates_it() -> None:
    from workerhost.observe.heartbeat import BEAT_PATIENCE, EVERY

    h = Harness({**CONFIG, "host": {"relay": {"enabled": True}}})
    h.supervisor.tick()
    rows = shown(h)
    assert sorted(rows) == [("resize", 0), ("resize", 1)], "the relay runs no jobs: left out"
    first = rows[("resize", 0)]
    assert first["pid"] == h.child(0).process.pid
    assert first["supervisor_pid"] == os.getpid()
    assert (first["state"], first["job"], first["job_seconds"], first["jobs"]) == (
        "STARTING", None, None, 0)
    assert first["resident_bytes"] == 50 << 20
    [deadline] = h.db.beats
    assert deadline is not None and 0 < deadline - time.monotonic() <= BEAT_PATIENCE
    assert h.db.swept == 1, "rows of hosts that are gone are deleted once"

    h.advance(EVERY - 0.5)
    assert len(h.db.beats) == 1, "one heartbeat per interval"
    h.child(0).slot.begin(b"resize\0L42")
    h.child(0).slot.started.value = h.wall() - 3
    h.child(1).slot.jobs.value += 7
    h.resident[h.child(1).process.pid] = 80 << 20
    h.advance(0.5)
    rows = shown(h)
    assert len(h.db.beats) == 2 and h.db.swept == 1
    assert (rows[("resize", 0)]["state"], rows[("resize", 0)]["job"]) == ("RUNNING", "L42")
    assert rows[("resize", 0)]["job_seconds"] == pytest.approx(3.5), "3 s, then 0.5 s more"
    assert rows[("resize", 0)]["started_at"] == int(EVERY * 1_000_000), "uptime, in µs"
    assert (rows[("resize", 1)]["jobs"], rows[("resize", 1)]["resident_bytes"]) == (7, 80 << 20)

    h.child(0).slot.end()
    h.advance(EVERY)
    row = shown(h)[("resize", 0)]
    assert (row["job"], row["job_seconds"], row["jobs"]) == (None, None, 1)


def test_the_rows_of_ended_processes_go_and_a_stop_deletes_every_row() -> None:
    from workerhost.observe.heartbeat import EVERY

    h = Harness()
    h.supervisor.tick()
    h.advance(STARTSECS + 5)
    old = h.child(0).process.pid
    h.child(0).process.exitcode = -signal.SIGSEGV
    h.advance(EVERY)
    new = h.child(0).process.pid
    assert new != old
    assert sorted(h.db.workers) == sorted([new, h.child(1).process.pid])
    assert shown(h)[("resize", 0)]["state"] == "STARTING"

    class OneStop:
        stops, reload = 1, False

        def install(self) -> OneStop:
            return self

    h.supervisor.signals = OneStop()  # type: ignore[assignment]
    for process in h.processes:
        process.exitcode = 0  # each finishes its job on SIGTERM and exits
    assert h.supervisor.run() == exitcodes.RET_OK
    assert h.db.workers == {}


def test_a_failing_heartbeat_is_logged_once_a_minute_and_the_supervisor_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import mysql.connector

    from workerhost.observe.heartbeat import EVERY, LOG_EVERY

    h = Harness()
    h.db.down = mysql.connector.errors.OperationalError("2003: Can't connect", errno=2003)
    with caplog.at_level(logging.INFO, logger="workerhost.heartbeat"):
        h.supervisor.tick()
        while h.now < 1000.0 + 2 * LOG_EVERY - EVERY:
            h.advance(EVERY)
        failed = [r for r in caplog.records if "heartbeat: could not publish" in r.getMessage()]
        assert len(failed) == 2, "at most once a minute"
        assert "OperationalError: 2003" in failed[0].getMessage()
        assert [c.state for c in h.supervisor.children.values()] == [State.RUNNING] * 2
        h.db.down = None
        h.advance(EVERY)
    assert "published again" in caplog.text
    assert sorted(h.db.workers) == sorted(c.process.pid for c in h.supervisor.alive())
    assert h.db.swept == 1


def test_the_heartbeats_statements_on_the_server(db: Any) -> None:
    """tables' heartbeat statements, on each server: written, updated, read, deleted."""
    from workerhost.store import schema, worker_table
    from workerhost.store.worker_table import WorkerBeat

    db.autocommit = True
    schema.create(db)

    def beat(pid: int, index: int, job: str | None = None, jobs: int = 0) -> WorkerBeat:
        return WorkerBeat(pid=pid, function="resize", index=index, state="RUNNING", job=job,
                          job_seconds=None if job is None else 2.5, jobs=jobs,
                          resident_bytes=50 << 20, uptime=60.0)

    worker_table.publish_workers(db, "web-1", 10, [beat(11, 0), beat(12, 1, "L42")])
    worker_table.publish_workers(db, "web-2", 20, [beat(21, 0, "ünïcode-unique")])
    worker_table.publish_workers(db, "web-1", 10, [beat(11, 0, jobs=3), beat(12, 1, "L42", 1)])
    rows = {(r[0], r[2]): r for r in worker_table.worker_rows(db, 15.0)}
    assert sorted(rows) == [("web-1", 11), ("web-1", 12), ("web-2", 21)]
    host, supervisor, pid, function, index, state, job, job_seconds, jobs, resident, uptime, \
        seen = rows[("web-1", 12)]
    assert (host, supervisor, pid, function, index, state, job, jobs, resident) == (
        "web-1", 10, 12, "resize", 1, "RUNNING", "L42", 1, 50 << 20)
    assert 2.5 <= float(job_seconds) < 5 and 60 <= float(uptime) < 65 and 0 <= float(seen) < 3
    assert rows[("web-1", 11)][6:9] == (None, None, 3)
    assert rows[("web-2", 21)][6] == "ünïcode-unique"

    worker_table.forget_workers(db, "web-1", 10, [12])
    worker_table.forget_workers(db, "web-1", 99)  # another supervisor's rows: none of these
    rows = worker_table.worker_rows(db, 15.0)
    assert [(r[0], r[2]) for r in rows] == [("web-1", 11), ("web-2", 21)]
    db.cursor().execute("UPDATE workerhost_workers SET seen_at = seen_at - INTERVAL 20 SECOND "
                        "WHERE host = 'web-2'")  # a host killed 20 s ago
    assert [(r[0], r[2]) for r in worker_table.worker_rows(db, 15.0)] == [("web-1", 11)]
    assert worker_table.sweep_workers(db, 15.0) == 1
    worker_table.forget_workers(db, "web-1", 10)
    assert worker_table.worker_rows(db, 15.0) == []


def test_job_timeouts_are_on_the_monotonic_clock_that_no_clock_step_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job's start is written and read on time.monotonic(): a step of the wall clock (NTP,
    an operator's `date`) neither kills a job early nor spares a hung one."""
    import inspect
    import multiprocessing

    from workerhost.host.supervisor import Supervisor
    from workerhost.host.worker import Slot

    slot = Slot(multiprocessing.Value("d", 0.0), multiprocessing.Array("c", 16),
                multiprocessing.Value("Q", 0))
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)  # the wall clock jumps ahead
    slot.begin(b"f\0u")
    assert abs(slot.started.value - time.monotonic()) < 5
    assert inspect.signature(Supervisor).parameters["job_clock"].default is time.monotonic
