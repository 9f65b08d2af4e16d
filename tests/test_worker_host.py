"""`workerhost run` against the sandbox's real gearmand and mariadbd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import gearman
import pytest
from conftest import RunningHost, host_config, host_env, scalar, sequence, wait_until

from workerhost.gearman import admin as gearadmin
from workerhost.sandbox.stack import Sandbox
from workerhost.store import schema

RESULTS = """CREATE TABLE results (
    id BIGINT PRIMARY KEY, attempt INT, unique_key VARCHAR(255), runs INT NOT NULL DEFAULT 1,
    created_at DATETIME(6) NOT NULL DEFAULT NOW(6))"""


@pytest.fixture
def tables(db: Any) -> Any:
    cursor = db.cursor()
    cursor.execute(RESULTS)
    cursor.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, note VARCHAR(255), "
                   "seen_at DATETIME(6))")
    cursor.execute(f"INSERT INTO items (id) SELECT seq FROM {sequence(1, 500)}")
    cursor.execute("CREATE TABLE flags (name VARCHAR(32) PRIMARY KEY, broken BOOL)")
    return db


def submit(sandbox: Sandbox, function: str, payloads: list[Any], **kw: Any) -> list[Any]:
    client = gearman.GearmanClient([sandbox.gearman_server])
    jobs = [{"task": function, "data": p if isinstance(p, bytes) else json.dumps(p)}
            for p in payloads]
    background = kw.pop("background", True)
    requests = client.submit_multiple_jobs(
        jobs, background=background, wait_until_complete=not background, **kw)
    client.shutdown()
    return list(requests)


def count_results(db: Any) -> int:
    return int(scalar(db, "SELECT COUNT(*) FROM results"))


def dead_letters(db: Any) -> list[tuple[Any, ...]]:
    cursor = db.cursor()
    cursor.execute("SELECT id, `function`, attempts, error, traceback, payload "
                   "FROM workerhost_dead_letters ORDER BY id")
    return list(cursor.fetchall())


def cli(sandbox: Sandbox, host: RunningHost, verb: str, *args: str) -> Any:
    """Run `workerhost VERB -c <the host's config> ARGS...` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "workerhost.cli", verb, "-c", str(host.config_path), *args],
        capture_output=True, text=True, env=host_env(sandbox), timeout=60, check=False,
    )


def cli_on(sandbox: Sandbox, config: dict[str, Any], tmp_path: Path, verb: str,
           *args: str) -> Any:
    """Write `config` to a file, then run `workerhost VERB -c FILE ARGS...`."""
    import yaml

    path = tmp_path / "workerhost.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "workerhost.cli", verb, "-c", str(path), *args],
        capture_output=True, text=True, env=host_env(sandbox), timeout=60, check=False,
    )


