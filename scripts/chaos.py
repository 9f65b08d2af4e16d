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

Then the host runs until the ledger is empty, and the script counts, per delivery, the
committed rows whose effect is missing (lost) and those whose effect happened more than once
(applied twice). It exits 0 only when both are 0 everywhere.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workerhost import triggers  # noqa: E402
from workerhost.config import parse_config  # noqa: E402
from workerhost.db import Database  # noqa: E402
from workerhost.sandbox import MEMORY_QUEUE, SERVER_CHOICES, Sandbox  # noqa: E402

DATABASE = "chaos"
DELIVERIES = ("immediate", "outbox")
SETTLE_TIMEOUT = 180.0  # seconds for the ledger to empty after the chaos
EFFECT = ("INSERT INTO effects (`function`, row_id, n) VALUES (%s, %(id)s, 1) "
          "ON DUPLICATE KEY UPDATE n = n + 1")


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

    def children(self) -> list[int]:
        if not self.running():
            return []
        assert self.process is not None
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []

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
            while True:
                try:
                    if conn is None:
                        conn = self.box.connect(database=DATABASE, autocommit=False)
                    cursor = conn.cursor()
                    cursor.execute("INSERT IGNORE INTO events (id) VALUES "
                                   + ", ".join(f"({i})" for i in rows))
                    conn.commit()
                    cursor.close()
                    break
                except Exception:  # the server is being restarted: try again
                    self.failures += 1
                    try:
                        if conn is not None:
                            conn.close()
                    except Exception:  # it is going away anyway
                        pass
                    conn = None
                    time.sleep(0.2)
            time.sleep(pause)
        if conn is not None:
            conn.close()


def prepare(box: Sandbox, workdir: Path, lease: str) -> tuple[Path, dict[str, str]]:
    admin = box.connect()
    cursor = admin.cursor()
    cursor.execute(f"DROP DATABASE IF EXISTS `{DATABASE}`")
    cursor.execute(f"CREATE DATABASE `{DATABASE}`")
    cursor.execute(f"USE `{DATABASE}`")
    cursor.execute("CREATE TABLE events (id BIGINT PRIMARY KEY)")
    cursor.execute("CREATE TABLE effects (`function` VARCHAR(32) NOT NULL, row_id BIGINT NOT "
                   "NULL, n INT NOT NULL, PRIMARY KEY (`function`, row_id))")
    admin.close()
    config = {
        "gearman": {"servers": [box.gearman_server], "reconnect_backoff": "100ms",
                    "max_reconnect_backoff": "1s"},
        "database": {"host": "127.0.0.1", "port": box.mysql_port, "user": box.user,
                     "password": "${CHAOS_DB_PASSWORD}", "database": DATABASE},
        "host": {"shutdown_timeout": "10s",
                 "relay": {"interval": "100ms", "lease": lease}},
        "handlers": {
            delivery: {"sql": EFFECT.replace("%s", f"'{delivery}'"), "processes": 2,
                       "timeout": "10s", "retries": {"attempts": 10, "backoff": "200ms"}}
            for delivery in DELIVERIES
        },
        "triggers": [{"table": "events", "events": ["insert"], "function": delivery,
                      "columns": ["id"], "delivery": delivery} for delivery in DELIVERIES],
    }
    path = workdir / "chaos.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, CHAOS_DB_PASSWORD=box.password,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    parsed = parse_config(config, file=str(path), env=env)
    database = Database(parsed.database.connect_kwargs())
    triggers.apply(parsed, database)
    database.close()
    return path, env


