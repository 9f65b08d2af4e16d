"""Exactly once, tried as an unlucky operator and as an attacker would: a row shipped to two
gearmand servers, copies forged by an SQL account with no privileges, a handler that commits
through SQL or leaves rows unread, and a row held by an open transaction.

Every case ends with each effect applied once (trigger_handlers.capture counts second runs).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import (
    ROOT,
    apply_triggers,
    captured_runs,
    host_env,
    scalar,
    sequence,
    wait_until,
    work_on_events,
)

from workerhost.gearman import admin as gearadmin
from workerhost.sandbox.processes import free_port
from workerhost.sandbox.stack import Sandbox


def ledger_empty(db: Any) -> bool:
    return scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 0


@pytest.fixture
def nobody(udf: Sandbox) -> Iterator[Any]:
    """A connection of an account with no privileges at all (USAGE): it may call the UDF,
    as any account may, and nothing else."""
    user, password = "nobody_" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    admin = udf.connect()
    admin.cursor().execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
    conn = udf.connect(user=user, password=password)
    try:
        yield conn
    finally:
        conn.close()
        admin.cursor().execute(f"DROP USER '{user}'@'%'")
        admin.close()


def test_two_gearmand_and_a_backlog_past_the_lease_apply_each_effect_once(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
    gearmand_factory: Callable[..., Any],
) -> None:
    """The relay ships a row again, to the other server, every time its lease runs out while
    the backlog waits behind a slow handler: many copies of each row, each effect once."""
    second = gearmand_factory("builtin")
    config = work_on_events(udf, events.database, "outbox",
                       {"python": "trigger_handlers:capture_with_pause", "batch": 4},
                       host={"relay": {"enabled": True, "interval": "20ms", "lease": "300ms"}})
    config["gearman"]["servers"] = [udf.gearman_server, second.server]
    rows = 80  # 50 ms each on one worker: 4 s of backlog, a dozen leases
    events.cursor().execute(f"INSERT INTO events (id) SELECT seq FROM {sequence(1, rows)}")
    host_factory(config)
    wait_until(lambda: (scalar(events, "SELECT MAX(ships) FROM workerhost_outbox") or 0) >= 2,
               timeout=30, what="rows shipped again, to the other gearmand, after their lease")
    wait_until(lambda: len(captured_runs(events)) == rows, timeout=90, what="every row's effect")
    wait_until(lambda: ledger_empty(events), what="an empty ledger")
    assert set(captured_runs(events).values()) == {1}, "no effect applied twice"
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_refused") == 0


def test_copies_forged_by_an_account_with_no_privileges_change_nothing(
    udf: Sandbox, events: Any, nobody: Any, host_factory: Callable[..., Any], tmp_path: Any,
) -> None:
    config = work_on_events(udf, events.database, "immediate",
                       {"python": "trigger_handlers:capture",
                        "retries": {"attempts": 2, "backoff": "100ms"}})
    events.cursor().execute(f"INSERT INTO events (id) SELECT seq FROM {sequence(1, 20)}")
    low = scalar(events, "SELECT MIN(id) FROM workerhost_outbox")
    # While the real jobs wait in gearmand: every ledger id, and some past it, three times
    # over, with guessed tokens and payloads of the attacker's own, at high priority, so that
    # gearmand hands them out first, while the rows they name are there.
    cursor = nobody.cursor()
    for ident in range(low, low + 30):
        for guess in ("x", "0" * 32, str(uuid.uuid4())):
            cursor.execute("SELECT gman_do_high_background('work', %s, %s)",
                           ('{"id": 666, "event_id": "forged"}', f"L{ident}:{guess}"))
            assert cursor.fetchone()[0] is not None, "the UDF takes any account's jobs"
    cursor.close()
    host_factory(config)
    wait_until(lambda: len(captured_runs(events)) == 20 and ledger_empty(events),
               what="the 20 real jobs")
    # The 60 naming a row were refused; the 30 naming no row did nothing.
    wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_refused") == 60,
               what="the forgeries refused")
    assert captured_runs(events) == {i: 1 for i in range(1, 21)}, "each effect once, no forged one"
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_attempts") == 0, \
        "a forgery counts no failure against the row it names"
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0
    assert scalar(events, "SELECT MAX(LENGTH(head)) FROM workerhost_refused") <= 256
    # Nothing brings a refused delivery back: not the CLI's retry of every dead letter.
    path = tmp_path / "host.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    retry = subprocess.run(
        [sys.executable, "-m", "workerhost.cli", "dead-letters", "-c", str(path), "retry",
         "--all"], env=host_env(udf), capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert retry.returncode in (0, 1), retry.stderr
    time.sleep(0.5)  # what a retry would have run: give it the time to show
    assert captured_runs(events) == {i: 1 for i in range(1, 21)}


def test_the_udf_that_makes_a_rows_token_gives_no_account_a_way_to_it(
    udf: Sandbox, events: Any, nobody: Any, host_factory: Callable[..., Any],
    udf_config: Callable[..., None],
) -> None:
    """gman_token() and gman_ship_ledger() are any account's to call, as every UDF is: the
    tokens they make are no row's, the ship never returns one, and what they send is refused
    like any forgery, while the trigger's own jobs run once each."""
    # One process, which takes the jobs in gearmand's order.
    config = work_on_events(udf, events.database, "immediate",
                            {"python": "trigger_handlers:capture", "processes": 1})
    # The trigger's ships fail (no gearmand there): its rows wait for the relay, so that the
    # account's jobs are queued first and handed out while the rows they name are there.
    udf_config(servers=f"127.0.0.1:{free_port()}")
    events.cursor().execute(f"INSERT INTO events (id) SELECT seq FROM {sequence(1, 20)}")
    udf_config()
    cursor = events.cursor()
    cursor.execute("SELECT id, token FROM workerhost_outbox WHERE ships = 0 ORDER BY id")
    tokens = {int(ident): str(token) for ident, token in cursor.fetchall()}
    assert len(tokens) == 20 and len(set(tokens.values())) == 20, "made due at once"
    assert all(re.fullmatch("[0-9A-F]{32}", token) for token in tokens.values())
    forged = nobody.cursor()
    # A token of its own, then ships naming every row: the first takes the token (and
    # returns the row's name only), the others find none and send nothing.
    forged.execute("SELECT gman_token()")
    (made,) = forged.fetchone()
    made = made.decode() if isinstance(made, bytes) else made
    assert re.fullmatch("[0-9A-F]{32}", made) and made not in tokens.values()
    sent = []
    for ident in tokens:
        forged.execute("SELECT gman_ship_ledger('work', %s)", (ident,))
        (shipped,) = forged.fetchone()
        sent.append(shipped.decode() if isinstance(shipped, bytes) else shipped)
    first = min(tokens)
    assert sent == [f"L{first}"] + [None] * 19
    # A fresh token beside each ship, in one statement: 20 more jobs, each with a token that
    # is no row's.
    forged.execute("SELECT gman_token(), gman_ship_ledger('work', id) FROM "
                   f"(SELECT {first} + seq - 1 AS id FROM {sequence(1, 20)}) AS ids")
    rows = forged.fetchall()
    assert all(ship is not None for _, ship in rows)
    assert not {(t.decode() if isinstance(t, bytes) else t) for t, _ in rows} & set(
        tokens.values())
    forged.close()
    host_factory(config)
    wait_until(lambda: len(captured_runs(events)) == 20 and ledger_empty(events),
               what="the 20 real jobs")

    def queued() -> int:
        found = gearadmin.status("127.0.0.1", udf.gearman_port).get("work")
        return found.queued if found else 0

    wait_until(lambda: queued() == 0, what="the account's 21 jobs handed out")
    # Each was refused, or answered without running: when the real job of its row ran first
    # (the relay locks a row while it ships it, so a forgery that came first may have found
    # its row held, and come back after the real job), or in the same batch (a refused job
    # is settled alone, after the batch; its row is gone by then). None carries a row's token.
    cursor.execute("SELECT unique_key FROM workerhost_refused")
    refused = [unique.decode() if isinstance(unique, bytes) else str(unique)
               for (unique,) in cursor.fetchall()]
    assert len(refused) <= 21, refused
    assert not any(unique.split(":")[-1] in tokens.values() for unique in refused)
    assert captured_runs(events) == {i: 1 for i in range(1, 21)}, "each effect once"
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_attempts") == 0


