"""A throwaway gearmand + MariaDB or MySQL server that live entirely under one directory.

The sandbox is the project's embedded default stack: the demo, the tests and the benchmarks run
against it. Everything it owns sits under DIR (data, sockets, logs, pid files, MariaDB's
plugin_dir, gearmand's persistent queue), its TCP ports are picked free on 127.0.0.1, and
`DIR/sandbox.json` tells clients where to connect. Two sandboxes in two directories never clash.

The database server is MariaDB (Debian's mariadbd, run directly) or MySQL (mysqld in a
container, see container.py); both get the same directory layout and the same user.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from workerhost.errors import SandboxError
from workerhost.gearman import admin as gearadmin
from workerhost.sandbox import processes, server_options
from workerhost.sandbox.info import INFO_FILE, MysqlInfo, SandboxInfo
from workerhost.sandbox.options import (
    DATABASE_SERVERS,
    DEFAULT_DATABASE_SERVER,
    DEFAULT_QUEUE,
    GEARMAN_THREADS,
    MYSQL_REPOSITORY,
    PERSISTENT_QUEUE,
    SERVER_CHOICES,
)
from workerhost.sandbox.processes import HOST

UDF_CONFIG_FILE = "gearman_udf.conf"
# How long a server may take to answer after start, and to exit after SIGTERM before SIGKILL.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# The UDF's network wait bound in the sandbox; tests that need another one rewrite the file.
SANDBOX_UDF_TIMEOUT_MS = 1000

# Buckets of gearmand's job hash tables. Its default of 991 makes every job cost more as the
# queue grows: with 100,000 jobs queued, gearmand spent 10 to 12 us of CPU per job handed out,
# against 2.5 to 3 with a million buckets (which cost no memory until used).
GEARMAN_HASH_BUCKETS = 1_000_003


class Sandbox:
    """One sandbox directory; `up()` creates or restarts it, `down()` stops it."""

    def __init__(self, directory: str | Path, server: str = DEFAULT_DATABASE_SERVER) -> None:
        """`server` is mariadb, or mysql with an optional line: mysql:8.0, mysql:8.4, mysql:9."""
        if server not in SERVER_CHOICES:
            raise SandboxError(f"unknown database server {server!r}; "
                               f"choose one of {', '.join(SERVER_CHOICES)}")
        self.dir = Path(directory).resolve()
        # What up() starts; an existing sandbox keeps its own.
        self.server, _, version = server.partition(":")
        self.image = ""
        if self.server == "mysql":
            from workerhost.sandbox import container

            self.image = container.image(version or None)
        self.info: SandboxInfo | None = None
        self._started: dict[int, subprocess.Popen[bytes]] = {}  # servers this object spawned
        if (self.dir / INFO_FILE).exists():
            self._load()
            self.server = self._need_info().server
            self.image = self._need_info().image
            if self.server == "mysql" and not self.image:  # made before images had lines
                from workerhost.sandbox import container

                self.image = container.image()

    @property
    def spec(self) -> str:
        """What to hand Sandbox() for another sandbox on the same server: mysql:8.0, mariadb."""
        if self.server == "mysql" and self.image.startswith(f"{MYSQL_REPOSITORY}:"):
            line = self.image.partition(":")[2]
            if f"mysql:{line}" in SERVER_CHOICES:
                return f"mysql:{line}"
        return self.server

    @property
    def database_process(self) -> str:
        """The database server's process name: mariadbd or mysqld."""
        return DATABASE_SERVERS[self.server]

    @property
    def servers(self) -> tuple[str, str]:
        return ("gearmand", self.database_process)

    # -- where things live -------------------------------------------------------------
    @property
    def datadir(self) -> Path:
        return self.dir / "mysql" / "data"

    @property
    def plugin_dir(self) -> Path:
        return self.dir / "mysql" / "plugin"

    @property
    def tmpdir(self) -> Path:
        """The database server's temporary files: /tmp is shared, and mariadb-install-db runs
        started at once clash on its temporary tables' names there."""
        return self.dir / "mysql" / "tmp"

    @property
    def unix_socket(self) -> str:
        return str(self.dir / "mysql" / "mysqld.sock")

    @property
    def udf_config_path(self) -> Path:
        return self.dir / UDF_CONFIG_FILE

    @property
    def mysql_log(self) -> Path:
        return self.dir / "mysql" / "mysqld.log"

    @property
    def gearmand_log(self) -> Path:
        return self.dir / "gearmand" / "gearmand.log"

    def _need_info(self) -> SandboxInfo:
        if self.info is None:
            raise SandboxError(
                f"{self.dir} holds no sandbox ({INFO_FILE} is missing); "
                f"start one with: workerhost sandbox up --dir {self.dir}"
            )
        return self.info

    @property
    def gearman_port(self) -> int:
        return int(self._need_info().gearman["port"])

    @property
    def mysql_port(self) -> int:
        return self._need_info().mysql.port

    @property
    def user(self) -> str:
        return self._need_info().mysql.user

    @property
    def password(self) -> str:
        return self._need_info().mysql.password

    @property
    def gearman_server(self) -> str:
        return f"{HOST}:{self.gearman_port}"

    # -- lifecycle ---------------------------------------------------------------------
    def up(
        self,
        *,
        gearman_port: int | None = None,
        mysql_port: int | None = None,
        servers: Sequence[str] | None = None,
        gearman_queue: str = DEFAULT_QUEUE,
        gearman_threads: int = GEARMAN_THREADS,
    ) -> bool:
        """Start those of `servers` (default both) that are not running; False when all ran."""
        servers = self.servers if servers is None else servers
        state = self.status()
        if self.info is not None and all(state[name] for name in servers):
            return False
        self._make_dirs()
        if self.info is None:
            self.info = SandboxInfo(
                gearman={"host": HOST, "port": self._pick_port(gearman_port, "gearmand"),
                         "queue": gearman_queue, "threads": gearman_threads},
                mysql=MysqlInfo(
                    host=HOST,
                    port=self._pick_port(mysql_port, self.database_process),
                    unix_socket=self.unix_socket,
                    user="workerhost",
                    password=secrets.token_hex(12),
                ),
                plugin_dir=str(self.plugin_dir),
                udf_config=str(self.udf_config_path),
                server=self.server,
                image=self.image,
            )
            self.write_udf_config()
        try:
            if "gearmand" in servers and not state["gearmand"]:
                self.start_gearmand()
            if self.database_process in servers and not state[self.database_process]:
                self.start_mysql()
        except BaseException:
            self.down()
            raise
        return True

    def down(self) -> list[str]:
        """Stop both servers (SIGTERM, then SIGKILL after STOP_TIMEOUT); the names stopped."""
        stopped = []
        for name in self.servers:
            if self._stop(name):
                stopped.append(name)
        return stopped

    def status(self) -> dict[str, bool]:
        pids = self.info.pids if self.info else {}
        return {name: name in pids and processes.process_alive(pids[name], str(self.dir))
                for name in self.servers}

    def start_gearmand(self) -> None:
        info = self._need_info()
        processes.check_port(self.gearman_port, "gearmand")
        argv = [
            processes.binary("gearmand", "gearman-job-server"),
            f"--listen={HOST}",
            f"--port={self.gearman_port}",
        ]
        if info.gearman.get("queue", DEFAULT_QUEUE) == PERSISTENT_QUEUE:
            queue = self.dir / "gearmand" / "queue.sqlite"
            argv += ["--queue-type=libsqlite3", f"--libsqlite3-db={queue}"]
        argv += [
            f"--log-file={self.gearmand_log}",
            f"--pid-file={self.dir / 'gearmand' / 'gearmand.pid'}",
            "--verbose=WARNING",
            f"--threads={int(info.gearman.get('threads', GEARMAN_THREADS))}",
            f"--hashtable-buckets={GEARMAN_HASH_BUCKETS}",
        ]
        info.pids["gearmand"] = self._spawn(argv, self.gearmand_log, "gearmand")
        self._save()
        self._wait("gearmand", self.gearmand_log, self._gearmand_answers)

    def stop_gearmand(self) -> None:
        self._stop("gearmand")

    def start_mysql(self) -> None:
        """Start the database server (mariadbd, or mysqld in a container); create it first."""
        info = self._need_info()
        name = self.database_process
        processes.check_port(self.mysql_port, name)
        fresh = not (self.datadir / "mysql").is_dir()
        common = server_options.common(
            datadir=self.datadir, socket=self.unix_socket, port=self.mysql_port,
            pid_file=self.dir / "mysql" / "mysqld.pid", log=self.mysql_log,
            plugin_dir=self.plugin_dir, tmpdir=self.tmpdir)
        env = {"GEARMAN_UDF_CONFIG": str(self.udf_config_path)}
        if self.server == "mysql":
            from workerhost.sandbox import container

            files = self.dir / "mysql" / "files"
            if fresh:
                files.mkdir(exist_ok=True)
                container.initialize(self.datadir, image=self.image, mount=self.dir)
            argv = ["mysqld", *common, *server_options.mysql(files)]
            info.pids[name] = container.start(argv, image=self.image, env=env, mount=self.dir)
        else:
            if fresh:
                self._install_db()
            argv = [processes.binary("mariadbd", "mariadb-server"), *common,
                    *server_options.mariadb(processes.current_user())]
            info.pids[name] = self._spawn(argv, self.mysql_log, name,
                                          env=dict(os.environ, **env))
        self._save()
        self._wait(name, self.mysql_log, self._mysql_answers)
        if fresh:
            self._create_user()

    def stop_mysql(self) -> None:
        self._stop(self.database_process)

    # -- clients -----------------------------------------------------------------------
    def connect(self, database: str | None = None, **kwargs: Any) -> Any:
        """A mysql.connector connection over TCP as the sandbox user (autocommit on)."""
        import mysql.connector

        params: dict[str, Any] = dict(
            host=HOST, port=self.mysql_port, user=self.user, password=self.password,
            autocommit=True, connection_timeout=10,
        )
        if database:
            params["database"] = database
        params.update(kwargs)
        return mysql.connector.connect(**params)

    def gearman_status(self) -> dict[str, gearadmin.FunctionStatus]:
        return gearadmin.status(HOST, self.gearman_port)

    def run_sql_file(self, path: Path, database: str | None = None) -> None:
        """Run a SQL script with the mariadb client (it understands DELIMITER and comments)."""
        argv = [
            processes.binary("mariadb", "mariadb-client"), "--no-defaults",
            f"--socket={self.unix_socket}", "-uroot", "--batch",
        ]
        if database:
            argv.append(database)
        with open(path, "rb") as script:
            done = subprocess.run(argv, stdin=script, capture_output=True, check=False)
        if done.returncode != 0:
            raise SandboxError(f"{path} failed: {done.stderr.decode(errors='replace').strip()}")

    def install_udf(self, library: str | Path) -> None:
        """Install the UDF into this sandbox's plugin_dir and create its functions.

        `library` is a built gearman_udf.so, or the UDF's source directory: then it is built
        for this sandbox's server (for MySQL inside the server's image, against its headers).
        """
        source = Path(library)
        if source.is_dir():
            source = self.build_udf(source)
        if not source.is_file():
            raise SandboxError(f"no UDF library at {source}; build one with: workerhost udf "
                               "build -o PATH (in a checkout: make udf)")
        target = self.plugin_dir / "gearman_udf.so"
        # A new inode via rename: overwriting a library that mariadbd has mapped would crash it.
        staging = target.with_suffix(".so.new")
        shutil.copyfile(source, staging)
        os.replace(staging, target)
        with resources.as_file(resources.files("workerhost") / "sql" / "install.sql") as script:
            self.run_sql_file(script)

    def build_udf(self, source: Path) -> Path:
        """gearman_udf.so built from `source` (the udf/ directory) for this sandbox's server."""
        if self.server != "mysql":
            built = source / "build" / "gearman_udf.so"
            if not built.is_file():
                raise SandboxError(f"no UDF library at {built}; build one with: workerhost "
                                   "udf build -o PATH, and give that PATH (in a checkout: "
                                   "make udf)")
            return built
        from workerhost.sandbox import container

        out = self.dir / "udf-build"
        out.mkdir(exist_ok=True)
        container.run_once(["make", "--no-print-directory", "-B", f"BUILD={out}"],
                           image=self.image, mounts=[source.resolve(), self.dir],
                           workdir=source.resolve(),
                           log=out / "make.log")
        return out / "gearman_udf.so"

    def write_udf_config(self, **settings: object) -> None:
        """Write the UDF's key=value file; the defaults point it at this sandbox's gearmand."""
        values: dict[str, object] = {
            "servers": self.gearman_server,
            "timeout_ms": SANDBOX_UDF_TIMEOUT_MS,
        }
        values.update(settings)
        text = "".join(f"{key}={value}\n" for key, value in values.items() if value is not None)
        staging = self.udf_config_path.with_suffix(".new")
        staging.write_text(text)
        os.replace(staging, self.udf_config_path)

    # -- internals ---------------------------------------------------------------------
    def _load(self) -> None:
        path = self.dir / INFO_FILE
        try:
            self.info = SandboxInfo.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SandboxError(
                f"{path} is unreadable ({exc}); remove {self.dir} and run up again"
            ) from exc

    def _save(self) -> None:
        info = self._need_info()
        staging = self.dir / (INFO_FILE + ".new")
        staging.write_text(json.dumps(asdict(info), indent=2) + "\n")
        os.replace(staging, self.dir / INFO_FILE)

    def _make_dirs(self) -> None:
        try:
            for sub in ("mysql/data", "mysql/plugin", "mysql/tmp", "gearmand"):
                (self.dir / sub).mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise SandboxError(
                f"cannot use {self.dir} as a sandbox directory: {exc.strerror or exc}; "
                "pass a writable directory with --dir"
            ) from exc

    def _pick_port(self, wanted: int | None, server: str) -> int:
        if wanted is None:
            return processes.free_port()
        processes.check_port(wanted, server)
        return wanted

    def _spawn(
        self, argv: Sequence[str], log: Path, name: str, env: dict[str, str] | None = None
    ) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            # A session of its own: the servers outlive `sandbox up` and ignore the caller's ^C.
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, cwd=self.dir,
            )
        self._started[proc.pid] = proc
        return proc.pid

    def _wait(self, name: str, log: Path, answers: Callable[[], bool]) -> None:
        pid = self._need_info().pids[name]
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ended = self._ended(pid, starting=True)
            if ended:
                raise SandboxError(f"{name} {ended} during start; the end of {log}:\n"
                                   f"{processes.tail(log)}")
            if answers():
                return
            time.sleep(0.05)
        self._stop(name)
        raise SandboxError(
            f"{name} did not answer within {START_TIMEOUT:.0f}s; the end of {log}:\n"
            f"{processes.tail(log)}"
        )

    def _ended(self, pid: int, starting: bool = False) -> str:
        """How a server ended ("" while it runs); its exit status when this object started it.

        `starting`: a server in a container may not show its own command line yet (the
        container runtime's process becomes the server a moment after Docker names its pid),
        so while it starts, a process that has not ended counts as running."""
        proc = self._started.get(pid)
        if proc is None:
            running = processes.process_alive(pid, str(self.dir)) or (
                starting and processes.process_exists(pid))
            return "" if running else "exited"
        code = proc.poll()
        if code is None:
            return ""
        return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"

    def _gearmand_answers(self) -> bool:
        try:
            gearadmin.version(HOST, self.gearman_port, timeout=0.5)
        except OSError:
            return False
        return True

    def _mysql_answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect(self.unix_socket)
                return bool(sock.recv(1))  # the server greets first
            except OSError:
                return False

    def _install_db(self) -> None:
        argv = [
            processes.binary("mariadb-install-db", "mariadb-server"), "--no-defaults",
            f"--datadir={self.datadir}", f"--tmpdir={self.tmpdir}",
            f"--user={processes.current_user()}",
            "--auth-root-authentication-method=normal", "--skip-test-db",
        ]
        log = self.dir / "mysql" / "install-db.log"
        with open(log, "wb") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise SandboxError(f"mariadb-install-db failed; the end of {log}:\n"
                               f"{processes.tail(log)}")

    def _create_user(self) -> None:
        info = self._need_info().mysql
        script = self.dir / "mysql" / "create-user.sql"
        script.write_text(
            f"CREATE USER IF NOT EXISTS '{info.user}'@'%' IDENTIFIED BY '{info.password}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{info.user}'@'%' WITH GRANT OPTION;\n"
        )
        try:
            self.run_sql_file(script)
        finally:
            script.unlink()

    def _stop(self, name: str) -> bool:
        if self.info is None or name not in self.info.pids:
            return False
        pid = self.info.pids[name]
        if not processes.process_alive(pid, str(self.dir)):
            return False
        processes.send_signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while processes.process_alive(pid, str(self.dir)):
            if time.monotonic() > deadline:
                processes.send_signal(pid, signal.SIGKILL)
                deadline = time.monotonic() + STOP_TIMEOUT
            time.sleep(0.05)
        processes.reap(pid)
        return True
