"""gearman_udf.so inside the sandbox's mariadbd, submitting to its real gearmand.

Jobs are read back with a small worker that speaks Gearman's binary protocol over a plain
socket, so the bytes compared are exactly the bytes gearmand holds.
"""

from __future__ import annotations

import json
import os
import re
import signal
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
from conftest import ROOT, UDF_SO, change_udf_config, scalar, sequence, wait_until

from workerhost.gearman import admin as gearadmin
from workerhost.sandbox.options import MEMORY_QUEUE
from workerhost.sandbox.stack import SANDBOX_UDF_TIMEOUT_MS, Sandbox

SQL = ROOT / "sql"

# What "fast" and "within the timeout" allow on top of the figure itself, on a busy CI box.
MARGIN = 0.5
# The sandbox's timeout_ms, in seconds. A call that submitted its job a second time after a
# timeout takes at least twice this long.
TIMEOUT = SANDBOX_UDF_TIMEOUT_MS / 1000
# The UDF's defaults when the file does not set them (DEFAULT_*_MS in udf/src/config.h).
DEFAULT_TIMEOUT_MS = 1000
DEFAULT_RESULT_TIMEOUT_MS = 30_000
# result_timeout_ms for tests whose worker never answers: short, so they end soon, and longer
# than timeout_ms, so that a call that lasts 0.9 of it was bounded by it and not by timeout_ms.
RESULT_TIMEOUT_MS = 1500
RESULT_TIMEOUT = RESULT_TIMEOUT_MS / 1000

BACKGROUND = ("gman_do_background", "gman_do_high_background", "gman_do_low_background")
FOREGROUND = ("gman_do", "gman_do_high", "gman_do_low")
EPOCH = "gman_do_epoch_background"
JOB_FUNCTIONS = (*BACKGROUND, EPOCH, *FOREGROUND)
SHIP = "gman_ship"
ALL_FUNCTIONS = (*JOB_FUNCTIONS, SHIP, "gman_token", "gman_ship_ledger", "gman_sum",
                 "gman_servers_set", "gman_udf_status")


# -- a worker over a raw socket ---------------------------------------------------------

CAN_DO, NO_JOB, WORK_STATUS, WORK_COMPLETE, WORK_FAIL = 1, 10, 12, 13, 14
WORK_EXCEPTION, WORK_DATA, GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ = 25, 28, 30, 31


@dataclass(frozen=True)
class Job:
    handle: bytes
    function: str
    unique: str
    workload: bytes


class RawWorker:
    """A Gearman worker for the given functions: grab a job, answer WORK_COMPLETE (or leave
    the answer to the caller)."""

    def __init__(self, port: int, *functions: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # WORK_COMPLETE then GRAB_JOB are two small writes: without this, Nagle holds the
        # second until gearmand's delayed ACK, some 40 ms a job.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for function in functions:
            self.send(CAN_DO, function.encode())

    def __enter__(self) -> RawWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, kind: int, data: bytes = b"") -> None:
        self.sock.sendall(b"\0REQ" + struct.pack(">II", kind, len(data)) + data)

    def _read(self, size: int) -> bytes:
        buf = bytearray(size)  # filled in place: appending would copy 60 MB quadratically
        view = memoryview(buf)
        got = 0
        while got < size:
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise EOFError("gearmand closed the worker connection")
            got += n
        return bytes(buf)

    def grab(self, reply: Callable[[bytes], bytes] | None = lambda _: b"") -> Job | None:
        """Take one job and complete it with reply(workload), or leave it open if reply is
        None; None if no job is waiting."""
        self.send(GRAB_JOB_UNIQ)
        header = self._read(12)
        kind, size = struct.unpack(">II", header[4:])
        data = self._read(size)
        if kind == NO_JOB:
            return None
        assert kind == JOB_ASSIGN_UNIQ, f"unexpected packet type {kind}"
        handle, function, unique, workload = data.split(b"\0", 3)
        if reply is not None:
            self.send(WORK_COMPLETE, handle + b"\0" + reply(workload))
        return Job(handle, function.decode(errors="replace"), unique.decode(), workload)

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
def working(port: int, function: str,
            answer: Callable[[RawWorker, Job, threading.Event], None]) -> Iterator[list[Job]]:
    """A worker thread that takes every job of function, and answers with answer(worker, job,
    stop), until the block ends; yields the jobs it took."""
    seen: list[Job] = []
    stop = threading.Event()
    ready = threading.Event()

    def loop() -> None:
        with RawWorker(port, function) as worker:
            ready.set()
            while not stop.is_set():
                job = worker.grab(None)
                if job is None:
                    time.sleep(0.005)
                else:
                    seen.append(job)
                    answer(worker, job, stop)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    assert ready.wait(10), "worker could not connect"
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


