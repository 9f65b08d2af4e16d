"""Progress of long CLI operations: `outbox drain` and `dead-letters retry --all`."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import StallingProxy, host_config, host_env, scalar, sequence

from workerhost.observe.progress import BAR_WIDTH, Progress
from workerhost.sandbox.stack import Sandbox
from workerhost.store import schema
from workerhost.store.db import Database


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_pipe_gets_a_plain_line_at_most_every_second_and_a_final_one() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress("rows shipped", 300, stream=out, clock=clock) as bar:
        for _ in range(3):
            bar.advance(50)  # all within the same second: no line
        clock.now = 1.5
        bar.advance(100)
        bar.advance(50)
    assert out.getvalue().splitlines() == [
        "rows shipped: 0/300", "rows shipped: 250/300", "rows shipped: 300/300"]


def test_a_terminal_gets_one_bar_redrawn_in_place() -> None:
    out = FakeTerminal()
    with Progress("rows shipped", 4, stream=out) as bar:
        bar.advance(1)
        bar.advance(3)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    assert last == f"rows shipped [{'#' * BAR_WIDTH}] 100% 4/4"
    assert f"rows shipped [{'#' * 8}{'.' * (BAR_WIDTH - 8)}]  25% 1/4\r" in text


def test_more_done_than_expected_shows_the_count_alone() -> None:
    out = io.StringIO()
    with Progress("moved", 0, stream=out, every=0) as bar:
        bar.advance(3)
    assert out.getvalue().splitlines()[-1] == "moved: 3"


# -- the CLI -------------------------------------------------------------------------------


def workerhost(sandbox: Sandbox, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workerhost.cli", *args[:1], "-c", str(config),
                           *args[1:]], capture_output=True, text=True, env=host_env(sandbox),
                          timeout=120, check=False)  # fmt: skip


def test_outbox_drain_ships_the_due_rows_and_leaves_the_later_ones(
    sandbox: Sandbox, db: Any, tmp_path: Path
) -> None:
    function = f"drained_{uuid.uuid4().hex[:8]}"
    config = tmp_path / "workerhost.yaml"
    config.write_text(yaml.safe_dump(host_config(sandbox, db.database, {
        "touch": {"sql": "UPDATE t SET a = 1 WHERE id = %(id)s"}}, host={"relay": {"batch": 100}})))
    assert workerhost(sandbox, config, "check", "--connect").returncode == 0
    cursor = db.cursor()
    cursor.execute("INSERT INTO workerhost_outbox (`function`, payload) SELECT %s, "
                   f"CONCAT('{{\"id\": ', seq, '}}') FROM {sequence(1, 250)}", (function,))
    cursor.execute("INSERT INTO workerhost_outbox (`function`, payload, not_before) VALUES "
                   "(%s, '{}', NOW(6) + INTERVAL 1 HOUR)", (function,))
    drained = workerhost(sandbox, config, "outbox", "drain")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout == ("250 outbox rows shipped; 0 due, 1 delayed, 250 leased until "
                              "their job's effect commits\n")
    lines = drained.stderr.splitlines()  # not a terminal: plain lines, the last one final
    assert lines[0] == "outbox rows shipped: 0/250" and lines[-1] == "outbox rows shipped: 250/250"
    assert sandbox.gearman_status()[function].queued == 250
    # Shipped rows stay in the ledger, leased, until a worker commits their job's effect.
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE ships = 1") == 250
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE ships = 0") == 1


def test_outbox_drain_without_gearmand_exits_4_and_keeps_the_rows(
    sandbox: Sandbox, db: Any, tmp_path: Path
) -> None:
    config = tmp_path / "workerhost.yaml"
    config.write_text(yaml.safe_dump(host_config(sandbox, db.database, {
        "touch": {"sql": "UPDATE t SET a = 1 WHERE id = %(id)s"}},
        gearman={"servers": ["127.0.0.1:1"]})))
    host_db = Database({"host": "127.0.0.1", "port": sandbox.mysql_port, "user": sandbox.user,
                        "password": sandbox.password, "database": db.database})
    host_db.run(schema.create)
    host_db.close()
    db.cursor().execute("INSERT INTO workerhost_outbox (`function`, payload) VALUES ('x', '{}')")
    drained = workerhost(sandbox, config, "outbox", "drain")
    assert drained.returncode == 4
    assert "outbox drain stopped after 0 rows" in drained.stderr
    assert "Traceback" not in drained.stderr
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 1


def test_outbox_drain_through_a_gearmand_that_stalls_ships_every_row_once(
    sandbox: Sandbox, db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    """A gearmand that stalls after every 50 jobs for longer than the relay waits: the drain
    ships what it answered, halves its batches, says so, tries a batch it answered none of
    again, smaller, and goes on until every row is shipped, each leased once."""
    from workerhost.cli import main
    from workerhost.host import relay

    monkeypatch.setattr(relay, "ACCEPT_TIMEOUT", 0.5)
    monkeypatch.setenv("SANDBOX_DB_PASSWORD", sandbox.password)
    proxy = StallingProxy(sandbox.gearman_port, passes=50, stall=1.0)
    function = f"stalled_{uuid.uuid4().hex[:8]}"
    config = tmp_path / "workerhost.yaml"
    config.write_text(yaml.safe_dump(host_config(
        sandbox, db.database, {"touch": {"sql": "UPDATE t SET a = 1 WHERE id = %(id)s"}},
        gearman={"servers": [f"127.0.0.1:{proxy.port}"]}, host={"relay": {"batch": 100}})))
    host_db = Database({"host": "127.0.0.1", "port": sandbox.mysql_port, "user": sandbox.user,
                        "password": sandbox.password, "database": db.database})
    host_db.run(schema.create)
    host_db.close()
    db.cursor().execute("INSERT INTO workerhost_outbox (`function`, payload) SELECT %s, '{}' "
                        f"FROM {sequence(1, 200)}", (function,))
    try:
        assert main(["outbox", "drain", "-c", str(config)]) == 0
    finally:
        proxy.close()
    out, err = capsys.readouterr()
    assert out.startswith("200 outbox rows shipped; 0 due"), (out, err)
    said = caplog.text  # the relay's warnings (on stderr, outside pytest)
    assert "did not take the jobs: timed out (it answered 50 of 100); the 50 rows it " \
           "answered are shipped, the rest stay due; the next batch has 50 rows at most " \
           "(host.relay.batch: 100)" in said, said
    # The second connection answers a batch of 50, then stalls on the next one's first job.
    assert "did not take the jobs: timed out; the next batch has 25 rows at most " \
           "(host.relay.batch: 100); trying again" in err, err
    assert err.splitlines()[-1] == "outbox rows shipped: 200/200", err
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE ships = 1") == 200


def test_retry_all_moves_every_dead_letter_back_in_batches(
    sandbox: Sandbox, db: Any, tmp_path: Path
) -> None:
    config = tmp_path / "workerhost.yaml"
    config.write_text(yaml.safe_dump(host_config(sandbox, db.database, {
        "touch": {"sql": "UPDATE t SET a = 1 WHERE id = %(id)s"}})))
    assert workerhost(sandbox, config, "check", "--connect").returncode == 0
    db.cursor().execute("INSERT INTO workerhost_dead_letters (`function`, payload, attempts, "
                        f"error) SELECT 'touch', '{{}}', 3, 'boom' FROM {sequence(1, 250)}")
    retried = workerhost(sandbox, config, "dead-letters", "retry", "--all")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout == "250 dead letters queued again\n"
    assert retried.stderr.splitlines()[-1] == "dead letters queued again: 250/250"
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE `function` = 'touch'") == 250
