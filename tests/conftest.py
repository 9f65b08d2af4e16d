"""Fixtures on top of the sandbox: real gearmand, and real mariadbd and mysqld, for the whole
test session."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import mysql.connector
import pytest
import yaml

from workerhost.sandbox.options import MYSQL_VERSIONS, PERSISTENT_QUEUE
from workerhost.sandbox.stack import Sandbox

ROOT = Path(__file__).resolve().parent.parent
UDF_DIR = ROOT / "udf"
UDF_SO = UDF_DIR / "build" / "gearman_udf.so"


# Every test on the sandbox runs on each server of the run; its id says which ([mariadb],
# [mysql-9], [mysql-8.4], [mysql-8.0]). By default (`make test`) those are MariaDB and the newest
# MySQL line; TEST_SERVERS=all (what .ci/run sets) is every line, and TEST_SERVERS=mariadb,mysql:8.0
# (a comma-separated list of `workerhost sandbox up --server` choices) picks some.
ALL_SERVERS = ("mariadb", *(f"mysql:{version}" for version in MYSQL_VERSIONS))
DEFAULT_SERVERS = ("mariadb", f"mysql:{MYSQL_VERSIONS[0]}")
_CHOSEN = os.environ.get("TEST_SERVERS", "")
SERVERS = (list(ALL_SERVERS) if _CHOSEN == "all"
           else [name for name in _CHOSEN.split(",") if name] or list(DEFAULT_SERVERS))


def server_id(server: str) -> str:
    return server.replace(":", "-")


# For a test whose outcome does not depend on the database server (it needs only gearmand, or
# a database but none in particular): it runs once, on the first server's sandbox, which the
# other tests on that server share.
ON_FIRST_SERVER = pytest.mark.parametrize("sandbox", SERVERS[:1], indirect=True, ids=server_id)


# In parallel (`make test` passes `-n auto --dist loadgroup` to pytest-xdist): all the tests
# on one server form one group, which one worker runs against the one sandbox it starts for
# that server; the other workers take the tests that need no server meanwhile, a module at a
# time (test_packaging's build is made once). So a server's sandbox is started once per run, as
# without xdist, and every worker has its own temporary directory (tmp_path) and picks its own
# free loopback ports.
@pytest.hookimpl(optionalhook=True)  # xdist's hooks: the suite also runs with -p no:xdist
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: a worker per server and one for the tests that need none."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    return len(SERVERS) + 1


def xdist_group(nodeid: str) -> str:
    """The group a test belongs to, from its id alone (the only thing xdist's controller has):
    the server its id starts with (the sandbox is every such test's first parameter), else
    its module."""
    module, _, rest = nodeid.partition("::")
    if rest.endswith("]") and "[" in rest:
        first = rest[rest.index("[") + 1:-1]
        for server in map(server_id, SERVERS):
            if first == server or first.startswith(server + "-"):
                return server
    return module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadgroup, with the groups above. (xdist's own loadgroup reads xdist_group marks
    through a node id suffix that pytest 9.2 no longer lets a plugin set.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    return ByGroup(config, log)


@pytest.fixture(scope="session", params=SERVERS, ids=server_id)
def sandbox(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One sandbox per server and test session, always torn down (atexit covers a hard
    interrupt)."""
    box = Sandbox(tmp_path_factory.mktemp(f"sandbox-{server_id(request.param)}"),
                  server=request.param)
    atexit.register(box.down)
    try:
        box.up()
        yield box
    finally:
        box.down()


@pytest.fixture(scope="session")
def udf(sandbox: Sandbox) -> Sandbox:
    """The sandbox with gearman_udf.so installed: `make udf`'s build for MariaDB, one built
    inside the server's image against its own headers for MySQL."""
    if sandbox.server == "mariadb" and not UDF_SO.is_file():
        pytest.fail(f"{UDF_SO} is missing: build it with `make udf` before running these tests")
    sandbox.install_udf(UDF_SO if sandbox.server == "mariadb" else UDF_DIR)
    return sandbox


@pytest.fixture
def db(sandbox: Sandbox) -> Iterator[Any]:
    """A connection (autocommit on) to a fresh database, dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = sandbox.connect()
    admin.cursor().execute(f"CREATE DATABASE `{name}`")
    conn = sandbox.connect(database=name)
    try:
        yield conn
    finally:
        try:
            conn.close()
        except mysql.connector.Error:
            pass  # the test restarted mariadbd under it
        if not admin.is_connected():
            admin = sandbox.connect()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def events(db: Any) -> Any:
    """The database with `events` (a trigger's table) and `captured` (what
    trigger_handlers.capture records of each job)."""
    from trigger_handlers import CAPTURED

    cursor = db.cursor()
    cursor.execute(CAPTURED)
    cursor.execute("CREATE TABLE events (id BIGINT PRIMARY KEY, pidfile VARCHAR(255), "
                   "seconds DOUBLE)")
    return db


# The library stats its config file at most once a second: a change shows within about that.
# A change not taken up by then is a failure, not a reason to wait longer.
CONFIG_DEADLINE = 10.0


def udf_config_generation(conn: Any) -> int:
    """gman_udf_status()'s config_generation: it moves on each time the library takes up its
    config file anew (and when gman_servers_set() sets servers)."""
    return int(json.loads(scalar(conn, "SELECT gman_udf_status()"))["config_generation"])


def change_udf_config(box: Sandbox, change: Callable[[], object]) -> None:
    """Make `change` to the UDF's config file (or its path) and wait until the library in the
    server has read it: polled, so the wait is as long as the library takes and no longer."""
    conn = box.connect()
    try:
        before = udf_config_generation(conn)
        change()
        wait_until(lambda: udf_config_generation(conn) > before, timeout=CONFIG_DEADLINE,
                   what=f"the UDF to read {box.udf_config_path} again")
    finally:
        conn.close()


@pytest.fixture
def udf_config(udf: Sandbox) -> Iterator[Callable[..., None]]:
    """Rewrite the UDF's config file (defaults plus overrides); restored after the test."""
    changed = False

    def write(**settings: object) -> None:
        nonlocal changed
        changed = True
        change_udf_config(udf, lambda: udf.write_udf_config(**settings))

    yield write
    if changed:
        change_udf_config(udf, udf.write_udf_config)


class ExtraGearmand:
    """A gearmand of its own (a gearmand-only sandbox) that a test can stop and start."""

    def __init__(self, directory: Path, queue: str = PERSISTENT_QUEUE) -> None:
        self.box = Sandbox(directory)
        try:
            self.box.up(servers=("gearmand",), gearman_queue=queue)
        except BaseException:
            self.box.down()
            raise
        self.port = self.box.gearman_port
        self.server = self.box.gearman_server

    def stop(self) -> None:
        self.box.stop_gearmand()

    def start(self) -> None:
        self.box.start_gearmand()


@pytest.fixture
def gearmand_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ExtraGearmand]]:
    """Start extra gearmand servers on free ports; all stopped at teardown."""
    started: list[ExtraGearmand] = []

    def start(queue: str = PERSISTENT_QUEUE) -> ExtraGearmand:
        server = ExtraGearmand(tmp_path_factory.mktemp("gearmand"), queue)
        started.append(server)
        return server

    yield start
    for server in started:
        server.box.down()