def serving(port: int, function: str, reply: Callable[[bytes], bytes]) -> Any:
    """A worker thread completing every job of function with reply(workload)."""
    def complete(worker: RawWorker, job: Job, stop: threading.Event) -> None:
        worker.send(WORK_COMPLETE, job.handle + b"\0" + reply(job.workload))
    return working(port, function, complete)


def failing(port: int, function: str, kind: int = WORK_FAIL) -> Any:
    """A worker thread answering every job of function with WORK_FAIL, or WORK_EXCEPTION
    (which gearmand passes on as WORK_FAIL to a client that did not ask for exceptions)."""
    def fail(worker: RawWorker, job: Job, stop: threading.Event) -> None:
        worker.send(kind, job.handle + (b"\0Traceback: boom" if kind == WORK_EXCEPTION else b""))
    return working(port, function, fail)


def stalling(port: int, function: str, kind: int | None) -> Any:
    """A worker thread that takes every job of function and never finishes it: it sends a
    packet of kind (WORK_STATUS or WORK_DATA) about it every 0.1 s, or nothing (None)."""
    body = {WORK_STATUS: b"\x001\x002", WORK_DATA: b"\0" + b"d" * 1000}
    def stall(worker: RawWorker, job: Job, stop: threading.Event) -> None:
        while kind is not None and not stop.wait(0.1):
            worker.send(kind, job.handle + body[kind])
    return working(port, function, stall)


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture
def udf_config_file(udf: Sandbox) -> Iterator[Callable[[str], None]]:
    """Write the UDF's config file as raw text; whatever is at its path afterwards (a file, a
    directory, a symlink) is replaced by the sandbox's defaults after the test."""
    path = udf.udf_config_path

    def replace(text: str) -> None:
        staging = path.with_suffix(".new")
        staging.write_text(text)
        os.replace(staging, path)

    def restore() -> None:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
        udf.write_udf_config()

    yield lambda text: change_udf_config(udf, lambda: replace(text))
    change_udf_config(udf, restore)


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


def drain_from(port: int, function: str, count: int) -> list[Job]:
    with RawWorker(port, function) as worker:
        return worker.take(count)


def drain(sandbox: Sandbox, function: str, count: int) -> list[Job]:
    return drain_from(sandbox.gearman_port, function, count)


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


def test_gman_ship_delivers_exact_bytes_and_returns_its_unique(udf: Sandbox, db: Any,
                                                               fn: str) -> None:
    payload = b"a\x00b\x00\xff{\"k\": 1}"
    sent = scalar(db, f"SELECT {SHIP}(%s, UNHEX('{payload.hex()}'), 'ship-7')", fn)
    assert sent == b"ship-7"
    (job,) = drain(udf, fn, 1)
    assert (job.workload, job.unique) == (payload, "ship-7")


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


@pytest.mark.parametrize("function, unique", [
    ("ping\t777\t0\t0\nreal", None),  # forged gearmand's admin lines
    ("two words", None),
    ("cr\r", None),
    ("f", "line\nbreak"),
    ("f", "tab\tbed"),
])
def test_names_with_whitespace_or_control_characters_are_refused(
        udf: Sandbox, db: Any, function: str, unique: str | None) -> None:
    what = "function" if unique is None else "unique"
    for udf_name in ("gman_do_background", "gman_do"):
        sql = (f"SELECT {udf_name}(%s, 'w')" if unique is None
               else f"SELECT {udf_name}(%s, 'w', %s)")
        with pytest.raises(mysql.connector.Error) as caught:
            scalar(db, sql, *([function] if unique is None else [function, unique]))
        assert f"{what} must not contain whitespace or control characters" in str(caught.value)


