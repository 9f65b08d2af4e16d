"""The ledger: every trigger job is kept in the database until its effect commits, once.

gearmand only dispatches (its queue in memory, as the sandbox runs it): a job it loses is
shipped again when its row's lease runs out, a job that runs twice finds its row gone, and a
job that no ledger row vouches for is refused unless its handler accepts any job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import gearman
from conftest import host_config, scalar, sequence, wait_until

from workerhost.config.load import parse_config
from workerhost.sandbox.stack import Sandbox
from workerhost.store import schema, triggers
from workerhost.store.db import Database


def config_for(sandbox: Sandbox, database: str, **handler: Any) -> dict[str, Any]:
    """Two entries on `events`, one per delivery, each with its own function (handlers keep
    the default accept: ledger unless told otherwise)."""
    capture = {"python": "trigger_handlers:capture", "accept": "ledger", **handler}
    config = host_config(
        sandbox, database, {"now": dict(capture), "later": dict(capture)},
        triggers=[
            {"table": "events", "events": ["insert"], "function": "now", "columns": ["id"],
             "delivery": "immediate"},
            {"table": "events", "events": ["insert"], "function": "later", "columns": ["id"],
             "delivery": "outbox"},
        ],
    )
    parsed = parse_config(config, file="test.yaml", env={"SANDBOX_DB_PASSWORD": sandbox.password})
    database_ = Database(parsed.database.connect_kwargs())
    triggers.apply(parsed, database_)
    database_.close()
    return config


def captured(db: Any) -> dict[tuple[str, int], int]:
    """(function, row id) -> runs, of every job whose effect committed."""
    cursor = db.cursor()
    cursor.execute("SELECT `function`, row_id, runs FROM captured")
    found = {(str(f), int(r)): int(n) for f, r, n in cursor.fetchall()}
    cursor.close()
    return found


def each_row_once(db: Any, rows: int) -> bool:
    done = captured(db)
    return len(done) == 2 * rows and set(done.values()) == {1}


def test_jobs_gearmand_forgot_run_once_when_their_lease_ends(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any]
) -> None:
    config = config_for(udf, events.database)
    events.cursor().execute(f"INSERT INTO events (id) SELECT seq FROM {sequence(1, 200)}")
    # The trigger's ships go out within about a millisecond of the statement (the UDF's
    # flusher), not before it returns.
    wait_until(lambda: "now" in udf.gearman_status()
               and udf.gearman_status()["now"].queued >= 200,
               what="the immediate jobs waiting in gearmand")
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") == 400
    udf.stop_gearmand()  # its queue is in memory: the 200 immediate jobs are gone
    udf.start_gearmand()
    assert "now" not in udf.gearman_status()
    host_factory(config)
    wait_until(lambda: each_row_once(events, 200), timeout=60,
               what="every row's two jobs run once")
    wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") == 0,
               what="an empty ledger")
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0


def test_a_job_run_twice_has_its_effect_once(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any]
) -> None:
    config = config_for(udf, events.database)
    events.cursor().execute("INSERT INTO events (id) VALUES (1)")
    cursor = events.cursor()
    cursor.execute("SELECT id, `function`, payload, token FROM workerhost_outbox "
                   "WHERE `function` = 'now'")
    ident, function, payload, token = cursor.fetchone()
    host_factory(config)
    wait_until(lambda: each_row_once(events, 1), what="the row's jobs done")
    # gearmand hands the same job out again (a worker died after its commit, say).
    client = gearman.GearmanClient([udf.gearman_server])
    again = client.submit_job(function, bytes(payload).decode(), unique=f"L{ident}:{token}",
                              background=False, wait_until_complete=False)
    client.wait_until_jobs_completed([again], poll_timeout=30)
    client.shutdown()
    assert again.complete, "answered without running: its ledger row is gone"
    assert captured(events) == {("now", 1): 1, ("later", 1): 1}


def test_an_immediate_job_waits_for_its_transaction_and_does_nothing_if_it_rolls_back(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any]
) -> None:
    host_factory(config_for(udf, events.database))
    writer = udf.connect(database=events.database, autocommit=False)
    cursor = writer.cursor()
    cursor.execute("INSERT INTO events (id) VALUES (7)")  # the job is in gearmand already
    time.sleep(1.0)  # the worker has it, and waits for the row's lock
    assert captured(events) == {}
    writer.rollback()
    cursor.execute("INSERT INTO events (id) VALUES (8)")
    time.sleep(0.5)
    assert captured(events) == {}, "nothing runs before its transaction commits"
    writer.commit()
    wait_until(lambda: set(captured(events)) == {("now", 8), ("later", 8)},
               what="the committed row's jobs")
    time.sleep(0.5)
    assert ("now", 7) not in captured(events), "the rolled-back row's job did nothing"
    wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") == 0,
               what="an empty ledger")
    writer.close()


def test_jobs_no_ledger_row_vouches_for_are_refused(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any]
) -> None:
    config = config_for(udf, events.database)
    events.cursor().execute("INSERT INTO events (id) VALUES (1)")
    cursor = events.cursor()
    cursor.execute("SELECT id FROM workerhost_outbox WHERE `function` = 'later'")
    (later_row,) = cursor.fetchone()
    # A low-privilege account, through the UDF: a job of its own, and one that names the
    # ledger row of another function's job to smuggle its own payload in.
    cursor.execute(
        "SELECT gman_do_background('now', JSON_OBJECT('id', 666, 'table', 'events')), "
        "gman_do_background('now', JSON_OBJECT('id', 667), %s)", (f"L{later_row}:x",))
    assert all(cursor.fetchone()), "both submitted"
    del config["handlers"]["later"]  # its row stays in the ledger while `now` jobs run
    host_factory(config)
    wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_refused") == 2,
               what="two refusals")
    cursor.execute("SELECT reason FROM workerhost_refused ORDER BY id")
    errors = sorted(str(error) for (error,) in cursor.fetchall())
    assert errors[0].startswith(f"refused: ledger row {later_row} belongs to 'later'")
    assert errors[1].startswith("refused: the job names no ledger row")
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0
    wait_until(lambda: set(captured(events)) == {("now", 1)}, what="the real job")
    assert scalar(events, "SELECT `function` FROM workerhost_outbox") == "later", \
        "the row the forged job named is untouched"
    cursor.close()


def test_a_handler_that_accepts_any_job_runs_jobs_without_a_ledger_row(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any]
) -> None:
    host_factory(config_for(udf, events.database, accept="any"))
    cursor = events.cursor()
    cursor.execute("SELECT gman_do_background('now', JSON_OBJECT('id', 5, 'event_id', 'e-5'))")
    assert cursor.fetchone()[0]
    cursor.close()
    wait_until(lambda: ("now", 5) in captured(events), what="the job from outside")


def test_a_failed_attempt_is_retried_through_its_ledger_row(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any]
) -> None:
    config = config_for(udf, events.database, python="trigger_handlers:fail_once_per_row",
                        retries={"attempts": 3, "backoff": "100ms"})
    host_factory(config)
    events.cursor().execute("INSERT INTO events (id) VALUES (3)")
    wait_until(lambda: each_row_once(events, 1), what="each job done on its second try")
    cursor = events.cursor()
    cursor.execute("SELECT attempt FROM captured ORDER BY `function`")
    assert [a for (a,) in cursor.fetchall()] == [2, 2]
    wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") == 0,
               what="an empty ledger")
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_attempts") == 0


def test_an_outbox_of_the_first_layout_gains_its_new_column(db: Any, udf: Sandbox) -> None:
    cursor = db.cursor()
    cursor.execute("CREATE TABLE workerhost_outbox (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT "
                   "PRIMARY KEY, `function` VARCHAR(255) NOT NULL, payload LONGBLOB NOT NULL, "
                   "unique_key VARCHAR(255) NULL, priority ENUM('normal', 'high', 'low') NOT "
                   "NULL DEFAULT 'normal', not_before DATETIME(6) NOT NULL DEFAULT "
                   "CURRENT_TIMESTAMP(6), created_at DATETIME(6) NOT NULL DEFAULT "
                   "CURRENT_TIMESTAMP(6)) ENGINE=InnoDB")
    cursor.execute("INSERT INTO workerhost_outbox (`function`, payload) VALUES ('f', '{}')")
    database = Database({"host": "127.0.0.1", "port": udf.mysql_port, "user": udf.user,
                         "password": udf.password, "database": db.database})
    database.run(schema.create)
    database.run(schema.create)  # re-runnable
    database.close()
    assert scalar(db, "SELECT ships FROM workerhost_outbox") == 0
    assert len(scalar(db, "SELECT token FROM workerhost_outbox")) == 32, "old rows get tokens"
    assert scalar(db, "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = "
                  "DATABASE() AND TABLE_NAME = 'workerhost_outbox' AND INDEX_NAME = 'due'") == 1


def test_many_writers_and_a_restarting_gearmand_lose_nothing_and_repeat_nothing(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any]
) -> None:
    """A short chaos: rows in 50-row transactions from two threads while gearmand restarts
    with an empty queue; non-idempotent effects (runs = runs + 1) end at exactly 1."""
    host_factory(config_for(udf, events.database))
    failures: list[BaseException] = []
    database = events.database

    def write(first: int) -> None:
        conn = udf.connect(database=database)
        try:
            for start in range(first, first + 1000, 50):
                conn.cursor().execute(
                    f"INSERT INTO events (id) SELECT seq FROM {sequence(start, start + 49)}")
                time.sleep(0.01)
        except BaseException as exc:
            failures.append(exc)
        finally:
            conn.close()

    writers = [threading.Thread(target=write, args=(first,)) for first in (1, 1001)]
    for writer in writers:
        writer.start()
    for _ in range(3):
        time.sleep(0.4)
        udf.stop_gearmand()
        udf.start_gearmand()
    for writer in writers:
        writer.join(60)
    assert not failures, failures
    wait_until(lambda: each_row_once(events, 2000), timeout=90,
               what="2,000 rows, each job's effect once")
    wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") == 0,
               what="an empty ledger")
