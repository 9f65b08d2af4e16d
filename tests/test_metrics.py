"""The metrics endpoint and /healthz of `workerhost run`, and the metrics API on its own."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ExtraGearmand, host_config, scalar, wait_until
from conftest import submit_json as submit
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workerhost.config.load import parse_config
from workerhost.config.settings import Config
from workerhost.gearman import admin as gearadmin
from workerhost.model.job import Outcome
from workerhost.observe import events, metrics, status
from workerhost.observe import health as healthz
from workerhost.sandbox.processes import free_port
from workerhost.sandbox.stack import Sandbox

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return parse(answer.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def results(db: Any) -> Any:
    db.cursor().execute("CREATE TABLE results (id BIGINT PRIMARY KEY, attempt INT, "
                        "unique_key VARCHAR(255), runs INT NOT NULL DEFAULT 1)")
    return db


# -- a real host ---------------------------------------------------------------------------


def test_counters_add_up_the_jobs_of_every_worker_process(
    sandbox: Sandbox, results: Any, host_factory: Any
) -> None:
    port = free_port()
    host = host_factory(host_config(sandbox, results.database, {
        # Recycled every few jobs: the total is right only if the counts of exited processes
        # are still added up.
        "record": {"python": "sample_handlers:record", "processes": 2, "max_jobs": 8},
        "exits": {"python": "sample_handlers:exits", "retries": {"attempts": 1}},
    }, host={"metrics": f"127.0.0.1:{port}"}))
    host.wait_for_log("metrics on http://")
    submit(sandbox.gearman_server, "record", [{"id": i} for i in range(60)])
    submit(sandbox.gearman_server, "exits", [{"id": 1}])
    wait_until(lambda: scalar(results, "SELECT COUNT(*) FROM results") == 60, what="60 rows")

    def complete() -> Samples | None:
        samples = scrape(port)
        done = value(samples, "workerhost_jobs_total", function="record", outcome="complete")
        return samples if done == 60 else None

    samples = wait_until(complete, what="60 complete jobs counted")
    pids = {line.rsplit("pid ", 1)[1].rstrip(")") for line in host.log().splitlines()
            if "worker for record started" in line}
    assert len(pids) >= 3, f"expected recycled workers, saw pids {pids}"
    assert value(samples, "workerhost_job_duration_seconds_count", function="record") == 60
    # None when every live worker is a recycled one that has run no job yet.
    assert value(samples, "workerhost_jobs_in_flight", function="record") in (0, None)
    assert value(samples, "workerhost_jobs_total", function="record", outcome="retry") is None
    server = sandbox.gearman_server
    assert value(samples, "workerhost_gearmand_up", server=server) == 1
    wait_until(lambda: (value(scrape(port), "workerhost_gearmand_workers", server=server,
                              function="record") or 0) >= 1, what="workers registered")
    assert value(samples, "workerhost_database_up") == 1

    # The job that kills its worker: counted by the supervisor, then dead-lettered.
    def crashed() -> Samples | None:
        samples = scrape(port)
        dead = value(samples, "workerhost_dead_letters_total", function="exits")
        return samples if dead == 1 else None

    samples = wait_until(crashed, what="the crashed job dead-lettered")
    assert value(samples, "workerhost_jobs_total", function="exits", outcome="crashed") == 1
    assert value(samples, "workerhost_jobs_total", function="exits", outcome="dead") == 1
    assert (value(samples, "workerhost_worker_restarts_total", handler="exits") or 0) >= 1
    assert value(samples, "workerhost_dead_letter_rows", function="exits") == 1

    code, body = health(port)
    assert code == 200, body
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["gearmand"][server]["workers"] >= 1


def test_outbox_backlog_and_age_are_read_on_each_scrape(
    sandbox: Sandbox, db: Any, host_factory: Any
) -> None:
    port = free_port()
    host = host_factory(host_config(sandbox, db.database, {
        "record": {"python": "sample_handlers:record"},
    }, host={"metrics": f"127.0.0.1:{port}"}))
    host.wait_for_log("metrics on http://")
    assert value(scrape(port), "workerhost_outbox_rows") == 0
    # Delayed retries not yet due: the relay leaves them, the backlog shows them.
    db.cursor().execute(
        "INSERT INTO workerhost_outbox (`function`, payload, not_before, created_at) VALUES "
        "('later', '{}', NOW(6) + INTERVAL 1 HOUR, NOW(6) - INTERVAL 90 SECOND), "
        "('later', '{}', NOW(6) + INTERVAL 1 HOUR, NOW(6))")
    samples = scrape(port)
    assert value(samples, "workerhost_outbox_rows") == 2
    assert value(samples, "workerhost_outbox_due_rows") == 0
    assert 90 <= (value(samples, "workerhost_outbox_oldest_age_seconds") or 0) < 120
    assert value(samples, "workerhost_outbox_overdue_seconds") == 0


def test_health_turns_503_when_no_worker_is_on_gearmand(
    sandbox: Sandbox, db: Any, host_factory: Any,
    gearmand_factory: Callable[[], ExtraGearmand],
) -> None:
    extra = gearmand_factory()
    port = free_port()
    host = host_factory(host_config(sandbox, db.database, {
        "record": {"python": "sample_handlers:record"},
    }, gearman={"servers": [extra.server]}, host={"metrics": f"127.0.0.1:{port}"}))
    host.wait_for_log("metrics on http://")
    wait_until(lambda: health(port)[0] == 200, what="healthy")
    extra.stop()
    _, body = wait_until(lambda: (h := health(port))[0] == 503 and h, what="unhealthy")
    assert body["status"] == "unhealthy"
    assert body["reasons"] == ["no worker of this host is connected to any gearmand"]
    assert "error" in body["gearmand"][extra.server]
    assert value(scrape(port), "workerhost_gearmand_up", server=extra.server) == 0
    extra.start()
    wait_until(lambda: health(port)[0] == 200, what="healthy again")


def test_a_port_in_use_is_reported_and_the_workers_still_run(
    sandbox: Sandbox, results: Any, host_factory: Any
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        host = host_factory(host_config(sandbox, results.database, {
            "record": {"python": "sample_handlers:record"},
        }, host={"metrics": f"127.0.0.1:{port}"}))
        host.wait_for_log(f"metrics: cannot listen on 127.0.0.1:{port}")
        submit(sandbox.gearman_server, "record", [{"id": 1}])
        wait_until(lambda: scalar(results, "SELECT COUNT(*) FROM results") == 1, what="a job")


# -- the parts on their own ----------------------------------------------------------------


def _config(servers: list[str]) -> Config:
    return parse_config({
        "gearman": {"servers": servers},
        "database": {"user": "u", "database": "d"},
        "handlers": {"touch": {"sql": "UPDATE t SET a = 1 WHERE id = %(id)s"}},
    }, file="test.yaml")  # fmt: skip


def _count_in_child(function: str) -> None:
    events.emit(events.JobsStarted(function))
    events.emit(events.JobsFinished(function, Outcome.RETRY))
    events.emit(events.JobsEnded(function))


def test_children_count_into_one_directory_that_goes_at_the_end() -> None:
    before = os.environ.get(metrics.ENV)
    with metrics.collecting():
        directory = os.environ[metrics.ENV]
        ctx = multiprocessing.get_context("fork")
        for _ in range(3):
            child = ctx.Process(target=_count_in_child, args=("resize",))
            child.start()
            child.join()
            assert child.exitcode == 0
            assert child.pid is not None
            events.emit(events.ProcessGone(child.pid))
        events.emit(events.WorkerRestarted("resize"))
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        samples = parse(generate_latest(registry).decode())
    assert value(samples, "workerhost_jobs_total", function="resize", outcome="retry") == 3
    assert value(samples, "workerhost_job_retries_total", function="resize") == 3
    assert value(samples, "workerhost_job_duration_seconds_count", function="resize") == 3
    assert value(samples, "workerhost_worker_restarts_total", handler="resize") == 1
    # The children that exited hold no job in flight any more.
    assert value(samples, "workerhost_jobs_in_flight", function="resize") is None
    assert not Path(directory).exists()
    assert os.environ.get(metrics.ENV) == before


def test_jobs_run_together_count_each_once_and_leave_none_in_flight() -> None:
    with metrics.collecting():
        directory = os.environ[metrics.ENV]
        events.emit(events.JobsStarted("touch", 4))  # a batch of sql: jobs sent as one query
        from prometheus_client import multiprocess

        def scrape_here() -> Samples:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return parse(generate_latest(registry).decode())

        assert value(scrape_here(), "workerhost_jobs_in_flight", function="touch") == 4
        events.emit(events.JobsEnded("touch"))
        samples = scrape_here()
    assert value(samples, "workerhost_jobs_in_flight", function="touch") == 0
    assert value(samples, "workerhost_job_duration_seconds_count", function="touch") == 4


def test_directories_of_killed_runs_are_removed_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead_pid = _exited_pid()
    stale = tmp_path / f"{metrics.DIRECTORY_PREFIX}{dead_pid}-x1"
    alive = tmp_path / f"{metrics.DIRECTORY_PREFIX}{os.getppid()}-x2"
    stale.mkdir()
    alive.mkdir()
    with metrics.collecting():
        ours = Path(os.environ[metrics.ENV])
        assert ours.parent == tmp_path and ours.name.startswith(
            f"{metrics.DIRECTORY_PREFIX}{os.getpid()}-")
    assert not stale.exists() and alive.exists() and not ours.exists()


def _exited_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_without_collecting_metrics_hear_no_event() -> None:
    """Metrics subscribe while collecting() runs, and only then: every event is a no-op."""
    heard: list[events.Event] = []
    with metrics.collecting():
        unsubscribe = events.subscribe(heard.append)
        events.emit(events.JobsStarted("x"))
        unsubscribe()
    assert heard == [events.JobsStarted("x")]
    assert metrics.on_event not in events._listeners
    events.emit(events.JobsStarted("x"))
    events.emit(events.JobsFinished("x", Outcome.COMPLETE))
    events.emit(events.JobsEnded("x"))
    events.emit(events.JobLost("x", Outcome.CRASHED))
    events.emit(events.WorkerRestarted("x"))
    events.emit(events.ProcessGone(os.getpid()))


def test_a_scrape_reports_a_dead_server_as_down_and_goes_on() -> None:
    config = _config(["127.0.0.1:1", "127.0.0.1:2"])
    answers = {
        "127.0.0.1:1": status.ServerStatus("127.0.0.1:1", error="Connection refused"),
        "127.0.0.1:2": status.ServerStatus("127.0.0.1:2", {
            "touch": gearadmin.FunctionStatus("touch", 7, 1, 2)}),
    }
    collector = metrics.QueueCollector(
        config, gearmand=lambda server, timeout: answers[str(server)],
        database=lambda: status.DatabaseStatus("db", {"touch": 4},
                                               status.Outbox(5, 2, 2, 1, 61.5, 0.25)))
    registry = CollectorRegistry()
    registry.register(collector)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "workerhost_gearmand_up", server="127.0.0.1:1") == 0
    assert value(samples, "workerhost_gearmand_up", server="127.0.0.1:2") == 1
    assert value(samples, "workerhost_gearmand_queued", server="127.0.0.1:2",
                 function="touch") == 7
    assert value(samples, "workerhost_gearmand_workers", server="127.0.0.1:2",
                 function="touch") == 2
    assert value(samples, "workerhost_dead_letter_rows", function="touch") == 4
    assert value(samples, "workerhost_outbox_rows") == 5
    assert value(samples, "workerhost_outbox_oldest_age_seconds") == 61.5


def test_a_scrape_shows_the_unserved_rows_of_each_function() -> None:
    collector = metrics.QueueCollector(
        _config(["127.0.0.1:1"]),
        gearmand=lambda server, timeout: status.ServerStatus(str(server), error="refused"),
        database=lambda: status.DatabaseStatus(
            "db", {}, status.Outbox(7, 0, 7, 0, 900.0, None),
            {"resize": status.Unserved("resize", 7, 900.0)}))
    registry = CollectorRegistry()
    registry.register(collector)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "workerhost_ledger_unserved_rows", function="resize") == 7
    assert value(samples, "workerhost_ledger_unserved_oldest_age_seconds",
                 function="resize") == 900.0
    assert value(samples, "workerhost_ledger_unserved_rows", function="touch") is None


def test_a_scrape_without_the_database_says_so() -> None:
    collector = metrics.QueueCollector(
        _config(["127.0.0.1:1"]),
        gearmand=lambda server, timeout: status.ServerStatus(str(server), error="refused"),
        database=lambda: status.DatabaseStatus("db", error="Can't connect", reachable=False))
    registry = CollectorRegistry()
    registry.register(collector)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "workerhost_database_up") == 0
    assert value(samples, "workerhost_outbox_rows") is None


@pytest.mark.parametrize("client_id, ours, db_problem, healthy, reasons", [
    ("workerhost-123", True, None, True, []),
    ("workerhost-123", False, None, False,
     ["no worker of this host is connected to any gearmand"]),
    ("somebody-else", True, None, False,
     ["no worker of this host is connected to any gearmand"]),
    ("workerhost-123", True, "Can't connect", False,
     ["the database does not answer: Can't connect"]),
])
def test_health_needs_a_worker_of_ours_and_the_database(
    client_id: str, ours: bool, db_problem: str | None, healthy: bool, reasons: list[str]
) -> None:
    def workers(host: str, port: int, timeout: float) -> list[gearadmin.Connection]:
        if port == 1:
            raise ConnectionRefusedError(111, "Connection refused")
        return [gearadmin.Connection("127.0.0.1", client_id, ("touch",)),
                gearadmin.Connection("127.0.0.1", "-", ())]

    ok, body = healthz.check_health(
        _config(["127.0.0.1:1", "127.0.0.1:2"]), ours=lambda pid: ours and pid == 123,
        workers=workers, database=lambda: db_problem)
    assert (ok, body["reasons"]) == (healthy, reasons)
    assert body["gearmand"]["127.0.0.1:1"] == {"error": "Connection refused"}
    assert body["gearmand"]["127.0.0.1:2"] == {"workers": 1 if ours and "workerhost" in
                                               client_id else 0}


def test_is_child_of_reads_the_parent_from_proc() -> None:
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=ctx.Event().wait, args=(5,))
    child.start()
    try:
        assert child.pid is not None
        assert healthz.is_child_of(os.getpid())(child.pid)
        assert not healthz.is_child_of(os.getpid() + 100000)(child.pid)
        assert not healthz.is_child_of(os.getpid())(os.getpid())
    finally:
        child.kill()
        child.join()


def test_a_scrape_shows_how_late_each_schedule_is() -> None:
    from datetime import datetime, timedelta

    from workerhost.model.timetable import UTC
    from workerhost.store.schedule_table import ScheduleRow

    config = parse_config({
        "gearman": {"servers": ["127.0.0.1:1"]},
        "database": {"user": "u", "database": "d"},
        "handlers": {"touch": {"sql": "DO 1"}},
        "schedules": [{"name": "led", "function": "touch", "every": "1h"},
                      {"name": "stuck", "function": "touch", "every": "1m"},
                      {"name": "new", "function": "touch", "every": "1m"}],
    }, file="test.yaml")  # fmt: skip
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    rows = {"led": ScheduleRow(hour, hour, hour, "web1:1"),
            "stuck": ScheduleRow(now - timedelta(minutes=10), None, None, None)}
    collector = metrics.QueueCollector(
        config, gearmand=lambda server, timeout: status.ServerStatus(str(server), error="x"),
        database=lambda: status.DatabaseStatus("db", {}, status.Outbox(0, 0, 0, 0, None, None),
                                               schedules=rows))
    registry = CollectorRegistry()
    registry.register(collector)
    samples = parse(generate_latest(registry).decode())
    age = value(samples, "workerhost_schedule_last_slot_age_seconds", schedule="led")
    assert age is not None and 0 <= age <= (now - hour).total_seconds() + 5
    assert value(samples, "workerhost_schedule_last_slot_age_seconds", schedule="stuck") is None
    assert value(samples, "workerhost_schedule_overdue_seconds", schedule="led") == 0
    stuck = value(samples, "workerhost_schedule_overdue_seconds", schedule="stuck")
    assert stuck is not None and 8 * 60 < stuck <= 10 * 60
    assert value(samples, "workerhost_schedule_overdue_seconds", schedule="new") == 0
