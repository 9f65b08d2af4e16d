"""workerhost.enqueue: jobs enqueued in the application's own transaction, from Python
and through the procedure workerhost_enqueue, run once after the commit and never after a
rollback; EXECUTE on the procedure is the right to enqueue."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
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
                                          "created procedure workerhost_enqueue"]
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
    assert install(db).report() == ["created procedure workerhost_enqueue"]
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
