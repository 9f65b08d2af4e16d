"""docs/deploy.md, followed: its own commands, taken from its fenced blocks, run against a
MariaDB server started as a system one would be (Debian's mariadbd with a my.cnf of its own,
mariadb-install-db, datadir, socket and plugin_dir in a temporary directory) and a gearmand
of the distribution's, with the package installed from a wheel into a fresh virtualenv
outside the checkout.

The guide marks the blocks this test runs; its comment after the title states the convention
(which paths move into the temporary directory, how sh, sql and file blocks are run). The
test never reaches a package index (tests/wheels.py): the wheel's build takes setuptools from
pip's configured local sources only (any other address goes to a closed port on loopback),
and the wheel's dependencies are installed from wheels made from the checkout's virtualenv,
the versions the rest of the suite runs with.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mysql.connector
import pytest
from conftest import ROOT, wait_until
from wheels import build, install_env, ok, repack_dependencies, run

from workerhost.sandbox.processes import free_port
from workerhost.udf import UDF_VERSION

pytestmark = pytest.mark.slow

GUIDE = ROOT / "docs" / "deploy.md"
UNIT = ROOT / "examples" / "workerhost.service"
MISSING = ("the UDF gman_ship_ledger is not installed in this server: run `workerhost udf "
           "install`")
FUNCTION = "confirm_order"  # the guide's handler and trigger
UDF_FUNCTIONS = 13  # sql/install.sql creates this many
EXPOSURE_LIMIT = 4.0  # systemd-analyze security: under this, the unit is rated OK
WRITER_PAUSE = 0.02  # seconds between the application's INSERTs during the upgrades
WRITER_ROWS = 3000  # at most, whatever the upgrades take
STOP_TIMEOUT = 60.0  # seconds a server or a host gets to end after SIGTERM or SIGINT

_MARKED = re.compile(r"^<!-- test: (?P<marker>[^>]*?) -->\n```(?P<lang>\w*)\n(?P<text>.*?)^```",
                     re.M | re.S)
_SETUP = re.compile(r"^test-setup: moved (?P<moved>[^;]+); gearmand (?P<gearmand>\S+)$", re.M)
_USERS = re.compile(r"CREATE USER '(?P<user>\w+)'@'localhost' IDENTIFIED BY '(?P<pw>[^']*)'")


# -- the guide ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    name: str
    lang: str
    text: str
    account: str | None  # sql: run as this account of the guide, else as the administrator
    offset: int  # where it stands in the guide


@dataclass(frozen=True)
class Guide:
    blocks: dict[str, Block]
    moved: tuple[str, ...]  # roots of the paths the test moves into its directory
    gearmand: str  # the address the guide gives gearmand
    passwords: dict[str, str]  # of the accounts its CREATE USER statements make

    def __getitem__(self, name: str) -> Block:
        assert name in self.blocks, f"{GUIDE} has no block marked `test: {name}`"
        return self.blocks[name]


def read_guide(path: Path = GUIDE) -> Guide:
    text = path.read_text()
    setup = _SETUP.search(text)
    assert setup, f"{path} lacks its `test-setup: moved ...; gearmand ...` line"
    blocks: dict[str, Block] = {}
    for found in _MARKED.finditer(text):
        marker = found["marker"].split()
        if marker[0] == "file":
            name, account = marker[1], None
        else:
            name, account = marker[0], (marker[2] if marker[1:2] == ["as"] else None)
        assert name not in blocks, f"two blocks marked {name}"
        blocks[name] = Block(name, found["lang"], found["text"], account, found.start())
    accounts = blocks["accounts"].text if "accounts" in blocks else ""
    return Guide(blocks, tuple(setup["moved"].split()), setup["gearmand"],
                 {m["user"]: m["pw"] for m in _USERS.finditer(accounts)})


def test_the_guide_marks_what_the_test_runs() -> None:
    """Every marker names a block, and the blocks this test runs are all there."""
    guide = read_guide()
    markers = re.findall(r"^<!-- test: ", GUIDE.read_text(), re.M)
    assert len(markers) == len(guide.blocks), "a `test:` marker not right above a block"
    for name in ("install", "schema", "accounts", "/etc/workerhost/workerhost.env",
                 "/etc/workerhost/workerhost.yaml", "shell", "check", "udf-install", "apply",
                 "doctor", "probe", "foreground", "order", "unit", "upgrade-package",
                 "upgrade-triggers", "udf-build", "to-outbox", "udf-reinstall", "to-immediate"):
        assert name in guide.blocks, name
    assert set(guide.passwords) == {"workerhost", "shop", "workerhost_udf"}
    assert guide.gearmand in guide["/etc/workerhost/workerhost.yaml"].text


# -- a machine in a directory -------------------------------------------------------------
def system_binary(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"{name} is not installed (make setup installs it)")


def end_group(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    """Signal the process's group, wait, and kill what is left; its exit status."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signum)
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # any child it left behind
    except ProcessLookupError:
        pass
    return process.wait()


