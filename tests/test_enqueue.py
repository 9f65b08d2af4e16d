"""workerhost.enqueue: jobs enqueued in the application's own transaction, from Python
and through the procedure workerhost_enqueue, run once after the commit and never after a
rollback; EXECUTE on the procedure is the right to enqueue."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import mysql.connector
import pytest
import yaml
from conftest import host_config, host_env, scalar, wait_until
from trigger_handlers import CAPTURED

import workerhost
from workerhost.sandbox.stack import Sandbox
from workerhost.store import schema
from workerhost.store.enqueue import install

HANDLERS = {"capture": {"python": "trigger_handlers:capture", "accept": "ledger"}}


def runs(db: Any) -> dict[str, int]:
    """event id -> how many times its job ran."""
    cursor = db.cursor()
    cursor.execute("SELECT event_id, runs FROM captured")
    found = {str(event): int(count) for event, count in cursor.fetchall()}
    cursor.close()
    return found


def event(name: str) -> dict[str, Any]:
    return {"id": 1, "event_id": name}


@pytest.fixture
def applied(sandbox: Sandbox, db: Any, tmp_path: Path) -> Path:
    """The host's tables, a trigger, and the procedure, as `triggers --apply` leaves them."""
    cursor = db.cursor()
    cursor.execute(CAPTURED)
    cursor.execute("CREATE TABLE items (id BIGINT PRIMARY KEY)")
    config = host_config(sandbox, db.database, HANDLERS, triggers=[
        {"table": "items", "events": ["insert"], "function": "capture", "columns": ["id"],
         "delivery": "outbox"}])  # fmt: skip
    path = tmp_path / "workerhost.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "workerhost.cli", "triggers", "-c", str(path),
                             "--apply"], capture_output=True, text=True, env=host_env(sandbox),
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["created workerhost_items_insert",
                                          "created procedure workerhost_enqueue",
                                          "created procedure workerhost_enqueue_with",
                                          "created procedure workerhost_pause",
                                          "created procedure workerhost_resume"]
    return path


@pytest.fixture
def account(sandbox: Sandbox, db: Any) -> Iterator[Callable[..., Any]]:
    """Make an account with some grants on the test's database; a connection as it."""
    made: list[str] = []

    def make(*grants: str) -> Any:
        user, password = "enq_" + uuid.uuid4().hex[:8], uuid.uuid4().hex
        cursor = db.cursor()
        cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        made.append(user)
        for grant in grants:
            cursor.execute(f"GRANT {grant.format(db=db.database)} TO '{user}'@'%'")
        return sandbox.connect(database=db.database, user=user, password=password,
                               autocommit=False)

    yield make
    for user in made:
        db.cursor().execute(f"DROP USER '{user}'@'%'")


def test_a_committed_enqueue_runs_once_and_a_rolled_back_one_never(
    sandbox: Sandbox, db: Any, applied: Path, host_factory: Callable[..., Any]
) -> None:
    host_factory(yaml.safe_load(applied.read_text()))
    app = sandbox.connect(database=db.database, autocommit=False)
    app.start_transaction()
    app.cursor().execute("INSERT INTO items VALUES (1)")  # the application's own work
    workerhost.enqueue(app, "capture", event("rolled-back"))
    app.rollback()
    app.start_transaction()
    ident = workerhost.enqueue(app, "capture", event("committed"), priority="high",
                               unique="order-1")
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 0, "nothing before commit"
    app.commit()
    # A later job, delayed: once it ran, the relay has passed every row before it.
    app.start_transaction()
    workerhost.enqueue(app, "capture", event("delayed"), delay=0.5)
    app.commit()
    wait_until(lambda: len(runs(db)) >= 2, timeout=30, what="two enqueued jobs to run")
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 0, timeout=30,
               what="the ledger to empty")
    assert runs(db) == {event("committed")["event_id"]: 1, event("delayed")["event_id"]: 1}
    assert scalar(db, "SELECT COUNT(*) FROM items") == 0
    # The handler sees the unique given; the payload's event_id when none was.
    assert scalar(db, "SELECT unique_key FROM captured WHERE event_id = 'committed'") == "order-1"
    assert scalar(db, "SELECT unique_key FROM captured WHERE event_id = 'delayed'") == "delayed"
    assert ident > 0
    app.close()