@pytest.mark.parametrize("end", [
    "COMMIT", "ROLLBACK", "START TRANSACTION", "SET autocommit = 1",
    "CREATE TABLE sneaky (id INT)", "LOCK TABLES captured WRITE",
])
def test_a_handler_that_ends_the_transaction_through_sql_applies_its_effect_once(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any], end: str,
) -> None:
    config = work_on_events(udf, events.database, "outbox",
                       {"python": "trigger_handlers:commit_on_first_attempt",
                        "retries": {"attempts": 3, "backoff": "100ms"}})
    config["handlers"]["after"] = {"python": "trigger_handlers:report_session",
                                   "accept": "any"}
    events.cursor().execute("ALTER TABLE events ADD COLUMN `end` VARCHAR(100)")
    config["triggers"][0]["columns"] = ["id", "end"]
    apply_triggers(config, udf)
    host = host_factory(config)
    events.cursor().execute("INSERT INTO events (id, `end`) VALUES (1, %s)", (end,))
    wait_until(lambda: ledger_empty(events) and captured_runs(events), what="the job done")
    assert captured_runs(events) == {1: 1}, "the first attempt's effect was rolled back"
    cursor = events.cursor()
    cursor.execute("SELECT attempt FROM captured WHERE row_id = 1")
    assert cursor.fetchone()[0] == 2, "the first attempt failed, and counted"
    cursor.close()
    assert "the handler tried to end the host's transaction" in host.log()
    assert scalar(events, "SELECT COUNT(*) FROM information_schema.TABLES WHERE "
                  "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'sneaky'") == 0


