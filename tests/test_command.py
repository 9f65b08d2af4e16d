"""`command:` handlers: a program in any language per job, under the host's guarantees."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import gearman
import pytest
from conftest import host_config, scalar, wait_until

from workerhost.config import parse_config
from workerhost.errors import ConfigError
from workerhost.sandbox import Sandbox


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
