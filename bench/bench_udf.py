"""What a gman_do_background() trigger costs an INSERT, in microseconds per row.

Measured in one run on the sandbox's mariadbd:
  - one 20,000-row INSERT ... SELECT, into a table without and with the trigger;
  - 5,000 single-row autocommit INSERTs, without and with the trigger.
The overhead is (with - without) / rows; the target is at most TARGET_US per row.

It also submits large workloads (16 MB and 60 MB, held in a user variable inside the server)
with gman_do_background, beside the same submission over a raw socket to the same gearmand in
the same run, and LENGTH() of the variable, the floor of the SQL side.

And it sums SUM_ROWS jobs of SUM_JOB_S each on SUM_WORKERS workers (threads here, each a plain
Gearman worker that sleeps, then answers twice its input) with gman_sum, whose jobs run side
by side, beside SUM(gman_do()), which runs them one after another.

The jobs go to a gearmand the benchmark starts for itself without a persistent queue and
with the sandbox's I/O threads (0 by default: I/O in its main thread), so the figure is the
UDF's own cost and the queue disappears afterwards. The full run also repeats the bulk case
against a gearmand with the sandbox's libsqlite3 queue, whose per-job commit is gearmand's
cost, not the UDF's, and the single-row case against a gearmand with its default 4 I/O
threads, whose hand-offs between threads lengthen every round trip. InnoDB's flush per commit
is relaxed for the run (and restored) so that single-row figures compare CPU, not disk luck.

    python bench/bench_udf.py [--quick] [--dir DIR]
or from code: run(sandbox, quick) -> dict.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workerhost.gearman import admin as gearadmin  # noqa: E402
from workerhost.sandbox.options import GEARMAN_THREADS, MEMORY_QUEUE, PERSISTENT_QUEUE  # noqa: E402
from workerhost.sandbox.stack import Sandbox  # noqa: E402

UDF_SO = ROOT / "udf" / "build" / "gearman_udf.so"
TARGET_US = 130.0
BULK_ROWS, SINGLE_ROWS = 20_000, 5_000
QUICK_BULK_ROWS, QUICK_SINGLE_ROWS = 2_000, 500
PERSISTENT_BULK_ROWS = 5_000
# The library re-reads its config file at most once a second.
CONFIG_SETTLE = 1.2
FUNCTION = "bench_udf"
TABLES = ("plain", "triggered", "floor")  # no trigger; the UDF's; a trigger without the UDF
SINGLE_BLOCK = 100  # single-row INSERTs per table before the next table takes its turn
LARGE_SIZES = (16 << 20, 60 << 20)  # bytes; the sandbox's max_allowed_packet is 64 MB
LARGE_FUNCTION = "bench_udf_large"
# A generous deadline for the large submissions, so that a slow build is measured, not cut.
LARGE_TIMEOUT_MS = 60_000
GEARMAND_DEFAULT_THREADS = 4  # what gearmand runs with when not told otherwise
SUM_FUNCTION = "bench_udf_sum"
SUM_ROWS = 100
SUM_WORKERS = 8
SUM_JOB_S = 0.05  # each job's sleep: one after another, SUM_ROWS of them take 5 s at least
SUM_TIMEOUT_MS = 60_000  # a group's deadline, far beyond either way of running them
GRAB_JOB, NO_JOB, JOB_ASSIGN, WORK_COMPLETE, CAN_DO = 9, 10, 11, 13, 1


@contextmanager
def own_gearmand(directory: Path, persistent: bool,
                 threads: int = GEARMAN_THREADS) -> Iterator[int]:
    """A gearmand-only sandbox on a free port (libsqlite3 queue if persistent); its port."""
    queue = PERSISTENT_QUEUE if persistent else MEMORY_QUEUE
    box = Sandbox(directory / f"gearmand-{queue}-{threads}-threads")
    try:
        box.up(servers=("gearmand",), gearman_queue=queue, gearman_threads=threads)
        yield box.gearman_port
    finally:
        box.down()


def _round_trip_us(port: int, count: int) -> float:
    """The floor of a single-row submit: one SUBMIT_JOB_BG and its JOB_CREATED, one at a time,
    over one kept-open socket (what the UDF does per row), in microseconds."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        started = time.perf_counter()
        for i in range(count):
            body = b"bench_rtt\0rtt-%d-%d\0{}" % (port, i)
            sock.sendall(b"\0REQ" + (18).to_bytes(4, "big") + len(body).to_bytes(4, "big")
                         + body)
            header = sock.recv(12, socket.MSG_WAITALL)
            sock.recv(int.from_bytes(header[8:12], "big"), socket.MSG_WAITALL)
        return round((time.perf_counter() - started) / count * 1e6, 1)
    finally:
        sock.close()


