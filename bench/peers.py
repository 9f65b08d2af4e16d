"""`make bench BENCH_ARGS=--peers`: this project's two deliveries beside the designs a team
would otherwise build, on one server with one set of settings, each doing the same write-back.

Systems:
  immediate  this project's default: the generated trigger writes a ledger row and ships the
             job through the UDF; `workerhost run`, `sql:` handler, 2 processes, relay on
  outbox     the same with `delivery: outbox`: the relay ships the ledger rows
  poller     a textbook polling outbox (peer_poller.py, 2 processes)
  cdc        a binlog CDC reader (peer_cdc.py, python-mysql-replication), when it is installed
  celery     Celery with a Redis broker, a task enqueued after each commit (peer_celery.py),
             when celery, redis and redis-server are installed

Two stacks, each a server with client shapes of its own (STACKS; `--stack`):
  mariadb    MariaDB 10.11; one 20,000-row INSERT, 4 client threads of autocommit INSERTs
  mysql:8.4  MySQL 8.4 in the sandbox's container; one 10,000-row INSERT, 8 client threads
             committing 5 single-row INSERTs a transaction (the small OLTP transactions)
Both with durable commits (innodb_flush_log_at_trx_commit=1) and the binary log on in ROW
format with sync_binlog=1, for every system: CDC needs the binary log, and a server that has
one pays for it on every commit (checked before the runs: MySQL has these by default). Every
job's write-back is `UPDATE bench_rows SET done_at = NOW(6) WHERE id = ...`.

Per round, the systems take turns (a slow moment of this shared machine falls on all alike),
and each is measured by:
  - one N-row INSERT ... SELECT: rows/s from the statement's start until every row is
    written back, and how long the statement itself took;
  - the stack's client threads doing INSERTs of N rows in all: the same rows/s;
  - latency at a fixed 500 rows/s offered by 4 paced autocommit clients: created_at (the
    INSERT's NOW(6)) to done_at (the write-back's NOW(6), before its commit), p50 and p99;
  - CPU per 1,000 rows in both throughput runs: utime + stime from /proc/PID/stat of the
    database server, gearmand and the system's own processes (the benchmark client excluded).
The round also times the same N-row INSERT with no trigger and with each system's trigger
while nothing consumes the jobs: what the trigger alone costs the application's statement.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peer_poller
from bench_outbox import _discard
from common import BENCH, children, host_command, processes, progress

from workerhost.config.load import parse_config
from workerhost.sandbox.processes import free_port
from workerhost.sandbox.stack import Sandbox
from workerhost.store import schema, triggers
from workerhost.store.db import Database

SYSTEMS = ("immediate", "outbox", "poller", "cdc", "celery")
LABELS = {
    "immediate": "workerhost, immediate (default)",
    "outbox": "workerhost, outbox delivery",
    "poller": "polling outbox (SKIP LOCKED, RC, batch 100, 2 procs)",
    "cdc": "binlog CDC reader (python-mysql-replication)",
    "celery": "Celery + Redis (after commit, acks_late, 2 procs)",
}
TRIGGERLESS = ("cdc", "celery")  # systems that put nothing into the application's statement
UPDATE = "UPDATE bench_rows SET done_at = NOW(6) WHERE id = %(id)s"
PROCESSES = 2  # worker processes of the host, and of the poller
LATENCY_CLIENTS = 4
RATE = 500  # rows/s of the latency runs
CDC_SERVER_ID = 4242  # the CDC reader's replica id; the server's own is 1
WAIT_POLL = 0.02  # seconds between two looks for rows not yet written back
WAIT_TIMEOUT = 300.0
WARM_UP_EVERY = 0.5  # seconds between two warm-up rows
# The server settings of every system's runs (the binary log as CDC needs it, durable):
# mariadbd's options, and what every server must show before the runs.
BINLOG_OPTIONS = ("--log-bin=binlog", "--server-id=1", "--binlog-format=ROW",
                  "--sync-binlog=1", "--innodb-flush-log-at-trx-commit=1")
DURABLE = {"log_bin": "1", "binlog_format": "ROW", "sync_binlog": "1",
           "innodb_flush_log_at_trx_commit": "1"}


@dataclass(frozen=True)
class Stack:
    """A server and the client shapes measured on it."""

    server: str  # what Sandbox() takes
    bulk: int  # rows of the one INSERT ... SELECT
    threads: int  # client threads of the concurrent run
    per_commit: int  # single-row INSERTs a transaction, in the concurrent run
    threaded: int  # rows of the concurrent run, in all
    latency_s: float

    def quick(self) -> Stack:
        return Stack(self.server, 4000, self.threads, self.per_commit, 2000, 3.0)

    @property
    def shape(self) -> str:
        commits = "autocommit" if self.per_commit == 1 else f"{self.per_commit} rows a commit"
        return f"{self.threads} threads, {commits}"


STACKS = {
    "mariadb": Stack("mariadb", bulk=20000, threads=4, per_commit=1, threaded=20000,
                     latency_s=10.0),
    "mysql:8.4": Stack("mysql:8.4", bulk=10000, threads=8, per_commit=5, threaded=20000,
                       latency_s=10.0),
}


class BinlogSandbox(Sandbox):
    """The bench's sandbox with the binary log on: mariadbd gets BINLOG_OPTIONS (mysqld has
    them by default; check_durable() says so before the runs)."""

    def _spawn(self, argv: Sequence[str], log: Path, name: str,
               env: dict[str, str] | None = None) -> int:
        if name == self.database_process:
            argv = [*argv, *BINLOG_OPTIONS]
        return super()._spawn(argv, log, name, env)


def check_durable(box: Sandbox) -> None:
    """Stop unless the server runs with DURABLE's settings."""
    conn = box.connect()
    cursor = conn.cursor()
    cursor.execute("SELECT " + ", ".join(f"@@GLOBAL.{name}" for name in DURABLE))
    found = dict(zip(DURABLE, (str(v) for v in cursor.fetchone()), strict=True))
    conn.close()
    wrong = {name: value for name, value in found.items() if value != DURABLE[name]}
    if wrong:
        raise SystemExit(f"{box.server} runs with {wrong}; the peers bench needs {DURABLE}")