class StallingProxy:
    """A TCP proxy in front of gearmand that stalls each connection for `stall` seconds after
    every `passes` request packets: a gearmand busy for a while in the middle of a batch
    (writing its persistent queue, serving another relay)."""

    def __init__(self, port: int, passes: int, stall: float) -> None:
        self.target, self.passes, self.stall = port, passes, stall
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.target))
            for work, args in ((self._requests, (client, server)),
                               (self._answers, (server, client))):
                thread = threading.Thread(target=work, args=args, daemon=True)
                self.threads.append(thread)
                thread.start()

    def idle(self) -> bool:
        """Every connection closed, and gearmand has answered all that went through it (it
        closes its side after the last answer)."""
        return not any(thread.is_alive() for thread in self.threads)

    def _requests(self, client: Any, server: Any) -> None:
        from workerhost.gearman.conn import request, take_packets

        buffer, passed = bytearray(), 0
        try:
            while chunk := client.recv(65536):
                buffer += chunk
                for command, body in take_packets(buffer):
                    if passed and passed % self.passes == 0:
                        time.sleep(self.stall)
                    passed += 1
                    server.sendall(request(command, *body.split(b"\0")))
        except OSError:
            pass
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)  # gearmand answers the rest, then closes

    def _answers(self, server: Any, client: Any) -> None:
        try:
            while chunk := server.recv(65536):
                try:
                    client.sendall(chunk)
                except OSError:
                    pass  # the client gave up: gearmand's answers go nowhere
        except OSError:
            pass
        client.close()
        server.close()

    def close(self) -> None:
        self.listener.close()


