"""gearman_udf.so inside the sandbox's mariadbd, submitting to its real gearmand.

Jobs are read back with a small worker that speaks Gearman's binary protocol over a plain
socket, so the bytes compared are exactly the bytes gearmand holds.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mysql.connector
import pytest
from conftest import ROOT, UDF_SO, scalar, sequence

from workerhost import gearadmin
from workerhost.sandbox import MEMORY_QUEUE, Sandbox

SQL = ROOT / "sql"

# The library stats its config file at most once a second; a change needs this long to show.
CONFIG_SETTLE = 1.2
# What "fast" and "within the timeout" allow on top of the figure itself, on a busy CI box.
MARGIN = 0.5

BACKGROUND = ("gman_do_background", "gman_do_high_background", "gman_do_low_background")
FOREGROUND = ("gman_do", "gman_do_high", "gman_do_low")
EPOCH = "gman_do_epoch_background"
JOB_FUNCTIONS = (*BACKGROUND, EPOCH, *FOREGROUND)
ALL_FUNCTIONS = (*JOB_FUNCTIONS, "gman_servers_set", "gman_udf_status")


# -- a worker over a raw socket ---------------------------------------------------------

CAN_DO, NO_JOB, WORK_COMPLETE, GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ = 1, 10, 13, 30, 31


@dataclass(frozen=True)
class Job:
    handle: bytes
    function: str
    unique: str
    workload: bytes


class RawWorker:
    """A Gearman worker for the given functions: grab a job, answer WORK_COMPLETE."""

    def __init__(self, port: int, *functions: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # WORK_COMPLETE then GRAB_JOB are two small writes: without this, Nagle holds the
        # second until gearmand's delayed ACK, some 40 ms a job.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for function in functions:
            self._send(CAN_DO, function.encode())

    def __enter__(self) -> RawWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _send(self, kind: int, data: bytes = b"") -> None:
        self.sock.sendall(b"\0REQ" + struct.pack(">II", kind, len(data)) + data)

    def _read(self, size: int) -> bytes:
        buf = b""
        while len(buf) < size:
            chunk = self.sock.recv(size - len(buf))
            if not chunk:
                raise EOFError("gearmand closed the worker connection")
            buf += chunk
        return buf

    def grab(self, reply: Callable[[bytes], bytes] = lambda _: b"") -> Job | None:
        """Take one job, complete it with reply(workload); None if none is waiting."""
        self._send(GRAB_JOB_UNIQ)
        header = self._read(12)
        kind, size = struct.unpack(">II", header[4:])
        data = self._read(size)
        if kind == NO_JOB:
            return None
        assert kind == JOB_ASSIGN_UNIQ, f"unexpected packet type {kind}"
        handle, function, unique, workload = data.split(b"\0", 3)
        self._send(WORK_COMPLETE, handle + b"\0" + reply(workload))
        return Job(handle, function.decode(), unique.decode(), workload)

    def take(self, count: int, timeout: float = 30.0) -> list[Job]:
        """Grab until count jobs arrived or timeout passed."""
        jobs: list[Job] = []
        deadline = time.monotonic() + timeout
        while len(jobs) < count and time.monotonic() < deadline:
            job = self.grab()
            if job is None:
                time.sleep(0.02)
            else:
                jobs.append(job)
        return jobs


@contextmanager
def serving(port: int, function: str, reply: Callable[[bytes], bytes]) -> Iterator[list[Job]]:
    """A worker thread answering every job of function until the block ends."""
    seen: list[Job] = []
    stop = threading.Event()
    ready = threading.Event()

    def loop() -> None:
        with RawWorker(port, function) as worker:
            ready.set()
            while not stop.is_set():
                job = worker.grab(reply)
                if job is None:
                    time.sleep(0.005)
                else:
                    seen.append(job)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    assert ready.wait(10), "worker could not connect"
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture
def udf_config(udf: Sandbox) -> Iterator[Callable[..., None]]:
    """Rewrite the UDF's config file (defaults plus overrides); restored after the test."""
    changed = False

    def write(**settings: object) -> None:
        nonlocal changed
        changed = True
        udf.write_udf_config(**settings)
        time.sleep(CONFIG_SETTLE)

    yield write
    if changed:
        udf.write_udf_config()
        time.sleep(CONFIG_SETTLE)