def rows_select(box: Sandbox, n: int) -> str:
    """A SELECT of n rows (seq, 'x') for an INSERT ... SELECT: MariaDB's sequence engine,
    a recursive CTE on MySQL (the sandbox allows a million levels)."""
    if box.server == "mariadb":
        return f"SELECT seq, 'x' FROM seq_1_to_{n}"
    return (f"WITH RECURSIVE numbers (seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM numbers "
            f"WHERE seq < {n}) SELECT seq, 'x' FROM numbers")


def celery_unavailable() -> str | None:
    """Why the Celery peer cannot run here, or None."""
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        return ("celery and redis are not installed (pip install -e '.[bench]', which "
                "`make bench BENCH_ARGS=--peers` runs)")
    if not shutil.which("redis-server"):
        return "redis-server is not installed (as root: apt-get install redis-server)"
    return None


def unavailable() -> dict[str, str]:
    """The peers that cannot run here, each with the reason."""
    found = {"cdc": cdc_unavailable(), "celery": celery_unavailable()}
    return {system: reason for system, reason in found.items() if reason}


def cdc_unavailable() -> str | None:
    """Why the CDC peer cannot run here, or None."""
    try:
        import pymysqlreplication  # noqa: F401
    except ImportError:
        return ("python-mysql-replication is not installed "
                "(pip install -e '.[bench]', which `make bench BENCH_ARGS=--peers` runs)")
    return None


@dataclass
class Runs:
    """One system's measurements, a value per round."""

    bulk_rows_s: list[float] = field(default_factory=list)
    bulk_statement_s: list[float] = field(default_factory=list)
    bulk_cpu_ms: list[float] = field(default_factory=list)  # per 1,000 rows
    threaded_rows_s: list[float] = field(default_factory=list)
    threaded_cpu_ms: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    trigger_alone_s: list[float] = field(default_factory=list)


