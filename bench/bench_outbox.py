"""Outbox figures: trigger overhead of outbox delivery, and the relay's shipping rate."""

from __future__ import annotations

import time
import uuid
from typing import Any

import gearman
from common import Figure, progress, repeat, wait_drained

from workerhost.config.load import parse_config
from workerhost.host.relay import Relay
from workerhost.sandbox.stack import Sandbox
from workerhost.store import schema, triggers
from workerhost.store.db import Database

# Two application tables: the narrowest possible one, where any trigger costs the most
# relative to the INSERT, and one shaped like an ordinary orders table (the shop example's,
# with an index on customer) filled the way an application does, by a multi-row INSERT.
NARROW = ("bench_narrow", "(id BIGINT PRIMARY KEY, body VARCHAR(64))", ["id", "body"])
ORDERS = ("bench_orders", """(
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer      VARCHAR(64) NOT NULL,
    total         DECIMAL(10, 2) NOT NULL,
    status        ENUM('new', 'confirmed') NOT NULL DEFAULT 'new',
    created_at    DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    confirmed_at  DATETIME(6) NULL,
    KEY by_customer (customer, created_at))""", ["id", "customer", "total"])
FLOOR_TABLE = "bench_floor"  # what the floor trigger writes: one BIGINT per row
# The least an outbox row can be: an order, a function and a payload. A job written here
# costs what one written to workerhost_outbox does, whose other columns take only defaults.
MINIMAL_OUTBOX = ("bench_minimal_outbox", "(id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT "
                  "PRIMARY KEY, `function` VARCHAR(255) NOT NULL, payload LONGBLOB NOT NULL)")


def _insert_sql(table: str, n: int) -> str:
    if table == NARROW[0]:
        return f"INSERT INTO {table} (id, body) SELECT seq, 'x' FROM seq_1_to_{n}"
    rows = ", ".join(f"('customer-{i % 977}', {i % 10000}.{i % 100:02d})" for i in range(n))
    return f"INSERT INTO {table} (customer, total) VALUES {rows}"


def _outbox_trigger(database: str, table: str, columns: list[str], sandbox: Sandbox,
                    delivery: str = "outbox") -> str:
    """The trigger `workerhost triggers --apply` writes for `delivery`."""
    config = parse_config({
        "gearman": {"servers": [sandbox.gearman_server]},
        "database": {"user": "u", "database": database},
        "handlers": {"unused": {"sql": "DO 1"}},
        "triggers": [{"table": table, "events": ["insert"], "function": f"bench_{delivery}",
                      "columns": columns, "delivery": delivery}],
    }, file="bench")
    (trigger,) = triggers.plan(config)
    return trigger.create_sql()


def _rounds(conn: Any, table: str, n: int, runs: int, variants: dict[str, str | None]
            ) -> dict[str, list[float]]:
    """Seconds per n-row INSERT into table under each variant's trigger (None: no trigger).

    The variants take turns within each round, so that a slow moment of this noisy machine
    falls on all of them alike.
    """
    cursor = conn.cursor()
    sql = _insert_sql(table, n)
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, create in variants.items():
            if create:
                cursor.execute(create)
            cursor.execute(f"TRUNCATE TABLE {table}")
            started = time.perf_counter()
            cursor.execute(sql)
            timings[name].append(time.perf_counter() - started)
            cursor.execute(f"DROP TRIGGER IF EXISTS {triggers.trigger_name(table, 'insert')}")
            cursor.execute("DROP TRIGGER IF EXISTS bench_floor_ai")
            for floor_table in (FLOOR_TABLE, MINIMAL_OUTBOX[0], "workerhost_outbox"):
                cursor.execute(f"TRUNCATE TABLE {floor_table}")
    return timings