def _sleeping_worker(port: int, stop: threading.Event) -> None:
    """A Gearman worker for SUM_FUNCTION: sleeps SUM_JOB_S per job, answers twice its input."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(kind: int, data: bytes) -> None:
        sock.sendall(b"\0REQ" + kind.to_bytes(4, "big") + len(data).to_bytes(4, "big") + data)

    try:
        send(CAN_DO, SUM_FUNCTION.encode())
        while not stop.is_set():
            send(GRAB_JOB, b"")
            header = sock.recv(12, socket.MSG_WAITALL)
            size = int.from_bytes(header[8:12], "big")
            data = sock.recv(size, socket.MSG_WAITALL) if size else b""
            if int.from_bytes(header[4:8], "big") != JOB_ASSIGN:
                time.sleep(0.005)  # NO_JOB: ask again soon
                continue
            handle, _function, workload = data.split(b"\0", 2)
            time.sleep(SUM_JOB_S)
            send(WORK_COMPLETE, handle + b"\0%d" % (2 * int(workload)))
    finally:
        sock.close()


def _sum(cur: Any, port: int, repeats: int) -> dict[str, Any]:
    """Seconds for gman_sum over SUM_ROWS rows, and for SUM(gman_do()) over the same rows."""
    stop = threading.Event()
    workers = [threading.Thread(target=_sleeping_worker, args=(port, stop), daemon=True)
               for _ in range(SUM_WORKERS)]
    for worker in workers:
        worker.start()
    expected = SUM_ROWS * (SUM_ROWS + 1)
    rows = f"FROM seq_1_to_{SUM_ROWS}"
    try:
        side_by_side, one_by_one = [], []
        for _ in range(repeats):
            side_by_side.append(_timed_fetch(cur, f"SELECT gman_sum(%s, seq) {rows}",
                                             (SUM_FUNCTION,)))
        cur.execute(f"SELECT gman_sum(%s, seq) {rows}", (SUM_FUNCTION,))
        if cur.fetchone()[0] != expected:
            raise RuntimeError(f"gman_sum over 1..{SUM_ROWS} is not {expected}")
        one_by_one.append(_timed_fetch(cur, f"SELECT SUM(gman_do(%s, seq)) {rows}",
                                       (SUM_FUNCTION,)))
    finally:
        stop.set()
        for worker in workers:
            worker.join(5)
    return dict(sum_rows=SUM_ROWS, sum_workers=SUM_WORKERS, sum_job_s=SUM_JOB_S,
                sum_gman_sum_runs_s=[round(t, 3) for t in side_by_side],
                sum_one_by_one_s=[round(t, 3) for t in one_by_one])


def _point_udf_at(sandbox: Sandbox, port: int, **settings: object) -> None:
    sandbox.write_udf_config(servers=f"127.0.0.1:{port}", **settings)
    time.sleep(CONFIG_SETTLE)


def _raw_submit_s(port: int, payload: bytes, unique: bytes) -> float:
    """Seconds for one SUBMIT_JOB_BG of payload and its JOB_CREATED over a new raw socket,
    what the UDF does for a large workload (its connection is open already, so is this one)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        head = LARGE_FUNCTION.encode() + b"\0" + unique + b"\0"
        started = time.perf_counter()
        sock.sendall(b"\0REQ" + (18).to_bytes(4, "big")
                     + (len(head) + len(payload)).to_bytes(4, "big") + head)
        sock.sendall(payload)
        header = sock.recv(12, socket.MSG_WAITALL)
        sock.recv(int.from_bytes(header[8:12], "big"), socket.MSG_WAITALL)
        return time.perf_counter() - started
    finally:
        sock.close()