# -- the systems ----------------------------------------------------------------------------

def _db(box: Sandbox, database: str) -> dict[str, Any]:
    return dict(host="127.0.0.1", port=box.mysql_port, user=box.user, password=box.password,
                database=database)


def _fresh_rows(conn: Any) -> None:
    cursor = conn.cursor()
    cursor.execute("DROP TABLE IF EXISTS bench_rows")
    cursor.execute("CREATE TABLE bench_rows (id BIGINT PRIMARY KEY, body VARCHAR(64), "
                   "created_at DATETIME(6) NOT NULL DEFAULT NOW(6), done_at DATETIME(6))")
    cursor.execute(f"DROP TABLE IF EXISTS {peer_poller.OUTBOX}")
    cursor.execute("TRUNCATE TABLE workerhost_outbox")


def _install_trigger(system: str, box: Sandbox, database: str, function: str) -> dict[str, Any]:
    """Create the system's trigger on a fresh bench_rows; the host's handler, if any."""
    conn = box.connect(database=database)
    _fresh_rows(conn)
    handler: dict[str, Any] = {}
    if system in ("immediate", "outbox"):
        handler = {"sql": UPDATE, "processes": PROCESSES, "accept": "ledger"}
        config = parse_config({
            "gearman": {"servers": [box.gearman_server]},
            "database": _db(box, database),
            "handlers": {function: handler},
            "triggers": [{"table": "bench_rows", "events": ["insert"], "function": function,
                          "columns": ["id"], "delivery": system}],
        }, file="bench")
        db = Database(config.database.connect_kwargs())
        triggers.apply(config, db)
        db.close()
    elif system == "poller":
        cursor = conn.cursor()
        cursor.execute(f"CREATE TABLE {peer_poller.OUTBOX} (id BIGINT UNSIGNED NOT NULL "
                       "AUTO_INCREMENT PRIMARY KEY, payload JSON NOT NULL)")
        cursor.execute("CREATE TRIGGER bench_rows_peer_ai AFTER INSERT ON bench_rows FOR EACH ROW "
                       f"INSERT INTO {peer_poller.OUTBOX} (payload) "
                       "VALUES (JSON_OBJECT('id', NEW.id))")
    conn.close()
    return handler


@dataclass
class Consumers:
    """A system's running processes, and the servers', whose CPU counts; and for a system the
    application hands its jobs to (Celery), what enqueues the rows of a commit."""

    procs: list[Any]
    servers: list[int]
    enqueue: Callable[[Iterable[int]], None] | None = None

    def committed(self, ids: Iterable[int]) -> None:
        if self.enqueue is not None:
            self.enqueue(ids)

    @property
    def pids(self) -> list[int]:
        return [*(p.pid for p in self.procs), *self.servers]

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"a consumer exited ({proc.returncode}): "
                                   f"{err.strip()[-800:]}")


@contextmanager
def _running(system: str, box: Sandbox, work: Path, database: str) -> Iterator[Consumers]:
    """The system's trigger installed and its consumers running."""
    function = f"bench_peers_{system}_{uuid.uuid4().hex[:8]}"
    handler = _install_trigger(system, box, database, function)
    db = json.dumps(_db(box, database))
    servers = list(box.info.pids.values()) if box.info else []
    if system == "celery":
        with _celery(work, db) as (procs, client):
            consumers = Consumers(procs, servers, client.enqueue)
            _warm_up(box, database, consumers)
            yield consumers
            consumers.check()
        return
    if handler:
        argv, env = host_command(box, work, database, {function: handler}, relay=True)
        started = processes(argv, env=env)
    elif system == "poller":
        started = processes(*[[sys.executable, str(BENCH / "peer_poller.py"), db]] * PROCESSES)
    else:
        started = processes([sys.executable, str(BENCH / "peer_cdc.py"), db, str(CDC_SERVER_ID),
                             box.server])
    with started as procs:
        consumers = Consumers(procs, servers)
        _warm_up(box, database, consumers)
        yield consumers
        consumers.check()