@pytest.fixture
def memory_gearmand(gearmand_factory: Callable[..., Any]) -> int:
    """The port of a gearmand without a persistent queue, stopped at teardown.

    The sandbox's gearmand commits every job to sqlite; on a busy disk that alone can take
    longer than timeout_ms, so the throughput tests use this one to test the UDF, not fsync.
    """
    return int(gearmand_factory(MEMORY_QUEUE).port)


@pytest.fixture
def fn() -> str:
    """A Gearman function name no other test uses."""
    return "udf_test_" + uuid.uuid4().hex[:12]


def udf_status(conn: Any) -> dict[str, Any]:
    raw = scalar(conn, "SELECT gman_udf_status()")
    return dict(json.loads(raw))


def counters(conn: Any) -> dict[str, int]:
    return dict(udf_status(conn)["counters"])


def queued(sandbox: Sandbox, function: str) -> int:
    found = sandbox.gearman_status().get(function)
    return found.queued if found else 0


def drain(sandbox: Sandbox, function: str, count: int) -> list[Job]:
    with RawWorker(sandbox.gearman_port, function) as worker:
        return worker.take(count)


def add_trigger(conn: Any, call: str) -> None:
    """events(id, name) with a trigger that stores call's result per row in results."""
    cur = conn.cursor()
    cur.execute("CREATE TABLE events (id INT PRIMARY KEY, name VARCHAR(64))")
    cur.execute("CREATE TABLE results (id INT PRIMARY KEY, r LONGBLOB)")
    cur.execute(
        "CREATE TRIGGER events_ai AFTER INSERT ON events FOR EACH ROW "
        f"INSERT INTO results VALUES (NEW.id, {call})"
    )
    cur.close()