def test_the_right_to_enqueue_from_sql_is_execute_on_the_procedure(
    sandbox: Sandbox, db: Any, applied: Path, account: Callable[..., Any],
    host_factory: Callable[..., Any],
) -> None:
    host_factory(yaml.safe_load(applied.read_text()))
    allowed = account("EXECUTE ON PROCEDURE `{db}`.workerhost_enqueue")
    cursor = allowed.cursor()
    allowed.start_transaction()
    cursor.callproc("workerhost_enqueue", ("capture", '{"id": 1, "event_id": "rolled back"}'))
    allowed.rollback()
    allowed.start_transaction()
    cursor.callproc("workerhost_enqueue", ("capture", '{"id": 2, "event_id": "by sql"}'))
    allowed.commit()
    wait_until(lambda: runs(db), timeout=30, what="the job enqueued through the procedure")
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 0, timeout=30,
               what="the ledger to empty")
    assert runs(db) == {"by sql": 1}
    # The ledger itself stays out of its reach: no reading tokens, no writing rows.
    with pytest.raises(mysql.connector.Error) as denied:
        cursor.execute("INSERT INTO workerhost_outbox (`function`, payload) VALUES ('x', '{}')")
    assert denied.value.errno == 1142
    allowed.close()

    outsider = account("SELECT ON `{db}`.items")
    with pytest.raises(mysql.connector.Error) as caught:
        outsider.cursor().callproc("workerhost_enqueue",
                                   ("capture", '{"id": 3, "event_id": "refused"}'))
    assert caught.value.errno == 1370, caught.value  # execute command denied
    assert "workerhost_enqueue" in str(caught.value)
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 0
    outsider.close()


def test_a_function_paused_and_resumed_from_sql_runs_nothing_then_everything_once(
    sandbox: Sandbox, db: Any, applied: Path, account: Callable[..., Any],
    host_factory: Callable[..., Any],
) -> None:
    """CALL workerhost_pause and workerhost_resume do what `workerhost pause` and `resume` do,
    for an account with EXECUTE on them and nothing on the host's tables."""
    host_factory(yaml.safe_load(applied.read_text()))
    operator = account("EXECUTE ON PROCEDURE `{db}`.workerhost_pause",
                       "EXECUTE ON PROCEDURE `{db}`.workerhost_resume",
                       "EXECUTE ON PROCEDURE `{db}`.workerhost_enqueue")
    cursor = operator.cursor()
    cursor.callproc("workerhost_pause", ("capture",))
    operator.commit()
    assert scalar(db, "SELECT paused_by FROM workerhost_paused WHERE `function` = 'capture'"
                  ).endswith(" (SQL)")
    for number in range(1, 11):
        cursor.callproc("workerhost_enqueue",
                        ("capture", f'{{"id": {number}, "event_id": "e{number}"}}'))
    operator.commit()
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM workerhost_jobs WHERE state = "
                              "'paused'") == 10, timeout=30, what="ten parked jobs")
    assert runs(db) == {}, "nothing runs while paused"
    cursor.callproc("workerhost_resume", ("capture",))
    operator.commit()
    wait_until(lambda: len(runs(db)) == 10, timeout=30, what="every job once resumed")
    assert set(runs(db).values()) == {1}
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_paused") == 0
    operator.close()
    outsider = account("EXECUTE ON PROCEDURE `{db}`.workerhost_enqueue")
    with pytest.raises(mysql.connector.Error) as caught:
        outsider.cursor().callproc("workerhost_pause", ("capture",))
    assert caught.value.errno == 1370, caught.value  # execute command denied
    outsider.close()


def test_an_account_without_create_routine_is_told_what_to_grant(
    db: Any, account: Callable[..., Any]
) -> None:
    """triggers --apply goes on without the procedure (the triggers do not need it)."""
    schema.create(db)
    conn = account("SELECT, INSERT, TRIGGER ON `{db}`.*")
    user = scalar(conn, "SELECT CURRENT_USER()").rpartition("@")[0]
    assert install(conn).report() == [
        f"skipped procedure workerhost_enqueue: Access denied for user '{user}'@'%' to "
        f"database '{db.database}'; CALL workerhost_enqueue enqueues from SQL (the triggers "
        f"do not need it): as an administrator run GRANT CREATE ROUTINE ON `{db.database}`.* "
        f"TO '{user}'@'%' and apply again, or apply as an account that has it"]
    conn.close()
    assert install(db).report() == ["created procedure workerhost_enqueue",
                                    "created procedure workerhost_enqueue_with",
                                    "created procedure workerhost_pause",
                                    "created procedure workerhost_resume"]
    assert install(db).report() == [], "in place: left alone, with its grants"


