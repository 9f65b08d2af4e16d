"""`make demo`: the whole path, from an INSERT to its result written back, in a local sandbox.

Steps, each printed as it happens:
  1. start a throwaway gearmand + mariadbd (the sandbox) in a temporary directory; with
     --server mysql, mysqld in a container instead (`make demo SERVER=mysql`);
  2. install the UDF (udf/build/gearman_udf.so; for MySQL built against its own headers);
  3. create the example shop's tables (examples/shop_schema.sql);
  4. create the triggers of examples/shop.yaml (`workerhost triggers --apply`);
  5. start `workerhost run -c examples/shop.yaml` and wait until its workers are registered;
  6. insert sample orders, one transaction each;
  7. print every order as its results come back, with the time from INSERT to write-back.
Everything started here is stopped at the end, also after a failure or Ctrl-C. The exit status
is 0 only when every order came back.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workerhost.config.load import load_config  # noqa: E402
from workerhost.errors import WorkerHostError  # noqa: E402
from workerhost.exitcodes import RET_ERROR, RET_INTERRUPTED, RET_OK  # noqa: E402
from workerhost.sandbox.options import DATABASE_SERVERS, SERVER_CHOICES  # noqa: E402
from workerhost.sandbox.processes import tail  # noqa: E402
from workerhost.sandbox.stack import Sandbox  # noqa: E402
from workerhost.store import triggers  # noqa: E402
from workerhost.store.db import Database  # noqa: E402

EXAMPLES = ROOT / "examples"
CONFIG = EXAMPLES / "shop.yaml"
SCHEMA = EXAMPLES / "shop_schema.sql"
UDF_SO = ROOT / "udf" / "build" / "gearman_udf.so"
DATABASE = "shop"
ORDERS = [("alice", "42.50"), ("bob", "7.99"), ("carol", "120.00"), ("alice", "18.25"),
          ("dave", "3.10"), ("erin", "64.00"), ("bob", "15.75"), ("frank", "99.99")]
RESULT_TIMEOUT = 30.0  # seconds for every order to come back
START_TIMEOUT = 30.0  # seconds for the host's workers to register with gearmand
INSERT_PAUSE = 0.15  # seconds between two orders, so that they arrive one by one

RESULTS_SQL = """
SELECT o.id, o.customer, o.total, o.status,
       TIMESTAMPDIFF(MICROSECOND, o.created_at, o.confirmed_at) / 1000,
       p.points, TIMESTAMPDIFF(MICROSECOND, o.created_at, p.written_at) / 1000
