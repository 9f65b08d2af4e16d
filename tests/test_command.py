"""`command:` handlers: a program in any language per job, under the host's guarantees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gearman
import pytest
from conftest import host_config, scalar, submit_json, wait_until

from workerhost.config.load import parse_config
from workerhost.errors import ConfigError
from workerhost.host import command
from workerhost.model.job import Job
from workerhost.sandbox.stack import Sandbox


@pytest.fixture
def items(db: Any) -> Any:
    cursor = db.cursor()
    cursor.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, size INT, note VARCHAR(255))")
    cursor.execute("INSERT INTO items (id) VALUES (1), (2), (3)")
    return db


def dead_letters(db: Any) -> list[tuple[Any, ...]]:
    cursor = db.cursor()
    cursor.execute("SELECT `function`, attempts, error, traceback FROM workerhost_dead_letters")
    rows = list(cursor.fetchall())
    cursor.close()
    return rows


def run_job(sandbox: Sandbox, function: str, payload: Any) -> Any:
    client = gearman.GearmanClient([sandbox.gearman_server])
    request = client.submit_job(function, json.dumps(payload), background=False,
                                wait_until_complete=False)
    client.wait_until_jobs_completed([request], poll_timeout=30)
    client.shutdown()
    return request


def test_a_program_in_another_language_gets_the_payload_and_its_output_is_the_result(
    sandbox: Sandbox, items: Any, host_factory: Any
) -> None:
    # A shell one-liner: doubles the payload's n; says what the host told it in stderr.
    program = ["sh", "-c", 'n=$(sed -e "s/[^0-9]//g"); echo "{\\"n\\": $((n * 2)), '
               '\\"function\\": \\"$WORKERHOST_FUNCTION\\", \\"attempt\\": $WORKERHOST_ATTEMPT}"']
    host_factory(host_config(sandbox, items.database, {"double": {"command": program}}))
    request = run_job(sandbox, "double", {"n": 21})
    assert json.loads(request.result) == {"n": 42, "function": "double", "attempt": 1}


def test_the_programs_json_output_is_bound_to_sql_in_the_jobs_transaction(
    sandbox: Sandbox, items: Any, host_factory: Any
) -> None:
    program = [sys.executable, "-c", "import json, sys; job = json.load(sys.stdin); "
               "print(json.dumps({'id': job['id'], 'size': job['id'] * 100}))"]
    host_factory(host_config(sandbox, items.database, {"measure": {
        "command": program, "sql": "UPDATE items SET size = %(size)s WHERE id = %(id)s"}}))
    for ident in (1, 2):
        assert json.loads(run_job(sandbox, "measure", {"id": ident}).result) == {"rows": 1}
    assert scalar(items, "SELECT SUM(size) FROM items") == 300


def test_a_failing_program_is_retried_then_dead_lettered_with_its_stderr(
    sandbox: Sandbox, items: Any, host_factory: Any
) -> None:
    program = ["sh", "-c", "echo 'resize: no such image' >&2; echo partial; exit 3"]
    host_factory(host_config(sandbox, items.database, {"resize": {
        "command": program, "retries": {"attempts": 2, "backoff": "50ms"}}}))
    run_job(sandbox, "resize", {"id": 1})
    (letter,) = wait_until(lambda: dead_letters(items), what="a dead letter")
    function, attempts, error, stderr = letter
    assert (function, attempts) == ("resize", 2)
    assert error == "sh exited with status 3: resize: no such image"
    assert stderr == "resize: no such image\n"


def test_a_program_past_its_timeout_is_killed_with_what_it_started(
    sandbox: Sandbox, items: Any, host_factory: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "sleeper.pid"
    program = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"]
    host = host_factory(host_config(sandbox, items.database, {"slow": {
        "command": program, "timeout": "1s", "retries": {"attempts": 1}}}))
    started = time.monotonic()
    run_job(sandbox, "slow", {"id": 1})
    (letter,) = wait_until(lambda: dead_letters(items), what="a dead letter")
    assert letter[2] == "sh ran past 0.9s and was killed"
    assert time.monotonic() - started < 10
    sleeper = int(pidfile.read_text())
    wait_until(lambda: not Path(f"/proc/{sleeper}").exists()
               or " Z " in Path(f"/proc/{sleeper}/stat").read_text(),
               timeout=5, what="the program's child killed too")
    assert "restarting in" not in host.log(), "the worker itself survived"


def test_a_command_that_does_not_exist_fails_check() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"gearman": {"servers": ["127.0.0.1:4730"]},
                      "database": {"user": "u", "database": "d"},
                      "handlers": {"resize": {"command": ["no-such-resizer", "--w", "1"]}}},
                     file="w.yaml")
    assert str(raised.value) == ("w.yaml: handlers.resize.command: no executable program "
                                 "'no-such-resizer' on PATH; install it, or give its full path")
    with pytest.raises(ConfigError) as raised:
        parse_config({"gearman": {"servers": ["127.0.0.1:4730"]},
                      "database": {"user": "u", "database": "d"},
                      "handlers": {"resize": {"command": "resize --w 1"}}}, file="w.yaml")
    assert "expected a list of strings, the program first (no shell)" in str(raised.value)
    assert os.access("/bin/sh", os.X_OK)


# -- containment: environment, memory, descendants ---------------------------------------------

# A program that leaves a daemon behind: a child that calls setsid, then forks the daemon and
# exits, so that the daemon is nobody's child and in no group of the program's. The daemon
# writes its pid to argv[1] and sleeps; the program then sleeps too, or exits at once when
# argv[2] is "exit" (after the daemon has written its pid).
DAEMONIZE = """
import os, sys, time
pidfile, then = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        time.sleep(300)
    os._exit(0)