def test_sql_and_python_handlers_write_back(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host_factory(host_config(sandbox, tables.database, {
        "mark_seen": {"sql": "UPDATE items SET seen_at = NOW(6) WHERE id = %(id)s",
                      "processes": 2},
        "record": {"python": "sample_handlers:record"},
    }))
    submit(sandbox, "mark_seen", [{"id": i} for i in range(1, 201)])
    submit(sandbox, "record", [{"id": i} for i in range(1, 101)])
    wait_until(lambda: scalar(tables, "SELECT COUNT(seen_at) FROM items") == 200, what="sql")
    wait_until(lambda: count_results(tables) == 100, what="python write-back")
    assert scalar(tables, "SELECT COUNT(seen_at) FROM items WHERE id > 200") == 0
    assert scalar(tables, "SELECT MAX(runs) FROM results") == 1


def test_the_write_is_committed_before_gearmand_hears_complete(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host_factory(host_config(sandbox, tables.database, {
        "slow_record": {"python": "sample_handlers:slow_record"},
    }))
    client = gearman.GearmanClient([sandbox.gearman_server])
    request = client.submit_job("slow_record", json.dumps({"id": 7, "seconds": 1.5}),
                                background=False, wait_until_complete=False)
    # While the handler runs, its write exists only inside its transaction.
    wait_until(lambda: sandbox.gearman_status()["slow_record"].running == 1, what="running")
    assert count_results(tables) == 0
    client.wait_until_jobs_completed([request], poll_timeout=30)
    # The client has WORK_COMPLETE: the row is already visible to everyone.
    assert request.state == "COMPLETE"
    assert json.loads(request.result) == {"id": 7, "attempt": 1}
    assert count_results(tables) == 1
    client.shutdown()


def test_a_failing_handler_is_retried_then_succeeds(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host = host_factory(host_config(sandbox, tables.database, {
        "flaky": {"python": "sample_handlers:fail_until_third",
                  "retries": {"attempts": 3, "backoff": "100ms"}},
    }))
    submit(sandbox, "flaky", [{"id": 1}])
    wait_until(lambda: count_results(tables) == 1, what="third attempt")
    assert scalar(tables, "SELECT attempt FROM results") == 3
    retried = [line for line in host.log().splitlines()
               if "attempt=1 failed and will be retried: RuntimeError: flaky failure on attempt 1"
               in line]
    assert retried and " WARNING " in retried[0], "a scheduled retry is a warning, not an error"
    assert scalar(tables, "SELECT COUNT(*) FROM workerhost_attempts") == 0
    assert dead_letters(tables) == []


def test_exception_is_dead_lettered_then_replayed(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    tables.cursor().execute("INSERT INTO flags VALUES ('handler', TRUE)")
    host = host_factory(host_config(sandbox, tables.database, {
        "fragile": {"python": "sample_handlers:fails_until_flag",
                    "retries": {"attempts": 2, "backoff": "50ms"}},
    }))
    submit(sandbox, "fragile", [{"id": 5}])
    letters = wait_until(lambda: dead_letters(tables), what="a dead letter")
    ident, function, attempts, error, tb, payload = letters[0]
    assert (function, attempts, error) == ("fragile", 2, "RuntimeError: the flag says broken")
    assert 'raise RuntimeError("the flag says broken")' in tb
    assert json.loads(payload) == {"id": 5}
    assert count_results(tables) == 0

    listed = cli(sandbox, host, "dead-letters", "list")
    assert listed.returncode == 0, listed.stderr
    assert "fragile" in listed.stdout and "1 dead letter\n" in listed.stdout
    shown = cli(sandbox, host, "dead-letters", "show", str(ident))
    assert "the flag says broken" in shown.stdout and "traceback:" in shown.stdout

    tables.cursor().execute("UPDATE flags SET broken = FALSE")
    replay = cli(sandbox, host, "dead-letters", "retry", str(ident))
    assert replay.returncode == 0 and "1 dead letter queued again" in replay.stdout
    wait_until(lambda: count_results(tables) == 1, what="the replayed job")
    assert dead_letters(tables) == []


@pytest.mark.parametrize("handler, payload, expected", [
    ("sleeps", {"id": 1, "seconds": 60}, "timed out after 1s; its worker process was killed"),
    ("exits", {"id": 2}, "its worker process died while running it (exit status 17)"),
    ("segfaults", {"id": 3}, "its worker process died while running it (killed by SIGSEGV)"),
])
def test_a_job_that_kills_or_hangs_its_worker_is_dead_lettered(
    sandbox: Sandbox, tables: Any, host_factory: Any, handler: str, payload: Any, expected: str
) -> None:
    host = host_factory(host_config(sandbox, tables.database, {
        handler: {"python": f"sample_handlers:{handler}", "timeout": "1s",
                  "retries": {"attempts": 2, "backoff": "50ms"}},
        "record": {"python": "sample_handlers:record"},
    }))
    submit(sandbox, handler, [payload])
    letters = wait_until(lambda: dead_letters(tables), timeout=60, what="a dead letter")
    assert letters[0][1:4] == (handler, 2, expected)
    # Exactly `attempts` runs, then the job is gone from gearmand: no endless re-queue.
    assert host.log().count(expected) == 2
    wait_until(lambda: sandbox.gearman_status()[handler].queued == 0, what="queue empty")
    # The pool is healthy afterwards.
    submit(sandbox, "record", [{"id": 10}])
    wait_until(lambda: count_results(tables) == 1, what="a job after the crashes")


def test_bad_payloads_fail_with_a_clear_reason(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host_factory(host_config(sandbox, tables.database, {
        "mark_seen": {"sql": "UPDATE items SET seen_at = NOW(6) WHERE id = %(id)s",
                      "retries": {"attempts": 5}, "on_no_rows": "dead_letter"},
    }))
    submit(sandbox, "mark_seen", [b"not json", {"other": 1}, {"id": 100000}])
    letters = wait_until(lambda: len(dead_letters(tables)) == 3 and dead_letters(tables),
                         what="three dead letters")
    # None of these can be fixed by running again: one attempt each, not five.
    assert [row[2] for row in letters] == [1, 1, 1]
    errors = sorted(row[3] for row in letters)
    assert errors[0].startswith("payload is not JSON")
    assert errors[1] == "payload lacks 'id' needed by the handler's SQL; it has ['other']"
    assert errors[2].startswith("the write matched no row (params {'id': 100000})")


def test_a_payload_cannot_inject_sql(sandbox: Sandbox, tables: Any, host_factory: Any) -> None:
    host_factory(host_config(sandbox, tables.database, {
        "note": {"sql": "UPDATE items SET note = %(note)s WHERE id = %(id)s"},
    }))
    evil = "x'; DROP TABLE items; UPDATE items SET note='pwned' WHERE '1'='1"
    submit(sandbox, "note", [{"id": 3, "note": evil}, {"id": "4 OR 1=1", "note": "wide"}])
    wait_until(lambda: scalar(tables, "SELECT note FROM items WHERE id = 3"), what="write")
    assert scalar(tables, "SELECT note FROM items WHERE id = 3") == evil
    assert scalar(tables, "SELECT COUNT(*) FROM items") == 500
    assert scalar(tables, "SELECT COUNT(note) FROM items") in (1, 2)
    assert scalar(tables, "SELECT COUNT(*) FROM items WHERE note = 'pwned'") == 0


def test_sigterm_finishes_running_jobs_and_loses_none(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    config = host_config(sandbox, tables.database, {
        "slow_record": {"python": "sample_handlers:slow_record", "processes": 2},
    })
    host = host_factory(config)
    submit(sandbox, "slow_record", [{"id": i, "seconds": 0.05} for i in range(200)])
    wait_until(lambda: count_results(tables) >= 20, what="some progress")
    assert host.stop() == 0
    done = count_results(tables)
    assert done < 200, "stopped too late to show anything"
    assert "stopping: workers finish their current job" in host.log()
    # Nothing was lost: the rest, including the next batch each worker held unstarted, is
    # queued in gearmand again, and a new host finishes it.
    host_factory(config)
    wait_until(lambda: count_results(tables) == 200, timeout=60, what="all 200")
    assert scalar(tables, "SELECT MAX(runs) FROM results") == 1


def test_sighup_adds_a_handler_and_refuses_a_broken_config(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    config = host_config(sandbox, tables.database, {
        "record": {"python": "sample_handlers:record"},
    })
    host = host_factory(config)
    submit(sandbox, "mark_seen", [{"id": i} for i in range(1, 51)])

    good = host.config_path.read_text()
    host.config_path.write_text(good + "\nunknown_section: true\n")
    host.signal(signal.SIGHUP)
    host.wait_for_log("reload refused, the running configuration stays")
    assert "unknown_section" in host.log()

    import yaml

    config["handlers"]["mark_seen"] = {"sql": "UPDATE items SET seen_at = NOW(6) "
                                              "WHERE id = %(id)s", "accept": "any"}
    host.config_path.write_text(yaml.safe_dump(config))
    host.signal(signal.SIGHUP)
    host.wait_for_log("configuration reloaded")
    wait_until(lambda: scalar(tables, "SELECT COUNT(seen_at) FROM items") == 50, what="new")
    submit(sandbox, "record", [{"id": 1}])
    wait_until(lambda: count_results(tables) == 1, what="the old handler still works")


def _ledger(db: Any, function: str, ids: range) -> None:
    """Jobs written to the ledger (the outbox) in 100-row transactions, as triggers would."""
    for start in range(ids.start, ids.stop, 100):
        rows = sequence(start, min(start + 99, ids.stop - 1))
        db.cursor().execute("INSERT INTO workerhost_outbox (`function`, payload) SELECT %s, "
                            f"CONCAT('{{\"id\": ', seq, '}}') FROM {rows}", (function,))


def _stream(sandbox: Sandbox, function: str, ids: range) -> None:
    for start in range(ids.start, ids.stop, 100):
        submit(sandbox, function, [{"id": i} for i in range(start, min(start + 100, ids.stop))])


def test_gearmand_restart_mid_stream_loses_nothing(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    # Jobs through the ledger: gearmand (its queue in memory) forgets what it held when it
    # restarts, and the relay ships those again once their lease ends.
    host_factory(host_config(sandbox, tables.database, {
        "record": {"python": "sample_handlers:record", "processes": 2, "accept": "ledger"},
    }))
    _ledger(tables, "record", range(0, 500))
    sandbox.stop_gearmand()
    sandbox.start_gearmand()
    _ledger(tables, "record", range(500, 1000))
    wait_until(lambda: count_results(tables) == 1000, timeout=60, what="all 1000")
    assert scalar(tables, "SELECT MAX(runs) FROM results") == 1, "one effect each"
    wait_until(lambda: scalar(tables, "SELECT COUNT(*) FROM workerhost_outbox") == 0,
               what="an empty ledger")


def test_mariadbd_restart_mid_stream_loses_nothing(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    database = tables.database  # asked of the server: ask before it goes away
    host = host_factory(host_config(sandbox, database, {
        "record": {"python": "sample_handlers:record", "processes": 2},
    }))
    _stream(sandbox, "record", range(0, 300))
    sandbox.stop_mysql()
    _stream(sandbox, "record", range(300, 600))
    sandbox.start_mysql()
    probe = sandbox.connect(database=database)
    wait_until(lambda: count_results(probe) == 600, timeout=90, what="all 600")
    assert dead_letters(probe) == []
    assert host.process.poll() is None
    probe.close()


def test_check_reports_config_errors_with_exit_code_3(tmp_path: Path) -> None:
    bad = tmp_path / "workerhost.yaml"
    bad.write_text("gearman: {servers: []}\n")
    result = subprocess.run([sys.executable, "-m", "workerhost.cli", "check", "-c", str(bad)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 3
    assert result.stderr.startswith(f"workerhost: error: {bad}")


def test_no_rows_with_retry_policy_waits_for_the_row(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host = host_factory(host_config(sandbox, tables.database, {
        "mark_seen": {"sql": "UPDATE items SET seen_at = NOW(6) WHERE id = %(id)s",
                      "retries": {"attempts": 5, "backoff": "200ms"}, "on_no_rows": "retry"},
    }))
    submit(sandbox, "mark_seen", [{"id": 9000}])
    host.wait_for_log("attempt=1 failed and will be retried: the write matched no row")
    tables.cursor().execute("INSERT INTO items (id) VALUES (9000)")
    wait_until(lambda: scalar(tables, "SELECT seen_at FROM items WHERE id = 9000"), what="row")
    assert dead_letters(tables) == []


def test_lock_waits_are_retried_without_counting_against_the_handler(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    admin = sandbox.connect()
    admin.cursor().execute("SET GLOBAL innodb_lock_wait_timeout = 1")
    try:
        host = host_factory(host_config(sandbox, tables.database, {
            "mark_seen": {"sql": "UPDATE items SET seen_at = NOW(6) WHERE id = %(id)s",
                          "retries": {"attempts": 1}},
        }))
        blocker = sandbox.connect(database=tables.database, autocommit=False)
        blocker.cursor().execute("SELECT * FROM items WHERE id = 1 FOR UPDATE")
        submit(sandbox, "mark_seen", [{"id": 1}])
        wait_until(lambda: sandbox.gearman_status()["mark_seen"].running == 1, what="running")
        import time

        time.sleep(2.5)  # at least two lock wait timeouts (1205) in the worker
        blocker.rollback()
        blocker.close()
        wait_until(lambda: scalar(tables, "SELECT seen_at FROM items WHERE id = 1"), what="row")
        assert dead_letters(tables) == []
        assert "failed" not in host.log()
    finally:
        admin.cursor().execute("SET GLOBAL innodb_lock_wait_timeout = 50")
        admin.close()


def test_two_gearmand_servers_are_served_at_once(
    sandbox: Sandbox, tables: Any, host_factory: Any, gearmand_factory: Any
) -> None:
    second = gearmand_factory()
    host_factory(host_config(sandbox, tables.database, {
        "record": {"python": "sample_handlers:record"},
    }, gearman={"servers": [sandbox.gearman_server, second.server]}))
    submit(sandbox, "record", [{"id": i} for i in range(50)])
    client = gearman.GearmanClient([second.server])
    client.submit_multiple_jobs([{"task": "record", "data": json.dumps({"id": i})}
                                 for i in range(50, 100)], background=True,
                                wait_until_complete=False)
    client.shutdown()
    wait_until(lambda: count_results(tables) == 100, what="jobs from both servers")


def test_a_second_sigterm_stops_at_once(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host = host_factory(host_config(sandbox, tables.database, {
        "sleeps": {"python": "sample_handlers:sleeps", "timeout": "1h"},
    }))
    submit(sandbox, "sleeps", [{"id": 1, "seconds": 3600}])
    wait_until(lambda: sandbox.gearman_status()["sleeps"].running == 1, what="running")
    host.signal(signal.SIGTERM)
    host.wait_for_log("stopping: workers finish their current job")
    host.signal(signal.SIGTERM)
    assert host.process.wait(10) == 6
    # The job was not lost: gearmand holds it for the next worker.
    wait_until(lambda: sandbox.gearman_status()["sleeps"].running == 0, what="released")
    assert sandbox.gearman_status()["sleeps"].queued == 1


def test_workers_are_recycled_after_max_jobs(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host = host_factory(host_config(sandbox, tables.database, {
        "record": {"python": "sample_handlers:record", "max_jobs": 10, "batch": 1},
    }))
    submit(sandbox, "record", [{"id": i} for i in range(35)])
    wait_until(lambda: count_results(tables) == 35, what="all jobs")
    assert host.log().count("worker for record started") >= 4
    assert "exited" not in host.log()


def test_slow_jobs_queued_before_the_host_starts_go_to_every_process(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    """A process holds about 0.1 s of work, one job when jobs are slow: the first process to
    connect does not take the whole queue while the second one idles."""
    tables.cursor().execute("CREATE TABLE ran_by (id BIGINT PRIMARY KEY, pid INT)")
    submit(sandbox, "slow_pid", [{"id": i, "seconds": 0.5} for i in range(8)])
    host_factory(host_config(sandbox, tables.database, {
        "slow_pid": {"python": "sample_handlers:slow_record_pid", "processes": 2}}))
    wait_until(lambda: scalar(tables, "SELECT COUNT(*) FROM ran_by") == 8, timeout=30,
               what="all 8 jobs")
    cursor = tables.cursor()
    cursor.execute("SELECT pid, COUNT(*) FROM ran_by GROUP BY pid")
    per_process = sorted(count for _pid, count in cursor.fetchall())
    assert len(per_process) == 2 and per_process[0] >= 2, per_process


def _pids_of(host: RunningHost, handler: str, processes: int) -> list[int]:
    """The worker processes of a handler, by index, as the supervisor started them."""
    import re

    for index in range(processes):
        host.wait_for_log(f"started {handler}[{index}] (pid")
    return [int(re.findall(rf"started {re.escape(handler)}\[{index}\] \(pid (\d+)\)",
                           host.log())[-1]) for index in range(processes)]


def _fresh_function() -> str:
    """A function of this test alone: a job a test leaves in gearmand (a slow one still running
    when its host stops goes back to the queue) must not run in the next test's host."""
    return f"pid_{uuid.uuid4().hex[:8]}"


def _ran_by(db: Any, ids: range) -> dict[int, int]:
    cursor = db.cursor()
    cursor.execute("SELECT pid, COUNT(*) FROM ran_by WHERE id BETWEEN %s AND %s GROUP BY pid",
                   (ids.start, ids.stop - 1))
    return {int(pid): int(count) for pid, count in cursor.fetchall()}


def test_a_thin_stream_runs_in_one_process_and_a_backlog_in_every_one(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    """Jobs that one process takes as they come are left to it by the others: one claim and
    one commit serve the jobs that come together, not one each in every process. A backlog
    of jobs it cannot keep up with goes to every process."""
    tables.cursor().execute("CREATE TABLE ran_by (id BIGINT PRIMARY KEY, pid INT)")
    fn = _fresh_function()
    host = host_factory(host_config(sandbox, tables.database, {
        fn: {"python": "sample_handlers:slow_record_pid", "processes": 3}}))
    first = _pids_of(host, fn, 3)[0]
    submit(sandbox, fn, [{"id": 0, "seconds": 0}])
    wait_until(lambda: scalar(tables, "SELECT COUNT(*) FROM ran_by") == 1, what="job 0")

    client = gearman.GearmanClient([sandbox.gearman_server])
    try:
        for i in range(1, 41):
            client.submit_job(fn, json.dumps({"id": i, "seconds": 0}), background=True,
                              wait_until_complete=False)
            wait_until(lambda i=i: scalar(tables, "SELECT COUNT(*) FROM ran_by WHERE id = %s",
                                          i) == 1, timeout=30, what=f"job {i}")
    finally:
        client.shutdown()
    thin = _ran_by(tables, range(1, 41))
    # Every job is woken for in all three; spread, each takes about a third.
    assert thin.get(first, 0) >= 30, thin

    # 5 ms a job, 300 at once: one process would take 1.5 s, and its batches run past the
    # time its siblings wait for it.
    submit(sandbox, fn, [{"id": i, "seconds": 0.005} for i in range(100, 400)])
    wait_until(lambda: scalar(tables, "SELECT COUNT(*) FROM ran_by") == 341, timeout=60,
               what="the backlog")
    backlog = _ran_by(tables, range(100, 400))
    assert len(backlog) == 3 and min(backlog.values()) >= 10, backlog


def test_a_job_that_comes_while_a_slow_one_runs_does_not_wait_for_it(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    """New jobs are left to the process that takes them as they come, never to one busy with
    a slow job: a job that comes meanwhile runs in another process, before the slow one ends."""
    tables.cursor().execute("CREATE TABLE ran_by (id BIGINT PRIMARY KEY, pid INT)")
    fn = _fresh_function()
    host = host_factory(host_config(sandbox, tables.database, {
        fn: {"python": "sample_handlers:slow_record_pid", "processes": 2}}))
    _pids_of(host, fn, 2)
    submit(sandbox, fn, [{"id": 0, "seconds": 0}])
    wait_until(lambda: scalar(tables, "SELECT COUNT(*) FROM ran_by") == 1, what="job 0")
    submit(sandbox, fn, [{"id": 1, "seconds": 5}])
    wait_until(lambda: gearadmin.status("127.0.0.1", sandbox.gearman_port)[fn].running == 1,
               what="the slow job to start")
    submit(sandbox, fn, [{"id": 2, "seconds": 0}])
    wait_until(lambda: scalar(tables, "SELECT COUNT(*) FROM ran_by WHERE id = 2") == 1,
               timeout=30, what="the job that came while the slow one ran")
    assert scalar(tables, "SELECT COUNT(*) FROM ran_by WHERE id = 1") == 0, "it waited"


def test_a_hung_process_that_the_others_leave_jobs_to_stalls_none(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    """The process the others leave new jobs to stops (SIGSTOP: alive, silent, holding no
    job): the next jobs run in the others, each within seconds, each once."""
    tables.cursor().execute("CREATE TABLE ran_by (id BIGINT PRIMARY KEY, pid INT)")
    fn = _fresh_function()
    host = host_factory(host_config(sandbox, tables.database, {
        fn: {"python": "sample_handlers:slow_record_pid", "processes": 3}}))
    pids = _pids_of(host, fn, 3)
    submit(sandbox, fn, [{"id": 0, "seconds": 0}])
    wait_until(lambda: scalar(tables, "SELECT COUNT(*) FROM ran_by") == 1, what="job 0")
    # Answered: gearmand has taken the answer and the request for more that went with it, so
    # the lowest process asks for no job while it is stopped.
    wait_until(lambda: gearadmin.status("127.0.0.1", sandbox.gearman_port)[fn].running == 0,
               what="job 0 answered")
    os.kill(pids[0], signal.SIGSTOP)
    try:
        client = gearman.GearmanClient([sandbox.gearman_server])
        try:
            for i in range(1, 11):
                client.submit_job(fn, json.dumps({"id": i, "seconds": 0}),
                                  background=True, wait_until_complete=False)
                wait_until(lambda i=i: scalar(tables, "SELECT COUNT(*) FROM ran_by WHERE "
                                              "id = %s", i) == 1, timeout=10, what=f"job {i}")
        finally:
            client.shutdown()
        ran = _ran_by(tables, range(1, 11))
        assert pids[0] not in ran and sum(ran.values()) == 10, (ran, pids)
    finally:
        os.kill(pids[0], signal.SIGCONT)
    assert scalar(tables, "SELECT COUNT(*) FROM ran_by") == 11


def test_one_bad_job_in_a_batch_costs_the_others_nothing(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host_factory(host_config(sandbox, tables.database, {
        "mixed": {"python": "sample_handlers:record_unless_told_to_fail", "batch": 16,
                  "retries": {"attempts": 1}},
    }))
    payloads = [{"id": i, "fail": i % 25 == 0} for i in range(1, 201)]
    submit(sandbox, "mixed", payloads)
    wait_until(lambda: count_results(tables) == 192 and len(dead_letters(tables)) == 8,
               what="192 rows and 8 dead letters")
    # Rolled-back batches left no trace: every good row was written exactly once.
    assert scalar(tables, "SELECT MAX(runs) FROM results") == 1
    assert sorted(json.loads(row[5])["id"] for row in dead_letters(tables)) == list(
        range(25, 201, 25))


def test_a_rerun_that_changes_nothing_still_matched_its_row(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host_factory(host_config(sandbox, tables.database, {
        "note": {"sql": "UPDATE items SET note = %(note)s WHERE id = %(id)s",
                 "on_no_rows": "dead_letter"},
    }))
    submit(sandbox, "note", [{"id": 8, "note": "same"}])
    wait_until(lambda: scalar(tables, "SELECT note FROM items WHERE id = 8"), what="first")
    # The replay finds the row already as it wants it: matched, unchanged, not "no row".
    submit(sandbox, "note", [{"id": 8, "note": "same"}], background=False)
    assert dead_letters(tables) == []


def dead_letter_after_two_attempts(
    sandbox: Sandbox, tables: Any, host_factory: Any, handler: str
) -> tuple[Any, ...]:
    """The dead letter of one job for `handler`, which fails on both its attempts."""
    host_factory(host_config(sandbox, tables.database, {
        "fails": {"python": handler, "retries": {"attempts": 2, "backoff": "50ms"}},
    }))
    submit(sandbox, "fails", [{"id": 1}])
    (letter,) = wait_until(lambda: dead_letters(tables), what="a dead letter")
    assert letter[2] == 2
    return letter


def test_a_huge_error_is_clipped_and_the_job_still_dead_lettered(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    letter = dead_letter_after_two_attempts(sandbox, tables, host_factory,
                                            "sample_handlers:raises_huge")
    assert letter[3].startswith("ValueError: xxx")
    assert letter[3].endswith("more characters cut)")


def test_what_a_failing_handler_wrote_before_it_raised_is_rolled_back(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    # The handler inserts a row, then raises: had its first try committed, the second would
    # fail on the duplicate key instead.
    letter = dead_letter_after_two_attempts(sandbox, tables, host_factory,
                                            "sample_handlers:always_fails")
    assert letter[3] == "ValueError: this handler always fails"
    assert scalar(tables, "SELECT COUNT(*) FROM results") == 0


def test_check_connect_with_a_wrong_password_says_so_with_exit_code_4(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = host_config(sandbox, "mysql", {"record": {"python": "sample_handlers:record"}})
    config["database"]["password"] = "not-the-password"
    result = cli_on(sandbox, config, tmp_path, "check", "--connect")
    assert result.returncode == 4
    assert "workerhost: error: cannot connect to database 'mysql' at 127.0.0.1:" in result.stderr
    assert "1045 (28000): Access denied for user 'workerhost'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_database_error_is_a_message_not_a_traceback(
    sandbox: Sandbox, db: Any, tmp_path: Path
) -> None:
    # A fresh database: the host's tables are not there yet.
    config = host_config(sandbox, db.database, {"record": {"python": "sample_handlers:record"}})
    result = cli_on(sandbox, config, tmp_path, "dead-letters", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("workerhost: error: the database said: 1146 (42S02): Table")
    assert "workerhost_dead_letters' doesn't exist" in result.stderr
    assert "`workerhost check -c FILE --connect` creates the host's tables" in result.stderr
    assert "Traceback" not in result.stderr


def touch_worker(sandbox: Sandbox, tables: Any, jobs: int, *, queued: bool = True,
                 commit_delay: float = 0.0) -> Any:
    """A worker of an `sql:` handler (batch 16), and `jobs` jobs queued for it (unless not
    `queued`: the caller submits them); it stops once it has done them all. Its commits
    take `commit_delay` seconds longer."""
    from workerhost.config.load import parse_config
    from workerhost.host.worker import Worker

    config = parse_config(host_config(sandbox, tables.database, {
        "touch": {"sql": "UPDATE items SET note = 'seen' WHERE id = %(id)s", "batch": 16},
    }), file="test.yaml", env=host_env(sandbox))
    worker = Worker(config, config.handlers["touch"])
    worker.db.run(schema.create)
    if queued:
        submit(sandbox, "touch", [{"id": i} for i in range(1, jobs + 1)])
    answered = worker.run_batch

    def run_batch(batch: list[Any]) -> list[Any]:
        answers = answered(batch)
        worker.stopping = worker.jobs_done >= jobs
        return answers

    worker.run_batch = run_batch  # type: ignore[method-assign]
    if commit_delay:
        conn = worker.db.conn
        commit = conn.commit

        def slow_commit() -> None:
            time.sleep(commit_delay)
            commit()

        conn.commit = slow_commit
    return worker


def session_counters(conn: Any) -> dict[str, int]:
    from workerhost.store import db

    cursor = db.cursor(conn)  # conn.cursor() would ping, and count itself
    cursor.execute("SHOW SESSION STATUS WHERE Variable_name IN "
                   "('Com_select', 'Com_update', 'Com_commit', 'Com_rollback', "
                   "'Com_admin_commands')")
    return {name: int(value) for name, value in cursor.fetchall()}


def test_a_batch_costs_two_queries_and_one_commit_and_no_ping(
    sandbox: Sandbox, tables: Any
) -> None:
    """The round trips a batch of `sql:` jobs makes to the database: statements counted by
    the server, queries counted as the client sends them."""
    worker = touch_worker(sandbox, tables, 64)
    conn = worker.db.conn
    send = conn.cmd_query
    queries: list[str] = []

    def counted_query(query: Any, *args: Any, **kwargs: Any) -> Any:
        queries.append(query.decode() if isinstance(query, bytes) else str(query))
        return send(query, *args, **kwargs)

    before = session_counters(conn)
    conn.cmd_query = counted_query
    assert worker.serve() == 0
    conn.cmd_query = send
    counted = {k: v - before[k] for k, v in session_counters(conn).items()}
    worker.db.close()
    assert scalar(tables, "SELECT COUNT(*) FROM items WHERE note = 'seen'") == 64
    batches = counted["Com_commit"]
    assert 4 <= batches <= 64
    # Per batch: the failures lookup and whether the function is paused (two statements of
    # one query), then every UPDATE of the batch in one multi-statement query, then one
    # COMMIT; no ping (COM_PING).
    assert counted["Com_select"] == 2 * batches
    assert counted["Com_update"] == 64
    assert counted["Com_admin_commands"] == 0
    assert len(queries) == 2 * batches, queries
    assert max(query.count("UPDATE items") for query in queries) > 1, "a batch in one query"


def test_in_a_batch_sent_as_one_query_a_write_that_matches_no_row_fails_only_its_job(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host_factory(host_config(sandbox, tables.database, {
        "touch": {"sql": ["UPDATE items SET note = %(note)s WHERE id = %(id)s",
                          "UPDATE items SET seen_at = NOW(6) WHERE id = %(id)s"],
                  "batch": 32, "on_no_rows": "dead_letter", "retries": {"attempts": 1}},
    }))
    # Rows 1..500 exist: ids past 500 match nothing, in the middle of batches.
    ids = [*range(1, 121), 9001, *range(121, 241), 9002]
    # Values the connector of 9.2 to 9.4 would take for a DELIMITER command with comments
    # (its quote tracking ignores backslash escapes), and a statement separator.
    note = "O'Brien {} delimiter $$ # not a comment;' -- nor this"
    submit(sandbox, "touch", [{"id": i, "note": note.format(i)} for i in ids])
    wait_until(lambda: scalar(tables, "SELECT COUNT(seen_at) FROM items") == 240
               and len(dead_letters(tables)) == 2, what="240 rows and 2 dead letters")
    cursor = tables.cursor()
    cursor.execute("SELECT id, note FROM items WHERE seen_at IS NOT NULL")
    assert {ident: text for ident, text in cursor.fetchall()} == {
        i: note.format(i) for i in range(1, 241)}
    assert sorted(json.loads(row[5])["id"] for row in dead_letters(tables)) == [9001, 9002]
    assert all("matched no row" in row[3] for row in dead_letters(tables))


def appending_worker(sandbox: Sandbox, tables: Any, **handler: Any) -> Any:
    """A Worker whose `sql:` job appends an x to its item's note (a write that shows how often
    it committed), dead-letters a job whose write matches no row at its first failure, and
    counts what a batch costs the server: run_batch gives (answers, session counters)."""
    from workerhost.config.load import parse_config
    from workerhost.host.worker import Worker

    config = parse_config(host_config(sandbox, tables.database, {
        "append": {"sql": "UPDATE items SET note = CONCAT(IFNULL(note, ''), 'x') "
                          "WHERE id = %(id)s",
                   "on_no_rows": "dead_letter", "retries": {"attempts": 1}, **handler},
    }), file="test.yaml", env=host_env(sandbox))
    worker = Worker(config, config.handlers["append"])
    worker.db.run(schema.create)
    answered = worker.run_batch

    def counting(batch: list[Any]) -> tuple[list[Any], dict[str, int]]:
        """Each of `batch` an item's id (a job straight from a client) or a Job."""
        from workerhost.model.job import Job

        jobs = [Job(function="append", payload=json.dumps({"id": i}).encode(), unique=f"u{i}",
                    handle=f"H:{i}", unique_sent=f"u{i}") if isinstance(i, int) else i
                for i in batch]
        before = session_counters(worker.db.conn)
        answers = answered(jobs)
        return answers, {k: v - before[k] for k, v in session_counters(worker.db.conn).items()}

    worker.run_batch = counting
    return worker


def notes(tables: Any) -> dict[int, str]:
    cursor = tables.cursor()
    cursor.execute("SELECT id, note FROM items WHERE note IS NOT NULL")
    return dict(cursor.fetchall())


def test_one_bad_job_in_a_full_batch_of_sql_jobs_costs_a_dozen_commits_not_one_a_job(
    sandbox: Sandbox, tables: Any
) -> None:
    """A batch of `sql:` jobs that fails is halved, down to 8 jobs that run alone: one job
    whose write matches no row, among 128, costs 5 rolled-back batches and 11 commits besides
    its own, and every other job's write is committed exactly once."""
    from workerhost.host.runner import ALONE_FROM

    worker = appending_worker(sandbox, tables, batch=128)
    # What a bad job costs on its own: its attempt rolled back, its dead letter committed.
    (alone,), bad_alone = worker.run_batch([9078])
    assert alone is None
    # No item 9077: its write matches no row.
    answers, counted = worker.run_batch([*range(1, 77), 9077, *range(77, 128)])
    worker.db.close()
    assert answers[76] is None and all(a == b'{"rows": 1}' for i, a in enumerate(answers)
                                       if i != 76)
    assert notes(tables) == {i: "x" for i in range(1, 128)}, "every good write committed once"
    assert [row[5] for row in dead_letters(tables)] == [b'{"id": 9078}', b'{"id": 9077}']
    # 128 -> 64 + 64 -> ... -> 8 + 8: the good halves commit together (4 commits), and the
    # 8 jobs of the last bad half run alone (7 commits, and what the bad job costs alone);
    # one by one, the 127 good jobs would have cost 127 commits.
    assert ALONE_FROM == 8
    assert counted["Com_commit"] == 4 + 7 + bad_alone["Com_commit"], counted
    assert counted["Com_rollback"] == 5 + bad_alone["Com_rollback"], counted


def test_a_halved_batch_still_runs_each_ledger_row_once_and_refuses_a_forged_copy(
    sandbox: Sandbox, tables: Any
) -> None:
    """The adversary's batch, halved: ledger jobs with a bad one among them, a second delivery
    of one row (another gearmand) and a copy whose token is forged. Each row's write commits
    once, the copy is answered without running, the forgery refused, the bad job
    dead-lettered."""
    from workerhost.model.job import Job, ledger_unique
    from workerhost.store import ledger

    worker = appending_worker(sandbox, tables, batch=64)
    rows: dict[int, tuple[int, str]] = {}  # item -> (ledger row, token)
    cursor = tables.cursor()
    for item in [*range(1, 40), 9077]:
        ident = ledger.enqueue(tables, "append", json.dumps({"id": item}).encode(), None)
        cursor.execute("SELECT token FROM workerhost_outbox WHERE id = %s", (ident,))
        rows[item] = (ident, cursor.fetchone()[0])
    tables.commit()

    def delivery(item: int, token: str | None = None) -> Job:
        ident, real = rows[item]
        proof = real if token is None else token
        unique = ledger_unique(ident, proof)
        return Job(function="append", payload=b"", unique=proof, handle=f"H:{ident}",
                   ledger=ident, proof=proof, unique_sent=unique)

    # Row 39's own delivery has not come yet: only a copy with a forged token.
    batch = [delivery(i) for i in range(1, 20)] + [delivery(9077)]
    batch += [delivery(i) for i in range(20, 39)] + [delivery(7), delivery(39, "f" * 32)]
    answers, counted = worker.run_batch(batch)
    worker.db.close()
    assert answers[19] is None, "the bad job"
    assert answers[-2] == b"", "the second delivery of row 7: done by the first"
    assert answers[-1] is None, "the forged copy of row 39"
    assert notes(tables) == {i: "x" for i in range(1, 39)}, "each row's write committed once"
    assert [row[5] for row in dead_letters(tables)] == [b'{"id": 9077}']
    assert scalar(tables, "SELECT COUNT(*) FROM workerhost_refused") == 1
    assert scalar(tables, "SELECT id FROM workerhost_outbox") == rows[39][0], (
        "row 39 waits for its own delivery")
    assert counted["Com_rollback"] >= 3, "halved: 40 jobs, then 20, then 10"


def test_a_failed_batch_of_a_rated_handler_runs_its_jobs_alone(
    sandbox: Sandbox, tables: Any
) -> None:
    """Every run takes tokens of a rate (limits: rate), rolled back or not: a failed batch of
    a rated handler is not halved, whose good jobs would each run and spend tokens several
    times, but run one by one, each good job twice at most."""
    worker = appending_worker(sandbox, tables, batch=32, limits={"rate": "100000/s"})
    answers, counted = worker.run_batch([*range(1, 21), 9077, *range(21, 32)])
    worker.db.close()
    assert answers.count(None) == 1
    assert notes(tables) == {i: "x" for i in range(1, 32)}
    assert counted["Com_rollback"] == 2, counted  # the batch, then the bad job alone


def test_a_slow_commit_still_lets_jobs_be_held_and_batched(
    sandbox: Sandbox, tables: Any
) -> None:
    """A commit of 70 ms (a remote database) costs the same for a batch as for one job."""
    worker = touch_worker(sandbox, tables, 200, commit_delay=0.07)
    conn = worker.db.conn
    before = session_counters(conn)
    assert worker.serve() == 0
    commits = session_counters(conn)["Com_commit"] - before["Com_commit"]
    worker.db.close()
    assert scalar(tables, "SELECT COUNT(*) FROM items WHERE note = 'seen'") == 200
    assert commits <= 30  # one job a commit would be 200 of them, and 14 s


def test_after_a_batch_of_several_jobs_the_next_partial_batch_waits_for_more(
    sandbox: Sandbox, tables: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a batch of n new jobs, the next batch that is not full starts (n - 1) ms later at
    the earliest (BATCH_SPACING, 10 ms at most), so that under a stream of small transactions
    batches grow with the stream instead of staying at what one commit's time gathers.

    Bursts of several jobs, each followed by a lone job as soon as the burst's batch starts:
    that lone job must wait out the spacing, however fast or slow the machine is."""
    import threading
    from itertools import pairwise

    from workerhost.config.converters import Server
    from workerhost.gearman.conn import Submitter
    from workerhost.host import worker as worker_module

    bursts = (8, 12, 4, 14)
    jobs = sum(bursts) + len(bursts)
    worker = touch_worker(sandbox, tables, jobs, queued=False)
    limit = worker.handler.batch  # one gearmand server
    assert max(bursts) + 1 < limit, "a burst and its lone job make a partial batch"
    # Each batch of new jobs, as the worker starts it: when, and how many jobs.
    starts: list[tuple[float, int]] = []
    spacing = worker_module._spacing
    several = threading.Event()

    def timed(size: int) -> float:
        starts.append((time.monotonic(), size))
        if size > 1:
            several.set()
        return spacing(size)

    monkeypatch.setattr(worker_module, "_spacing", timed)
    submitter = Submitter(Server("127.0.0.1", sandbox.gearman_port), 5.0)
    problems: list[str] = []

    def touch(ids: range) -> None:
        submitter.submit([("touch", b"", json.dumps({"id": i}).encode(), "normal")
                          for i in ids])

    def client() -> None:
        sent = 0
        for burst in bursts:
            several.clear()
            touch(range(sent + 1, sent + burst + 1))
            if not several.wait(10):
                problems.append(f"a burst of {burst} jobs never started as a batch of several")
            touch(range(sent + burst + 1, sent + burst + 2))  # the lone job, at once
            sent += burst + 1
            deadline = time.monotonic() + 10
            while worker.jobs_done < sent and time.monotonic() < deadline:
                time.sleep(0.005)  # the next burst finds the worker idle
        submitter.close()

    thread = threading.Thread(target=client)
    thread.start()
    assert worker.serve() == 0
    thread.join()
    worker.db.close()
    assert not problems, (problems, starts)
    assert scalar(tables, "SELECT COUNT(*) FROM items WHERE note = 'seen'") == jobs
    assert sum(size for _, size in starts) == jobs
    # Each partial batch after one of several jobs, with the gap between their starts and
    # the spacing it had to keep.
    spaced = [(round(later - earlier, 4), min(0.01, (size - 1) * 0.001))
              for (earlier, size), (later, next_size) in pairwise(starts)
              if size > 1 and next_size < limit]
    assert len(spaced) >= len(bursts), starts
    assert all(gap >= spacing - 0.0005 for gap, spacing in spaced), spaced


def test_a_handler_that_closes_its_connection_is_dead_lettered_without_a_crash_loop(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host = host_factory(host_config(sandbox, tables.database, {
        "closer": {"python": "sample_handlers:closes_its_connection",
                   "retries": {"attempts": 3, "backoff": "50ms"}},
    }))
    submit(sandbox, "closer", [{"id": 1}])
    (letter,) = wait_until(lambda: dead_letters(tables), what="a dead letter")
    # Misuse of the connection is a bug in the handler: retrying cannot fix it.
    assert letter[2] == 1
    assert letter[3].startswith("a handler may not call close() on the connection it is given")
    assert count_results(tables) == 0, "what it wrote before is rolled back"
    time.sleep(0.5)
    assert "restarting in" not in host.log(), "no worker died"
    assert host.log().count("worker for closer started") == 1


def test_a_failure_too_big_to_record_is_dead_lettered_in_shortened_form(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    admin = sandbox.connect()
    cursor = admin.cursor()
    cursor.execute("SELECT @@GLOBAL.max_allowed_packet")
    (packet,) = cursor.fetchone()
    # A retry re-enqueues the payload: past max_allowed_packet the database refuses that row.
    cursor.execute("SET GLOBAL max_allowed_packet = 1048576")
    try:
        host = host_factory(host_config(sandbox, tables.database, {
            "fails": {"python": "sample_handlers:always_fails",
                      "retries": {"attempts": 3, "backoff": "50ms"}},
        }))
        payload = {"id": 1, "blob": "y" * 2_000_000}
        submit(sandbox, "fails", [payload])
        (letter,) = wait_until(lambda: dead_letters(tables), what="a dead letter")
    finally:
        cursor.execute(f"SET GLOBAL max_allowed_packet = {int(packet)}")
        admin.close()
    _id, function, attempts, error, _tb, stored = letter
    assert (function, attempts) == ("fails", 1)
    assert error.startswith("ValueError: this handler always fails [recorded in shortened form")
    size = len(json.dumps(payload))
    assert error.endswith(f"payload of {size} bytes cut to its first 65536]")
    assert bytes(stored) == json.dumps(payload).encode()[:65536]
    assert "Traceback" not in host.log()
    assert "restarting in" not in host.log()


def test_signals_during_start_up_are_kept_not_fatal(
    sandbox: Sandbox, tables: Any, tmp_path: Path
) -> None:
    import yaml

    from workerhost.sandbox.processes import free_port

    # A database that refuses: start-up retries for seconds, the window a signal used to kill.
    config = host_config(sandbox, tables.database, {"record": {"python": "sample_handlers:record"}})
    config["database"]["port"] = free_port()
    path = tmp_path / "workerhost.yaml"
    path.write_text(yaml.safe_dump(config))
    host = RunningHost(path, tmp_path / "host.log", host_env(sandbox))
    try:
        wait_until(lambda: catches(host.pid, signal.SIGHUP), timeout=10,
                   what="the SIGHUP handler installed")
        host.signal(signal.SIGHUP)  # a `systemctl reload` right after the start
        time.sleep(1.0)
        assert host.process.poll() is None, host.log()
        host.signal(signal.SIGTERM)
        assert host.process.wait(10) == 0, host.log()
    finally:
        host.kill()
    assert "stopped during start-up, before any worker ran" in host.log()
    assert "Traceback" not in host.log()


def catches(pid: int, signum: int) -> bool:
    """True once process `pid` has a handler for `signum` (SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_a_handlers_forked_child_lets_go_of_the_workers_gearmand_connections(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host = host_factory(host_config(sandbox, tables.database, {
        "forker": {"python": "sample_handlers:forks_a_child"}}))
    client = gearman.GearmanClient([sandbox.gearman_server])
    request = client.submit_job("forker", "{}", background=False, wait_until_complete=False)
    client.wait_until_jobs_completed([request], poll_timeout=30)
    client.shutdown()
    assert request.result, host.log()
    child = int(request.result)
    try:
        assert gearmand_sockets(sandbox.gearman_port), "the worker's connection to gearmand"
        # The parent answers as soon as fork() returns; the child lets go in its at-fork hook,
        # which a loaded machine may not have run yet: wait for it, with a deadline.
        wait_until(lambda: not socket_inodes(child) & gearmand_sockets(sandbox.gearman_port),
                   timeout=10, what="the child to let go of the worker's gearmand connections")
        os.kill(child, signal.SIGTERM)  # the worker's own SIGTERM handler would ignore it
        wait_until(lambda: not Path(f"/proc/{child}").exists()
                   or " Z" in Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[-1][:2],
                   timeout=5, what="the child ended by SIGTERM")
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def gearmand_sockets(port: int) -> set[int]:
    """Inodes of the client sockets connected to gearmand's port (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port:
            found.add(int(fields[9]))
    return found


def test_a_worker_past_max_memory_is_recycled_and_its_job_counted_as_failed(
    sandbox: Sandbox, tables: Any, host_factory: Any
) -> None:
    host = host_factory(host_config(sandbox, tables.database, {
        "grows": {"python": "sample_handlers:grows", "max_memory": "150MB",
                  "retries": {"attempts": 1}},
    }))
    submit(sandbox, "grows", [{"id": 1, "mb": 300}])
    (letter,) = wait_until(lambda: dead_letters(tables), what="a dead letter")
    assert letter[3].startswith("its worker process grew to ")
    assert letter[3].endswith(" MB, past max_memory, and was killed")
    host.wait_for_log("worker for grows started", count=2)  # a fresh worker took its place
