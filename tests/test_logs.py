"""Logs: JSON lines that carry the job's fields, and never a password or a whole payload."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gearman
import pytest
import yaml
from conftest import RunningHost, host_config, host_env, wait_until

from workerhost.model.job import Job
from workerhost.observe import logs
from workerhost.sandbox.stack import Sandbox

# Handlers that fail the way real ones leak secrets: a connection string in an exception, and
# a database error that quotes the statement. They read the password from the environment.
LEAKY_HANDLERS = '''
import os

PASSWORD = os.environ["SANDBOX_DB_PASSWORD"]


def connection_string(job, db):
    raise RuntimeError(f"cannot reach mysql://workerhost:{PASSWORD}@replica/app")


def bad_statement(job, db):
    db.cursor().execute(f"SELEC '{PASSWORD}'")


def quotes_payload(job, db):
    raise ValueError(f"refusing {job.payload.decode()}")
'''
# Bytes of a payload that must not reach the log; under the 64 KiB that the attempts table's
# TEXT column takes, since the handler's error quotes the whole payload.
BIG = 20_000


@pytest.fixture
def isolated_logging() -> Iterator[None]:
    """logs.setup() replaces the root logger's handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level, secrets = root.handlers[:], root.level, logs._secrets[:]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logs._secrets[:] = secrets


def submit(sandbox: Sandbox, function: str, payloads: list[bytes]) -> None:
    client = gearman.GearmanClient([sandbox.gearman_server])
    client.submit_multiple_jobs([{"task": function, "data": p} for p in payloads],
                                background=True, wait_until_complete=False)
    client.shutdown()


def cli(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workerhost.cli", *args], capture_output=True,
                          text=True, env=host_env(sandbox), timeout=60, check=False)


def dead_letters(db: Any) -> int:
    cursor = db.cursor()
    cursor.execute("SELECT COUNT(*) FROM workerhost_dead_letters")
    (count,) = cursor.fetchone()
    cursor.close()
    return int(count)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_no_log_line_shows_the_password_or_a_whole_payload(
    sandbox: Sandbox, db: Any, tmp_path: Path, fmt: str
) -> None:
    (tmp_path / "leaky_handlers.py").write_text(LEAKY_HANDLERS)
    config = tmp_path / "workerhost.yaml"
    config.write_text(yaml.safe_dump(host_config(sandbox, db.database, {
        name: {"python": f"leaky_handlers:{name}", "retries": {"attempts": 2, "backoff": "50ms"}}
        for name in ("connection_string", "bad_statement", "quotes_payload")
    })))
    host = RunningHost(config, tmp_path / "host.log", host_env(sandbox),
                       ["--log-format", fmt, "--log-level", "debug"])
    try:
        host.wait_for_log("worker for", count=3)
        submit(sandbox, "connection_string", [b'{"id": 1}'])
        submit(sandbox, "bad_statement", [b'{"id": 2}'])
        submit(sandbox, "quotes_payload", [b'{"id": 3, "blob": "' + b"Z" * BIG + b'"}'])
        wait_until(lambda: dead_letters(db) == 3, what="three dead letters")
        host.wait_for_log("dead-lettered", count=3)
        assert host.stop() == 0
    finally:
        host.kill()
    text = host.log()
    assert sandbox.password not in text
    assert "Z" * 5000 not in text
    assert "more characters not logged" in text
    assert "cannot reach mysql://workerhost:***@replica/app" in text
    assert "You have an error in your SQL syntax" in text, "the database error is logged"
    if fmt == "json":
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        failures = [e for e in entries if e["message"].startswith("job ")]
        assert {e["function"] for e in failures} == {
            "connection_string", "bad_statement", "quotes_payload"}
        for entry in failures:
            # A retry scheduled is a warning; the dead letter after it an error.
            assert entry["level"] == ("warning" if "will be retried" in entry["message"]
                                      else "error")
            assert entry["handle"].startswith("H:") and entry["attempt"] in (1, 2)
            assert "unique" in entry and isinstance(entry["pid"], int)