def time_wait_to(port: int) -> int:
    """Sockets in TIME_WAIT towards 127.0.0.1:port, from /proc/net/tcp."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "06" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


def job_call(udf_name: str, function_sql: str, workload_sql: str) -> str:
    """SQL calling one job function; epoch jobs are due now."""
    if udf_name == EPOCH:
        return f"{udf_name}({function_sql}, {workload_sql}, UNIX_TIMESTAMP())"
    return f"{udf_name}({function_sql}, {workload_sql})"


# -- every function, from SQL and from a trigger -------------------------------------------

@pytest.mark.parametrize("udf_name", JOB_FUNCTIONS)
def test_function_from_sql_delivers_exact_bytes(udf: Sandbox, db: Any, fn: str,
                                                udf_name: str) -> None:
    payload = b"a\x00b\x00\xff{\"k\": 1}"
    call = job_call(udf_name, "%s", f"UNHEX('{payload.hex()}')")
    if udf_name in FOREGROUND:
        with serving(udf.gearman_port, fn, lambda w: b"done:" + w) as seen:
            result = scalar(db, f"SELECT {call}", fn)
        assert result == b"done:" + payload
        assert [job.workload for job in seen] == [payload]
    else:
        handle = scalar(db, f"SELECT {call}", fn)
        assert handle is not None and handle.startswith(b"H:")
        (job,) = drain(udf, fn, 1)
        assert job.workload == payload
        assert job.handle == handle


@pytest.mark.parametrize("udf_name", JOB_FUNCTIONS)
def test_function_from_trigger_with_json_payload(udf: Sandbox, db: Any, fn: str,
                                                 udf_name: str) -> None:
    add_trigger(db, job_call(udf_name, f"'{fn}'", "JSON_OBJECT('id', NEW.id, 'name', NEW.name)"))
    rows = [(1, "plain"), (2, "Zoë \"quoted\""), (3, "tab\there")]
    expected = {
        i: scalar(db, "SELECT CAST(JSON_OBJECT('id', %s, 'name', %s) AS BINARY)", i, name)
        for i, name in rows
    }
    cur = db.cursor()
    if udf_name in FOREGROUND:
        with serving(udf.gearman_port, fn, lambda w: b"done:" + w) as seen:
            cur.executemany("INSERT INTO events VALUES (%s, %s)", rows)
        workloads = [job.workload for job in seen]
    else:
        cur.executemany("INSERT INTO events VALUES (%s, %s)", rows)
        workloads = [job.workload for job in drain(udf, fn, len(rows))]
    assert sorted(workloads) == sorted(expected.values())
    assert {json.loads(w)["name"] for w in workloads} == {name for _, name in rows}

    cur.execute("SELECT id, r FROM results ORDER BY id")
    results = dict(cur.fetchall())
    for i, _ in rows:
        if udf_name in FOREGROUND:
            assert results[i] == b"done:" + expected[i]
        else:
            assert results[i] is not None and results[i].startswith(b"H:")


def test_null_and_empty_workloads_are_sent_empty(udf: Sandbox, db: Any, fn: str) -> None:
    assert scalar(db, "SELECT gman_do_background(%s, NULL)", fn) is not None
    assert scalar(db, "SELECT gman_do_background(%s, '')", fn) is not None
    assert [job.workload for job in drain(udf, fn, 2)] == [b"", b""]


def test_null_function_gives_null(udf: Sandbox, db: Any) -> None:
    assert scalar(db, "SELECT gman_do_background(NULL, 'w')") is None


def test_argument_errors_name_the_signature(udf: Sandbox, db: Any) -> None:
    cases = {
        "SELECT gman_do_background(1, 'w')":
            "gman_do_background(function, workload [, unique]): function must be a string",
        "SELECT gman_do('f')": "gman_do(function, workload [, unique]): expected 2 or 3",
        "SELECT gman_do_epoch_background('f', 'w', 'soon')": "unix_time must be a number",
        "SELECT gman_udf_status(1)": "takes no arguments",
    }
    for sql, message in cases.items():
        with pytest.raises(mysql.connector.Error) as caught:
            scalar(db, sql)
        assert message in str(caught.value), sql


def test_status_reports_config_and_counters(udf: Sandbox, db: Any) -> None:
    status = udf_status(db)
    assert status["servers"] == [udf.gearman_server]
    assert status["timeout_ms"] == 1000
    assert status["allow_servers_set"] is False
    assert set(status["counters"]) == {
        "submitted", "failed", "connections_opened", "reconnects", "skipped_backoff",
    }
    assert status["version"]


# -- gearmand's promises ---------------------------------------------------------------------

def test_unique_coalesces(udf: Sandbox, db: Any, fn: str) -> None:
    first = scalar(db, "SELECT gman_do_background(%s, 'first', 'key-1')", fn)
    second = scalar(db, "SELECT gman_do_background(%s, 'second', 'key-1')", fn)
    other = scalar(db, "SELECT gman_do_background(%s, 'third', 'key-2')", fn)
    assert first == second != other
    assert queued(udf, fn) == 2
    jobs = drain(udf, fn, 2)
    assert sorted(job.workload for job in jobs) == [b"first", b"third"]
    assert {job.unique for job in jobs} == {"key-1", "key-2"}


def test_row_id_as_unique_from_a_trigger(udf: Sandbox, db: Any, fn: str) -> None:
    add_trigger(db, f"gman_do_background('{fn}', JSON_OBJECT('id', NEW.id), NEW.id)")
    db.cursor().executemany("INSERT INTO events VALUES (%s, NULL)", [(7,), (8,)])
    assert {job.unique for job in drain(udf, fn, 2)} == {"7", "8"}


def test_jobs_without_unique_get_distinct_ones(udf: Sandbox, db: Any, fn: str) -> None:
    for workload in ("a", "a", "b"):
        assert scalar(db, "SELECT gman_do_background(%s, %s)", fn, workload) is not None
    jobs = drain(udf, fn, 3)
    uniques = {job.unique for job in jobs}
    assert len(uniques) == 3 and all(re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]{16}", u)
                                     for u in uniques), uniques


def test_priorities_high_first(udf: Sandbox, db: Any, fn: str) -> None:
    for udf_name, workload in (("gman_do_low_background", "low"),
                               ("gman_do_background", "normal"),
                               ("gman_do_high_background", "high")):
        assert scalar(db, f"SELECT {udf_name}(%s, %s)", fn, workload) is not None
    assert [job.workload for job in drain(udf, fn, 3)] == [b"high", b"normal", b"low"]


def test_epoch_job_waits_for_its_time(udf: Sandbox, db: Any, fn: str) -> None:
    due = int(scalar(db, "SELECT UNIX_TIMESTAMP() + 3"))
    assert scalar(db, "SELECT gman_do_epoch_background(%s, 'later', %s)", fn, due) is not None
    with RawWorker(udf.gearman_port, fn) as worker:
        deadline = time.time() + 15
        job = None
        while job is None and time.time() < deadline:
            job = worker.grab()
            if job is None:
                time.sleep(0.05)
        arrived = time.time()
    assert job is not None and job.workload == b"later"
    assert arrived >= due - 0.05, f"ran {due - arrived:.2f}s before its time"


# -- connections -----------------------------------------------------------------------------

# The big tests count what arrived with gearmand's admin protocol instead of draining
# thousands of jobs, on a gearmand of their own whose queue disappears with it.

@pytest.mark.slow
def test_bulk_insert_reuses_one_connection(udf: Sandbox, db: Any, fn: str,
                                           udf_config: Callable[..., None],
                                           memory_gearmand: int) -> None:
    port = memory_gearmand
    udf_config(servers=f"127.0.0.1:{port}")
    add_trigger(db, f"gman_do_background('{fn}', JSON_OBJECT('id', NEW.id))")
    before, waits_before = counters(db), time_wait_to(port)
    db.cursor().execute(f"INSERT INTO events SELECT seq, NULL FROM {sequence(1, 20000)}")
    after, waits_after = counters(db), time_wait_to(port)
    assert after["submitted"] - before["submitted"] == 20000
    assert after["connections_opened"] - before["connections_opened"] <= 2
    assert waits_after - waits_before <= 3
    assert scalar(db, "SELECT COUNT(DISTINCT r) FROM results") == 20000
    assert gearadmin.status("127.0.0.1", port)[fn].queued == 20000


@pytest.mark.slow
def test_concurrent_sessions_deliver_every_job(udf: Sandbox, db: Any, fn: str,
                                               udf_config: Callable[..., None],
                                               memory_gearmand: int) -> None:
    udf_config(servers=f"127.0.0.1:{memory_gearmand}")
    add_trigger(db, f"gman_do_background('{fn}', CAST(NEW.id AS CHAR))")
    sessions, per_session = 8, 1000
    database = db.database  # read once: db is not to be shared between threads
    errors: list[BaseException] = []

    def session(n: int) -> None:
        try:
            conn = udf.connect(database=database)
            cur = conn.cursor()
            for i in range(per_session):
                cur.execute("INSERT INTO events VALUES (%s, NULL)", (n * per_session + i,))
            conn.close()
        except BaseException as exc:  # reported below: a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors
    total = sessions * per_session
    assert scalar(db, "SELECT COUNT(DISTINCT r) FROM results WHERE r LIKE 'H:%'") == total
    assert gearadmin.status("127.0.0.1", memory_gearmand)[fn].queued == total
    assert scalar(udf.connect(), "SELECT 1") == 1


# -- failures ----------------------------------------------------------------------------------

@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never reads or answers; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for sock in held:
            sock.close()
        listener.close()


def test_stalled_server_gives_null_within_timeout(udf: Sandbox, db: Any,
                                                  udf_config: Callable[..., None]) -> None:
    with silent_server() as port:
        udf_config(servers=f"127.0.0.1:{port}", timeout_ms=500)
        for udf_name in ("gman_do_background", "gman_do"):
            started = time.monotonic()
            assert scalar(db, f"SELECT {udf_name}('stalled', 'w')") is None
            took = time.monotonic() - started
            assert took < 0.5 + MARGIN, f"{udf_name} took {took:.2f}s"
            time.sleep(0.6)  # past backoff_ms, so the next call waits on the server again


@pytest.mark.slow
def test_stopped_gearmand_fails_fast_and_recovers(udf: Sandbox, db: Any, fn: str) -> None:
    add_trigger(db, f"gman_do_background('{fn}', CAST(NEW.id AS CHAR))")
    before = counters(db)
    udf.stop_gearmand()
    try:
        started = time.monotonic()
        assert scalar(db, "SELECT gman_do_background(%s, 'w')", fn) is None
        assert time.monotonic() - started < MARGIN
        started = time.monotonic()
        db.cursor().execute(f"INSERT INTO events SELECT seq, NULL FROM {sequence(1, 10000)}")
        took = time.monotonic() - started
        assert took < 5, f"10,000 rows against a stopped gearmand took {took:.1f}s"
        assert scalar(db, "SELECT COUNT(*) FROM results WHERE r IS NULL") == 10000
        after = counters(db)
        assert after["failed"] - before["failed"] == 10001
        assert after["skipped_backoff"] - before["skipped_backoff"] > 9000
    finally:
        udf.start_gearmand()
    time.sleep(1.1)  # backoff_ms
    assert scalar(db, "SELECT gman_do_background(%s, 'back')", fn) is not None
    assert [job.workload for job in drain(udf, fn, 1)] == [b"back"]


def test_two_servers_one_down(udf: Sandbox, db: Any, fn: str,
                              udf_config: Callable[..., None],
                              gearmand_factory: Callable[[], Any],
                              memory_gearmand: int) -> None:
    first = gearmand_factory()
    first.stop()
    udf_config(servers=f"127.0.0.1:{first.port},127.0.0.1:{memory_gearmand}")
    add_trigger(db, f"gman_do_background('{fn}', CAST(NEW.id AS CHAR))")
    db.cursor().execute(f"INSERT INTO events SELECT seq, NULL FROM {sequence(1, 500)}")
    assert scalar(db, "SELECT COUNT(DISTINCT r) FROM results WHERE r LIKE 'H:%'") == 500
    assert gearadmin.status("127.0.0.1", memory_gearmand)[fn].queued == 500
    with RawWorker(memory_gearmand, fn) as worker:
        jobs = worker.take(500)
    assert sorted(int(job.workload) for job in jobs) == list(range(1, 501))


def test_servers_set_refused_when_config_names_servers(udf: Sandbox, db: Any) -> None:
    with pytest.raises(mysql.connector.Error) as caught:
        scalar(db, "SELECT gman_servers_set('127.0.0.1:1')")
    assert "refused: allow_servers_set=0 in " in str(caught.value)


def test_servers_set_allowed_by_config(udf: Sandbox, db: Any, fn: str,
                                       udf_config: Callable[..., None]) -> None:
    udf_config(servers="127.0.0.1:1", allow_servers_set=1)
    assert scalar(db, "SELECT gman_servers_set(%s)", udf.gearman_server) is not None
    assert udf_status(db)["servers"] == [udf.gearman_server]
    assert scalar(db, "SELECT gman_do_background(%s, 'set')", fn) is not None
    assert [job.workload for job in drain(udf, fn, 1)] == [b"set"]


def test_drop_functions_while_sessions_hold_connections(udf: Sandbox, fn: str) -> None:
    admin = udf.connect()
    cache_size = scalar(admin, "SELECT @@GLOBAL.thread_cache_size")

    def uptime() -> int:
        cursor = admin.cursor()
        cursor.execute("SHOW GLOBAL STATUS LIKE 'Uptime'")  # the same on both servers
        (_, seconds), = cursor.fetchall()
        cursor.close()
        return int(seconds)

    started = uptime()
    sessions = [udf.connect() for _ in range(4)]
    try:
        for conn in sessions:
            assert scalar(conn, "SELECT gman_do_background(%s, 'hold')", fn) is not None
        # Threads of ended sessions exit instead of waiting in the cache, after the unload.
        admin.cursor().execute("SET GLOBAL thread_cache_size = 0")
        udf.run_sql_file(SQL / "uninstall.sql")
        for conn in sessions:
            with pytest.raises(mysql.connector.Error):
                scalar(conn, "SELECT gman_do_background(%s, 'gone')", fn)
            conn.close()
        time.sleep(0.5)
        udf.run_sql_file(SQL / "install.sql")
        conn = udf.connect()
        assert scalar(conn, "SELECT gman_do_background(%s, 'again')", fn) is not None
        conn.close()
    finally:
        admin.cursor().execute(f"SET GLOBAL thread_cache_size = {int(cache_size)}")
        udf.install_udf(UDF_SO)
    assert uptime() >= started, "the server restarted"
    assert udf.status()[udf.database_process], "the server died"
    assert sorted(job.workload for job in drain(udf, fn, 5)) == [b"again"] + [b"hold"] * 4
    admin.close()


def test_install_and_uninstall_are_rerunnable(udf: Sandbox, db: Any) -> None:
    udf.run_sql_file(SQL / "install.sql")
    udf.run_sql_file(SQL / "install.sql")
    cur = db.cursor()
    cur.execute("SELECT name FROM mysql.func ORDER BY name")
    assert sorted(name for (name,) in cur.fetchall()) == sorted(ALL_FUNCTIONS)
    udf.run_sql_file(SQL / "uninstall.sql")
    udf.run_sql_file(SQL / "uninstall.sql")
    cur.execute("SELECT COUNT(*) FROM mysql.func")
    assert cur.fetchone() == (0,)
    udf.install_udf(UDF_SO)