def test_the_helper_refuses_what_the_ledger_cannot_hold() -> None:
    with pytest.raises(ValueError, match="expected a Gearman function name"):
        workerhost.enqueue(None, "two words", {})
    with pytest.raises(ValueError, match="priority must be one of normal, high, low"):
        workerhost.enqueue(None, "f", {}, priority="urgent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay must be a number of seconds"):
        workerhost.enqueue(None, "f", {}, delay=-1)


def test_import_workerhost_stays_light() -> None:
    code = "import sys, workerhost; print('mysql.connector' in sys.modules, workerhost.enqueue)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.startswith("False <function enqueue")


def pending(db: Any) -> list[tuple[Any, ...]]:
    """The ledger as the view shows it: (unique_key, priority, state, payload), by id."""
    cursor = db.cursor()
    cursor.execute("SELECT j.unique_key, j.priority, j.state, o.payload FROM workerhost_jobs "
                   "AS j JOIN workerhost_outbox AS o USING (id) ORDER BY id")
    found = [(u, p, s, bytes(b).decode()) for u, p, s, b in cursor.fetchall()]
    cursor.close()
    return found


def test_options_and_merging_are_the_same_from_python_and_from_sql(
    sandbox: Sandbox, db: Any, applied: Path, account: Callable[..., Any],
) -> None:
    """No host runs: the rows stay for the test to read. A unique merges a pending job (the
    newest payload, the earlier due time, the first priority); delay, run_at and priority
    land in the row; a bad option fails the call and enqueues nothing."""
    app = sandbox.connect(database=db.database, autocommit=False)
    first = workerhost.enqueue(app, "capture", "v1", unique="item-1", delay=3600)
    again = workerhost.enqueue(app, "capture", "v2", unique="item-1", priority="high")
    app.commit()
    assert again == first, "merged: the pending job's id"
    later = workerhost.enqueue(app, "capture", "at", run_at=datetime(2099, 1, 1, 12, 0))
    app.commit()
    caller = account("EXECUTE ON PROCEDURE `{db}`.workerhost_enqueue_with")
    cursor = caller.cursor()
    cursor.callproc("workerhost_enqueue_with",
                    ("capture", "s1", '{"unique": "item-2", "delay": 3600, "priority": "low"}'))
    cursor.callproc("workerhost_enqueue_with", ("capture", "s2", '{"unique": "item-2"}'))
    cursor.callproc("workerhost_enqueue_with", ("capture", "item-1 by sql",
                                                '{"unique": "item-1", "delay": 7200}'))
    cursor.callproc("workerhost_enqueue_with",
                    ("capture", "sql at", '{"run_at": "2099-01-01 12:00:00.5"}'))
    caller.commit()
    assert pending(db) == [("item-1", "normal", "due", "item-1 by sql"),
                           (None, "normal", "delayed", "at"),
                           ("item-2", "low", "due", "s2"),
                           (None, "normal", "delayed", "sql at")]
    assert scalar(db, "SELECT not_before FROM workerhost_outbox WHERE id = %s", later) \
        == datetime(2099, 1, 1, 12, 0)
    for options, message in (
            ('{"delay": -1}', "delay must be a number of seconds, 0 or more"),
            ('{"delay": "soon"}', "delay must be a number of seconds, 0 or more"),
            ('{"delay": 1, "run_at": "2099-01-01"}', "give delay or run_at, not both"),
            ('{"run_at": "tomorrow"}', "run_at must be a time like"),
            ('{"unique": 7}', "unique must be a string of 1 to 255 characters"),
            ('{"priority": "urgent"}', "priority must be one of normal, high, low"),
            ('{"dealy": 1}', "unknown option (known: delay, run_at, unique, priority)"),
            ("[1]", "options must be a JSON object"),
            ("not json", "options must be a JSON object")):
        with pytest.raises(mysql.connector.Error) as refused:
            cursor.callproc("workerhost_enqueue_with", ("capture", "bad", options))
        assert refused.value.sqlstate == "45000", options
        assert f"workerhost_enqueue_with: {message}" in refused.value.msg, options
    caller.rollback()
    assert len(pending(db)) == 4
    with pytest.raises(ValueError, match="give delay or run_at, not both"):
        workerhost.enqueue(app, "capture", {}, delay=1, run_at=datetime(2099, 1, 1))
    app.close()
    caller.close()