def _large(cur: Any, port: int, repeats: int) -> dict[str, Any]:
    """Large workloads: the UDF, the variable's LENGTH() and a raw socket, medians of repeats.

    The workload sits in @workload: REPEAT() as the argument would be evaluated twice (a
    constant argument is computed for xxx_init and again for the row) and dwarf the rest.
    Each size has one unique, so gearmand keeps one copy however often it is submitted; the
    first submission of each (not timed) creates it.
    """
    udf_s: list[float] = []
    floor_s: list[float] = []
    raw_s: list[float] = []
    for size in LARGE_SIZES:
        unique = f"bench-large-{size}"
        cur.execute("SET @workload = REPEAT('x', %s)", (size,))
        submit = "SELECT gman_do_background(%s, @workload, %s)"
        cur.execute(submit, (LARGE_FUNCTION, unique))
        if cur.fetchone()[0] is None:
            raise RuntimeError(f"gman_do_background of {size} bytes gave NULL")
        runs: dict[str, list[float]] = {"udf": [], "floor": [], "raw": []}
        payload = b"x" * size
        for _ in range(repeats):
            runs["udf"].append(_timed_fetch(cur, submit, (LARGE_FUNCTION, unique)))
            runs["floor"].append(_timed_fetch(cur, "SELECT LENGTH(@workload)", ()))
            runs["raw"].append(_raw_submit_s(port, payload, unique.encode()))
        cur.execute("SET @workload = NULL")
        for figures, key in ((udf_s, "udf"), (floor_s, "floor"), (raw_s, "raw")):
            figures.append(round(sorted(runs[key])[repeats // 2], 3))
    return dict(large_sizes_mb=[size >> 20 for size in LARGE_SIZES], large_udf_s=udf_s,
                large_repeat_floor_s=floor_s, large_raw_socket_s=raw_s)


def _timed_fetch(cur: Any, sql: str, params: tuple[Any, ...]) -> float:
    started = time.perf_counter()
    cur.execute(sql, params)
    cur.fetchall()
    return time.perf_counter() - started


def _timed(cur: Any, sql: str, params: tuple[Any, ...] = ()) -> float:
    started = time.perf_counter()
    cur.execute(sql, params)
    return time.perf_counter() - started


def _reset(cur: Any) -> None:
    for table in TABLES:
        cur.execute(f"TRUNCATE {table}")


def _bulk(cur: Any, rows: int) -> tuple[float, float]:
    select = f"SELECT seq, CONCAT('name-', seq) FROM seq_1_to_{rows}"
    _reset(cur)
    plain = _timed(cur, f"INSERT INTO plain {select}")
    triggered = _timed(cur, f"INSERT INTO triggered {select}")
    return plain, triggered


def _single(cur: Any, rows: int) -> tuple[float, ...]:
    """Seconds for `rows` autocommit INSERTs into each of TABLES.

    The tables take turns in blocks of SINGLE_BLOCK rows, so that a slow moment of this noisy
    machine falls on all of them alike instead of on whichever table ran then.
    """
    _reset(cur)
    timings = [0.0] * len(TABLES)
    for first in range(0, rows, SINGLE_BLOCK):
        ids = range(first, min(first + SINGLE_BLOCK, rows))
        for index, table in enumerate(TABLES):
            started = time.perf_counter()
            for i in ids:
                cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, f"name-{i}"))
            timings[index] += time.perf_counter() - started
    return tuple(timings)


def _overhead_us(plain: float, triggered: float, rows: int) -> float:
    return round((triggered - plain) / rows * 1e6, 1)


def _counters(cur: Any) -> dict[str, int]:
    cur.execute("SELECT gman_udf_status()")
    (raw,) = cur.fetchone()
    return dict(json.loads(raw)["counters"])


def run(sandbox: Sandbox, quick: bool) -> dict[str, Any]:
    """Measure the trigger's overhead on sandbox (UDF installed here if needed)."""
    if not UDF_SO.is_file():
        raise FileNotFoundError(f"{UDF_SO} is missing: build it with `make udf`")
    sandbox.install_udf(UDF_SO)
    bulk_rows = QUICK_BULK_ROWS if quick else BULK_ROWS
    single_rows = QUICK_SINGLE_ROWS if quick else SINGLE_ROWS
    repeats = 3
    database = "bench_udf_" + uuid.uuid4().hex[:8]
    conn = sandbox.connect()
    cur = conn.cursor()
    cur.execute("SELECT @@GLOBAL.innodb_flush_log_at_trx_commit")
    (flush,) = cur.fetchone()
    result: dict[str, Any] = {"quick": quick, "target_us_per_row": TARGET_US}
    try:
        cur.execute("SET GLOBAL innodb_flush_log_at_trx_commit = 2")
        cur.execute(f"CREATE DATABASE {database}")
        cur.execute(f"USE {database}")
        for table in TABLES:
            cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(64))")
        # The floor of any trigger: the same payload built, no UDF called.
        cur.execute("CREATE TRIGGER floor_ai AFTER INSERT ON floor FOR EACH ROW SET @h = "
                    "JSON_OBJECT('id', NEW.id, 'name', NEW.name)")
        cur.execute(
            "CREATE TRIGGER triggered_ai AFTER INSERT ON triggered FOR EACH ROW SET @h = "
            f"gman_do_background('{FUNCTION}', JSON_OBJECT('id', NEW.id, 'name', NEW.name))"
        )
        with tempfile.TemporaryDirectory(prefix="bench_udf_") as scratch:
            threads = int(sandbox.info.gearman.get("threads", GEARMAN_THREADS)
                          if sandbox.info else GEARMAN_THREADS)
            with own_gearmand(Path(scratch), persistent=False, threads=threads) as port:
                _point_udf_at(sandbox, port)
                before = _counters(cur)
                bulk_runs = [_bulk(cur, bulk_rows) for _ in range(repeats)]
                single_runs = [_single(cur, single_rows) for _ in range(repeats)]
                # The median run (by overhead) stands for the figure; all runs are kept.
                bulk = sorted(bulk_runs, key=lambda t: t[1] - t[0])[repeats // 2]
                single = sorted(single_runs, key=lambda t: t[1] - t[0])[repeats // 2]
                after = _counters(cur)
                round_trips = [_round_trip_us(port, single_rows) for _ in range(repeats)]
                queued = gearadmin.status("127.0.0.1", port)[FUNCTION].queued
                _point_udf_at(sandbox, port, timeout_ms=LARGE_TIMEOUT_MS)
                result.update(_large(cur, port, repeats))
                _point_udf_at(sandbox, port, timeout_ms=SUM_TIMEOUT_MS)
                result.update(_sum(cur, port, repeats))
            result.update(
                gearman_threads=threads,
                bulk_rows=bulk_rows,
                bulk_plain_s=round(bulk[0], 3),
                bulk_trigger_s=round(bulk[1], 3),
                bulk_overhead_us_per_row=_overhead_us(*bulk, bulk_rows),
                bulk_runs_us_per_row=[_overhead_us(*t, bulk_rows) for t in bulk_runs],
                bulk_plain_runs_us_per_row=[round(t[0] / bulk_rows * 1e6, 2) for t in bulk_runs],
                single_rows=single_rows,
                single_plain_s=round(single[0], 3),
                single_trigger_s=round(single[1], 3),
                single_overhead_us_per_row=_overhead_us(single[0], single[1], single_rows),
                single_runs_us_per_row=[_overhead_us(t[0], t[1], single_rows)
                                        for t in single_runs],
                single_floor_runs_us_per_row=[_overhead_us(t[0], t[2], single_rows)
                                              for t in single_runs],
                single_plain_runs_us_per_row=[
                    round(t[0] / single_rows * 1e6, 2) for t in single_runs],
                jobs_queued=queued,
                round_trip_runs_us=round_trips,
                failed=after["failed"] - before["failed"],
                connections_opened=after["connections_opened"] - before["connections_opened"],
            )
            if not quick:
                with own_gearmand(Path(scratch), persistent=True, threads=threads) as port:
                    _point_udf_at(sandbox, port)
                    rows = PERSISTENT_BULK_ROWS
                    persistent = _bulk(cur, rows)
                result["persistent_queue_bulk_overhead_us_per_row"] = _overhead_us(
                    *persistent, rows)
                with own_gearmand(Path(scratch), persistent=False,
                                  threads=GEARMAND_DEFAULT_THREADS) as port:
                    _point_udf_at(sandbox, port)
                    runs = [_single(cur, single_rows) for _ in range(repeats)]
                    trips = [_round_trip_us(port, single_rows) for _ in range(repeats)]
                result.update(
                    default_threads=GEARMAND_DEFAULT_THREADS,
                    default_threads_single_runs_us_per_row=[
                        _overhead_us(t[0], t[1], single_rows) for t in runs],
                    default_threads_round_trip_runs_us=trips,
                )
        worst = max(result["bulk_overhead_us_per_row"], result["single_overhead_us_per_row"])
        result["meets_target"] = worst <= TARGET_US and result["failed"] == 0
    finally:
        cur.execute(f"DROP DATABASE IF EXISTS {database}")
        cur.execute(f"SET GLOBAL innodb_flush_log_at_trx_commit = {int(flush)}")
        conn.close()
        sandbox.write_udf_config()
        time.sleep(CONFIG_SETTLE)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"bulk INSERT of {result['bulk_rows']} rows: {result['bulk_plain_s']}s plain, "
        f"{result['bulk_trigger_s']}s with trigger -> "
        f"{result['bulk_overhead_us_per_row']} us/row overhead",
        f"{result['single_rows']} single-row INSERTs: {result['single_plain_s']}s plain, "
        f"{result['single_trigger_s']}s with trigger -> "
        f"{result['single_overhead_us_per_row']} us/row overhead",
        f"jobs queued {result['jobs_queued']}, failed {result['failed']}, "
        f"connections opened {result['connections_opened']}",
    ]
    for size, udf_s, floor_s, raw_s in zip(result["large_sizes_mb"], result["large_udf_s"],
                                           result["large_repeat_floor_s"],
                                           result["large_raw_socket_s"], strict=True):
        lines.append(f"{size} MB workload: gman_do_background {udf_s}s (LENGTH() of it "
                     f"{floor_s}s), raw socket {raw_s}s")
    lines.append(
        f"gman_sum over {result['sum_rows']} jobs of {result['sum_job_s'] * 1000:.0f} ms on "
        f"{result['sum_workers']} workers: {result['sum_gman_sum_runs_s']}s; one after another "
        f"with SUM(gman_do()): {result['sum_one_by_one_s']}s")
    if "persistent_queue_bulk_overhead_us_per_row" in result:
        lines.append(
            "bulk against a gearmand with a libsqlite3 queue: "
            f"{result['persistent_queue_bulk_overhead_us_per_row']} us/row (gearmand's commit)"
        )
    verdict = "meets" if result["meets_target"] else "MISSES"
    lines.append(f"{verdict} the target of {result['target_us_per_row']:.0f} us/row")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows, one repetition")
    parser.add_argument("--dir", type=Path, help="sandbox directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_udf_sandbox_") as scratch:
        box = Sandbox(args.dir or Path(scratch))
        started = box.up()
        try:
            result = run(box, args.quick)
        finally:
            if started:
                box.down()
    print(report(result))
    print(json.dumps(result))
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