@dataclass
class Machine:
    """A temporary directory standing in for the server's file system: the roots the guide
    names are moved under it, its gearmand listens on a port of its own."""

    root: Path
    guide: Guide
    gearman_port: int = field(default_factory=free_port)
    mysql_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for moved in self.guide.moved:
            self.path(moved).mkdir(parents=True, exist_ok=True)
        for sub in ("work", "bin", "var/lib/mysql", "var/log", "usr/lib/mysql/plugin"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def work(self) -> Path:
        """The directory the guide's commands run in: the wheel and the unit are there."""
        return self.root / "work"

    def path(self, guide_path: str) -> Path:
        return Path(self.localize(guide_path))

    @property
    def gearman_server(self) -> str:
        return f"127.0.0.1:{self.gearman_port}"

    def localize(self, text: str) -> str:
        """The guide's text with its paths moved here and its gearmand replaced by ours; one
        pass, so that a path already moved is never moved again."""
        roots = sorted(self.guide.moved, key=len, reverse=True)
        pattern = r"(?<![\w./-])(?:" + "|".join(map(re.escape, roots)) + r")(?=[/\s'\"]|$)"
        moved = re.sub(pattern, lambda m: f"{self.root}{m.group(0)}", text)
        return moved.replace(self.guide.gearmand, self.gearman_server)

    # -- servers --
    def spawn(self, argv: list[str], log: Path,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A process in a session of its own, which `end_all` ends with its children."""
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, cwd=self.work, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def end_all(self) -> None:
        for process in reversed(self.processes):
            end_group(process)


# -- the shell of the guide --------------------------------------------------------------
@dataclass
class Shell:
    """Runs the guide's blocks as its reader would, on `machine`."""

    machine: Machine
    env: dict[str, str]
    defaults_file: Path  # the server's my.cnf, whose [client] section the mariadb client reads

    def script(self, name: str, replace: Mapping[str, str] | None = None) -> str:
        guide = self.machine.guide
        block = guide[name]
        assert block.lang == "sh", f"{name} is a {block.lang} block"
        shell = guide["shell"]
        prefix = shell.text if block.offset > shell.offset else ""
        text = self.machine.localize(prefix + block.text)
        for old, new in (replace or {}).items():
            text = text.replace(old, new)
        return text

    def run(self, name: str, stdin: str | None = None, expect: int | None = 0,
            replace: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.command(self.script(name, replace), stdin, expect, what=f"block {name}")

    def command(self, script: str, stdin: str | None = None, expect: int | None = 0,
                what: str = "") -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script],
                              cwd=self.machine.work, env=self.env, input=stdin or "",
                              capture_output=True, text=True, timeout=600, check=False)
        if expect is not None:
            assert done.returncode == expect, (
                f"{what or script} exited {done.returncode}, not {expect}:\n"
                f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
        return done

    def start(self, name: str) -> subprocess.Popen[bytes]:
        return self.machine.spawn(["bash", "-e", "-o", "pipefail", "-c", self.script(name)],
                                  self.machine.root / "var" / "log" / f"{name}.log", self.env)

    def sql(self, name: str) -> str:
        guide = self.machine.guide
        block = guide[name]
        assert block.lang == "sql", f"{name} is a {block.lang} block"
        argv = [system_binary("mariadb"), f"--defaults-file={self.defaults_file}", "--batch"]
        if block.account:
            argv += [f"--user={block.account}", f"--password={guide.passwords[block.account]}"]
        done = subprocess.run(argv, input=self.machine.localize(block.text), env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"sql block {name}: {done.stderr}"
        return done.stdout

    def write(self, guide_path: str) -> Path:
        target = self.machine.path(guide_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.machine.localize(self.machine.guide[guide_path].text))
        return target


# -- the wheel and its dependencies, without a package index (tests/wheels.py) -----------
@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's wheel, built by `python -m build` (the sdist first, then the wheel from
    it, so nothing is built into the checkout's own build/ directory), beside wheels of its
    dependencies."""
    house = tmp_path_factory.mktemp("wheelhouse")
    build(house)
    for sdist in house.glob("*.tar.gz"):
        sdist.unlink()
    [wheel] = house.glob("workerhost-*.whl")
    repack_dependencies(wheel, house)
    return house


# -- the servers ----------------------------------------------------------------------------
@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    assert not tmp_path.resolve().is_relative_to(ROOT)
    box = Machine(tmp_path, read_guide())
    try:
        yield box
    finally:
        box.end_all()


def answers(unix_socket: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(unix_socket))
            return bool(sock.recv(1))  # the server greets first
        except OSError:
            return False


def gearman_workers(port: int, function: str) -> int:
    """Workers gearmand counts for `function` (its admin protocol's status)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"status\n")
        data = b""
        while not data.endswith(b".\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    for line in data.decode().splitlines():
        fields = line.split("\t")
        if fields[0] == function and len(fields) == 4:
            return int(fields[3])
    return 0


@dataclass
class Servers:
    """The system-like mariadbd and gearmand of one test."""

    machine: Machine
    defaults_file: Path
    unix_socket: Path
    plugin_dir: Path
    udf_config: Path
    admin: str  # the administrator mariadb-install-db made: the OS user, through the socket

    def connect(self, user: str | None = None, password: str = "") -> Any:
        return mysql.connector.connect(unix_socket=str(self.unix_socket), user=user or self.admin,
                                       password=password, autocommit=True)

    def scalar(self, sql: str) -> Any:
        conn = self.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(sql)
            (value,) = cursor.fetchone()
            return value
        finally:
            conn.close()

    def udf_status(self) -> dict[str, Any]:
        return dict(json.loads(self.scalar("SELECT gman_udf_status()")))


@pytest.fixture
def servers(machine: Machine) -> Servers:
    """Debian's mariadbd as a system starts it, its paths in the machine's directory, and
    the distribution's gearmand on a free port; both ended by `machine`."""
    me = pwd.getpwuid(os.getuid()).pw_name
    unix_socket = machine.path("/run/mysqld/mysqld.sock")
    plugin_dir = machine.root / "usr" / "lib" / "mysql" / "plugin"
    udf_config = machine.path("/etc/mysql/gearman_udf.conf")
    defaults = machine.path("/etc/mysql/my.cnf")
    # As Debian's /etc/mysql/mariadb.conf.d/50-server.cnf, with the paths moved; the [client]
    # user is the account mariadb-install-db makes for whoever runs it (unix_socket).
    defaults.write_text(
        f"[client-server]\nsocket = {unix_socket}\nport = {machine.mysql_port}\n\n"
        f"[client]\nuser = {me}\n\n"
        f"[mariadbd]\nuser = {me}\ndatadir = {machine.root}/var/lib/mysql\n"
        f"pid-file = {unix_socket.parent}/mariadbd.pid\n"
        f"log-error = {machine.root}/var/log/mysql-error.log\n"
        f"bind-address = 127.0.0.1\nplugin-dir = {plugin_dir}\n"
        "character-set-server = utf8mb4\ncollation-server = utf8mb4_general_ci\n")
    installed = subprocess.run([system_binary("mariadb-install-db"), f"--defaults-file={defaults}",
                                "--skip-test-db"], capture_output=True, text=True, timeout=120,
                               check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # mysqld reads the UDF's config from the guide's default path, moved: the environment
    # variable a system server would not need.
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "GEARMAN_UDF_CONFIG": str(udf_config)}
    mariadbd = machine.spawn([system_binary("mariadbd"), f"--defaults-file={defaults}"],
                             machine.root / "var" / "log" / "mariadbd.out", env)
    gearmand = machine.spawn([system_binary("gearmand"), "--listen=127.0.0.1",
                              f"--port={machine.gearman_port}", "--threads=0",
                              f"--log-file={machine.root}/var/log/gearmand.log",
                              "--verbose=WARNING"],
                             machine.root / "var" / "log" / "gearmand.out")

    def up() -> bool:
        assert mariadbd.poll() is None, (machine.root / "var/log/mysql-error.log").read_text()
        assert gearmand.poll() is None, (machine.root / "var/log/gearmand.out").read_text()
        try:
            gearman_workers(machine.gearman_port, FUNCTION)
        except OSError:
            return False
        return answers(unix_socket)

    wait_until(up, timeout=60, what="mariadbd and gearmand to answer")
    return Servers(machine, defaults, unix_socket, plugin_dir, udf_config, me)


@pytest.fixture
def shell(machine: Machine, servers: Servers, wheelhouse: Path) -> Shell:
    """The guide's shell on the machine: the wheel and the unit in its working directory,
    pip given the wheelhouse and no index, `python3` the interpreter of this run (whose
    packages the wheelhouse holds)."""
    for wheel in wheelhouse.glob("workerhost-*.whl"):
        shutil.copy(wheel, machine.work)
    shutil.copy(UNIT, machine.work)
    (machine.root / "bin" / "python3").symlink_to(Path(sys.executable).resolve())
    env = install_env(wheelhouse)
    env["PATH"] = f"{machine.root / 'bin'}{os.pathsep}{env['PATH']}"
    return Shell(machine, env, servers.defaults_file)


# -- the guide, followed --------------------------------------------------------------------
def failures(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("FAIL ")]


def oks(out: str, what: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("ok ") and what in line]


class Writer(threading.Thread):
    """The application inserting orders, one committed row at a time, as the guide's
    account; every error is kept."""

    def __init__(self, servers: Servers, password: str) -> None:
        super().__init__(daemon=True)
        self.conn = servers.connect("shop", password)
        self.stopping = threading.Event()
        self.rows = 0
        self.errors: list[str] = []

    def run(self) -> None:
        cursor = self.conn.cursor()
        while not self.stopping.is_set() and self.rows < WRITER_ROWS:
            try:
                cursor.execute("INSERT INTO shop.orders (customer, total) VALUES ('bob', 1)")
                self.rows += 1
            except mysql.connector.Error as exc:
                self.errors.append(str(exc))
            time.sleep(WRITER_PAUSE)

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        self.conn.close()


@pytest.mark.timeout(900)
def test_the_guide_from_an_empty_server_to_rows_written_back_and_upgrades(
    machine: Machine, servers: Servers, shell: Shell
) -> None:
    guide = machine.guide
    config = machine.path("/etc/workerhost/workerhost.yaml")

    # 2. The package: the wheel into a fresh virtualenv, nothing of the checkout on its path.
    [wheel] = machine.work.glob("workerhost-*.whl")
    version = wheel.name.split("-")[1]
    assert f"workerhost {version} (UDF {UDF_VERSION})\n" in shell.run("install").stdout
    venv = machine.path("/opt/workerhost/.venv")
    where = ok(run([venv / "bin" / "python", "-c", "import workerhost; print(workerhost.__file__)"],
                   machine.work, shell.env))
    assert Path(where.strip()).is_relative_to(venv), where

    # 3. Accounts, 4. the configuration and the host's tables.
    shell.sql("schema")
    shell.sql("accounts")
    shell.write("/etc/workerhost/workerhost.env")
    shell.write("/etc/workerhost/workerhost.yaml")
    shell.run("check")

    # Before the UDF: doctor and triggers --apply name it missing in the same words, for the
    # guide's least-privilege account and for an administrator alike.
    admin_config = machine.work / "admin.yaml"
    admin_config.write_text(config.read_text()
                            .replace("user: workerhost", f"user: {servers.admin}")
                            .replace("${DB_PASSWORD}", '""'))
    for path in (config, admin_config):
        swap = {str(config): str(path)}
        before = shell.run("doctor", expect=7, replace=swap).stdout
        [udf_line] = [line for line in failures(before) if line.startswith("FAIL  UDF:")]
        assert MISSING in udf_line, before
        applied = shell.run("apply", expect=1, replace=swap)
        [error] = [line for line in applied.stderr.splitlines()
                   if line.startswith("workerhost: error:")]
        assert MISSING in error and "denied" not in error, applied.stderr

    # 5. The UDF, by the installer's account with the guide's grants.
    installed = shell.run("udf-install", stdin=guide.passwords["workerhost_udf"] + "\n").stdout
    assert f"plugin_dir: {servers.plugin_dir}" in installed, installed
    assert f"config: wrote {servers.udf_config} (servers={machine.gearman_server})" in installed
    assert f"functions created: {UDF_FUNCTIONS}" in installed
    assert "warning" not in installed, installed
    assert (servers.plugin_dir / "gearman_udf.so").is_file()
    assert servers.udf_status()["servers"] == [machine.gearman_server]

    # 6. Triggers, then doctor passes, and its probe comes back through the UDF.
    assert "created workerhost_orders_insert" in shell.run("apply").stdout
    doctor = shell.run("doctor").stdout
    assert not failures(doctor), doctor
    for what in ("privileges of run", "privileges of triggers --apply", "UDF version",
                 "UDF servers", "trigger workerhost_orders_insert: present and current",
                 f"gearmand {machine.gearman_server}: reachable"):
        assert oks(doctor, what), f"no ok line with {what!r}:\n{doctor}"
    probe = shell.run("probe").stdout
    assert oks(probe, f"probe: a job from the database server through the UDF reached a worker "
                      f"on {machine.gearman_server}"), probe

    # gearman_udf.conf naming another gearmand: doctor fails, naming both lists and the file.
    right = servers.udf_config.read_text()
    other = f"127.0.0.1:{free_port()}"
    servers.udf_config.write_text(f"servers={other}\n")
    outputs: list[str] = []

    def udf_servers_failed() -> bool:
        outputs.append(shell.run("doctor", expect=None).stdout)
        return any("UDF servers" in line for line in failures(outputs[-1]))

    wait_until(udf_servers_failed, timeout=15, what="doctor to see the UDF's new servers")
    [failed] = [line for line in failures(outputs[-1]) if "UDF servers" in line]
    assert other in failed and machine.gearman_server in failed, failed
    assert str(servers.udf_config) in failed, failed
    servers.udf_config.write_text(right)
    wait_until(lambda: servers.udf_status()["servers"] == [machine.gearman_server], timeout=15,
               what="the UDF to read its servers again")

    # 7. The host in the foreground; the application's INSERT comes back confirmed.
    host = shell.start("foreground")
    log = machine.root / "var" / "log" / "foreground.log"
    wait_until(lambda: gearman_workers(machine.gearman_port, FUNCTION) > 0
               or host.poll() is not None, timeout=60, what="the host's workers")
    assert host.poll() is None, log.read_text()
    shell.sql("order")
    wait_until(lambda: servers.scalar("SELECT COUNT(*) FROM shop.orders WHERE status = "
                                      "'confirmed'") == 1, timeout=30,
               what="the order written back")
    shop = servers.connect("shop", guide.passwords["shop"])
    try:
        with pytest.raises(mysql.connector.Error, match="SELECT command denied"):
            shop.cursor().execute("SELECT token FROM shop.workerhost_outbox")
    finally:
        shop.close()

    # The unit, rated by systemd-analyze where it is installed.
    if shutil.which("systemd-analyze"):
        rated = shell.run("unit").stdout
        level = re.search(r"Overall exposure level for workerhost.service: ([0-9.]+)", rated)
        assert level and float(level.group(1)) < EXPOSURE_LIMIT, rated

    # 8. Upgrades while the application writes: no INSERT fails and every order comes back.
    writer = Writer(servers, guide.passwords["shop"])
    writer.start()
    try:
        shell.run("upgrade-package")
        # `systemctl restart workerhost`: the host drains on its stop signal (Ctrl-C here),
        # then starts again; the application writes on meanwhile.
        assert end_group(host, signal.SIGINT) == 0, log.read_text()
        stopped = writer.rows
        host = shell.start("foreground")
        wait_until(lambda: gearman_workers(machine.gearman_port, FUNCTION) > 0, timeout=60,
                   what="the restarted host's workers")
        assert writer.rows > stopped, "no row was written while no host ran"
        assert not failures(shell.run("upgrade-triggers").stdout)

        shell.run("udf-build")
        assert servers.udf_status()["counters"]["submitted"] > 0
        shell.run("to-outbox")
        swapping = writer.rows
        reinstalled = shell.run("udf-reinstall",
                                stdin=guide.passwords["workerhost_udf"] + "\n").stdout
        assert writer.rows > swapping, "no row was written while the UDF was replaced"
        assert f"functions dropped: {UDF_FUNCTIONS}" in reinstalled
        assert f"functions created: {UDF_FUNCTIONS}" in reinstalled
        # A library loaded afresh: its counters start again from zero.
        assert servers.udf_status()["counters"]["submitted"] == 0
        back = shell.run("to-immediate").stdout
        assert not failures(back) and oks(back, "probe: a job"), back
    finally:
        writer.stop()
    assert not writer.errors, writer.errors[:5]
    assert writer.rows > 0
    wait_until(lambda: servers.scalar("SELECT COUNT(*) FROM shop.orders WHERE status <> "
                                      "'confirmed'") == 0, timeout=120,
               what=f"all {writer.rows} orders written back")
    assert servers.scalar("SELECT COUNT(*) FROM shop.workerhost_outbox") == 0

    # udf uninstall, by the installer's account, refuses while triggers call the UDF.
    refusal = shell.command(
        machine.localize(guide["shell"].text + "read -rs UDF_PASSWORD; export UDF_PASSWORD\n"
                         "workerhost udf uninstall -c /etc/workerhost/workerhost.yaml "
                         "--user workerhost_udf --password-env UDF_PASSWORD "
                         "--socket /run/mysqld/mysqld.sock\n"),
        stdin=guide.passwords["workerhost_udf"] + "\n", expect=1)
    assert "triggers call the UDF (shop.workerhost_orders_insert)" in refusal.stderr

    assert end_group(host, signal.SIGINT) == 0, log.read_text()
    assert "Traceback" not in log.read_text()