@contextmanager
def _celery(work: Path, db: str) -> Iterator[tuple[list[Any], Any]]:
    """A Redis of its own and a Celery worker of PROCESSES processes; the application's
    client. Redis counts among the consumers (it is the system's broker)."""
    import peer_celery  # only with the extra installed (celery_unavailable)

    port = free_port()
    data = work / f"redis-{port}"
    data.mkdir()
    broker = f"redis://127.0.0.1:{port}/0"
    env = dict(os.environ, PEER_CELERY_BROKER=broker, PEER_CELERY_DB=db,
               PYTHONPATH=os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]))
    worker = [sys.executable, "-m", "celery", "-A", "peer_celery", "worker", "--pool=prefork",
              f"--concurrency={PROCESSES}", "--loglevel=WARNING", "--without-gossip",
              "--without-mingle", "--without-heartbeat"]
    with processes(peer_celery.redis_argv(port, data), env=env) as redis:
        peer_celery.wait_for_redis(port)
        with processes(worker, env=env) as procs:
            yield [*redis, *procs], peer_celery.Client(broker)


def _warm_up(box: Sandbox, database: str, consumers: Consumers) -> None:
    """Rows through the system until one is written back: it has connected and loaded what a
    job needs, then the runs begin. A row goes in every WARM_UP_EVERY seconds, since the CDC
    reader sees only rows written after it found the log's end; the ids are negative, so that
    a warm-up job that ends late finds no row of the runs."""
    conn = box.connect(database=database)
    cursor = conn.cursor()
    deadline, sent, last = time.monotonic() + 60, 0, 0.0
    while True:
        if time.monotonic() - last > WARM_UP_EVERY:
            sent, last = sent + 1, time.monotonic()
            cursor.execute("INSERT INTO bench_rows (id, body) VALUES (%s, 'warm-up')", (-sent,))
            consumers.committed([-sent])
        cursor.execute("SELECT 1 FROM bench_rows WHERE done_at IS NOT NULL LIMIT 1")
        if cursor.fetchone():
            break
        consumers.check()
        if time.monotonic() > deadline:
            raise RuntimeError("no warm-up row was written back within 60s")
        time.sleep(0.05)
    cursor.execute("TRUNCATE TABLE bench_rows")
    conn.close()


# -- measuring ------------------------------------------------------------------------------

def _ticks(pids: Sequence[int]) -> dict[int, int]:
    """utime + stime (all threads) of each pid and of every descendant, in clock ticks."""
    found: dict[int, int] = {}
    todo = list(pids)
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = int(fields[11]) + int(fields[12])
        todo.extend(children(pid))
    return found


def _cpu_ms(before: dict[int, int], after: dict[int, int]) -> float:
    used = sum(ticks - before.get(pid, 0) for pid, ticks in after.items())
    return 1000 * used / os.sysconf("SC_CLK_TCK")


def _wait_written(cursor: Any, consumers: Consumers, timeout: float = WAIT_TIMEOUT) -> None:
    """Until no row waits for its write-back; looks from the lowest row still waiting on."""
    low, deadline = 0, time.monotonic() + timeout
    while True:
        cursor.execute("SELECT id FROM bench_rows WHERE id >= %s AND done_at IS NULL "
                       "ORDER BY id LIMIT 1", (low,))
        row = cursor.fetchone()
        if row is None:
            return
        low = int(row[0])
        consumers.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"rows from id {low} not written back within {timeout}s")
        time.sleep(WAIT_POLL)


def _count(cursor: Any) -> int:
    cursor.execute("SELECT COUNT(*) FROM bench_rows")
    return int(cursor.fetchone()[0])