def test_what_a_handler_leaves_in_its_session_is_gone_for_the_next_job(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
) -> None:
    """Each job records what its session carries, then leaves a variable and a setting
    behind; one worker process runs them all, one at a time."""
    config = work_on_events(udf, events.database, "outbox",
                       {"python": "trigger_handlers:report_session", "processes": 1,
                        "batch": 1})
    host_factory(config)
    cursor = events.cursor()
    for ident in (1, 2, 3):
        cursor.execute("INSERT INTO events (id) VALUES (%s)", (ident,))
        wait_until(lambda n=ident: len(captured_runs(events)) == n, what=f"job {ident}")
    cursor.execute("SELECT unique_key FROM captured ORDER BY row_id")
    assert [seen for (seen,) in cursor.fetchall()] == ["-,0,0"] * 3
    cursor.close()


def test_a_handler_that_leaves_rows_unread_fails_its_job_and_the_worker_goes_on(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
) -> None:
    config = work_on_events(udf, events.database, "outbox",
                       {"python": "trigger_handlers:leave_rows_unread",
                        "retries": {"attempts": 2, "backoff": "100ms"}, "processes": 1})
    host = host_factory(config)
    events.cursor().execute("INSERT INTO events (id) VALUES (1)")
    wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_dead_letters") == 1,
               what="the job dead-lettered after its attempts")
    error = scalar(events, "SELECT error FROM workerhost_dead_letters")
    assert "left a result set unread" in error
    assert captured_runs(events) == {}, "its effect never committed"
    assert "stayed unreachable" not in host.log()