if then == "exit":
    while not os.path.exists(pidfile):
        time.sleep(0.01)
    print("started")
else:
    time.sleep(300)
"""


def running(pid: int) -> bool:
    """Whether process `pid` runs (a zombie left to init does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def daemon_pid(pidfile: Path) -> int:
    return int(wait_until(lambda: pidfile.exists() and pidfile.read_text(),
                          what="the daemon's pid file"))


def test_the_environment_holds_path_home_lang_lc_and_what_env_names_only() -> None:
    host = {"PATH": "/usr/bin:/bin", "HOME": "/var/lib/workerhost", "LANG": "C.UTF-8",
            "LC_TIME": "en_GB.UTF-8", "DB_PASSWORD": "pw", "PYTHONPATH": "/opt/app",
            "AWS_PROFILE": "images"}
    handler = parse_config({"gearman": {"servers": ["127.0.0.1:4730"]},
                            "database": {"user": "u", "database": "d"},
                            "handlers": {"resize": {"command": ["sh", "-c", "cat"], "env": {
                                "AWS_PROFILE": None, "PATH": "/opt/resize/bin"}}}},
                           file="w.yaml", env=host).handlers["resize"]
    job = Job(function="resize", payload=b"{}", unique="u1", handle="H:1", attempt=2)
    assert command.environment(handler, job, host) == {
        "PATH": "/opt/resize/bin", "HOME": "/var/lib/workerhost", "LANG": "C.UTF-8",
        "LC_TIME": "en_GB.UTF-8", "AWS_PROFILE": "images", "WORKERHOST_FUNCTION": "resize",
        "WORKERHOST_UNIQUE": "u1", "WORKERHOST_HANDLE": "H:1", "WORKERHOST_ATTEMPT": "2"}


def test_kill_tree_kills_a_process_and_every_process_below_it(tmp_path: Path) -> None:
    # A child in a session of its own, and its child: both below the root while it lives.
    pidfile = tmp_path / "pids"
    tree = subprocess.Popen([sys.executable, "-c", f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open({str(pidfile)!r} + ".tmp", "w") as f:
            f.write(str(os.getppid()) + " " + str(os.getpid()))
        os.rename({str(pidfile)!r} + ".tmp", {str(pidfile)!r})
    time.sleep(300)
time.sleep(300)
"""])
    try:
        pids = [int(pid) for pid in wait_until(lambda: pidfile.exists() and pidfile.read_text(),
                                               what="the pid file").split()]
        assert sorted(command.descendants(tree.pid)) == sorted(pids)
        command.kill_tree(tree.pid)
        assert tree.wait(timeout=10) == -signal.SIGKILL
        wait_until(lambda: not any(running(pid) for pid in pids), timeout=5,
                   what="its child and grandchild killed")
    finally:
        tree.kill()
        tree.wait()


def test_a_program_sees_only_the_environment_its_handler_names(
    sandbox: Sandbox, items: Any, host_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGE_TOKEN", "t0k3n")  # the host's, passed through by name
    monkeypatch.setenv("UNNAMED_SECRET", "s3cr3t")  # the host's, named nowhere
    program = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]
    host_factory(host_config(sandbox, items.database, {"show_env": {
        "command": program, "env": {"IMAGE_DIR": "/srv/images", "IMAGE_TOKEN": None}}}))
    seen = json.loads(run_job(sandbox, "show_env", {"id": 1}).result)
    assert "SANDBOX_DB_PASSWORD" not in seen, "the database password given as ${VAR}"
    assert not [name for name, value in seen.items() if sandbox.password in value]
    host_only = {name for name in seen if name not in ("PATH", "HOME", "LANG")
                 and not name.startswith(("LC_", "WORKERHOST_"))}
    assert host_only == {"IMAGE_DIR", "IMAGE_TOKEN"}
    assert (seen["IMAGE_DIR"], seen["IMAGE_TOKEN"]) == ("/srv/images", "t0k3n")
    assert seen["PATH"] == os.environ["PATH"]
    assert seen["WORKERHOST_FUNCTION"] == "show_env"


def test_a_program_whose_descendants_pass_max_memory_is_killed_with_them(
    sandbox: Sandbox, items: Any, host_factory: Any, tmp_path: Path
) -> None:
    # The program itself stays small: its child grows, 8 MB at a time, up to 1 GB.
    pidfile = tmp_path / "grower.pid"
    grow = f"""
import os, time
pid = os.fork()
if pid == 0:
    open({str(pidfile)!r}, "w").write(str(os.getpid()))
    data = bytearray()
    while len(data) < 1 << 30:
        data += b"x" * (8 << 20)
        time.sleep(0.02)
    time.sleep(300)
os.waitpid(pid, 0)
"""
    host = host_factory(host_config(sandbox, items.database, {"grow": {
        "command": [sys.executable, "-c", grow], "max_memory": "100MB", "timeout": "30s",
        "retries": {"attempts": 1}}}))
    started = time.monotonic()
    run_job(sandbox, "grow", {"id": 1})
    (letter,) = wait_until(lambda: dead_letters(items), what="a dead letter")
    error = letter[2]
    assert error.startswith(f"{sys.executable} and the processes it started grew to ")
    assert error.endswith("MB, past max_memory (100 MB), and were killed")
    assert time.monotonic() - started < 20, "killed for its memory, not for its timeout"
    assert not running(int(pidfile.read_text())), "the child that grew is gone"
    assert "restarting in" not in host.log(), "the worker itself stays"


def test_a_timeout_leaves_no_descendant_alive_not_even_a_setsid_daemon(
    sandbox: Sandbox, items: Any, host_factory: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "daemon.pid"
    host = host_factory(host_config(sandbox, items.database, {"slow": {
        "command": [sys.executable, "-c", DAEMONIZE, str(pidfile), "sleep"], "timeout": "2s",
        "retries": {"attempts": 1}}}))
    run_job(sandbox, "slow", {"id": 1})
    daemon = daemon_pid(pidfile)
    (letter,) = wait_until(lambda: dead_letters(items), what="a dead letter")
    assert letter[2] == f"{sys.executable} ran past 1.8s and was killed"
    assert not Path(f"/proc/{daemon}").exists(), "the daemon was killed and reaped"
    assert "restarting in" not in host.log(), "the worker itself stays"


def test_a_daemon_a_program_leaves_behind_ends_with_the_job(
    sandbox: Sandbox, items: Any, host_factory: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "daemon.pid"
    host = host_factory(host_config(sandbox, items.database, {"spawn": {
        "command": [sys.executable, "-c", DAEMONIZE, str(pidfile), "exit"]}}))
    assert run_job(sandbox, "spawn", {"id": 1}).result == b"started\n"
    daemon = daemon_pid(pidfile)
    assert not Path(f"/proc/{daemon}").exists(), "killed and reaped before the job's answer"
    host.wait_for_log("left 1 process running; killed it")


def test_a_host_stop_leaves_no_descendant_alive_not_even_a_setsid_daemon(
    sandbox: Sandbox, items: Any, host_factory: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "daemon.pid"
    host = host_factory(host_config(
        sandbox, items.database, {"slow": {
            "command": [sys.executable, "-c", DAEMONIZE, str(pidfile), "sleep"],
            "timeout": "120s"}},
        host={"shutdown_timeout": "1s"}))
    submit_json(sandbox.gearman_server, "slow", [{"id": 1}])
    daemon = daemon_pid(pidfile)
    assert running(daemon)
    host.stop(timeout=30)
    wait_until(lambda: not running(daemon), timeout=5, what="the daemon killed with the host")
    assert "shutdown_timeout passed; killing 1 workers" in host.log()


# -- handlers.NAME.env -------------------------------------------------------------------------

def handler_env(env: Any, host: dict[str, str] | None = None, kind: str = "command") -> Any:
    handler: dict[str, Any] = {"command": ["sh", "-c", "cat"]} if kind == "command" else {
        "sql": "UPDATE t SET a = 1"}
    return parse_config({"gearman": {"servers": ["127.0.0.1:4730"]},
                         "database": {"user": "u", "database": "d"},
                         "handlers": {"resize": {**handler, "env": env}}},
                        file="w.yaml", env=host or {}).handlers["resize"].env


def test_env_sets_values_and_passes_named_host_variables_through() -> None:
    host = {"AWS_PROFILE": "images", "TZ": "UTC", "DB_PASSWORD": "pw"}
    assert dict(handler_env({"IMAGE_DIR": "/srv/images", "WIDTH": 200, "AWS_PROFILE": None},
                            host)) == {"IMAGE_DIR": "/srv/images", "WIDTH": "200",
                                       "AWS_PROFILE": "images"}
    assert dict(handler_env(["AWS_PROFILE", "TZ"], host)) == {"AWS_PROFILE": "images",
                                                              "TZ": "UTC"}
    assert dict(handler_env({"TOKEN": "${DB_PASSWORD}"}, host)) == {"TOKEN": "pw"}
    assert dict(handler_env(None)) == {}


@pytest.mark.parametrize(("env", "message"), [
    ({"AWS_PROFILE": None},
     "w.yaml: handlers.resize.env.AWS_PROFILE: not set in the host's environment, to be passed "
     "through; set it, or give a value (NAME: value)"),
    (["TZ", "AWS_PROFILE"],
     "w.yaml: handlers.resize.env[1]: not set in the host's environment, to be passed "
     "through; set it, or give a value (NAME: value)"),
    (["TZ", "TZ"], "w.yaml: handlers.resize.env[1]: 'TZ' is listed twice"),
    ({"WORKERHOST_ATTEMPT": "9"},
     "w.yaml: handlers.resize.env.WORKERHOST_ATTEMPT: 'WORKERHOST_ATTEMPT': the host sets the "
     "WORKERHOST_ variables itself"),
    ({"IMAGE-DIR": "/srv"},
     "w.yaml: handlers.resize.env.IMAGE-DIR: expected a variable name (letters, digits, _), "
     "got 'IMAGE-DIR'"),
    ({"SIZES": [1, 2]},
     "w.yaml: handlers.resize.env.SIZES: expected a string or a number, got a list; quote it"),
    ({"DEBUG": True},
     "w.yaml: handlers.resize.env.DEBUG: expected a string or a number, got true; quote it"),
    ("TZ=UTC",
     "w.yaml: handlers.resize.env: expected a mapping of NAME: value, or a list of names "
     "passed through from the host's environment, got 'TZ=UTC'"),
])
def test_a_bad_env_names_the_file_and_key(env: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        handler_env(env, {"TZ": "UTC"})
    assert str(raised.value) == message


def test_env_is_for_command_handlers_only() -> None:
    with pytest.raises(ConfigError) as raised:
        handler_env({"TZ": "UTC"}, kind="sql")
    assert str(raised.value) == "w.yaml: handlers.resize.env: applies to command: handlers only"