def test_names_from_columns_with_control_characters_give_null(udf: Sandbox, db: Any,
                                                              fn: str) -> None:
    add_trigger(db, "gman_do_background(NEW.name, 'w')")
    rows = [(1, fn), (2, f"{fn}\t777\t0\t0\nforged"), (3, f"{fn} spaced")]
    db.cursor().executemany("INSERT INTO events VALUES (%s, %s)", rows)
    cur = db.cursor()
    cur.execute("SELECT id, r IS NOT NULL FROM results ORDER BY id")
    assert cur.fetchall() == [(1, 1), (2, 0), (3, 0)]
    # A forged job would list fn twice (and so leave it out), and add "forged".
    assert queued(udf, fn) == 1
    assert "forged" not in udf.gearman_status()


def test_epoch_null_gives_null_and_absurd_times_are_refused(udf: Sandbox, db: Any,
                                                            fn: str) -> None:
    assert scalar(db, "SELECT gman_do_epoch_background(%s, 'w', NULL)", fn) is None
    for when in ("1e30", "9223372036854775807", "-1"):
        with pytest.raises(mysql.connector.Error) as caught:
            scalar(db, f"SELECT gman_do_epoch_background(%s, 'w', {when})", fn)
        assert "unix_time must be 0..4294967295: seconds, not milliseconds" in str(caught.value)
    # From a column (no constant to check in init): NULL, and nothing queued.
    cur = db.cursor()
    cur.execute("CREATE TABLE times (t BIGINT)")
    cur.execute("INSERT INTO times VALUES (NULL), (9223372036854775807), "
                "(UNIX_TIMESTAMP() * 1000)")
    cur.execute("SELECT gman_do_epoch_background(%s, 'w', t) FROM times", (fn,))
    assert cur.fetchall() == [(None,), (None,), (None,)]
    assert queued(udf, fn) == 0