class RunningHost:
    """`workerhost run` as a subprocess, with its log in a file."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str],
                 args: Sequence[str] = ()) -> None:
        self.config_path = config_path
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workerhost.cli", "run", "-c", str(config_path), *args],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged {count}x in {timeout}s:\n{self.log()}")
            if self.process.poll() is not None:
                raise AssertionError(f"host exited ({self.process.returncode}):\n{self.log()}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except OSError:
            return []


def host_config(
    sandbox: Sandbox, database: str, handlers: dict[str, Any], **sections: Any
) -> dict[str, Any]:
    """A host config for the sandbox. Its handlers accept any job (most tests submit theirs
    straight to gearmand) unless they say `accept` themselves."""
    handlers = {name: {"accept": "any", **handler} for name, handler in handlers.items()}
    config: dict[str, Any] = {
        "gearman": {"servers": [sandbox.gearman_server], "reconnect_backoff": "100ms",
                    "max_reconnect_backoff": "1s"},
        "database": {"host": "127.0.0.1", "port": sandbox.mysql_port, "user": sandbox.user,
                     "password": "${SANDBOX_DB_PASSWORD}", "database": database},
        # A short lease: a job gearmand lost is shipped again within seconds.
        "host": {"shutdown_timeout": "20s",
                 "relay": {"enabled": True, "interval": "50ms", "lease": "2s"}},
        "handlers": handlers,
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **value}
        else:
            config[name] = value
    return config


def apply_triggers(config: dict[str, Any], sandbox: Sandbox) -> dict[str, Any]:
    """Apply a host config's triggers to its database; the config, for host_factory."""
    from workerhost.config.load import parse_config
    from workerhost.store import triggers
    from workerhost.store.db import Database

    parsed = parse_config(config, file="test.yaml", env={"SANDBOX_DB_PASSWORD": sandbox.password})
    database = Database(parsed.database.connect_kwargs())
    try:
        triggers.apply(parsed, database)
    finally:
        database.close()
    return config


def work_on_events(sandbox: Sandbox, database: str, delivery: str, handler: dict[str, Any],
                   **sections: Any) -> dict[str, Any]:
    """A host config whose function `work` (accept: ledger, the handler given) a trigger on
    `events` inserts fires with the row's id, its triggers applied (the `events` fixture)."""
    return apply_triggers(host_config(
        sandbox, database, {"work": {"accept": "ledger", **handler}},
        triggers=[{"table": "events", "events": ["insert"], "function": "work",
                   "columns": ["id"], "delivery": delivery}], **sections), sandbox)


def captured_runs(db: Any) -> dict[int, int]:
    """Row id -> how many times its effect committed (trigger_handlers.capture counts)."""
    cursor = db.cursor()
    cursor.execute("SELECT row_id, runs FROM captured WHERE row_id IS NOT NULL")
    found = {int(row): int(count) for row, count in cursor.fetchall()}
    cursor.close()
    return found


def host_env(sandbox: Sandbox) -> dict[str, str]:
    """The environment a host (or a CLI verb on its config) runs with in the tests."""
    return dict(os.environ, SANDBOX_DB_PASSWORD=sandbox.password,
                PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))


@pytest.fixture
def host_factory(
    sandbox: Sandbox, tmp_path: Path
) -> Iterator[Callable[..., RunningHost]]:
    """Start `workerhost run` with a config (a dict); every host is killed at teardown."""
    started: list[RunningHost] = []

    def start(config: dict[str, Any], *, wait: bool = True) -> RunningHost:
        n = len(started)
        path = tmp_path / f"workerhost-{n}.yaml"
        path.write_text(yaml.safe_dump(config))
        host = RunningHost(path, tmp_path / f"workerhost-{n}.log", host_env(sandbox))
        started.append(host)
        if wait:
            host.wait_for_log("starting:")
            expected = sum(int(h.get("processes", 1)) for h in config["handlers"].values())
            host.wait_for_log("worker for", count=expected)
        return host

    yield start
    for host in started:
        host.kill()


def sequence(first: int, last: int) -> str:
    """A derived table of the integers first..last in a column `seq`, on either server
    (MariaDB's seq_1_to_N tables do not exist in MySQL; the sandbox's mysqld allows the
    recursion depth)."""
    return (f"(WITH RECURSIVE s (seq) AS (SELECT {first} UNION ALL SELECT seq + 1 FROM s "
            f"WHERE seq < {last}) SELECT seq FROM s) AS seq_{first}_to_{last}")


def submit_json(server: str, function: str, payloads: list[Any]) -> None:
    """Submit background jobs straight to gearmand, each payload as JSON."""
    import json

    import gearman

    client = gearman.GearmanClient([server])
    client.submit_multiple_jobs([{"task": function, "data": json.dumps(p)} for p in payloads],
                                background=True, wait_until_complete=False)
    client.shutdown()


def scalar(db: Any, sql: str, *args: Any) -> Any:
    """The first column of the first row of a query (None when there is no row)."""
    cursor = db.cursor()
    cursor.execute(sql, args)
    row = cursor.fetchone()
    cursor.close()
    return row[0] if row else None


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll `predicate` until it returns something true; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)
