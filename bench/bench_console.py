"""The console's pages with 100,000 dead letters and 1,000,000 ledger rows: every page must
answer within 300 ms.

`workerhost console` runs as its own process against the sandbox; each page is asked for
over one kept-open connection, as a browser would, after one request to warm it up. The
ledger's backlog is counted by the console's sampler thread, not on a page: its time is
reported beside the pages.
"""

from __future__ import annotations

import base64
import http.client
import sys
import time
from pathlib import Path

import yaml
from common import Figure, processes, progress

from workerhost.config.load import parse_config
from workerhost.console import sampling
from workerhost.sandbox.processes import free_port
from workerhost.sandbox.stack import Sandbox
from workerhost.store import schema
from workerhost.store.db import Database

DATABASE = "bench_console"
LEDGER_ROWS = 1_000_000
DEAD_LETTERS = 100_000
FUNCTIONS = 5  # fn0 .. fn4, a fifth of each table each
TARGET_MS = 300.0
USER, PASSWORD = "bench", "bench-console-pw"
TRACEBACK = ("Traceback (most recent call last):\n"
             + '  File "shop_jobs.py", line 12, in award_points\n    raise ValueError(x)\n' * 8)


def _numbers(exponent: int) -> str:
    """A derived table of 0 .. 10**exponent - 1 as `n`, on MariaDB and MySQL alike."""
    joins = " CROSS JOIN ".join(f"digits AS d{i}" for i in range(exponent))
    value = " + ".join(f"d{i}.n * {10 ** i}" for i in range(exponent))
    return f"(SELECT {value} AS n FROM {joins}) AS numbers"