def test_json_lines_carry_the_job_fields(
    isolated_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("json", "info")
    job = Job(function="resize", payload=b"{}", unique="u-1", handle="H:host:7", attempt=2)
    logging.getLogger("workerhost.worker").error("job %s failed", job.describe(),
                                                 extra=logs.job_fields(job))
    entry = json.loads(capsys.readouterr().err)
    assert entry["message"] == "job resize handle=H:host:7 unique='u-1' attempt=2 failed"
    assert (entry["function"], entry["handle"], entry["unique"], entry["attempt"]) == (
        "resize", "H:host:7", "u-1", 2)
    assert (entry["level"], entry["logger"]) == ("error", "workerhost.worker")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_secret_is_masked_in_messages_arguments_fields_and_tracebacks(
    isolated_logging: None, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    logs.setup(fmt, "debug")
    logs.redact("s3cr3t-pw", "")
    log = logging.getLogger("workerhost.test")
    log.info("password is s3cr3t-pw")
    log.info("dsn %s", "mysql://u:s3cr3t-pw@h/db", extra={"unique": "key-s3cr3t-pw"})
    try:
        raise RuntimeError("auth failed for s3cr3t-pw")
    except RuntimeError:
        log.exception("connect failed")
    err = capsys.readouterr().err
    assert "s3cr3t-pw" not in err
    for masked in ("password is ***", "dsn mysql://u:***@h/db", "auth failed for ***"):
        assert masked in err
    if fmt == "json":
        entries = [json.loads(line) for line in err.splitlines()]
        assert entries[1]["unique"] == "key-***"
        assert "RuntimeError: auth failed for ***" in entries[2]["exception"]


def test_a_long_message_is_cut(
    isolated_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("text", "info")
    logging.getLogger("workerhost.test").warning("payload %s", "x" * (logs.MAX_MESSAGE * 3))
    err = capsys.readouterr().err
    assert "x" * logs.MAX_MESSAGE not in err
    assert f"... ({logs.MAX_MESSAGE * 3 + 8 - logs.MAX_MESSAGE} more characters not logged)" in err


def test_every_password_redacted_stays_masked_in_its_escaped_spellings_too(
    isolated_logging: None,
) -> None:
    old, new = "old'pw\\1", 'new"pw'
    logs.redact(old)
    logs.redact(new)  # a reload that changed the password
    for text in (old, new, repr(old), repr(new), json.dumps(old), json.dumps(new),
                 "'old\\'pw\\\\1'", "'old''pw\\1'"):
        assert old not in logs.scrub(text) and new not in logs.scrub(text)
        assert "pw" not in logs.scrub(text), f"{text!r} -> {logs.scrub(text)!r}"
    # mask() adds secrets of its own for one call, without registering them.
    assert logs.mask("dsn u:other@h and u:new\"pw@h", "other") == "dsn u:***@h and u:***@h"
    assert logs.mask("other") == "other"


RELOAD_HANDLER = '''
def quotes_payload(job, db):
    raise ValueError(f"refusing {job.payload.decode()}")
'''


def test_after_a_reload_the_new_password_is_masked_and_the_old_one_too(
    sandbox: Sandbox, db: Any, tmp_path: Path
) -> None:
    user, password = f"wh_{uuid.uuid4().hex[:8]}", f"fresh-{uuid.uuid4().hex}"
    admin = sandbox.connect()
    admin.cursor().execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
    admin.cursor().execute(f"GRANT ALL ON `{db.database}`.* TO '{user}'@'%'")
    (tmp_path / "reload_handlers.py").write_text(RELOAD_HANDLER)
    handlers = {"quotes_payload": {"python": "reload_handlers:quotes_payload",
                                   "retries": {"attempts": 1}}}
    config = host_config(sandbox, db.database, handlers)
    path = tmp_path / "workerhost.yaml"
    path.write_text(yaml.safe_dump(config))
    host = RunningHost(path, tmp_path / "host.log", host_env(sandbox))
    try:
        host.wait_for_log("worker for")
        config["database"].update(user=user, password=password)
        path.write_text(yaml.safe_dump(config))
        host.signal(signal.SIGHUP)
        host.wait_for_log("configuration reloaded")
        host.wait_for_log("worker for", count=2)
        for secret in (password, sandbox.password):
            submit(sandbox, "quotes_payload", [json.dumps({"dsn": f"u:{secret}@h"}).encode()])
        wait_until(lambda: dead_letters(db) == 2, what="two dead letters")
        host.wait_for_log("dead-lettered", count=2)
        assert host.stop() == 0
    finally:
        host.kill()
        admin.cursor().execute(f"DROP USER '{user}'@'%'")
        admin.close()
    text = host.log()
    assert password not in text and sandbox.password not in text
    assert text.count("u:***@h") == 2


def test_dead_letters_list_and_show_mask_the_password(
    sandbox: Sandbox, db: Any, tmp_path: Path
) -> None:
    path = tmp_path / "workerhost.yaml"
    path.write_text(yaml.safe_dump(host_config(sandbox, db.database, {
        "h": {"sql": "DELETE FROM t WHERE id = %(id)s"}})))
    assert cli(sandbox, "check", "-c", str(path), "--connect").returncode == 0
    secret = sandbox.password
    cursor = db.cursor()
    cursor.execute(
        "INSERT INTO workerhost_dead_letters (`function`, payload, unique_key, attempts, error, "
        "traceback) VALUES ('h', %s, %s, 3, %s, %s)",
        (json.dumps({"dsn": f"u:{secret}@h"}).encode(), f"key-{secret}",
         f"cannot reach mysql://workerhost:{secret}@replica/app\nsecond line",
         f"Traceback (most recent call last):\nRuntimeError: {secret!r}"))
    (ident,) = cursor.fetchone() or (cursor.lastrowid,)
    cursor.close()
    listed = cli(sandbox, "dead-letters", "-c", str(path), "list")
    shown = cli(sandbox, "dead-letters", "-c", str(path), "show", str(ident))
    for result in (listed, shown):
        assert result.returncode == 0, result.stderr
        assert secret not in result.stdout
    assert "cannot reach mysql://workerhost:***@replica/app" in listed.stdout
    for masked in ("key-***", "u:***@h", "RuntimeError: '***'", "workerhost:***@replica"):
        assert masked in shown.stdout