def _bulk(box: Sandbox, database: str, consumers: Consumers, n: int
          ) -> tuple[float, float, float]:
    """(rows/s, the INSERT's own seconds, CPU ms per 1,000 rows) of one n-row INSERT."""
    conn = box.connect(database=database)
    cursor = conn.cursor()
    before = _ticks(consumers.pids)
    started = time.monotonic()
    cursor.execute(f"INSERT INTO bench_rows (id, body) {rows_select(box, n)}")
    statement = time.monotonic() - started
    consumers.committed(range(1, n + 1))
    _wait_written(cursor, consumers)
    elapsed = time.monotonic() - started
    cpu = _cpu_ms(before, _ticks(consumers.pids))
    cursor.execute("TRUNCATE TABLE bench_rows")
    conn.close()
    return n / elapsed, statement, cpu / n * 1000


def _threaded(box: Sandbox, database: str, consumers: Consumers, stack: Stack
              ) -> tuple[float, float]:
    """(rows/s, CPU ms per 1,000 rows) of the stack's concurrent INSERTs."""
    n = stack.threaded
    conns = [box.connect(database=database) for _ in range(stack.threads)]
    before = _ticks(consumers.pids)
    started = time.monotonic()
    _insert_threads(conns, n, stack.per_commit, consumers.committed)
    cursor = conns[0].cursor()
    _wait_written(cursor, consumers)
    elapsed = time.monotonic() - started
    cpu = _cpu_ms(before, _ticks(consumers.pids))
    if _count(cursor) != n:
        raise RuntimeError(f"{_count(cursor)} rows inserted, not {n}")
    cursor.execute("TRUNCATE TABLE bench_rows")
    for conn in conns:
        conn.close()
    return n / elapsed, cpu / n * 1000


def _insert_threads(conns: Sequence[Any], n: int, per_commit: int,
                    committed: Callable[[Iterable[int]], None] | None = None) -> None:
    """n single-row INSERTs, per_commit of them a transaction (1: autocommit), from one
    thread per connection, started together; `committed` gets each commit's ids."""
    gate = threading.Barrier(len(conns) + 1)
    failures: list[BaseException] = []

    def client(k: int) -> None:
        conn = conns[k]
        cursor = conn.cursor()
        mine = range(k + 1, n + 1, len(conns))
        gate.wait()
        try:
            for first in range(0, len(mine), per_commit):
                ids = mine[first:first + per_commit]
                if per_commit > 1:
                    conn.start_transaction()
                for i in ids:
                    cursor.execute("INSERT INTO bench_rows (id, body) VALUES (%s, 'x')", (i,))
                if per_commit > 1:
                    conn.commit()
                if committed is not None:
                    committed(ids)
        except BaseException as exc:  # reported below, in the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(conns))]
    for thread in threads:
        thread.start()
    gate.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def _ceiling(box: Sandbox, database: str, stack: Stack) -> float:
    """rows/s of the stack's concurrent INSERTs with no trigger and nothing consuming: what
    the server commits at most in that shape, with every system's work left out."""
    _install_trigger("plain", box, database, "")
    conns = [box.connect(database=database) for _ in range(stack.threads)]
    started = time.monotonic()
    _insert_threads(conns, stack.threaded, stack.per_commit)
    elapsed = time.monotonic() - started
    conns[0].cursor().execute("TRUNCATE TABLE bench_rows")
    for conn in conns:
        conn.close()
    return stack.threaded / elapsed


