"""No job lost, none applied twice: triggers, gearmand, workers and the relay failing in turn.

Every job is recorded by `trigger_handlers.capture` under its trigger's event id, so "exactly
once in effect" reads as: one `captured` row per source row, whatever `runs` says.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mysql.connector
from conftest import host_config, scalar, sequence, wait_until
from mysql.connector import errorcode

from workerhost.config.load import parse_config
from workerhost.host.relay import Relay
from workerhost.sandbox.stack import Sandbox
from workerhost.store import triggers
from workerhost.store.db import Database


def setup(sandbox: Sandbox, database: str, delivery: str, handlers: dict[str, Any] | None = None,
          **sections: Any) -> dict[str, Any]:
    """A host config whose trigger on `events` submits one job per row; the trigger is applied.

    The function name is new in every test: a job that a killed host left in gearmand's
    queue must not run in the next test.
    """
    function = "capture_" + uuid.uuid4().hex[:8]
    # Trigger jobs carry their ledger row: the handler runs them with the default accept.
    handler = {"accept": "ledger",
               **(handlers or {}).get("capture", {"python": "trigger_handlers:capture"})}
    config = host_config(
        sandbox, database, {function: handler},
        triggers=[{"table": "events", "events": ["insert"], "function": function,
                   "columns": ["id", "pidfile", "seconds"], "delivery": delivery}],
        **sections,
    )
    parsed = parse_config(config, file="test.yaml", env={"SANDBOX_DB_PASSWORD": sandbox.password})
    database_ = Database(parsed.database.connect_kwargs())
    triggers.apply(parsed, database_)
    database_.close()
    return config


def distinct_rows(db: Any) -> int:
    return int(scalar(db, "SELECT COUNT(DISTINCT row_id) FROM captured"))


def assert_each_row_once(db: Any, rows: int) -> None:
    """Every source row arrived under exactly one event id (re-runs only raise `runs`)."""
    # A relay commits its DELETE just after gearmand accepted the batch: maybe after the job ran.
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 0,
               what="an empty outbox")
    assert scalar(db, "SELECT COUNT(*) FROM captured") == rows
    assert distinct_rows(db) == rows
    assert scalar(db, "SELECT COUNT(*) FROM captured WHERE unique_key <> event_id") == 0
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 0
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0


def insert(db: Any, first: int, last: int) -> None:
    db.cursor().execute(f"INSERT INTO events (id) SELECT seq FROM {sequence(first, last)}")


class Writer(threading.Thread):
    """Inserts rows 1..total in statements of 100 on its own connection, as an application
    would: a statement that dies in a deadlock is run again (InnoDB rolled it back whole)."""

    def __init__(self, sandbox: Sandbox, database: str, total: int) -> None:
        super().__init__()
        self.conn = sandbox.connect(database=database)
        self.total = total
        self.deadlocks = 0
        self.failure: BaseException | None = None
        self.halfway = threading.Event()  # rows past half of `total` wait for it


    def run(self) -> None:
        try:
            for start in range(1, self.total + 1, 100):
                if start > self.total // 2:
                    self.halfway.wait(60)
                while True:
                    try:
                        insert(self.conn, start, start + 99)
                        break
                    except mysql.connector.Error as exc:
                        if exc.errno != errorcode.ER_LOCK_DEADLOCK:
                            raise
                        self.deadlocks += 1
                time.sleep(0.01)
        except BaseException as exc:
            self.failure = exc
        finally:
            self.conn.close()

    def finish(self) -> None:
        self.join(60)
        assert not self.is_alive() and self.failure is None, self.failure


def test_5000_immediate_inserts_survive_a_gearmand_restart(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any]
) -> None:
    host_factory(setup(udf, events.database, "immediate",
                       {"capture": {"python": "trigger_handlers:capture", "processes": 2}}))
    writer = Writer(udf, events.database, 5000)
    writer.start()
    try:
        wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM events") >= 2000, what="2000")
        udf.stop_gearmand()  # somewhere between row 2000 and 2500
        writer.halfway.set()
        # Meanwhile the UDF gets no handle and the trigger writes to the outbox instead.
        wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") >= 500,
                   what="rows in the outbox while gearmand is down")
    finally:
        writer.halfway.set()
        udf.start_gearmand()
        writer.finish()
    wait_until(lambda: distinct_rows(events) == 5000, timeout=60, what="all 5000 processed")
    wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") == 0,
               what="an empty outbox")
    # The relay takes no gap locks, so the application's INSERTs never deadlock with it.
    assert writer.deadlocks == 0
    assert scalar(events, "SELECT COUNT(*) FROM captured") == 5000
    assert scalar(events, "SELECT COUNT(*) FROM captured WHERE unique_key <> event_id") == 0
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0


def test_a_worker_killed_mid_job_leaves_it_to_another_with_no_double_effect(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any], tmp_path: Path
) -> None:
    host = host_factory(setup(udf, events.database, "immediate", {
        "capture": {"python": "trigger_handlers:capture_slowly", "processes": 2},
    }))
    pidfile = tmp_path / "running.pid"
    events.cursor().execute("INSERT INTO events VALUES (1, %s, 60)", (str(pidfile),))
    victim = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), what="pidfile"))
    # Its write is done but not committed: the kill must take it back.
    assert victim in host.worker_pids()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: distinct_rows(events) == 1, what="the job, run again")
    worker_pid, attempt, runs = _one(events, "SELECT worker_pid, attempt, runs FROM captured")
    assert worker_pid != victim and runs == 1
    # The supervisor counts the lost run, but gearmand may hand the job on before it does.
    assert attempt in (1, 2)
    host.wait_for_log("died while running it (killed by SIGKILL)")
    insert(events, 2, 100)
    wait_until(lambda: distinct_rows(events) == 100, what="the rest")
    assert_each_row_once(events, 100)


def _one(db: Any, sql: str) -> tuple[Any, ...]:
    cursor = db.cursor()
    cursor.execute(sql)
    rows = cursor.fetchall()
    cursor.close()
    assert len(rows) == 1, rows
    return tuple(rows[0])


def test_outbox_sends_committed_rows_only(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any]
) -> None:
    host_factory(setup(udf, events.database, "outbox"))
    tx = udf.connect(database=events.database, autocommit=False)
    cursor = tx.cursor()
    cursor.execute("INSERT INTO events (id) VALUES (1), (2)")
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") == 0  # not yet committed
    tx.rollback()
    cursor.execute("INSERT INTO events (id) VALUES (3)")
    tx.commit()
    tx.close()
    wait_until(lambda: distinct_rows(events) == 1, what="the committed row")
    time.sleep(0.5)  # ten relay intervals: a rolled-back job would have shown up by now
    assert scalar(events, "SELECT GROUP_CONCAT(row_id) FROM captured") == "3"
    assert_each_row_once(events, 1)


def test_outbox_delivers_after_gearmand_and_the_host_come_back(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any]
) -> None:
    config = setup(udf, events.database, "outbox")
    host = host_factory(config)
    udf.stop_gearmand()
    try:
        insert(events, 1, 300)  # committed while gearmand is down
        time.sleep(0.5)
        assert scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") == 300
    finally:
        udf.start_gearmand()
    wait_until(lambda: distinct_rows(events) == 300, what="the rows committed while down")

    assert host.stop() == 0
    insert(events, 301, 600)  # committed while no host runs
    host.kill()
    host_factory(config)
    wait_until(lambda: distinct_rows(events) == 600, what="the rows committed while stopped")
    assert_each_row_once(events, 600)


def test_two_gearmands_share_the_work_and_losing_one_loses_nothing(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
    gearmand_factory: Callable[[], Any],
) -> None:
    first, second = gearmand_factory(), gearmand_factory()
    servers = {"servers": [first.server, second.server]}
    config = setup(udf, events.database, "outbox", gearman=servers)
    insert(events, 1, 1000)
    # Ship the outbox by hand first, so that the queues can be counted before anyone works.
    relay = Relay(parse_config(config, file="test.yaml",
                               env={"SANDBOX_DB_PASSWORD": udf.password}))
    while relay.ship_once():
        pass
    relay.db.close()
    relay.close()
    (function,) = config["handlers"]
    queued = [box.box.gearman_status()[function].queued for box in (first, second)]
    assert sum(queued) == 1000 and min(queued) > 300, f"not spread over both: {queued}"

    hosts = [host_factory(config), host_factory(config)]
    wait_until(lambda: distinct_rows(events) >= 200, what="work under way")
    first.stop()  # its remaining jobs wait in its persistent queue
    insert(events, 1001, 2000)  # the relays ship these to the second server alone
    # A persistent queue writes each job to disk: on a busy machine, gearmand takes tens of
    # jobs a second. The wait bounds a hang, not the speed.
    wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM captured WHERE row_id > 1000")
               == 1000, timeout=120, what="new rows through the remaining server")
    first.start()
    wait_until(lambda: distinct_rows(events) == 2000, timeout=120, what="all 2000")
    assert_each_row_once(events, 2000)
    cursor = events.cursor()
    cursor.execute("SELECT host_pid, COUNT(*) FROM captured GROUP BY host_pid")
    per_host = dict(cursor.fetchall())
    assert set(per_host) == {host.pid for host in hosts}, per_host
