"""The command line as a user meets it: where -c may stand and where the file comes from when it
is left out, the dead-letter verbs' answers, `status` without its servers, `run` waiting for
the database."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ON_FIRST_SERVER, ROOT, host_config, host_env, wait_until

from workerhost import cli
from workerhost.cli import common
from workerhost.cli import parser as cli_parser
from workerhost.exitcodes import RET_CONFIG, RET_CONNECT, RET_ERROR, RET_OK, RET_USAGE
from workerhost.sandbox.stack import Sandbox
from workerhost.store.deadletters import payload_text

VALID = {"gearman": {"servers": ["127.0.0.1:4730"]},
         "database": {"user": "u", "database": "d"},
         "handlers": {"touch": {"sql": "UPDATE t SET a = 1 WHERE id = %(id)s"}}}
# Nothing listens on port 1: a refused connection, at once.
UNREACHABLE = {**VALID, "gearman": {"servers": ["127.0.0.1:1"]},
               "database": {"host": "127.0.0.1", "port": 1, "user": "u", "database": "d"}}


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


BROKEN_HANDLER = {**UNREACHABLE, "handlers": {"touch": {"python": "broken_handlers:run"}}}


@pytest.mark.parametrize(("argv", "code"), [
    (["check"], RET_CONFIG),  # check imports the handlers: the broken module is reported
    (["triggers"], RET_OK),  # the verbs that never run a handler do not import it ...
    (["jobs", "list"], RET_CONNECT),  # (as far as the database, unreachable here)
])
def test_only_the_verbs_that_run_or_check_handlers_import_them(
    argv: list[str], code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """... so that a handler module that fails to import (or is slow to) leaves them usable."""
    (tmp_path / "broken_handlers.py").write_text("raise ImportError('broken on purpose')\n")
    config = write(tmp_path / "broken.yaml", BROKEN_HANDLER)
    assert cli.main([*argv, "-c", str(config)]) == code
    err = capsys.readouterr().err
    assert ("broken on purpose" in err) == (argv == ["check"]), err
    assert "broken_handlers" not in sys.modules


@pytest.mark.parametrize("argv", [
    ["dead-letters", "list", "-c", "{}"],
    ["dead-letters", "-c", "{}", "list"],
    ["-c", "{}", "dead-letters", "list"],
    ["dead-letters", "show", "7", "-c", "{}"],
    ["outbox", "drain", "-c", "{}"],
    ["status", "-c", "{}"],
])
def test_c_may_stand_before_or_after_the_sub_action(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.yaml"  # loading it fails at once, naming it: -c got through
    assert cli.main([word.format(missing) for word in argv]) == RET_CONFIG
    assert f"{missing}: file not found" in capsys.readouterr().err


def leaves(parser: argparse.ArgumentParser, inherited: bool = False) -> list[tuple[str, bool]]:
    """Every parser without sub-actions: its prog, and whether it or one above it reads the file."""
    reads = inherited or bool(parser.get_default("needs_config"))
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += leaves(child, reads)
    return found or [(parser.prog, reads and "-c" in parser._option_string_actions)]


def test_every_action_of_a_verb_that_reads_the_file_takes_c_itself() -> None:
    found = leaves(cli_parser.build_parser())
    assert ("workerhost dead-letters list", True) in found
    assert [prog for prog, takes in found if not takes and not prog.startswith(
        ("workerhost sandbox", "workerhost udf build"))] == []


def test_workerhost_config_names_the_file_when_c_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    named = write(tmp_path / "named.yaml", VALID)
    monkeypatch.setenv(common.CONFIG_ENV, str(named))
    monkeypatch.setattr(common, "DEFAULT_CONFIG", write(tmp_path / "default.yaml", UNREACHABLE))
    assert cli.main(["check"]) == RET_OK
    assert capsys.readouterr().out.startswith(f"{named}: valid")
    other = write(tmp_path / "other.yaml", VALID)
    assert cli.main(["check", "-c", str(other)]) == RET_OK, "-c comes before the variable"
    assert capsys.readouterr().out.startswith(f"{other}: valid")


def test_the_default_file_is_read_when_nothing_names_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(common.CONFIG_ENV, raising=False)
    default = write(tmp_path / "workerhost.yaml", VALID)
    monkeypatch.setattr(common, "DEFAULT_CONFIG", default)
    assert cli.main(["check"]) == RET_OK
    assert capsys.readouterr().out.startswith(f"{default}: valid")


def test_without_any_file_the_error_says_the_three_ways_to_give_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(common.CONFIG_ENV, raising=False)
    monkeypatch.setattr(common, "DEFAULT_CONFIG", tmp_path / "absent.yaml")
    assert cli.main(["dead-letters", "list"]) == RET_USAGE
    err = capsys.readouterr().err
    assert "-c FILE" in err and "WORKERHOST_CONFIG" in err and str(tmp_path / "absent.yaml") in err


def test_the_documented_default_is_the_systemd_units_file() -> None:
    assert str(common.DEFAULT_CONFIG) == "/etc/workerhost/workerhost.yaml"
    unit = (ROOT / "examples" / "workerhost.service").read_text()
    assert f"-c {common.DEFAULT_CONFIG}" in unit
    assert f"{common.CONFIG_ENV}" in (ROOT / "docs" / "configuration.md").read_text()


def test_payload_text_is_text_or_escaped_bytes_never_a_bytes_repr() -> None:
    assert payload_text('{"name": "Zoë"}'.encode(), 4096) == '{"name": "Zoë"}'
    assert payload_text(b"\x00\xffab", 4096) == "\\x00\\xffab (not UTF-8: \\xNN escapes)"
    assert payload_text(b"red \x1b[31m", 4096) == "red \\x1b[31m", "no terminal escapes"
    assert payload_text("é".encode() * 3, 5) == "éé (the first 5 of 6 bytes)"


def test_plural() -> None:
    assert [common.plural(n, "dead letter") for n in (0, 1, 2)] == [
        "0 dead letters", "1 dead letter", "2 dead letters"]


def test_status_says_each_failure_once(tmp_path: Path) -> None:
    config = write(tmp_path / "workerhost.yaml", UNREACHABLE)
    for argv in (["status"], ["status", "--json"]):
        shown = subprocess.run([sys.executable, "-m", "workerhost.cli", *argv, "-c", str(config)],
                               capture_output=True, text=True, timeout=60, check=False)
        assert shown.returncode == 4, shown.stderr
        both = shown.stdout + shown.stderr
        assert both.count("Connection refused") == (2 if "--json" in argv else 1), both
        assert both.count("Can't connect to MySQL server") == (2 if "--json" in argv else 1)


def test_run_says_it_waits_for_the_database_and_a_stop_ends_the_wait(tmp_path: Path) -> None:
    config = write(tmp_path / "workerhost.yaml", UNREACHABLE)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "workerhost.cli", "run", "-c",
                                    str(config)], stdout=out, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        # The database waits up to 15 s (db.PATIENCE); the line comes well before.
        wait_until(lambda: "waiting for database 'd' at 127.0.0.1:1" in log.read_text(),
                   timeout=8, what="the line that says run waits for the database")
        assert "WARNING" in log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == RET_OK
        assert "stopped during start-up" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@ON_FIRST_SERVER
def test_dead_letter_verbs_name_an_unknown_id_and_exit_1_alike(
    sandbox: Sandbox, db: Any, tmp_path: Path
) -> None:
    path = write(tmp_path / "workerhost.yaml", host_config(sandbox, db.database, {
        "h": {"sql": "DELETE FROM t WHERE id = %(id)s"}}))

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workerhost.cli", *argv],
                              capture_output=True, text=True, env=host_env(sandbox),
                              timeout=60, check=False)

    assert run("check", "--connect", "-c", str(path)).returncode == 0
    cursor = db.cursor()
    cursor.execute(
        "INSERT INTO workerhost_dead_letters (`function`, payload, attempts, error) VALUES "
        "('h', %s, 3, 'boom'), ('h', %s, 3, 'bang')",
        ('{"name": "Zoë"}'.encode(), b"\x00\xff binary"))
    cursor.execute("SELECT id FROM workerhost_dead_letters ORDER BY id")
    first, second = (row[0] for row in cursor.fetchall())
    unknown = second + 1000

    listed = run("dead-letters", "list", "-c", str(path))
    assert listed.returncode == 0 and listed.stdout.endswith("\n2 dead letters\n")
    shown = run("dead-letters", "show", str(first), "-c", str(path))
    assert 'payload          {"name": "Zoë"}\n' in shown.stdout
    binary = run("dead-letters", "show", str(second), "-c", str(path))
    assert "payload          \\x00\\xff binary (not UTF-8: \\xNN escapes)" in binary.stdout
    assert "b'" not in shown.stdout + binary.stdout

    for verb in ("show", "retry", "purge"):
        answer = run("dead-letters", verb, str(unknown), "-c", str(path))
        assert answer.returncode == RET_ERROR, (verb, answer.stdout, answer.stderr)
        assert f"no dead letter with id {unknown}" in answer.stderr, verb
    assert run("dead-letters", "list", "-c", str(path)).stdout.endswith("\n2 dead letters\n")

    retried = run("dead-letters", "retry", str(first), str(unknown), "-c", str(path))
    assert retried.returncode == RET_ERROR
    assert retried.stdout == "1 dead letter queued again\n"
    assert f"no dead letter with id {unknown}" in retried.stderr
    purged = run("dead-letters", "purge", str(second), "-c", str(path))
    assert (purged.returncode, purged.stdout) == (RET_OK, "1 dead letter deleted\n")
    assert run("dead-letters", "list", "-c", str(path)).stdout.endswith("\n0 dead letters\n")