def _latency(box: Sandbox, database: str, consumers: Consumers, seconds: float
             ) -> tuple[float, float]:
    """(p50, p99) in ms from each row's INSERT to its write-back, rows inserted at RATE.

    The rate is the offered load: LATENCY_CLIENTS clients each insert at their share of it,
    so that a slow commit delays its own client's next row, not the whole schedule.
    """
    total = int(RATE * seconds)
    conns = [box.connect(database=database) for _ in range(LATENCY_CLIENTS)]
    failures: list[BaseException] = []
    behind: list[float] = []
    started = time.monotonic() + 0.1

    def client(k: int) -> None:
        cursor = conns[k].cursor()
        try:
            for i in range(k + 1, total + 1, LATENCY_CLIENTS):
                pause = started + i / RATE - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                else:
                    behind.append(-pause)
                cursor.execute("INSERT INTO bench_rows (id, body) VALUES (%s, 'x')", (i,))
                consumers.committed([i])
        except BaseException as exc:  # reported below, in the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(LATENCY_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    cursor = conns[0].cursor()
    _wait_written(cursor, consumers)
    cursor.execute("SELECT TIMESTAMPDIFF(MICROSECOND, created_at, done_at) FROM bench_rows")
    values = [int(r[0]) / 1000 for r in cursor.fetchall()]
    cursor.execute("TRUNCATE TABLE bench_rows")
    for conn in conns:
        conn.close()
    late = [s for s in behind if s > 0.01]
    if late:
        progress(f"latency: {len(late)} of {total} rows sent over 10 ms late "
                 f"(the clients' commits), up to {max(late) * 1000:.0f} ms")
    q = statistics.quantiles(values, n=100)
    return q[49], q[98]


def _triggers_alone(box: Sandbox, database: str, n: int, systems: Sequence[str]
                    ) -> dict[str, float]:
    """Seconds of the n-row INSERT with each system's trigger (plain: none), no consumer."""
    found: dict[str, float] = {}
    for system in ("plain", *[s for s in systems if s not in TRIGGERLESS]):
        function = f"bench_peers_alone_{uuid.uuid4().hex[:8]}"
        _install_trigger(system, box, database, function)
        conn = box.connect(database=database)
        cursor = conn.cursor()
        started = time.monotonic()
        cursor.execute(f"INSERT INTO bench_rows (id, body) {rows_select(box, n)}")
        found[system] = time.monotonic() - started
        cursor.execute("DROP TABLE bench_rows")
        conn.close()
        if system == "immediate":
            _discard(box, function)  # the jobs the trigger shipped, so gearmand starts empty
    return found


def run(box: Sandbox, work: Path, database: str, stack: Stack, rounds: int
        ) -> tuple[dict[str, Runs], dict[str, str]]:
    """Every system's runs, and the systems skipped with the reason."""
    check_durable(box)
    skipped = unavailable()
    systems = [s for s in SYSTEMS if s not in skipped]
    db = Database(_db(box, database))
    db.run(schema.create)
    db.close()
    results = {s: Runs() for s in systems}
    for round_ in range(1, rounds + 1):
        progress(f"peers, round {round_} of {rounds}: each system's trigger alone, "
                 f"{stack.bulk}-row INSERT")
        alone = _triggers_alone(box, database, stack.bulk, systems)
        for system in systems:
            results[system].trigger_alone_s.append(alone.get(system, alone["plain"]))
        results.setdefault("plain", Runs()).trigger_alone_s.append(alone["plain"])
        progress(f"peers, round {round_} of {rounds}: {stack.shape}: the INSERTs alone")
        results["plain"].threaded_rows_s.append(_ceiling(box, database, stack))
        for system in systems:
            progress(f"peers, round {round_} of {rounds}: {system}: {stack.bulk}-row INSERT, "
                     f"{stack.shape}, {stack.threaded} rows, "
                     f"{RATE} rows/s for {stack.latency_s:g}s")
            with _running(system, box, work, database) as consumers:
                r = results[system]
                rate, statement, cpu = _bulk(box, database, consumers, stack.bulk)
                r.bulk_rows_s.append(rate)
                r.bulk_statement_s.append(statement)
                r.bulk_cpu_ms.append(cpu)
                rate, cpu = _threaded(box, database, consumers, stack)
                r.threaded_rows_s.append(rate)
                r.threaded_cpu_ms.append(cpu)
                p50, p99 = _latency(box, database, consumers, stack.latency_s)
                r.p50_ms.append(p50)
                r.p99_ms.append(p99)
    return results, skipped


