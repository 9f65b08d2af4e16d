"""Worker host figures: empty-handler throughput, end to end with write-back, latency, memory."""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from common import (
    Figure,
    bare_worker,
    busiest_thread_share,
    children,
    cpu_ticks,
    drain_rate,
    function_status,
    host_command,
    load_jobs,
    processes,
    progress,
    repeat,
    rss_kib,
    thread_ticks,
    wait_drained,
)

from workerhost.config.load import parse_config
from workerhost.config.settings import DEFAULT_BATCH
from workerhost.sandbox.stack import Sandbox
from workerhost.store import triggers
from workerhost.store.db import Database

UPDATE = "UPDATE bench_rows SET done_at = NOW(6) WHERE id = %(id)s"
WARM_UP = 2000  # jobs before the memory growth is measured


def _fresh_function(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _payloads(n: int) -> list[bytes]:
    return [json.dumps({"id": i}).encode() for i in range(1, n + 1)]


def empty_handler(sandbox: Sandbox, workdir: Path, database: str, quick: bool) -> list[Figure]:
    # Runs of several seconds: a worker process takes a moment to reach its steady pace.
    n = 10000 if quick else 100000
    n_bare = n // 5  # the bare loop is several times slower
    runs = 5

    def bare() -> float:
        function = _fresh_function("bench_empty_bare")
        load_jobs(sandbox, function, _payloads(n_bare))
        with processes(bare_worker(sandbox, "empty", function)):
            return drain_rate(sandbox, function, n_bare)

    busy: dict[int, list[float]] = {1: [], 2: []}
    gearmand: dict[int, list[float]] = {1: [], 2: []}  # its busiest thread, % of one core
    gearmand_pid = sandbox.info.pids["gearmand"] if sandbox.info else 0

    def ours(procs: int) -> float:
        function = _fresh_function("bench_empty")
        load_jobs(sandbox, function, _payloads(n))
        argv, env = host_command(sandbox, workdir, database, {
            function: {"python": "handlers:empty", "processes": procs}})  # default batch
        with processes(argv, env=env):
            # The clock starts once every connection of every process serves the function.
            connected = procs  # one connection per process
            while function_status(sandbox, function)[2] < connected:
                time.sleep(0.002)
            before, threads, started = cpu_ticks(), thread_ticks(gearmand_pid), time.monotonic()
            rate = drain_rate(sandbox, function, n, workers=connected)
            after, elapsed = cpu_ticks(), time.monotonic() - started
            gearmand[procs].append(
                busiest_thread_share(threads, thread_ticks(gearmand_pid), elapsed))
        # How busy both cores were: near 100% means the machine, not the host, is the bound.
        busy[procs].append(100 * (after[0] - before[0]) / max(1, after[1] - before[1]))
        return rate

    # The three take turns in every round: the machine's speed drifts between runs, and a
    # slow stretch should fall on all of them alike rather than on whichever ran then.
    base: list[float] = []
    one: list[float] = []
    two: list[float] = []
    for round_ in range(1, runs + 1):
        progress(f"empty handler, round {round_} of {runs}: bare pygearman loop ({n_bare} jobs),"
                 f" worker host with 1 and 2 processes ({n} jobs each)")
        base.append(bare())
        one.append(ours(1))
        two.append(ours(2))
    return [
        Figure(f"worker host, empty handler, 1 process (batch {DEFAULT_BATCH})", "jobs/s", one,
               "bare pygearman worker loop", base, ">= 0.9x baseline"),
        Figure(f"worker host, empty handler, 2 processes (batch {DEFAULT_BATCH})", "jobs/s", two,
               "worker host, 1 process", one, ">= 1.6x one process"),
        Figure("  CPU busy (all cores) during the 1-process runs", "%", busy[1],
               target="(bound)"),
        Figure("  CPU busy (all cores) during the 2-process runs", "%", busy[2],
               target="(bound)"),
        # gearmand hands out every job from one thread: near 100% of a core, it is the bound.
        Figure("  gearmand's busiest thread during the 1-process runs", "% of a core",
               gearmand[1], target="(bound)"),
        Figure("  gearmand's busiest thread during the 2-process runs", "% of a core",
               gearmand[2], target="(bound)"),
        # What one job costs the whole machine (worker processes, gearmand, mariadbd): the
        # 2-process ratio is (busy with 2 / busy with 1) x (this with 1 / this with 2).
        Figure("  CPU time per job, all processes, during the 1-process runs", "us",
               _cpu_per_job(busy[1], one), target="(bound)", higher_is_better=False),
        Figure("  CPU time per job, all processes, during the 2-process runs", "us",
               _cpu_per_job(busy[2], two), target="(bound)", higher_is_better=False),
    ]


def _cpu_per_job(busy: list[float], rates: list[float]) -> list[float]:
    """Microseconds of CPU (all cores) per job, run by run, from the busy share and the rate."""
    cores = os.cpu_count() or 1
    return [share / 100 * cores / rate * 1e6 for share, rate in zip(busy, rates, strict=True)]


def _prepare_rows(conn: Any, with_trigger: str | None) -> None:
    cursor = conn.cursor()
    cursor.execute("DROP TABLE IF EXISTS bench_rows")
    cursor.execute("CREATE TABLE bench_rows (id BIGINT PRIMARY KEY, body VARCHAR(64), "
                   "created_at DATETIME(6) NOT NULL DEFAULT NOW(6), done_at DATETIME(6))")
    if with_trigger:
        cursor.execute(
            "CREATE TRIGGER bench_rows_ai AFTER INSERT ON bench_rows FOR EACH ROW "
            f"DO gman_do_background('{with_trigger}', JSON_OBJECT('id', NEW.id))")


def _written(conn: Any) -> int:
    cursor = conn.cursor()
    cursor.execute("SELECT COUNT(done_at) FROM bench_rows")
    (count,) = cursor.fetchone()
    return int(count)


def _insert_and_wait(sandbox: Sandbox, database: str, n: int) -> float:
    """Insert n rows in statements of 500 (the trigger fires a job per row); rows/s until
    every row is written back."""
    conn = sandbox.connect(database=database)
    cursor = conn.cursor()
    start = time.monotonic()
    for first in range(1, n + 1, 500):
        cursor.execute("INSERT INTO bench_rows (id, body) SELECT seq, 'x' FROM "
                       f"seq_{first}_to_{min(first + 499, n)}")
    deadline = time.monotonic() + 300
    while _written(conn) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("rows were not written back within 300s")
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    conn.close()
    return n / elapsed


def end_to_end(sandbox: Sandbox, workdir: Path, database: str, quick: bool) -> list[Figure]:
    n = 4000 if quick else 20000
    runs = 3
    admin = sandbox.connect(database=database)

    def naive() -> float:
        function = _fresh_function("bench_e2e_naive")
        _prepare_rows(admin, function)
        db = dict(host="127.0.0.1", port=sandbox.mysql_port, user=sandbox.user,
                  password=sandbox.password, database=database)
        with processes(bare_worker(sandbox, "update", function, db)):
            time.sleep(0.5)
            return _insert_and_wait(sandbox, database, n)

    def ours() -> float:
        function = _fresh_function("bench_e2e")
        _prepare_rows(admin, function)
        argv, env = host_command(sandbox, workdir, database, {
            function: {"sql": UPDATE, "processes": 2}})
        with processes(argv, env=env):
            time.sleep(1.5)
            return _insert_and_wait(sandbox, database, n)

    def ledger() -> float:
        # The trigger `workerhost triggers --apply` writes (delivery: immediate): a ledger
        # row, then the UDF; the worker claims and deletes the row with its UPDATE; the relay
        # runs, as it does in production.
        function = _fresh_function("bench_e2e_ledger")
        _prepare_rows(admin, None)
        handler = {"sql": UPDATE, "processes": 2, "accept": "ledger"}
        config = parse_config({
            "gearman": {"servers": [sandbox.gearman_server]},
            "database": {"host": "127.0.0.1", "port": sandbox.mysql_port,
                         "user": sandbox.user, "password": sandbox.password,
                         "database": database},
            "handlers": {function: handler},
            "triggers": [{"table": "bench_rows", "events": ["insert"], "function": function,
                          "columns": ["id"], "delivery": "immediate"}],
        }, file="bench")
        connection = Database(config.database.connect_kwargs())
        triggers.apply(config, connection)
        connection.close()
        argv, env = host_command(sandbox, workdir, database, {function: handler}, relay=True)
        with processes(argv, env=env):
            time.sleep(1.5)
            return _insert_and_wait(sandbox, database, n)

    progress(f"end to end: naive worker, {n} rows x {runs}")
    base = repeat(runs, naive)
    progress(f"end to end: worker host, sql handler, 2 processes, batch {DEFAULT_BATCH}")
    mine = repeat(runs, ours)
    progress("end to end: the same through the ledger (generated trigger, relay on)")
    kept = repeat(runs, ledger)
    return [Figure(f"end to end, {n} rows inserted until all written back (durable; "
                   f"sql handler, 2 processes, batch {DEFAULT_BATCH})", "rows/s",
                   mine, "bare pygearman worker, UPDATE + COMMIT per job", base,
                   ">= 5000 rows/s"),
            Figure("  the same through the ledger: nothing lost, effects once (immediate "
                   "delivery, relay on)", "rows/s", kept,
                   "the same without the ledger (first line)", mine, ">= 5000 rows/s")]


def latency(sandbox: Sandbox, workdir: Path, database: str, quick: bool) -> list[Figure]:
    seconds = 2.0 if quick else 5.0
    runs = 1 if quick else 3
    rate = 200
    p50: list[float] = []
    p99: list[float] = []
    for run in range(1, runs + 1):
        progress(f"latency: {rate} rows/s for {seconds:g}s, run {run} of {runs}")
        values = _latencies(sandbox, workdir, database, rate, seconds)
        q = statistics.quantiles(values, n=100)
        p50.append(q[49])
        p99.append(q[98])
    return [
        Figure(f"latency INSERT to write-back, p50, {rate} rows/s", "ms", p50,
               target="<= 5 ms", higher_is_better=False),
        Figure(f"latency INSERT to write-back, p99, {rate} rows/s", "ms", p99,
               target="<= 25 ms", higher_is_better=False),
    ]


def _latencies(sandbox: Sandbox, workdir: Path, database: str, rate: int, seconds: float
               ) -> list[float]:
    """Milliseconds from each row's INSERT to its write-back, rows inserted at `rate`."""
    function = _fresh_function("bench_latency")
    admin = sandbox.connect(database=database)
    _prepare_rows(admin, function)
    argv, env = host_command(sandbox, workdir, database, {function: {"sql": UPDATE}})
    with processes(argv, env=env):
        time.sleep(1.5)
        cursor = admin.cursor()
        total = int(rate * seconds)
        start = time.monotonic()
        for i in range(1, total + 1):
            cursor.execute("INSERT INTO bench_rows (id, body) VALUES (%s, 'x')", (i,))
            pause = start + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        deadline = time.monotonic() + 60
        while _written(admin) < total and time.monotonic() < deadline:
            time.sleep(0.01)
    cursor.execute("SELECT TIMESTAMPDIFF(MICROSECOND, created_at, done_at) FROM bench_rows "
                   "WHERE done_at IS NOT NULL")
    values = sorted(int(r[0]) / 1000 for r in cursor.fetchall())
    admin.close()
    if len(values) < total:
        raise RuntimeError(f"only {len(values)} of {total} rows came back")
    return values


def memory(sandbox: Sandbox, workdir: Path, database: str, quick: bool) -> list[Figure]:
    n = 10000 if quick else 100000
    runs = 1 if quick else 3
    idle: list[float] = []
    warm: list[float] = []
    after: list[float] = []
    for run in range(1, runs + 1):
        progress(f"memory: one worker process, idle and after {n} jobs, run {run} of {runs}")
        for figures, mib in zip((idle, warm, after), _rss_over_jobs(sandbox, workdir, database, n),
                                strict=True):
            figures.append(mib)
    return [
        Figure("worker process RSS, idle", "MB", idle, target="<= 60 MB",
               higher_is_better=False),
        Figure(f"worker process RSS after {WARM_UP} jobs (warm)", "MB", warm, "idle", idle,
               "<= 60 MB", higher_is_better=False),
        Figure(f"worker process RSS after {n} more jobs", "MB", after, "warm", warm,
               "< 1.05x warm", higher_is_better=False),
    ]


def _rss_over_jobs(sandbox: Sandbox, workdir: Path, database: str, n: int
                   ) -> tuple[float, float, float]:
    """A fresh worker process's RSS in MiB: idle, warm, and after n more jobs."""
    function = _fresh_function("bench_memory")
    argv, env = host_command(sandbox, workdir, database, {
        function: {"python": "handlers:empty"}})
    with processes(argv, env=env) as (host,):
        deadline = time.monotonic() + 30
        while not children(host.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        worker = children(host.pid)[0]
        idle = rss_kib(worker) / 1024
        # The first jobs load what a job needs (codecs, result classes, buffers): growth is
        # measured from there, so that it shows what running jobs costs, not starting up.
        load_jobs(sandbox, function, _payloads(WARM_UP))
        wait_drained(sandbox, function)
        warm = rss_kib(worker) / 1024
        for start in range(0, n, 20000):
            load_jobs(sandbox, function, _payloads(min(20000, n - start)))
            wait_drained(sandbox, function)
        return idle, warm, rss_kib(worker) / 1024
