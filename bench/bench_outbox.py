"""Outbox figures: trigger overhead of outbox delivery, and the relay's shipping rate."""

from __future__ import annotations

import time
import uuid
from typing import Any

import gearman
from common import Figure, progress, repeat, wait_drained

from workerhost import triggers
from workerhost.config import parse_config
from workerhost.db import Database
from workerhost.relay import Relay
from workerhost.sandbox import Sandbox


def _timed_insert(conn: Any, n: int) -> float:
    cursor = conn.cursor()
    cursor.execute("TRUNCATE TABLE bench_orders")
    start = time.perf_counter()
    cursor.execute(f"INSERT INTO bench_orders (id, body) SELECT seq, 'x' FROM seq_1_to_{n}")
    return time.perf_counter() - start


def _with_trigger(conn: Any, n: int, runs: int, body: str, written: str | None
                  ) -> list[float]:
    """Timed INSERTs into bench_orders while a trigger with `body` runs; `written` is the
    table the trigger fills, if any, emptied between runs."""
    cursor = conn.cursor()
    cursor.execute(f"CREATE TRIGGER bench_orders_floor AFTER INSERT ON bench_orders "
                   f"FOR EACH ROW {body}")
    timings = []
    for _ in range(runs):
        timings.append(_timed_insert(conn, n))
        if written:
            cursor.execute(f"TRUNCATE TABLE {written}")
    cursor.execute("DROP TRIGGER bench_orders_floor")
    return timings


def trigger_overhead(sandbox: Sandbox, database: str, quick: bool) -> list[Figure]:
    n = 20000
    runs = 3 if quick else 5
    conn = sandbox.connect(database=database)
    Database(_db_params(sandbox, database)).ensure_schema()
    cursor = conn.cursor()
    cursor.execute("DROP TABLE IF EXISTS bench_orders")
    cursor.execute("CREATE TABLE bench_orders (id BIGINT PRIMARY KEY, body VARCHAR(64))")
    progress(f"outbox delivery: {n}-row INSERT without and with the trigger, x{runs}")
    plain = repeat(runs, lambda: _timed_insert(conn, n))
    # The floor: a trigger that does nothing but read the new row.
    floor = _with_trigger(conn, n, runs, "SET @workerhost_bench = NEW.id", None)
    # The floor of any outbox: a trigger writing the smallest possible row to another table.
    cursor.execute("CREATE TABLE bench_floor (id BIGINT PRIMARY KEY)")
    row_floor = _with_trigger(conn, n, runs, "INSERT INTO bench_floor VALUES (NEW.id)",
                              "bench_floor")
    cursor.execute("DROP TABLE bench_floor")
    # And the floor of this outbox: a constant row into workerhost_outbox, nothing computed.
    outbox_floor = _with_trigger(
        conn, n, runs, "INSERT INTO workerhost_outbox (function, payload) VALUES ('b', 'x')",
        "workerhost_outbox")
    # The trigger `workerhost triggers --apply` writes for delivery: outbox.
    config = parse_config({
        "gearman": {"servers": [sandbox.gearman_server]},
        "database": {"user": "u", "database": database},
        "handlers": {"unused": {"sql": "DO 1"}},
        "triggers": [{"table": "bench_orders", "events": ["insert"], "function": "bench_outbox",
                      "columns": ["id", "body"], "delivery": "outbox"}],
    }, file="bench")
    for trigger in triggers.plan(config):
        cursor.execute(trigger.create_sql())
    with_trigger = []
    for _ in range(runs):
        with_trigger.append(_timed_insert(conn, n))
        cursor.execute("TRUNCATE TABLE workerhost_outbox")
    cursor.execute("DROP TABLE bench_orders")
    conn.close()
    return [
        Figure(f"{n}-row INSERT, outbox delivery", "s", with_trigger,
               "the same INSERT, no trigger", plain, "<= 3x baseline", higher_is_better=False),
        Figure(f"{n}-row INSERT, a trigger that only reads NEW.id (floor)", "s", floor,
               "the same INSERT, no trigger", plain, "(bound)", higher_is_better=False),
        Figure(f"{n}-row INSERT, a trigger inserting one BIGINT elsewhere (floor)", "s",
               row_floor, "the same INSERT, no trigger", plain, "(bound)",
               higher_is_better=False),
        Figure(f"{n}-row INSERT, a trigger inserting a constant outbox row (floor)", "s",
               outbox_floor, "the same INSERT, no trigger", plain, "(bound)",
               higher_is_better=False),
    ]


def _db_params(sandbox: Sandbox, database: str) -> dict[str, Any]:
    return dict(host="127.0.0.1", port=sandbox.mysql_port, user=sandbox.user,
                password=sandbox.password, database=database)


def relay_rate(sandbox: Sandbox, database: str, quick: bool) -> list[Figure]:
    n = 5000 if quick else 20000
    runs = 3
    Database(_db_params(sandbox, database)).ensure_schema()
    conn = sandbox.connect(database=database)
    cursor = conn.cursor()
    config = parse_config({
        "gearman": {"servers": [sandbox.gearman_server]},
        "database": {"host": "127.0.0.1", "port": sandbox.mysql_port, "user": sandbox.user,
                     "password": sandbox.password, "database": database},
        "handlers": {"unused": {"sql": "DO 1"}},
    }, file="bench")

    def bare() -> float:
        function = f"bench_submit_{uuid.uuid4().hex[:8]}"
        client = gearman.GearmanClient([sandbox.gearman_server])
        jobs = [{"task": function, "data": b'{"id": %d}' % i} for i in range(n)]
        start = time.perf_counter()
        client.submit_multiple_jobs(jobs, background=True, wait_until_complete=False,
                                    poll_timeout=120)
        elapsed = time.perf_counter() - start
        client.shutdown()
        _discard(sandbox, function)
        return n / elapsed

    def ours() -> float:
        function = f"bench_relay_{uuid.uuid4().hex[:8]}"
        cursor.execute(
            "INSERT INTO workerhost_outbox (function, payload, unique_key) "
            f"SELECT '{function}', JSON_OBJECT('id', seq), UUID() FROM seq_1_to_{n}")
        relay = Relay(config)
        start = time.perf_counter()
        while relay.ship_once():
            pass
        elapsed = time.perf_counter() - start
        relay.db.close()
        relay.close()
        _discard(sandbox, function)
        return n / elapsed

    progress(f"relay: {n} jobs, bare pipelined submit loop vs relay, x{runs}")
    base = repeat(runs, bare)
    mine = repeat(runs, ours)
    conn.close()
    return [Figure("relay, outbox rows shipped to gearmand", "jobs/s", mine,
                   "bare pipelined submit loop, one connection", base, ">= 20000 jobs/s")]


def _discard(sandbox: Sandbox, function: str) -> None:
    """Empty the function's queue so later figures start clean."""
    worker = gearman.GearmanWorker([sandbox.gearman_server])
    worker.register_task(function.encode(), lambda _w, _j: b"")

    def after_poll(_activity: bool) -> bool:
        from common import queued

        return sum(queued(sandbox, function)) > 0

    worker.after_poll = after_poll
    worker.work(poll_timeout=0.2)
    worker.shutdown()
    wait_drained(sandbox, function)