# -- the report -----------------------------------------------------------------------------

def _median(values: list[float]) -> float:
    return statistics.median(values)


def table(results: dict[str, Runs], stack: Stack) -> str:
    base = results["immediate"]
    header = ("system", f"{stack.bulk:,}-row INSERT, rows/s", f"{stack.shape}, rows/s",
              f"p50 / p99 at {RATE}/s, ms",
              "CPU ms/1k rows (INSERT; threads)", "INSERT, no consumer, s (x no trigger)")
    rows = [header]
    plain = _median(results["plain"].trigger_alone_s)

    def cell(values: list[float], of: list[float], digits: str = ",.0f") -> str:
        ratio = _median(values) / _median(of)
        return f"{_median(values):{digits}} ({ratio:.2f}x)"

    for system, r in results.items():
        if system == "plain":
            continue
        alone = _median(r.trigger_alone_s)
        rows.append((
            LABELS[system],
            cell(r.bulk_rows_s, base.bulk_rows_s),
            cell(r.threaded_rows_s, base.threaded_rows_s),
            f"{_median(r.p50_ms):.1f} / {_median(r.p99_ms):.1f}",
            f"{cell(r.bulk_cpu_ms, base.bulk_cpu_ms)}; "
            f"{cell(r.threaded_cpu_ms, base.threaded_cpu_ms)}",
            "-" if system in TRIGGERLESS else f"{alone:.3f} ({alone / plain:.1f}x)",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ceiling = _median(results["plain"].threaded_rows_s)
    lines.append(f"(ratios to {LABELS['immediate']}; the INSERT with no trigger: {plain:.3f} s; "
                 f"the {stack.shape} INSERTs with no trigger and nothing consuming: "
                 f"{ceiling:,.0f} rows/s)")
    return "\n".join(lines)


def verdict(results: dict[str, Runs]) -> list[str]:
    """The issue's targets, each with the figures it was judged on."""
    imm = results["immediate"]
    lines = []
    for peer in ("poller", "cdc"):
        if peer not in results:
            continue
        other = results[peer]
        for what, mine, theirs in (
                ("INSERT", imm.bulk_rows_s, other.bulk_rows_s),
                ("threads", imm.threaded_rows_s, other.threaded_rows_s)):
            ratio = _median(mine) / _median(theirs)
            bound = ""
            if what == "threads":  # a system cannot go faster than the INSERTs alone
                ceiling = _median(results["plain"].threaded_rows_s)
                bound = (f" (1.5x is {1.5 * _median(theirs):,.0f} rows/s; the INSERTs alone, "
                         f"no trigger: {ceiling:,.0f})")
            lines.append(f"default >= 1.5x {peer} ({what}): {ratio:.2f}x "
                         f"{'holds' if ratio >= 1.5 else 'does not hold'}{bound}")
    p50 = _median(imm.p50_ms)
    lines.append(f"default p50 <= 5 ms at {RATE}/s: {p50:.1f} ms "
                 f"{'holds' if p50 <= 5 else 'does not hold'}")
    if "poller" in results:
        for what, mine, theirs in (
                ("INSERT", imm.bulk_cpu_ms, results["poller"].bulk_cpu_ms),
                ("threads", imm.threaded_cpu_ms, results["poller"].threaded_cpu_ms)):
            a, b = _median(mine), _median(theirs)
            lines.append(f"default CPU/1k rows <= poller's ({what}): {a:.0f} vs {b:.0f} ms "
                         f"{'holds' if a <= b else 'does not hold'}")
    ratio = _median(imm.trigger_alone_s) / _median(results["plain"].trigger_alone_s)
    lines.append(f"immediate trigger <= 3x the plain INSERT: {ratio:.1f}x "
                 f"{'holds' if ratio <= 3 else 'does not hold'}")
    return lines


def as_dict(results: dict[str, Runs]) -> dict[str, Any]:
    return {system: vars(r) for system, r in results.items()}

