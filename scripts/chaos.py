"""`make chaos`: rows through random SIGKILLs; nothing may be lost, nothing applied twice.

A sandbox of its own (gearmand with its queue in memory, MariaDB or MySQL with the UDF), a
table whose insert trigger fires two jobs per row, one per delivery (immediate and outbox), and
handlers that are not idempotent (`n = n + 1` on the row's effect). While rows go in, in
50-row transactions, something is killed every one to two seconds, at random:

- gearmand (SIGKILL; restarted at once, its queue empty),
- one worker process, or the relay (the host restarts it),
- the whole `workerhost run` (SIGKILL to its process group; restarted after a pause, in which
  gearmand may be killed too),
- and, once, the database server (stopped and started again).

`--mode two-gearmand` adds a second gearmand, named in the host's config and the UDF's (the
relay goes round both, a trigger ships to the first that answers), a lease of 300ms, and
stalls: one worker, or every worker of one handler, stopped (SIGSTOP) for one to three
seconds, so that the relay ships the rows of the jobs they hold or leave queued again, to the
other server too, while the first copies wait. Either gearmand is the one killed.

`--mode enqueue` fires no generated trigger: the jobs come from the two doors an application
uses. A table `orders` has a hand-written trigger with a condition of its own, which calls
`CALL workerhost_enqueue('paid', ...)` only when an order's status becomes 'paid' (not when it
is created, cancelled, or set to 'paid' again); and each transaction of the writer calls
`workerhost.enqueue(conn, 'app', ...)` for each of its orders (one in ten with a short delay),
then pays two orders in three and cancels the rest. One transaction in five (the second one
always) is rolled back on purpose: the jobs of its orders, of both doors, must never run.

Then the host runs until the ledger is empty, and the script counts, per delivery (per
function in the enqueue mode), the committed rows whose effect is missing (lost), those whose
effect happened more than once (applied twice), and those shipped more than once (a trigger on
the ledger records every row whose `ships` passed 1); in the enqueue mode also the effects of
jobs that should not exist (their transaction rolled back, or the trigger's condition false).
It exits 0 only when lost, applied twice and those are 0 everywhere.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workerhost.config.load import parse_config  # noqa: E402
from workerhost.host.supervisor import RELAY  # noqa: E402
from workerhost.sandbox.options import MEMORY_QUEUE, SERVER_CHOICES  # noqa: E402
from workerhost.sandbox.stack import Sandbox  # noqa: E402
from workerhost.store import triggers  # noqa: E402
from workerhost.store.db import Database  # noqa: E402
from workerhost.store.schema import LEDGER  # noqa: E402

DATABASE = "chaos"
DELIVERIES = ("immediate", "outbox")
SETTLE_TIMEOUT = 180.0  # seconds for the ledger to empty after the chaos
EFFECT = ("INSERT INTO effects (`function`, row_id, n) VALUES (%s, %(id)s, 1) "
          "ON DUPLICATE KEY UPDATE n = n + 1")
# The ledger deletes a row once its effect commits, so its `ships` is recorded as it rises.
SHIPPED_AGAIN = (f"CREATE TRIGGER chaos_shipped_again AFTER UPDATE ON {LEDGER} FOR EACH ROW "
                 "BEGIN IF NEW.ships >= 2 AND NEW.ships > OLD.ships THEN "
                 "INSERT INTO shipped_again (`function`, row_id, ships) "
                 "VALUES (NEW.`function`, NEW.id, NEW.ships) "
                 "ON DUPLICATE KEY UPDATE ships = GREATEST(ships, NEW.ships); END IF; END")
MODES = ("one-gearmand", "two-gearmand", "enqueue")
LEASES = {"one-gearmand": "2s", "two-gearmand": "300ms", "enqueue": "2s"}  # host.relay.lease
# The enqueue mode: a function per door into the ledger, the rows of `orders` that must have
# its job (committed, and paid for 'paid').
ENQUEUED = {"paid": "o.status = 'paid'", "app": "TRUE"}
# A hand-written trigger, its own condition: only a status that becomes 'paid' enqueues.
PAID_TRIGGER = ("CREATE TRIGGER orders_paid AFTER UPDATE ON orders FOR EACH ROW BEGIN "
                "IF NEW.status = 'paid' AND NOT OLD.status <=> 'paid' THEN "
                "CALL workerhost_enqueue('paid', JSON_OBJECT('id', NEW.id)); END IF; END")
ROLLBACK_SHARE = 0.2  # of the enqueue mode's transactions, rolled back on purpose
STALL_SECONDS = (1.0, 3.0)
STARTED = re.compile(r"started (.+) \(pid (\d+)\)")  # the supervisor's line for each child


def say(text: str) -> None:
    print(f"chaos: {text}", flush=True)


class Host:
    """`workerhost run` in a process group of its own, so that it dies whole."""

    def __init__(self, config: Path, log: Path, env: dict[str, str]) -> None:
        self.config, self.log, self.env = config, log, env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workerhost.cli", "run", "-c", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> dict[int, str]:
        """The live children by pid: their names ("outbox[1]", the relay's) come from the
        supervisor's log line for each."""
        if not self.running():
            return {}
        assert self.process is not None
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = [int(pid) for pid in path.read_text().split()]
        except OSError:
            return {}
        names = {int(pid): name for name, pid in
                 STARTED.findall(self.log.read_text(errors="replace"))}
        return {pid: names[pid] for pid in pids if pid in names}

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


class Writer(threading.Thread):
    """Inserts rows 1..total in 50-row transactions, spread over `seconds`; a transaction
    whose connection is lost is tried again (the rows it committed, if it did, stay)."""

    def __init__(self, box: Sandbox, total: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.box, self.total, self.seconds = box, total, seconds
        self.failures = 0

    def run(self) -> None:
        pause = self.seconds / max(1, self.total // 50)
        conn: Any = None
        for start in range(1, self.total + 1, 50):
            rows = range(start, min(start + 50, self.total + 1))

            def insert(conn: Any, rows: range = rows) -> None:
                cursor = conn.cursor()
                cursor.execute("INSERT IGNORE INTO events (id) VALUES "
                               + ", ".join(f"({i})" for i in rows))
                conn.commit()
                cursor.close()

            conn = self.until_done(conn, insert)
            time.sleep(pause)
        if conn is not None:
            conn.close()

    def until_done(self, conn: Any, work: Callable[[Any], None]) -> Any:
        """Run `work` on `conn` (opened when None) until it goes through, counting the
        failures; the connection it went through on."""
        while True:
            try:
                if conn is None:
                    conn = self.box.connect(database=DATABASE, autocommit=False)
                work(conn)
                return conn
            except Exception:  # the server is being restarted: try again
                self.failures += 1
                try:
                    if conn is not None:
                        conn.close()
                except Exception:  # it is going away anyway
                    pass
                conn = None
                time.sleep(0.2)


class EnqueueWriter(Writer):
    """The enqueue mode's application: orders 1..total in 50-order transactions, each
    enqueueing an 'app' job per order through workerhost.enqueue, paying two orders in three
    (the trigger enqueues 'paid') and cancelling the rest; one in five rolled back on purpose.
    A transaction whose connection is lost is tried again unless it committed (its first order
    is there): a second commit would enqueue its jobs twice, which is the application's
    doing, not the host's."""

    def __init__(self, box: Sandbox, total: int, seconds: float, rng: random.Random) -> None:
        super().__init__(box, total, seconds)
        self.rng = rng
        self.rolled_back: list[int] = []  # orders whose transaction was rolled back on purpose
        self.transactions = self.rollbacks = 0

    def run(self) -> None:
        from workerhost import enqueue

        pause = self.seconds / max(1, self.total // 50)
        conn: Any = None
        for start in range(1, self.total + 1, 50):
            rows = range(start, min(start + 50, self.total + 1))
            roll_back = start == 51 or self.rng.random() < ROLLBACK_SHARE  # one at least
            listed = ", ".join(str(i) for i in rows)

            def transaction(conn: Any, start: int = start, rows: range = rows,
                            roll_back: bool = roll_back, listed: str = listed) -> None:
                cursor = conn.cursor()
                cursor.execute("SELECT COUNT(*) FROM orders WHERE id = %s", (start,))
                (committed,) = cursor.fetchone()
                if not committed:
                    cursor.execute("INSERT INTO orders (id, status) VALUES "
                                   + ", ".join(f"({i}, 'new')" for i in rows))
                    for i in rows:
                        enqueue(conn, "app", {"id": i}, delay=0.5 if i % 10 == 0 else None)
                    cursor.execute("UPDATE orders SET status = IF(id % 3 = 0, 'cancelled', "
                                   f"'paid') WHERE id IN ({listed})")
                    # Paid again: the trigger fires, its condition is false.
                    cursor.execute(f"UPDATE orders SET status = 'paid' WHERE id IN ({listed})"
                                   " AND status = 'paid'")
                    if roll_back:
                        conn.rollback()
                    else:
                        conn.commit()
                cursor.close()

            conn = self.until_done(conn, transaction)
            self.transactions += 1
            if roll_back:
                self.rollbacks += 1
                self.rolled_back += rows
            time.sleep(pause)
        if conn is not None:
            conn.close()


class Backlog(threading.Thread):
    """The most jobs each gearmand held at once (queued or running), read every 100ms: both
    servers carry jobs in the two-gearmand mode."""

    def __init__(self, gearmands: list[Sandbox]) -> None:
        super().__init__(daemon=True)
        self.gearmands = gearmands
        self.most = {gearmand.gearman_server: 0 for gearmand in gearmands}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            for gearmand in self.gearmands:
                try:
                    held = sum(row.queued for row in gearmand.gearman_status().values())
                except OSError:  # being restarted
                    continue
                server = gearmand.gearman_server
                self.most[server] = max(self.most[server], held)


class Stalls:
    """Processes stopped with SIGSTOP, each continued by a timer of its own."""

    def __init__(self) -> None:
        self.timers: list[tuple[threading.Timer, int]] = []

    def stall(self, pids: list[int], seconds: float) -> None:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            timer = threading.Timer(seconds, resume, (pid,))
            timer.start()
            self.timers.append((timer, pid))

    def release(self) -> None:
        for timer, pid in self.timers:
            timer.cancel()
            resume(pid)


def resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:  # killed while stopped
        pass


def restart_gearmand(box: Sandbox) -> None:
    assert box.info is not None
    os.kill(box.info.pids["gearmand"], signal.SIGKILL)
    box.stop_gearmand()  # reaps it
    box.start_gearmand()


def prepare(box: Sandbox, workdir: Path, lease: str, servers: list[str],
            mode: str) -> tuple[Path, dict[str, str]]:
    admin = box.connect()
    cursor = admin.cursor()
    cursor.execute(f"DROP DATABASE IF EXISTS `{DATABASE}`")
    cursor.execute(f"CREATE DATABASE `{DATABASE}`")
    cursor.execute(f"USE `{DATABASE}`")
    cursor.execute("CREATE TABLE events (id BIGINT PRIMARY KEY)")
    cursor.execute("CREATE TABLE orders (id BIGINT PRIMARY KEY, status VARCHAR(16) NOT NULL)")
    cursor.execute("CREATE TABLE effects (`function` VARCHAR(32) NOT NULL, row_id BIGINT NOT "
                   "NULL, n INT NOT NULL, PRIMARY KEY (`function`, row_id))")
    cursor.execute("CREATE TABLE shipped_again (`function` VARCHAR(64) NOT NULL, row_id BIGINT "
                   "NOT NULL, ships INT NOT NULL, PRIMARY KEY (`function`, row_id))")
    admin.close()
    config = {
        "gearman": {"servers": servers, "reconnect_backoff": "100ms",
                    "max_reconnect_backoff": "1s"},
        "database": {"host": "127.0.0.1", "port": box.mysql_port, "user": box.user,
                     "password": "${CHAOS_DB_PASSWORD}", "database": DATABASE},
        "host": {"shutdown_timeout": "10s",
                 "relay": {"interval": "100ms", "lease": lease}},
        "handlers": {
            function: {"sql": EFFECT.replace("%s", f"'{function}'"), "processes": 2,
                       "timeout": "10s", "retries": {"attempts": 10, "backoff": "200ms"}}
            for function in functions(mode)
        },
        # The enqueue mode's jobs come from a hand-written trigger and the application.
        "triggers": [] if mode == "enqueue" else [
            {"table": "events", "events": ["insert"], "function": delivery, "columns": ["id"],
             "delivery": delivery} for delivery in DELIVERIES],
    }
    path = workdir / "chaos.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, CHAOS_DB_PASSWORD=box.password,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    parsed = parse_config(config, file=str(path), env=env)
    database = Database(parsed.database.connect_kwargs())
    triggers.apply(parsed, database)  # creates the ledger and workerhost_enqueue too
    database.close()
    conn = box.connect(database=DATABASE)
    conn.cursor().execute(SHIPPED_AGAIN)
    if mode == "enqueue":
        conn.cursor().execute(PAID_TRIGGER)
    conn.close()
    return path, env


def chaos(box: Sandbox, gearmands: list[Sandbox], host: Host, writer: Writer,
          rng: random.Random, restart_database: bool, stalls: Stalls | None) -> dict[str, int]:
    """Kill (or stall) something every one to two seconds while the writer runs."""
    done: dict[str, int] = {}
    kinds = ["gearmand", "worker", "relay", "host"]
    # The database restart first (so that even a short run has it), a stall next when there are
    # stalls (what the mode is for), then every other kind once in random order, then at random.
    rest = list(kinds)
    rng.shuffle(rest)
    first = [*(["database"] if restart_database else []), *(["stall"] if stalls else []), *rest]
    if stalls:
        kinds += ["stall", "stall"]
    while writer.is_alive():
        time.sleep(rng.uniform(1.0, 2.0))
        if not writer.is_alive():
            break
        what = first.pop(0) if first else rng.choice(kinds)
        if what == "gearmand":
            restart_gearmand(rng.choice(gearmands))
        elif what in ("worker", "relay", "stall"):
            children = [(pid, name) for pid, name in sorted(host.children().items())
                        if name.startswith(RELAY) == (what == "relay")]
            if not children:
                continue
            if stalls is not None and what == "stall":
                # One worker, or all of one handler's: only then does a backlog build up in
                # gearmand (an idle worker stopped holds no job; its sibling takes them all).
                handler = rng.choice(sorted({name.partition("[")[0] for _, name in children}))
                pids = [pid for pid, name in children if name.partition("[")[0] == handler]
                # The first stall stops them all, for long enough that the relay ships their
                # rows again: a run that never ships a row twice tests nothing of this mode.
                if not stalls.timers:
                    stalls.stall(pids, STALL_SECONDS[1])
                else:
                    stalls.stall(pids if rng.random() < 0.5 else [rng.choice(pids)],
                                 rng.uniform(*STALL_SECONDS))
            else:
                os.kill(rng.choice(children)[0], signal.SIGKILL)
        elif what == "host":
            host.kill()
            time.sleep(rng.uniform(0.5, 2.0))  # a backlog builds up in gearmand meanwhile
            if rng.random() < 0.5:
                restart_gearmand(rng.choice(gearmands))
            host.start()
        else:
            box.stop_mysql()
            box.start_mysql()
        done[what] = done.get(what, 0) + 1
    return done


def functions(mode: str) -> tuple[str, ...]:
    return tuple(ENQUEUED) if mode == "enqueue" else DELIVERIES


def count(box: Sandbox, mode: str) -> dict[str, tuple[int, int, int, int]]:
    """Per delivery (per function in the enqueue mode): (committed rows, rows without their
    effect, rows with it twice or more, rows shipped more than once)."""
    conn = box.connect(database=DATABASE)
    cursor = conn.cursor()
    found = {}
    for delivery in functions(mode):
        table = "events" if mode != "enqueue" else f"orders o WHERE {ENQUEUED[delivery]}"
        expected = f"(SELECT id FROM {table})"
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        (rows,) = cursor.fetchone()
        cursor.execute(f"SELECT COUNT(*) FROM {expected} e LEFT JOIN effects f ON f.row_id = "
                       "e.id AND f.`function` = %s WHERE f.row_id IS NULL", (delivery,))
        (lost,) = cursor.fetchone()
        cursor.execute("SELECT COUNT(*) FROM effects WHERE `function` = %s AND n > 1",
                       (delivery,))
        (twice,) = cursor.fetchone()
        cursor.execute("SELECT COUNT(*) FROM shipped_again WHERE `function` = %s", (delivery,))
        (again,) = cursor.fetchone()
        found[delivery] = (int(rows), int(lost), int(twice), int(again))
    conn.close()
    return found


def strays(box: Sandbox) -> dict[str, tuple[int, int]]:
    """The enqueue mode, per function: the effects of jobs that must never run (their order's
    transaction rolled back, or, for 'paid', an order never paid), and of those the orders of a
    transaction rolled back on purpose."""
    conn = box.connect(database=DATABASE)
    cursor = conn.cursor()
    found = {}
    for function, condition in ENQUEUED.items():
        cursor.execute("SELECT COUNT(*), COALESCE(SUM(o.id IS NULL), 0) FROM effects f "
                       f"LEFT JOIN orders o ON o.id = f.row_id WHERE f.`function` = %s AND "
                       f"NOT (o.id IS NOT NULL AND {condition})",
                       (function,))
        (stray, rolled_back) = cursor.fetchone()
        found[function] = (int(stray), int(rolled_back))
    conn.close()
    return found


def most_ships(box: Sandbox) -> int:
    conn = box.connect(database=DATABASE)
    cursor = conn.cursor()
    cursor.execute("SELECT COALESCE(MAX(ships), 0) FROM shipped_again")
    (most,) = cursor.fetchone()
    conn.close()
    return int(most)


def ledger_rows(box: Sandbox) -> int:
    conn = box.connect(database=DATABASE)
    cursor = conn.cursor()
    cursor.execute("SELECT COUNT(*) FROM workerhost_outbox")
    (rows,) = cursor.fetchone()
    conn.close()
    return int(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=MODES, default=MODES[0],
                        help="two-gearmand: a second gearmand, a 300ms lease, stalled workers; "
                             "enqueue: jobs from a hand-written trigger (CALL "
                             "workerhost_enqueue) and workerhost.enqueue, some rolled back")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long rows go in")
    parser.add_argument("--server", choices=SERVER_CHOICES, default="mariadb",
                        help="mariadb, or mysql[:9|8.4|8.0] (in a container)")
    parser.add_argument("--lease", default=None,
                        help="host.relay.lease (default 2s; 300ms with --mode two-gearmand)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-database-restart", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the directory afterwards")
    args = parser.parse_args()
    lease = args.lease or LEASES[args.mode]
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="workerhost-chaos-"))
    box = Sandbox(workdir / "sandbox", server=args.server)
    gearmands = [box]
    stalls = Stalls() if args.mode == "two-gearmand" else None
    host: Host | None = None
    keep = args.keep
    try:
        say(f"seed {seed}; mode {args.mode}, lease {lease}; a {args.server} sandbox in "
            f"{workdir} (gearmand's queue in memory)")
        box.up(gearman_queue=MEMORY_QUEUE)
        if args.mode == "two-gearmand":
            second = Sandbox(workdir / "gearmand-2")
            gearmands.append(second)
            second.up(servers=("gearmand",), gearman_queue=MEMORY_QUEUE)
        servers = [gearmand.gearman_server for gearmand in gearmands]
        if args.mode != "enqueue":  # its jobs all go through the ledger: no UDF
            box.write_udf_config(servers=",".join(servers))
            box.install_udf(ROOT / "udf" if box.server == "mysql" else
                            ROOT / "udf" / "build" / "gearman_udf.so")
        config, env = prepare(box, workdir, lease, servers, args.mode)
        host = Host(config, workdir / "host.log", env)
        host.start()
        time.sleep(1.5)
        jobs = ("an 'app' job each (workerhost.enqueue), a 'paid' one (a hand-written trigger) "
                "for two in three, a transaction in five rolled back" if args.mode == "enqueue"
                else "two non-idempotent jobs each")
        say(f"{args.rows} rows over {args.seconds:g}s, {jobs}; gearmand "
            f"at {', '.join(servers)}; {'killing or stalling' if stalls else 'killing'} "
            "something every 1-2s")
        writer = (EnqueueWriter(box, args.rows, args.seconds, random.Random(seed + 1))
                  if args.mode == "enqueue" else Writer(box, args.rows, args.seconds))
        backlog = Backlog(gearmands)
        backlog.start()
        writer.start()
        killed = chaos(box, gearmands, host, writer, rng, not args.no_database_restart, stalls)
        writer.join()
        if stalls is not None:
            stalls.release()
        say("killed: " + ", ".join(f"{what} x{n}" for what, n in sorted(killed.items())))
        if not host.running():
            host.start()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (left := ledger_rows(box)) and time.monotonic() < deadline:
            time.sleep(0.5)
        host.stop()
        backlog.done.set()
        if left:
            say(f"{left} ledger rows left after {SETTLE_TIMEOUT:.0f}s")
        results = count(box, args.mode)
        print(f"{'delivery' if args.mode != 'enqueue' else 'function':10} {'rows':>8} "
              f"{'lost':>6} {'applied twice':>14} {'shipped again':>14}")
        for delivery, (rows, lost, twice, again) in results.items():
            print(f"{delivery:10} {rows:>8} {lost:>6} {twice:>14} {again:>14}")
        say(f"most ships of one row: {most_ships(box)}; most jobs held at once: " + ", ".join(
            f"{server} {held}" for server, held in backlog.most.items()))
        ok = not left and all(lost == 0 and twice == 0 for _, lost, twice, _ in results.values())
        if isinstance(writer, EnqueueWriter):
            ran = strays(box)
            say(f"rolled back on purpose: {writer.rollbacks} of {writer.transactions} "
                f"transactions, {len(writer.rolled_back)} orders; effects of jobs that must not "
                "run: " + ", ".join(f"{function} {stray} (rolled back {rolled})"
                                    for function, (stray, rolled) in ran.items()))
            ok = ok and all(stray == 0 for stray, _ in ran.values())
        say("OK: nothing lost, nothing applied twice" if ok else
            f"FAILED (seed {seed}); the host's log: {workdir / 'host.log'}")
        keep = keep or not ok
        return 0 if ok else 1
    finally:
        if stalls is not None:
            stalls.release()
        if host is not None:
            host.kill()
        for gearmand in reversed(gearmands):
            gearmand.down()
        if keep:
            say(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