FROM orders o LEFT JOIN order_points p ON p.order_id = o.id
ORDER BY o.id"""


class Stop(Exception):
    """SIGTERM or SIGHUP: leave through the same clean-up as Ctrl-C."""


def step(number: int, text: str) -> None:
    print(f"\n[{number}/7] {text}", flush=True)


def info(text: str) -> None:
    print(f"      {text}", flush=True)


@contextmanager
def sandbox_in(directory: Path, server: str) -> Iterator[Sandbox]:
    box = Sandbox(directory, server=server)
    try:
        box.up()
        yield box
    finally:
        stopped = box.down()
        info(f"stopped {', '.join(stopped) or 'nothing (already down)'}")


@contextmanager
def host_process(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        # A session of its own: the terminal's ^C reaches only the demo, which then drains the
        # host with SIGTERM instead of leaving it half-stopped.
        proc = subprocess.Popen(
            [sys.executable, "-m", "workerhost.cli", "run", "-c", str(CONFIG)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        info(f"workerhost run stopped (exit {proc.returncode})")


def wait_for_workers(box: Sandbox, functions: list[str], proc: subprocess.Popen[bytes],
                     log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        status = box.gearman_status()
        if all(name in status and status[name].workers > 0 for name in functions):
            return
        if proc.poll() is not None:
            raise WorkerHostError(
                f"workerhost run exited ({proc.returncode}); the end of {log_path}:\n"
                f"{tail(log_path)}")
        if time.monotonic() > deadline:
            raise WorkerHostError(
                f"the workers for {', '.join(functions)} did not register with gearmand within "
                f"{START_TIMEOUT:.0f}s; the end of {log_path}:\n{tail(log_path)}")
        time.sleep(0.1)


def insert_orders(conn: Any) -> list[int]:
    ids = []
    cursor = conn.cursor()
    for customer, total in ORDERS:
        cursor.execute("INSERT INTO orders (customer, total) VALUES (%s, %s)", (customer, total))
        conn.commit()
        ids.append(int(cursor.lastrowid))
        info(f"INSERT order {ids[-1]}: {customer:6} {total:>7} EUR  (committed)")
        time.sleep(INSERT_PAUSE)
    cursor.close()
    return ids


def report(conn: Any, ids: list[int]) -> bool:
    """Print each order once both results are in; True when all came back in time."""
    shown: set[int] = set()
    deadline = time.monotonic() + RESULT_TIMEOUT
    while len(shown) < len(ids) and time.monotonic() < deadline:
        conn.commit()  # a fresh snapshot on each look
        cursor = conn.cursor()
        cursor.execute(RESULTS_SQL)
        for oid, customer, total, status, confirm_ms, points, points_ms in cursor.fetchall():
            if oid in shown or status != "confirmed" or points is None:
                continue
            shown.add(oid)
            info(f"order {oid:<3} {customer:6} {total:>7} EUR   "
                 f"confirmed {float(confirm_ms):6.1f} ms   "
                 f"{points:3} points {float(points_ms):6.1f} ms")
        cursor.close()
        time.sleep(0.05)
    missing = [oid for oid in ids if oid not in shown]
    if missing:
        info(f"FAILED: no write-back within {RESULT_TIMEOUT:.0f}s for orders {missing}")
        return False
    cursor = conn.cursor()
    cursor.execute("SELECT customer, points, orders FROM loyalty ORDER BY points DESC")
    sums = ", ".join(f"{c} {p} ({n} order{'' if n == 1 else 's'})"
                     for c, p, n in cursor.fetchall())
    cursor.close()
    info(f"loyalty totals: {sums}")
    return True


def demo(workdir: Path, server: str) -> bool:
    process = DATABASE_SERVERS[server.partition(":")[0]]
    step(1, f"starting a sandbox (gearmand + {process}) in {workdir}")
    with sandbox_in(workdir / "sandbox", server) as box:
        info(f"gearmand at {box.gearman_server}, {process} at 127.0.0.1:{box.mysql_port}")

        library = UDF_SO if box.server == "mariadb" else UDF_SO.parent.parent
        step(2, f"installing the UDF {library.relative_to(ROOT)}"
                + ("" if box.server == "mariadb" else " (built in the MySQL image)"))
        box.install_udf(library)
        info("gman_do_background() and friends exist; triggers can submit jobs")

        step(3, f"creating the shop's tables ({SCHEMA.relative_to(ROOT)})")
        admin = box.connect()
        admin.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{DATABASE}`")
        admin.close()
        box.run_sql_file(SCHEMA, database=DATABASE)
        info("orders, order_points, loyalty, processed_events")

        env = dict(os.environ, SHOP_GEARMAN=box.gearman_server, SHOP_DB_HOST="127.0.0.1",
                   SHOP_DB_PORT=str(box.mysql_port), SHOP_DB_USER=box.user,
                   SHOP_DB_PASSWORD=box.password, SHOP_DB_NAME=DATABASE)
        config = load_config(CONFIG, env=env)

        step(4, f"creating the triggers of {CONFIG.relative_to(ROOT)}")
        db = Database(config.database.connect_kwargs())
        applied = triggers.apply(config, db)
        db.close()
        for trigger in triggers.plan(config):
            jobs = ", ".join(f"{job.function} ({job.delivery})" for job in trigger.jobs)
            info(f"{trigger.name}: AFTER {trigger.event.upper()} ON {trigger.table} -> {jobs}")
        assert applied.created

        step(5, "starting workerhost run (handlers: " + ", ".join(config.handlers) + ")")
        log_path = workdir / "workerhost.log"
        with host_process(env, log_path) as proc:
            wait_for_workers(box, list(config.handlers), proc, log_path)
            info(f"workers registered with gearmand; host log: {log_path}")

            step(6, f"inserting {len(ORDERS)} orders")
            conn = box.connect(database=DATABASE, autocommit=False)
            ids = insert_orders(conn)

            step(7, "waiting for the results to come back (ms from INSERT to write-back)")
            info("confirmed: sql handler, immediate delivery; "
                 "points: python handler, outbox delivery")
            ok = report(conn, ids)
            conn.close()
            if not ok:
                info(f"the end of the host's log:\n{tail(log_path, 30)}")
        return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs, data) afterwards")
    parser.add_argument("--server", choices=SERVER_CHOICES, default="mariadb",
                        help="the sandbox's database server: mariadb, or mysql[:9|8.4|8.0] "
                             "(in a container)")
    args = parser.parse_args()
    if args.server == "mariadb" and not UDF_SO.is_file():
        print(f"demo: {UDF_SO} is missing; build it with: make udf", file=sys.stderr)
        return 1

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    workdir = Path(tempfile.mkdtemp(prefix="workerhost-demo-"))
    ok = False
    try:
        ok = demo(workdir, args.server)
    except (KeyboardInterrupt, Stop):
        print("\ndemo: interrupted; everything it started is stopped", file=sys.stderr)
        return RET_INTERRUPTED
    except WorkerHostError as exc:
        print(f"\ndemo: error: {exc}", file=sys.stderr)
        return RET_ERROR
    finally:
        # A failed demo keeps its directory: the host's log and the servers' are what says why.
        if args.keep or not ok:
            print(f"      kept {workdir} (workerhost.log, sandbox/*/*.log); "
                  f"remove it with: rm -rf {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        print("\ndemo: FAILED", flush=True)
        return RET_ERROR
    print("\ndemo: every order came back: OK\n"
          "next: the same on your own MariaDB or MySQL server and gearmand: docs/deploy.md",
          flush=True)
    return RET_OK


if __name__ == "__main__":
    sys.exit(main())