def fill(box: Sandbox, quick: bool) -> tuple[int, int, int]:
    """The tables of a big, busy host; returns (ledger rows, dead letters, the id of a ledger
    row half-way: ids have gaps between two INSERTs, whose ids are reserved in batches)."""
    ledger = LEDGER_ROWS // 10 if quick else LEDGER_ROWS
    letters = DEAD_LETTERS // 10 if quick else DEAD_LETTERS
    admin = box.connect()
    cursor = admin.cursor()
    cursor.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    cursor.execute(f"CREATE DATABASE {DATABASE}")
    admin.close()
    conn = box.connect(database=DATABASE)
    conn.autocommit = True
    cursor = conn.cursor()
    for statement in schema.schema_statements():
        cursor.execute(statement)
    cursor.execute("CREATE TEMPORARY TABLE digits (n INT PRIMARY KEY)")
    cursor.execute("INSERT INTO digits VALUES " + ", ".join(f"({i})" for i in range(10)))
    started = time.monotonic()
    for chunk in range(ledger // 100_000 or 1):
        # A third due, a third leased, a third delayed (waiting for a retry).
        cursor.execute(
            f"INSERT INTO {schema.LEDGER} (`function`, payload, unique_key, not_before, ships) "
            "SELECT CONCAT('fn', n % %s), CONCAT('{\"id\": ', n + %s, ', \"table\": "
            "\"orders\", \"event\": \"insert\"}'), UUID(), NOW(6) + INTERVAL "
            "(CAST(n % 3 AS SIGNED) - 1) * 60 SECOND, n % 3 = 2 "
            f"FROM {_numbers(5)} WHERE n < %s",
            (FUNCTIONS, chunk * 100_000, min(100_000, ledger)))  # fmt: skip
    cursor.execute(
        f"INSERT INTO {schema.DEAD_LETTERS} (`function`, payload, unique_key, attempts, error, "
        "traceback, first_failed_at) SELECT CONCAT('fn', n % %s), CONCAT('{\"id\": ', n, "
        "', \"customer\": \"c', n % 977, '\"}'), UUID(), 3, CONCAT('ValueError: order ', n, "
        f"' not found'), %s, NOW(6) FROM {_numbers(5)} WHERE n < %s",
        (FUNCTIONS, TRACEBACK, letters))  # fmt: skip
    progress(f"console: {ledger:,} ledger rows and {letters:,} dead letters written in "
             f"{time.monotonic() - started:.0f}s")
    cursor.execute("ANALYZE TABLE workerhost_outbox, workerhost_dead_letters")
    cursor.fetchall()
    cursor.execute(f"SELECT MIN(id) FROM {schema.LEDGER} WHERE id >= %s", (ledger // 2,))
    (row,) = cursor.fetchone()
    conn.close()
    return ledger, letters, int(row)


def config(box: Sandbox) -> dict[str, object]:
    return {
        "gearman": {"servers": [box.gearman_server]},
        "database": {"host": "127.0.0.1", "port": box.mysql_port, "user": box.user,
                     "password": box.password, "database": DATABASE},
        "host": {"console": {"users": {USER: {"password": PASSWORD, "role": "admin"}}}},
        "handlers": {f"fn{i}": {"sql": "SELECT %(id)s"} for i in range(FUNCTIONS)},
    }


def pages(ledger: int, letters: int, row: int) -> list[str]:
    middle = ledger // 2
    return [
        "/", "/live", "/dead-letters", "/dead-letters?function=fn3",
        f"/dead-letters?before={letters // 2}", "/dead-letters?q=c976",
        "/dead-letters?function=fn3&q=c976", "/dead-letters?q=no-such-text",
        f"/dead-letters/{letters // 2}", "/dead-letters/retry?function=fn3",
        "/dead-letters/retry?q=c976", "/ledger", "/ledger?state=due", "/ledger?state=leased",
        "/ledger?state=delayed", f"/ledger?state=delayed&after={middle}",
        f"/ledger/{row}", f"/ledger/{row}/cancel", "/functions/pause?function=fn3",
        "/handlers", "/workers", "/workers/live",
    ]


def run(box: Sandbox, work: Path, quick: bool) -> list[Figure]:
    ledger, letters, row = fill(box, quick)
    path = work / "console.yaml"
    path.write_text(yaml.safe_dump(config(box)))
    port = free_port()
    times = 5 if quick else 20
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    result: list[Figure] = []
    argv = [sys.executable, "-m", "workerhost.cli", "console", "-c", str(path), "--listen",
            f"127.0.0.1:{port}", "--log-level", "warning"]
    with processes(argv):
        conn = _connect(port)

        def get(page: str) -> float:
            started = time.perf_counter()
            conn.request("GET", page, headers={"Authorization": auth})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"console: {page} answered {answer.status}")
            return (time.perf_counter() - started) * 1000

        get("/")  # starts the sampler: its first count of the ledger runs meanwhile
        time.sleep(2)
        for page in pages(ledger, letters, row):
            get(page)
            runs = [get(page) for _ in range(times)]
            result.append(Figure(f"console page {page}", "ms", runs, target="<= 300 ms",
                                 higher_is_better=False))
        conn.close()
    result.append(_count_figure(box, quick))
    worst = max(max(f.runs) for f in result[:-1])
    progress(f"console: slowest answer {worst:.0f} ms "
             f"({'within' if worst <= TARGET_MS else 'past'} {TARGET_MS:.0f} ms)")
    return result


def _connect(port: int) -> http.client.HTTPConnection:
    deadline = time.monotonic() + 30
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.connect()
            return conn
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _count_figure(box: Sandbox, quick: bool) -> Figure:
    """The sampler's count of the whole ledger, done in a thread while pages answer."""
    loaded = parse_config(config(box), file="bench", env={})
    db = Database(loaded.database.connect_kwargs())
    try:
        runs = [sampling._count(db, time.monotonic()).took for _ in range(2 if quick else 3)]
    finally:
        db.close()
    return Figure("  ledger backlog counted by the console's sampler (not on a page)", "s",
                  runs, target="(background)", higher_is_better=False)