def chaos(box: Sandbox, host: Host, writer: Writer, rng: random.Random,
          restart_database: bool) -> dict[str, int]:
    """Kill something every one to two seconds while the writer runs."""
    done: dict[str, int] = {}
    kinds = ["gearmand", "worker", "relay", "host"]
    # The database restart first (so that even a short run has it), then every other kind
    # once in random order, then at random.
    rest = list(kinds)
    rng.shuffle(rest)
    first = [*(["database"] if restart_database else []), *rest]
    while writer.is_alive():
        time.sleep(rng.uniform(1.0, 2.0))
        if not writer.is_alive():
            break
        what = first.pop(0) if first else rng.choice(kinds)
        if what == "gearmand":
            assert box.info is not None
            os.kill(box.info.pids["gearmand"], signal.SIGKILL)
            box.stop_gearmand()  # reaps it
            box.start_gearmand()
        elif what in ("worker", "relay"):
            children = host.children()
            if not children:
                continue
            os.kill(rng.choice(children), signal.SIGKILL)
        elif what == "host":
            host.kill()
            time.sleep(rng.uniform(0.5, 2.0))  # a backlog builds up in gearmand meanwhile
            if rng.random() < 0.5:
                assert box.info is not None
                os.kill(box.info.pids["gearmand"], signal.SIGKILL)
                box.stop_gearmand()
                box.start_gearmand()
            host.start()
        else:
            box.stop_mysql()
            box.start_mysql()
        done[what] = done.get(what, 0) + 1
    return done


def count(box: Sandbox) -> dict[str, tuple[int, int, int]]:
    """Per delivery: (committed rows, rows without their effect, rows with it twice or more)."""
    conn = box.connect(database=DATABASE)
    cursor = conn.cursor()
    cursor.execute("SELECT COUNT(*) FROM events")
    (rows,) = cursor.fetchone()
    found = {}
    for delivery in DELIVERIES:
        cursor.execute("SELECT COUNT(*) FROM events e LEFT JOIN effects f ON f.row_id = e.id "
                       "AND f.`function` = %s WHERE f.row_id IS NULL", (delivery,))
        (lost,) = cursor.fetchone()
        cursor.execute("SELECT COUNT(*) FROM effects WHERE `function` = %s AND n > 1",
                       (delivery,))
        (twice,) = cursor.fetchone()
        found[delivery] = (int(rows), int(lost), int(twice))
    conn.close()
    return found


def ledger_rows(box: Sandbox) -> int:
    conn = box.connect(database=DATABASE)
    cursor = conn.cursor()
    cursor.execute("SELECT COUNT(*) FROM workerhost_outbox")
    (rows,) = cursor.fetchone()
    conn.close()
    return int(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long rows go in")
    parser.add_argument("--server", choices=SERVER_CHOICES, default="mariadb",
                        help="mariadb, or mysql[:9|8.4|8.0] (in a container)")
    parser.add_argument("--lease", default="2s", help="host.relay.lease (default 2s)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-database-restart", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the directory afterwards")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="workerhost-chaos-"))
    box = Sandbox(workdir / "sandbox", server=args.server)
    host: Host | None = None
    try:
        say(f"seed {seed}; a {args.server} sandbox in {workdir} (gearmand's queue in memory)")
        box.up(gearman_queue=MEMORY_QUEUE)
        box.install_udf(ROOT / "udf" if box.server == "mysql" else
                        ROOT / "udf" / "build" / "gearman_udf.so")
        config, env = prepare(box, workdir, args.lease)
        host = Host(config, workdir / "host.log", env)
        host.start()
        time.sleep(1.5)
        say(f"{args.rows} rows over {args.seconds:g}s, two non-idempotent jobs each; killing "
            "something every 1-2s")
        writer = Writer(box, args.rows, args.seconds)
        writer.start()
        killed = chaos(box, host, writer, rng, not args.no_database_restart)
        writer.join()
        say("killed: " + ", ".join(f"{what} x{n}" for what, n in sorted(killed.items())))
        if not host.running():
            host.start()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (left := ledger_rows(box)) and time.monotonic() < deadline:
            time.sleep(0.5)
        host.stop()
        if left:
            say(f"{left} ledger rows left after {SETTLE_TIMEOUT:.0f}s")
        results = count(box)
        print(f"{'delivery':10} {'rows':>8} {'lost':>6} {'applied twice':>14}")
        for delivery, (rows, lost, twice) in results.items():
            print(f"{delivery:10} {rows:>8} {lost:>6} {twice:>14}")
        ok = not left and all(lost == 0 and twice == 0 for _, lost, twice in results.values())
        say("OK: nothing lost, nothing applied twice" if ok else
            f"FAILED (seed {seed}); the host's log: {workdir / 'host.log'}")
        return 0 if ok else 1
    finally:
        if host is not None:
            host.kill()
        box.down()
        if args.keep:
            say(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
