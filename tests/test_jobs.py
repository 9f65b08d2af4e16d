"""Jobs as objects, on every host at once: a cancelled job never runs, a paused function runs
nothing until it is resumed, then everything once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import captured_runs, scalar, sequence, wait_until, work_on_events

from workerhost.config.load import parse_config
from workerhost.observe import status
from workerhost.sandbox.stack import Sandbox
from workerhost.store import jobs
from workerhost.store.db import Database


def setup(udf: Sandbox, database: str, delivery: str) -> tuple[dict[str, Any], Database]:
    config = work_on_events(udf, database, delivery, {"python": "trigger_handlers:capture"})
    parsed = parse_config(config, file="test.yaml", env={"SANDBOX_DB_PASSWORD": udf.password})
    return config, Database(parsed.database.connect_kwargs())


def test_a_cancelled_job_never_runs_though_its_copy_sits_in_gearmand(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
) -> None:
    config, database = setup(udf, events.database, "immediate")
    try:
        events.cursor().execute(f"INSERT INTO events (id) SELECT seq FROM {sequence(1, 5)}")
        # The ships go out within about a millisecond of the statement (the UDF's flusher).
        wait_until(lambda: "work" in udf.gearman_status()
                   and udf.gearman_status()["work"].queued == 5,
                   what="the copies waiting in gearmand")
        doomed = scalar(events, "SELECT MIN(id) FROM workerhost_outbox")
        listed = jobs.list_jobs(database, "work", None, None, 10)
        assert [job.id for job in listed] == list(range(doomed + 4, doomed - 1, -1))
        assert {job.state for job in listed} == {"leased"}
        assert jobs.cancel(database, doomed) == "cancelled"
        assert jobs.cancel(database, doomed) == "missing"
        assert jobs.show(database, doomed) is None
        host_factory(config)
        wait_until(lambda: len(captured_runs(events)) == 4 and
                   scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") == 0,
                   what="the four other jobs")
        assert 1 not in captured_runs(events), "the cancelled job did not run"
        assert scalar(events, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0
    finally:
        database.close()


def test_a_paused_function_runs_nothing_until_resumed_then_everything_once(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
) -> None:
    config, database = setup(udf, events.database, "immediate")
    try:
        host_factory(config)
        events.cursor().execute("INSERT INTO events (id) VALUES (1)")
        wait_until(lambda: captured_runs(events) == {1: 1}, what="a job before the pause")
        assert jobs.pause(database, "work") == 0
        assert [name for name, _, _ in jobs.paused(database)] == ["work"]
        shown = status.database(database)
        assert shown.paused == ("work",)
        assert status.as_json(status.Report((), shown, ()))["database"]["paused"] == ["work"]
        # Jobs that reach a worker while paused, and jobs written before it (shipped later).
        events.cursor().execute(f"INSERT INTO events (id) SELECT seq FROM {sequence(2, 30)}")
        wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_outbox WHERE "
                                  "not_before >= '9999-01-01'") == 29,
                   what="every job of the paused function parked in the ledger")
        assert captured_runs(events) == {1: 1}, "nothing ran while paused"
        assert {job.state for job in jobs.list_jobs(database, "work", None, None, 50)} \
            == {"paused"}
        assert jobs.resume(database, "work") == (True, 29)
        wait_until(lambda: len(captured_runs(events)) == 30, what="every job once resumed")
        assert set(captured_runs(events).values()) == {1}, "each once"
        wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") == 0,
                   what="an empty ledger")
        assert jobs.resume(database, "work") == (False, 0)
    finally:
        database.close()


def test_a_delayed_retry_runs_now_when_told(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
) -> None:
    config, database = setup(udf, events.database, "outbox")
    config["handlers"]["work"].update(python="trigger_handlers:fail_once_per_row",
                                      retries={"attempts": 3, "backoff": "1h",
                                               "max_backoff": "1h"})
    try:
        host_factory(config)
        events.cursor().execute("INSERT INTO events (id) VALUES (7)")
        ident = scalar(events, "SELECT id FROM workerhost_outbox")
        wait_until(lambda: (job := jobs.show(database, ident)) is not None
                   and job.state == "delayed", what="the first attempt failed, retry in 1h")
        shown = jobs.show(database, ident)
        assert shown is not None and shown.failures == 1
        assert shown.last_error == "RuntimeError: the first attempt fails"
        assert jobs.run_now(database, ident) == "due"
        wait_until(lambda: captured_runs(events) == {7: 1}, what="the retry, now")
        assert jobs.run_now(database, ident) == "missing"
    finally:
        database.close()


def test_the_cli_pauses_lists_cancels_and_resumes(
    udf: Sandbox, events: Any, tmp_path: Any,
) -> None:
    import subprocess
    import sys

    import yaml
    from conftest import ROOT, host_env

    config, database = setup(udf, events.database, "outbox")
    database.close()
    path = tmp_path / "host.yaml"
    path.write_text(yaml.safe_dump(config))

    def cli(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workerhost.cli", *words, "-c", str(path)],
                              env=host_env(udf), capture_output=True, text=True, cwd=ROOT,
                              timeout=60)

    events.cursor().execute(f"INSERT INTO events (id) SELECT seq FROM {sequence(1, 3)}")
    paused = cli("pause", "work")
    assert paused.returncode == 0, paused.stderr
    assert "work paused on every host; 3 waiting jobs parked" in paused.stdout
    listed = cli("jobs", "list", "--state", "paused")
    assert listed.returncode == 0 and "3 jobs (newest first)" in listed.stdout
    first = scalar(events, "SELECT MIN(id) FROM workerhost_outbox")
    cancelled = cli("jobs", "cancel", str(first), "999999999")
    assert cancelled.returncode == 1
    assert f"job {first}: cancelled" in cancelled.stdout
    assert "job 999999999: no such job" in cancelled.stdout
    resumed = cli("resume", "work")
    assert resumed.returncode == 0 and "2 parked jobs due again" in resumed.stdout
    assert cli("resume", "work").returncode == 1, "resuming what is not paused says so"


def test_jobs_list_older_than_keeps_the_jobs_written_that_long_ago(
    udf: Sandbox, events: Any, tmp_path: Any,
) -> None:
    import subprocess
    import sys

    import yaml
    from conftest import ROOT, host_env

    config, database = setup(udf, events.database, "outbox")
    path = tmp_path / "host.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        events.cursor().execute(f"INSERT INTO events (id) SELECT seq FROM {sequence(1, 4)}")
        first = scalar(events, "SELECT MIN(id) FROM workerhost_outbox")
        # Two jobs written two hours ago, one ten minutes ago, one now.
        cursor = events.cursor()
        cursor.execute("UPDATE workerhost_outbox SET created_at = NOW(6) - INTERVAL 2 HOUR "
                       "WHERE id IN (%s, %s)", (first, first + 1))
        cursor.execute("UPDATE workerhost_outbox SET created_at = NOW(6) - INTERVAL 10 MINUTE "
                       "WHERE id = %s", (first + 2,))
        cursor.close()
        listed = jobs.list_jobs(database, None, None, None, 50, older_than=3600)
        assert [job.id for job in listed] == [first + 1, first]
        listed = jobs.list_jobs(database, "work", "due", None, 50, older_than=300)
        assert [job.id for job in listed] == [first + 2, first + 1, first]
        assert jobs.list_jobs(database, "other", None, None, 50, older_than=300) == []
        assert len(jobs.list_jobs(database, None, None, None, 50)) == 4

        def cli(*words: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "workerhost.cli", *words, "-c", str(path)],
                env=host_env(udf), capture_output=True, text=True, cwd=ROOT, timeout=60)

        old = cli("jobs", "list", "--older-than", "1h")
        assert old.returncode == 0, old.stderr
        assert "2 jobs (newest first)" in old.stdout
        shown = [int(line.split()[0]) for line in old.stdout.splitlines()[1:-1]]
        assert shown == [first + 1, first]
        assert "4 jobs (newest first)" in cli("jobs", "list", "--older-than", "0s").stdout
        bad = cli("jobs", "list", "--older-than", "an hour")
        assert bad.returncode == 2
        assert "argument --older-than: expected a duration like 30s, got 'an hour'" in bad.stderr
    finally:
        database.close()