def test_a_row_held_by_an_open_transaction_does_not_delay_the_others(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
) -> None:
    config = work_on_events(udf, events.database, "immediate",
                       {"python": "trigger_handlers:capture", "timeout": "2s",
                        "retries": {"attempts": 1}, "processes": 1})
    host_factory(config)
    writer = udf.connect(database=events.database, autocommit=False)
    try:
        held = writer.cursor()
        held.execute("INSERT INTO events (id) VALUES (1)")  # its job is in gearmand already
        others = events.cursor()
        started = time.monotonic()
        for ident in range(2, 12):
            others.execute("INSERT INTO events (id) VALUES (%s)", (ident,))
        wait_until(lambda: set(captured_runs(events)) == set(range(2, 12)), timeout=10,
                   what="the other rows' jobs while row 1's transaction is open")
        assert time.monotonic() - started < 5
        time.sleep(3)  # longer than the handler's timeout: the wait is neither a timeout...
        assert 1 not in captured_runs(events), "nothing runs before its transaction commits"
        writer.commit()
        wait_until(lambda: captured_runs(events).get(1) == 1, what="row 1's job once it commits")
        # ... nor an attempt: with attempts: 1, a counted one would have dead-lettered it.
        assert scalar(events, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0
        wait_until(lambda: ledger_empty(events), what="an empty ledger")
    finally:
        writer.close()  # an open transaction would hold up the database's DROP


def test_rows_written_in_one_long_transaction_run_once_it_commits(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
) -> None:
    """Immediate jobs reach the worker long before their rows commit: they wait, and run
    promptly once the transaction ends."""
    config = work_on_events(udf, events.database, "immediate",
                            {"python": "trigger_handlers:capture"})
    host_factory(config)
    writer = udf.connect(database=events.database, autocommit=False)
    try:
        cursor = writer.cursor()
        for start in range(1, 500, 50):
            cursor.execute(f"INSERT INTO events (id) SELECT seq FROM "
                           f"{sequence(start, start + 49)}")
            time.sleep(0.05)
        assert captured_runs(events) == {}
        writer.commit()
        committed = time.monotonic()
        wait_until(lambda: len(captured_runs(events)) == 500, timeout=30, what="500 rows")
        assert time.monotonic() - committed < 10
        assert set(captured_runs(events).values()) == {1}
        wait_until(lambda: ledger_empty(events), what="an empty ledger")
    finally:
        writer.close()


def test_jobs_squatting_on_a_schedules_predictable_uniques_hold_back_no_slot(
    udf: Sandbox, db: Any, nobody: Any, host_factory: Callable[..., Any],
) -> None:
    """An account with no privileges queues far-future jobs under every unique a slot's job
    could once be predicted to carry (schedule:NAME:SLOT, with or without a ledger id before
    it): gearmand would fold the real job into such a squatter. A slot's job carries its
    ledger row's random token instead, so every slot still runs."""
    from datetime import UTC, datetime

    from test_scheduler import SECOND, TICKS, tick_config, ticks

    db.cursor().execute(TICKS)
    config = tick_config(udf, db.database, [{"name": "tick", "function": "tick", "every": "1s",
                                                   "payload": {"label": "x"}}])
    start = datetime.now(UTC).replace(microsecond=0)
    cursor = nobody.cursor()
    for step in range(1, 16):
        stamp = (start + step * SECOND).strftime("%Y%m%dT%H%M%SZ")
        for unique in (f"schedule:tick:{stamp}", *(f"L{i}:schedule:tick:{stamp}"
                                                   for i in range(1, 16))):
            cursor.execute("SELECT gman_do_epoch_background('tick', '{}', 4000000000, %s)",
                           (unique,))
            assert cursor.fetchone()[0] is not None
    cursor.close()
    host_factory(config)
    wait_until(lambda: len(ticks(db)) >= 5, timeout=30,
               what="five slots run, the squatters notwithstanding")
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0