def test_a_unique_enqueued_again_while_its_job_runs_is_a_new_job(
    sandbox: Sandbox, db: Any, applied: Path, host_factory: Callable[..., Any],
) -> None:
    """Merging is for pending jobs: one running (its row locked) may have read the data
    already, so a second enqueue, from Python or SQL, queues a job of its own at once (no
    waiting, which would deadlock with the job's DELETE); all run."""
    config = yaml.safe_load(applied.read_text())
    config["handlers"]["capture"]["python"] = "trigger_handlers:capture_slowly"
    host_factory(config)
    pidfile = Path(tempfile.mkdtemp()) / "running"
    app = sandbox.connect(database=db.database, autocommit=False)
    workerhost.enqueue(app, "capture", {"id": 1, "event_id": "first", "pidfile": str(pidfile),
                                        "seconds": 2}, unique="same")
    app.commit()
    wait_until(pidfile.exists, timeout=30, what="the first job to start")
    started = time.monotonic()
    second = workerhost.enqueue(app, "capture", {"id": 1, "event_id": "second",
                                                 "pidfile": None}, unique="same")
    app.cursor().callproc("workerhost_enqueue_with", (
        "capture", '{"id": 1, "event_id": "third", "pidfile": null}', '{"unique": "same"}'))
    assert time.monotonic() - started < 1, "no waiting for the running job"
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE id >= %s", second) == 0
    app.commit()
    wait_until(lambda: len(runs(db)) == 3, timeout=60, what="the three jobs")
    assert runs(db) == {"first": 1, "second": 1, "third": 1}
    app.close()


def test_the_jobs_view_shows_each_state_and_no_token_to_an_account_without_the_ledger(
    db: Any, account: Callable[..., Any],
) -> None:
    from workerhost.model.ledger_state import PARKED, LedgerState

    schema.create(db)
    cursor = db.cursor()
    cursor.execute(
        "INSERT INTO workerhost_outbox (`function`, payload, unique_key, not_before, ships) "
        f"VALUES ('f', 'due', 'a', NOW(6) - INTERVAL 1 SECOND, 0), "
        f"('f', 'leased', NULL, NOW(6) + INTERVAL 1 HOUR, 2), "
        f"('g', 'delayed', NULL, NOW(6) + INTERVAL 1 HOUR, 0), "
        f"('g', 'paused', NULL, '{PARKED}', 1)")
    reader = account("SELECT ON `{db}`.workerhost_jobs")
    view = reader.cursor()
    view.execute("SELECT * FROM workerhost_jobs ORDER BY id")
    columns = [d[0] for d in view.description]
    assert columns == ["id", "function", "state", "priority", "unique_key", "not_before",
                       "created_at", "ships", "snoozes", "payload_bytes"]
    rows = view.fetchall()
    assert [(r[1], r[2], r[9]) for r in rows] == [
        ("f", "due", 3), ("f", "leased", 6), ("g", "delayed", 7), ("g", "paused", 6)]
    # The same states as every other reader of the ledger's (model/ledger_state.py).
    for state in LedgerState:
        cursor.execute(f"SELECT id FROM workerhost_outbox WHERE {state.condition} AND NOT "
                       "(not_before = %s AND %s <> 'paused') ORDER BY id", (PARKED, state.value))
        expected = [int(i) for (i,) in cursor.fetchall()]
        view.execute("SELECT id FROM workerhost_jobs WHERE state = %s ORDER BY id",
                     (state.value,))
        assert [int(i) for (i,) in view.fetchall()] == expected, state
    view.execute("SELECT COUNT(*) FROM workerhost_jobs WHERE state = 'due'")
    assert view.fetchone() == (1,)
    for statement in ("SELECT token FROM workerhost_outbox",
                      "UPDATE workerhost_jobs SET `function` = 'h'"):
        with pytest.raises(mysql.connector.Error) as denied:
            view.execute(statement)
        assert denied.value.errno in (1142, 1143), statement
    with pytest.raises(mysql.connector.Error) as unknown:
        view.execute("SELECT token FROM workerhost_jobs")
    assert unknown.value.errno == 1054  # unknown column
    reader.close()