def test_status_reports_config_and_counters(udf: Sandbox, db: Any) -> None:
    status = udf_status(db)
    assert status["servers"] == [udf.gearman_server]
    assert status["routes"] == {}
    assert status["timeout_ms"] == SANDBOX_UDF_TIMEOUT_MS
    assert status["result_timeout_ms"] == DEFAULT_RESULT_TIMEOUT_MS  # the sandbox sets none
    assert status["allow_servers_set"] is False
    assert status["config_error"] is None
    assert status["config"] == str(udf.udf_config_path)
    assert set(status["counters"]) == {
        "submitted", "failed", "timed_out", "resubmitted", "connections_opened", "reconnects",
        "skipped_backoff", "ship_refused", "ship_unacknowledged", "ship_sends",
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
def test_gman_ship_sends_every_row_without_waiting_and_other_calls_stay_in_step(
        udf: Sandbox, db: Any, fn: str, udf_config: Callable[..., None],
        memory_gearmand: int) -> None:
    udf_config(servers=f"127.0.0.1:{memory_gearmand}")
    add_trigger(db, f"gman_ship('{fn}', '', CONCAT('row-', NEW.id))")
    before = counters(db)
    db.cursor().execute(f"INSERT INTO events SELECT seq, NULL FROM {sequence(1, 5000)}")
    # Each row's job went out without waiting for its acknowledgement; what the trigger's
    # UDF returned for each row (the unique) says it was sent.
    assert scalar(db, "SELECT COUNT(*) FROM results WHERE r LIKE 'row-%'") == 5000
    # On the same session, a call that waits for its answer is not thrown by the
    # acknowledgements still owed for the ships.
    handle = scalar(db, "SELECT gman_do_background(%s, 'after', 'after-ships')", fn)
    assert handle, "the waiting call was answered"
    assert (handle.decode() if isinstance(handle, (bytes, bytearray)) else handle).startswith("H:")
    after = counters(db)
    assert after["submitted"] - before["submitted"] == 5001
    assert after["failed"] == before["failed"] and after["ship_refused"] == 0
    wait_until(lambda: gearadmin.status("127.0.0.1", memory_gearmand)[fn].queued == 5001,
               what="every shipped job queued in gearmand")
    # The ships were gathered and sent a buffer at a time by the flusher, not one send() a
    # row: a statement's rows come out in far fewer system calls than rows.
    sends = counters(db)["ship_sends"] - before["ship_sends"]
    assert 0 < sends <= 5000 // 10, f"{sends} send() calls for 5,000 ships"


@pytest.mark.slow
def test_a_lone_ship_goes_out_within_milliseconds_without_another_call(
        udf: Sandbox, db: Any, fn: str, udf_config: Callable[..., None],
        memory_gearmand: int) -> None:
    # The flusher sends what a session gathered even when that session calls nothing more.
    udf_config(servers=f"127.0.0.1:{memory_gearmand}")
    assert scalar(db, "SELECT gman_ship(%s, 'w', 'lone-ship')", fn)
    wait_until(lambda: fn in gearadmin.status("127.0.0.1", memory_gearmand)
               and gearadmin.status("127.0.0.1", memory_gearmand)[fn].queued == 1,
               what="the lone ship queued in gearmand")


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
    """A server that takes the connection and never answers: NULL at timeout_ms, for a
    foreground call too, however long result_timeout_ms is."""
    with silent_server() as port:
        udf_config(servers=f"127.0.0.1:{port}", timeout_ms=500, result_timeout_ms=20_000,
                   backoff_ms=100)
        for udf_name in ("gman_do_background", "gman_do"):
            started = time.monotonic()
            assert scalar(db, f"SELECT {udf_name}('stalled', 'w')") is None
            took = time.monotonic() - started
            assert 0.45 <= took < 0.5 + MARGIN, f"{udf_name} took {took:.2f}s"
            time.sleep(0.2)  # past backoff_ms, so the next call waits on the server again


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


def servers_set_refusal(db: Any) -> str:
    with pytest.raises(mysql.connector.Error) as caught:
        scalar(db, "SELECT gman_servers_set('127.0.0.1:1')")
    return str(caught.value)


def test_servers_set_refused_unless_the_config_allows_it(udf: Sandbox, db: Any,
                                                         udf_config_file: Callable[[str], None]
                                                         ) -> None:
    # The key, and the file (its end, if the whole path does not fit mysqld's 80 bytes).
    expected = "refused unless allow_servers_set=1 in "
    assert expected in servers_set_refusal(db)
    assert udf.udf_config_path.name in servers_set_refusal(db)
    udf_config_file("timeout_ms=1000\n")  # names no servers
    assert expected in servers_set_refusal(db)
    change_udf_config(udf, udf.udf_config_path.unlink)
    assert expected in servers_set_refusal(db)
    assert udf_status(db)["servers"] == ["127.0.0.1:4730"]


def test_servers_set_allowed_by_config(udf: Sandbox, db: Any, fn: str,
                                       udf_config: Callable[..., None]) -> None:
    udf_config(servers="127.0.0.1:1", allow_servers_set=1)
    with pytest.raises(mysql.connector.Error) as caught:
        scalar(db, "SELECT gman_servers_set(%s)", f"127.0.0.1:1,\t{udf.gearman_server}")
    assert "whitespace or a control character" in str(caught.value)
    assert scalar(db, "SELECT gman_servers_set(%s)", udf.gearman_server) is not None
    assert udf_status(db)["servers"] == [udf.gearman_server]
    assert scalar(db, "SELECT gman_do_background(%s, 'set')", fn) is not None
    assert [job.workload for job in drain(udf, fn, 1)] == [b"set"]


# -- functions with servers of their own ----------------------------------------------------

def test_a_function_with_servers_of_its_own(udf: Sandbox, db: Any, fn: str,
                                            udf_config: Callable[..., None],
                                            memory_gearmand: int) -> None:
    """servers.FUNCTION= sends that function's jobs to its own servers; every other function
    keeps the default list."""
    own = f"{fn}_own"
    udf_config(**{f"servers.{own}": f"127.0.0.1:{memory_gearmand}"})
    status = udf_status(db)
    assert status["servers"] == [udf.gearman_server]
    assert status["routes"] == {own: [f"127.0.0.1:{memory_gearmand}"]}
    assert scalar(db, "SELECT gman_do_background(%s, 'routed')", own) is not None
    assert scalar(db, "SELECT gman_do_background(%s, 'default')", fn) is not None
    assert [job.workload for job in drain_from(memory_gearmand, own, 1)] == [b"routed"]
    assert [job.workload for job in drain(udf, fn, 1)] == [b"default"]
    assert queued(udf, own) == 0
    with serving(memory_gearmand, own, lambda w: b"from own:" + w):
        assert scalar(db, "SELECT gman_do(%s, 'x')", own) == b"from own:x"


def test_servers_set_for_one_function(udf: Sandbox, db: Any, fn: str,
                                      udf_config: Callable[..., None],
                                      memory_gearmand: int) -> None:
    """gman_servers_set(servers, function) does at run time what servers.FUNCTION= does; the
    one-argument form still sets the default list."""
    own = f"{fn}_own"
    udf_config(allow_servers_set=1)
    with pytest.raises(mysql.connector.Error) as caught:
        scalar(db, "SELECT gman_servers_set('127.0.0.1:1', 'two words')")
    assert "function must not contain whitespace or control characters" in str(caught.value)
    server = f"127.0.0.1:{memory_gearmand}"
    assert scalar(db, "SELECT gman_servers_set(%s, %s)", server, own) == server.encode()
    status = udf_status(db)
    assert status["routes"] == {own: [server]} and status["servers"] == [udf.gearman_server]
    assert scalar(db, "SELECT gman_do_background(%s, 'routed')", own) is not None
    assert [job.workload for job in drain_from(memory_gearmand, own, 1)] == [b"routed"]
    # The default list changes; the route stays.
    with socket.create_server(("127.0.0.1", 0)) as closed:
        refused = closed.getsockname()[1]
    assert scalar(db, "SELECT gman_servers_set(%s)", f"127.0.0.1:{refused}") is not None
    assert scalar(db, "SELECT gman_do_background(%s, 'nowhere')", fn) is None
    assert scalar(db, "SELECT gman_do_background(%s, 'still')", own) is not None
    assert [job.workload for job in drain_from(memory_gearmand, own, 1)] == [b"still"]
    assert udf_status(db)["routes"] == {own: [server]}


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


# -- a deadline for each call, one submission per call (issues #20, #30) ---------------------

@pytest.mark.parametrize("kind", [WORK_STATUS, WORK_DATA, None], ids=["status", "data", "silent"])
def test_one_deadline_bounds_the_whole_call(udf: Sandbox, db: Any, fn: str,
                                            udf_config: Callable[..., None],
                                            kind: int | None) -> None:
    """A worker that keeps the job alive without finishing it, or never answers at all: NULL
    once result_timeout_ms has passed since the call began, not for each packet and not at
    timeout_ms (which ends only the submit); no KILL needed."""
    udf_config(result_timeout_ms=RESULT_TIMEOUT_MS)
    before = counters(db)
    with stalling(udf.gearman_port, fn, kind) as seen:
        started = time.monotonic()
        assert scalar(db, "SELECT gman_do(%s, 'x')", fn) is None
        took = time.monotonic() - started
    # Twice: submitted again.
    assert RESULT_TIMEOUT * 0.9 <= took < 2 * RESULT_TIMEOUT, f"took {took:.2f}s"
    assert len(seen) == 1
    after = counters(db)
    assert after["timed_out"] - before["timed_out"] == 1
    assert after["resubmitted"] == before["resubmitted"]


def test_kill_query_is_not_needed_to_end_a_waiting_call(udf: Sandbox, db: Any, fn: str,
                                                       udf_config: Callable[..., None]) -> None:
    """KILL QUERY only marked a call Killed while a worker kept sending WORK_STATUS; the
    deadline (result_timeout_ms) now ends the call, and the statement then ends as killed."""
    udf_config(result_timeout_ms=RESULT_TIMEOUT_MS)
    database = db.database
    session: list[int] = []
    outcome: list[object] = []

    def wait() -> None:
        conn = udf.connect(database=database)
        session.append(int(conn.connection_id))
        try:
            outcome.append(scalar(conn, "SELECT gman_do(%s, 'x')", fn))
        except mysql.connector.Error as exc:
            outcome.append(exc)
        conn.close()

    with stalling(udf.gearman_port, fn, WORK_STATUS):
        waiting = threading.Thread(target=wait)
        started = time.monotonic()
        waiting.start()
        wait_until(lambda: session, what="the waiting session's id")
        time.sleep(0.2)
        db.cursor().execute(f"KILL QUERY {session[0]}")
        waiting.join(10 * RESULT_TIMEOUT)
        took = time.monotonic() - started
    assert not waiting.is_alive() and took < 3 * RESULT_TIMEOUT, f"took {took:.2f}s"
    assert len(outcome) == 1 and (outcome[0] is None or "interrupted" in str(outcome[0]))


@pytest.mark.parametrize("kind", [WORK_FAIL, WORK_EXCEPTION], ids=["fail", "exception"])
def test_a_failed_job_is_not_submitted_again(udf: Sandbox, db: Any, fn: str, kind: int) -> None:
    # 'warm' makes the connection a reused one: the failure used to be retried on a new one.
    with serving(udf.gearman_port, f"{fn}_echo", lambda w: w), \
            failing(udf.gearman_port, fn, kind) as failed:
        cur = db.cursor()
        cur.execute("SELECT gman_do(%s, 'warm'), gman_do(%s, 'x')", (f"{fn}_echo", fn))
        assert cur.fetchone() == (b"warm", None)
        time.sleep(0.2)  # a second submission would reach the worker by now
    assert [job.workload for job in failed] == [b"x"]


@pytest.mark.slow
def test_a_stopped_gearmand_costs_one_timeout(udf: Sandbox, db: Any, fn: str,
                                              udf_config: Callable[..., None],
                                              gearmand_factory: Callable[..., Any]) -> None:
    """gearmand SIGSTOPped under a reused connection: NULL after timeout_ms, not twice that."""
    server = gearmand_factory(MEMORY_QUEUE)
    udf_config(servers=server.server)
    assert scalar(db, "SELECT gman_do_background(%s, 'warm')", fn) is not None
    pid = server.box.info.pids["gearmand"]
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert scalar(db, "SELECT gman_do_background(%s, 'stopped')", fn) is None
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert TIMEOUT * 0.9 <= took < 2 * TIMEOUT, f"took {took:.2f}s"


@pytest.mark.slow
def test_a_job_no_worker_answers_does_not_back_the_server_off(
        udf: Sandbox, db: Any, fn: str, udf_config: Callable[..., None]) -> None:
    """One session waits for a worker that never comes; the others keep submitting."""
    udf_config(result_timeout_ms=RESULT_TIMEOUT_MS)
    database = db.database
    waited: list[Any] = []

    def wait_for_nobody() -> None:
        conn = udf.connect(database=database)
        waited.append(scalar(conn, "SELECT gman_do(%s, 'nobody')", f"{fn}_nobody"))
        conn.close()

    before = counters(db)
    waiting = threading.Thread(target=wait_for_nobody)
    waiting.start()
    handles = []
    while waiting.is_alive():
        handles.append(scalar(db, "SELECT gman_do_background(%s, 'meanwhile')", fn))
        time.sleep(0.05)
    waiting.join()
    handles.append(scalar(db, "SELECT gman_do_background(%s, 'after')", fn))
    assert waited == [None]
    assert len(handles) >= 3 and None not in handles
    assert counters(db)["skipped_backoff"] == before["skipped_backoff"]
    assert len(drain(udf, fn, len(handles))) == len(handles)


# -- fail-over ---------------------------------------------------------------------------------

def test_failover_past_unresolvable_and_refused_servers(udf: Sandbox, db: Any, fn: str,
                                                        udf_config: Callable[..., None]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        refused = closed.getsockname()[1]
    udf_config(servers=f"no-such-host.invalid:4730,127.0.0.1:{refused},{udf.gearman_server}")
    assert scalar(db, "SELECT gman_do_background(%s, 'past')", fn) is not None
    assert [job.workload for job in drain(udf, fn, 1)] == [b"past"]


# -- the config fails closed -------------------------------------------------------------------

BAD_CONFIGS = {
    "semicolons": "servers=a:1;b:2\n",
    "17 servers": "servers=" + ",".join(f"127.0.0.{i}:4730" for i in range(1, 18)) + "\n",
    "bad value": "servers={server}\nallow_servers_set=1\ntimeout_ms=abc\n",
    "unknown key": "allow_servers_set=1\nservers={server}\nbogus=1\n",
    "control character": "servers={server}\x0b\nallow_servers_set=1\n",
    "key twice": "servers={server}\nservers=127.0.0.1:1\n",
    "bad route": "servers={server}\nservers.resize=127.0.0.1:99999\nallow_servers_set=1\n",
    "route twice": "servers={server}\nservers.resize={server}\nservers.resize={server}\n",
    "route without a name": "servers={server}\nservers.={server}\n",
}


@pytest.mark.parametrize("text", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_a_config_that_does_not_parse_means_no_servers(udf: Sandbox, db: Any, fn: str, text: str,
                                                       udf_config_file: Callable[[str], None]
                                                       ) -> None:
    udf_config_file(text.format(server=udf.gearman_server))
    status = udf_status(db)
    assert status["servers"] == [] and status["allow_servers_set"] is False
    assert status["routes"] == {}
    assert status["config_error"].startswith(f"{udf.udf_config_path}:")
    for _ in range(3):
        assert scalar(db, "SELECT gman_do_background(%s, 'closed')", fn) is None
    assert "refused unless allow_servers_set=1" in servers_set_refusal(db)
    assert queued(udf, fn) == 0
    logged = udf.mysql_log.read_text(errors="replace")
    assert logged.count(f"{status['config_error']}; no servers until the file is fixed") == 1


def test_a_config_that_cannot_be_read_means_no_servers(udf: Sandbox, db: Any, fn: str,
                                                       udf_config_file: Callable[[str], None]
                                                       ) -> None:
    path = udf.udf_config_path

    def directory() -> None:
        path.unlink()
        path.mkdir()

    def loop() -> None:  # a symbolic link to itself: unreadable even by root (ELOOP)
        path.rmdir()
        path.symlink_to(path.name)

    change_udf_config(udf, directory)
    status = udf_status(db)
    assert status["servers"] == [] and "not a regular file" in status["config_error"]
    assert scalar(db, "SELECT gman_do_background(%s, 'closed')", fn) is None
    change_udf_config(udf, loop)
    status = udf_status(db)
    assert status["servers"] == [] and "symbolic links" in status["config_error"]
    assert scalar(db, "SELECT gman_do_background(%s, 'closed')", fn) is None
    assert queued(udf, fn) == 0


def test_a_comment_of_any_length_stays_a_comment(udf: Sandbox, db: Any,
                                                 udf_config_file: Callable[[str], None]) -> None:
    # 4094 x's after '#' used to fill a 4 KB line buffer, so the rest became a line of its own.
    udf_config_file(f"servers={udf.gearman_server}  # ours\n"
                    + "#" + "x" * 4094 + "servers=127.0.0.1:1\n")
    status = udf_status(db)
    assert status["servers"] == [udf.gearman_server] and status["config_error"] is None


# -- large workloads ---------------------------------------------------------------------------

@pytest.mark.slow
def test_large_workloads_go_at_socket_speed(udf: Sandbox, db: Any, fn: str,
                                            udf_config: Callable[..., None],
                                            memory_gearmand: int) -> None:
    """16 MB took 9.6 s through libgearman's 32 KB socket buffers, 60 MB 35 s. The bound is
    generous: at socket speed either is well under a second."""
    udf_config(servers=f"127.0.0.1:{memory_gearmand}", timeout_ms=10000)
    for size in (16 << 20, 60 << 20):
        started = time.monotonic()
        assert scalar(db, "SELECT gman_do_background(%s, REPEAT('a', %s))", fn, size)
        took = time.monotonic() - started
        assert took < 5, f"{size >> 20} MB took {took:.1f}s"
        (job,) = drain_from(memory_gearmand, fn, 1)
        assert len(job.workload) == size and job.workload.count(b"a") == size
    with serving(memory_gearmand, f"{fn}_echo", lambda w: w):
        for size in (16 << 20, 60 << 20):
            started = time.monotonic()
            same = scalar(db, "SELECT gman_do(%s, REPEAT('e', %s)) = REPEAT('e', %s)",
                          f"{fn}_echo", size, size)
            took = time.monotonic() - started
            assert same == 1, f"{size >> 20} MB did not come back whole"
            assert took < 5, f"{size >> 20} MB there and back took {took:.1f}s"