def trigger_overhead(sandbox: Sandbox, database: str, quick: bool) -> list[Figure]:
    n = 20000
    runs = 3 if quick else 7
    conn = sandbox.connect(database=database)
    Database(_db_params(sandbox, database)).run(schema.create)
    cursor = conn.cursor()
    cursor.execute(f"CREATE OR REPLACE TABLE {FLOOR_TABLE} (id BIGINT PRIMARY KEY)")
    cursor.execute(f"CREATE OR REPLACE TABLE {MINIMAL_OUTBOX[0]} {MINIMAL_OUTBOX[1]}")
    figures = []
    for table, shape, columns in (NARROW, ORDERS):
        cursor.execute(f"CREATE OR REPLACE TABLE {table} {shape}")

        def floor(body: str, table: str = table) -> str:
            return f"CREATE TRIGGER bench_floor_ai AFTER INSERT ON {table} FOR EACH ROW {body}"

        variants = {
            "plain": None,
            "outbox": _outbox_trigger(database, table, columns, sandbox),
            # Immediate delivery: its ledger row, then the UDF (its job waits in gearmand).
            "immediate": _outbox_trigger(database, table, columns, sandbox, "immediate"),
            # Immediate delivery as it was before the ledger: the UDF call alone.
            "udf": floor(f"DO gman_do_background('bench_udf', JSON_OBJECT("
                         f"{', '.join(f'{chr(39)}{c}{chr(39)}, NEW.{c}' for c in columns)}))"),
            # The floor of any trigger: one that only reads the new row.
            "read": floor("SET @workerhost_bench = NEW.id"),
            # The floor of any outbox: the smallest possible row written to another table.
            "row": floor(f"INSERT INTO {FLOOR_TABLE} VALUES (NEW.id)"),
            # The floor of a row that carries a job: constants, nothing computed per row.
            "job": floor("INSERT INTO workerhost_outbox (`function`, payload) VALUES ('b', 'x')"),
            # The same into an outbox with nothing but an order, a function and a payload.
            "minimal": floor(f"INSERT INTO {MINIMAL_OUTBOX[0]} (`function`, payload) "
                             "VALUES ('b', 'x')"),
        }
        progress(f"outbox delivery: {n}-row INSERT into {table}, without and with triggers, "
                 f"x{runs}")
        timings = _rounds(conn, table, n, runs, variants)
        cursor.execute(f"DROP TABLE {table}")
        plain = timings["plain"]
        what = f"{n}-row INSERT into {table} {_SHAPES[table]}"
        figures += [
            Figure(f"{what}, outbox delivery", "s", timings["outbox"],
                   "the same INSERT, no trigger", plain, "<= 3x baseline",
                   higher_is_better=False),
            Figure(f"{what}, immediate delivery: ledger row + UDF", "s", timings["immediate"],
                   "the same INSERT, no trigger", plain, "(shown)", higher_is_better=False),
            Figure("  immediate delivery before the ledger: the UDF call alone", "s",
                   timings["udf"], "the same INSERT, no trigger", plain, "(shown)",
                   higher_is_better=False),
            Figure("  the same, a trigger that only reads NEW.id (floor)", "s",
                   timings["read"], "the same INSERT, no trigger", plain, "(bound)",
                   higher_is_better=False),
            Figure("  the same, a trigger writing one BIGINT to another table (floor)", "s",
                   timings["row"], "the same INSERT, no trigger", plain, "(bound)",
                   higher_is_better=False),
            Figure("  the same, a trigger writing a constant job into the outbox (floor)", "s",
                   timings["job"], "the same INSERT, no trigger", plain, "(bound)",
                   higher_is_better=False),
            Figure("  the same, into a 3-column outbox (id, function, payload) (floor)", "s",
                   timings["minimal"], "the same INSERT, no trigger", plain, "(bound)",
                   higher_is_better=False),
        ]
    cursor.execute(f"DROP TABLE {FLOOR_TABLE}, {MINIMAL_OUTBOX[0]}")
    conn.close()
    return figures


_SHAPES = {
    NARROW[0]: "(2 columns, INSERT ... SELECT)",
    ORDERS[0]: "(orders: 6 columns, 1 index, multi-row VALUES)",
}


def _db_params(sandbox: Sandbox, database: str) -> dict[str, Any]:
    return dict(host="127.0.0.1", port=sandbox.mysql_port, user=sandbox.user,
                password=sandbox.password, database=database)


def relay_rate(sandbox: Sandbox, database: str, quick: bool) -> list[Figure]:
    n = 5000 if quick else 20000
    runs = 3
    Database(_db_params(sandbox, database)).run(schema.create)
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
            "INSERT INTO workerhost_outbox (`function`, payload, unique_key) "
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
