"""`workerhost status`: queue depth per gearmand server and function, dead letters, outbox."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gearman
import mysql.connector
import pytest
import yaml
from conftest import ON_FIRST_SERVER, ExtraGearmand, host_config, host_env

from workerhost.gearman.admin import FunctionStatus
from workerhost.observe import status
from workerhost.sandbox.stack import Sandbox
from workerhost.store.db import Database


def workerhost(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workerhost.cli", *args], capture_output=True,
                          text=True, env=host_env(sandbox), timeout=60, check=False)


def queue(server: str, function: str, count: int) -> None:
    """Submit background jobs that nobody serves: they wait in gearmand's queue."""
    client = gearman.GearmanClient([server])
    client.submit_multiple_jobs([{"task": function, "data": str(i)} for i in range(count)],
                                background=True, wait_until_complete=False)
    client.shutdown()


def rows(stdout: str, server: str) -> dict[str, list[int]]:
    """The table printed under `gearmand SERVER`, as {function: [queued, running, workers]}."""
    lines = stdout.splitlines()
    start = lines.index(f"gearmand {server}") + 2  # past the title and the header
    table: dict[str, list[int]] = {}
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        name, *figures = line.split()
        table[name] = [int(f) for f in figures]
    return table


def test_status_shows_each_servers_queue_and_survives_a_dead_one(
    sandbox: Sandbox, db: Any, gearmand_factory: Callable[[], ExtraGearmand], tmp_path: Path
) -> None:
    first, second = gearmand_factory(), gearmand_factory()
    function = f"unserved_{uuid.uuid4().hex[:8]}"
    queue(first.server, function, 3)
    queue(second.server, function, 5)
    config = tmp_path / "workerhost.yaml"
    config.write_text(yaml.safe_dump(host_config(sandbox, db.database, {
        "touch": {"sql": "UPDATE t SET a = 1 WHERE id = %(id)s"},
    }, gearman={"servers": [first.server, second.server]})))
    assert workerhost(sandbox, "check", "--connect", "-c", str(config)).returncode == 0
    db.cursor().execute(
        "INSERT INTO workerhost_dead_letters (`function`, payload, attempts, error) VALUES "
        f"('{function}', '{{}}', 3, 'boom'), ('{function}', '{{}}', 3, 'boom'), "
        "('other', '{}', 1, 'bad')")
    db.cursor().execute("INSERT INTO workerhost_outbox (`function`, payload) VALUES ('x', '{}')")

    shown = workerhost(sandbox, "status", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    assert rows(shown.stdout, first.server)[function] == [3, 0, 0]
    assert rows(shown.stdout, second.server)[function] == [5, 0, 0]
    assert "  outbox: 1 rows: 1 due, 0 leased, 0 delayed" in shown.stdout
    assert "  dead letters: 3" in shown.stdout
    assert f"  {function:32} {2:>12}" in shown.stdout

    as_json = json.loads(workerhost(sandbox, "status", "--json", "-c", str(config)).stdout)
    assert [s["functions"][function]["queued"] for s in as_json["gearmand"]] == [3, 5]
    assert as_json["database"]["dead_letters"] == {function: 2, "other": 1}
    assert as_json["database"]["outbox"]["rows"] == 1

    second.stop()
    degraded = workerhost(sandbox, "status", "-c", str(config))
    assert degraded.returncode == 4
    assert "Traceback" not in degraded.stderr
    assert rows(degraded.stdout, first.server)[function] == [3, 0, 0]
    assert f"gearmand {second.server}: unreachable (Connection refused)" in degraded.stdout
    assert second.server not in degraded.stderr, "said once, in the table"
    assert "dead letters: 3" in degraded.stdout, "the database part still shows"
    broken = json.loads(workerhost(sandbox, "status", "--json", "-c", str(config)).stdout)
    assert broken["gearmand"][1] == {"server": second.server, "error": "Connection refused",
                                     "functions": {}}


@ON_FIRST_SERVER  # no database is reached
def test_status_without_the_database_exits_4_with_a_message(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = tmp_path / "workerhost.yaml"
    settings = host_config(sandbox, "nowhere", {"touch": {"sql": "DELETE FROM t"}})
    settings["database"]["port"] = 1  # nothing listens there
    config.write_text(yaml.safe_dump(settings))
    shown = workerhost(sandbox, "status", "-c", str(config))
    assert shown.returncode == 4
    assert "database 'nowhere' at 127.0.0.1:1: unreachable" in shown.stdout
    assert "Traceback" not in shown.stderr
    assert sandbox.password not in shown.stdout + shown.stderr


def test_render_lists_functions_sorted_and_says_when_a_server_knows_none() -> None:
    report = status.Report(
        servers=(
            status.ServerStatus("a:1", {"zeta": FunctionStatus("zeta", 1, 0, 2),
                                        "alpha": FunctionStatus("alpha", 0, 0, 1)}),
            status.ServerStatus("b:2"),
        ),
        database=status.DatabaseStatus("database 'd' at h:3", {},
                                       status.Outbox(0, 0, 0, 0, None, None)),
    )
    text = status.render(report)
    assert text.index("  alpha") < text.index("  zeta")
    assert "gearmand b:2\n  FUNCTION" in text and "(no functions known to this server)" in text
    assert "outbox: 0 rows: 0 due, 0 leased, 0 delayed\n" in text
    assert report.problems() == []


def test_unserved_rows_are_listed_per_function_and_marked_when_the_file_has_no_handler() -> None:
    unserved = {"resize": status.Unserved("resize", 3, 754.0),
                "gone": status.Unserved("gone", 120, 90061.0)}
    report = status.Report((), status.DatabaseStatus(
        "database 'd' at h:3", {}, status.Outbox(123, 0, 123, 0, 90061.0, None), unserved),
        unserved_after=600.0, handled=frozenset({"resize", "touch"}))
    lines = status.render(report).splitlines()
    start = lines.index("  rows older than 10m 0s (host.relay.unserved_after): 123")
    assert lines[start + 1].split() == ["FUNCTION", "ROWS", "OLDEST"]
    assert [line.split() for line in lines[start + 2:start + 4]] == [
        ["gone", "120", "1d", "1h", "no", "handler", "in", "this", "file"],
        ["resize", "3", "12m", "34s"]]
    assert status.as_json(report)["database"]["unserved"] == [
        {"function": "gone", "rows": 120, "oldest_age_seconds": 90061.0, "handled_here": False},
        {"function": "resize", "rows": 3, "oldest_age_seconds": 754.0, "handled_here": True}]
    quiet = status.Report((), status.DatabaseStatus("d", {}, status.Outbox(0, 0, 0, 0, None,
                                                                           None)),
                          unserved_after=60.0)
    assert "  rows older than 1m 0s (host.relay.unserved_after): none" in status.render(quiet)


@pytest.mark.parametrize("fails", ["connect", "query"])
def test_a_database_error_that_quotes_the_password_shows_it_masked(fails: str) -> None:
    secret = "s3cr3t'pw"

    class Refused:
        def rollback(self) -> None:
            pass

        def close(self) -> None:
            pass

        def cursor(self, *args: Any, **kwargs: Any) -> Any:
            raise mysql.connector.ProgrammingError(
                msg=f"near 'IDENTIFIED BY \\'{secret}\\'' at line 1", errno=1064)

    def connect() -> Any:
        if fails == "connect":
            raise mysql.connector.ProgrammingError(
                msg=f"bad DSN mysql://u:{secret}@h/d", errno=2005)
        return Refused()

    db = Database({"user": "u", "password": secret, "database": "d"}, connect=connect)
    found = status.database(db, timeout=0.1)
    assert found.error is not None and "s3cr3t" not in found.error
    assert "***" in found.error
    report = status.Report((), found)
    assert "s3cr3t" not in status.render(report) + json.dumps(status.as_json(report))


# -- schedules ----------------------------------------------------------------------------------


def test_a_schedules_figures_come_from_its_row() -> None:
    from datetime import datetime, timedelta

    from workerhost.config.settings import ScheduleConfig
    from workerhost.model.timetable import UTC
    from workerhost.store.schedule_table import ScheduleRow

    now = datetime(2026, 11, 27, 10, 0, 30, tzinfo=UTC)
    hourly = ScheduleConfig(name="hourly", function="report", every=3600)
    fired = ScheduleRow(last_slot=now - timedelta(seconds=30), fired_slot=now - timedelta(
        seconds=30), fired_at=now - timedelta(seconds=29), fired_by="web1:42")
    shown = status.schedule_status(hourly, fired, now)
    assert (shown.last_slot, shown.since_last, shown.overdue, shown.fired_by) == (
        datetime(2026, 11, 27, 10, tzinfo=UTC), 30.0, 0.0, "web1:42")
    assert shown.next_slot == datetime(2026, 11, 27, 11, tzinfo=UTC)
    # Nobody led it for three hours: the slot after the last one decided is that late.
    stale = ScheduleRow(now - timedelta(hours=3, seconds=30), None, None, None)
    shown = status.schedule_status(hourly, stale, now)
    assert (shown.last_slot, shown.since_last, shown.overdue) == (None, None, 7200.0 + 30.0)
    assert shown.next_slot == datetime(2026, 11, 27, 11, tzinfo=UTC)
    # Unknown to the database: it starts from now, so nothing is overdue.
    assert status.schedule_status(hourly, None, now).overdue == 0.0


def test_schedules_and_status_show_each_schedules_last_and_next_slot(
    sandbox: Sandbox, db: Any, tmp_path: Path
) -> None:
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from workerhost.model.timetable import UTC

    config = tmp_path / "workerhost.yaml"
    config.write_text(yaml.safe_dump(host_config(
        sandbox, db.database, {"touch": {"sql": "DO 1"}},
        schedules=[{"name": "nightly", "function": "report", "cron": "0 3 * * *",
                    "timezone": "Europe/Paris"},
                   {"name": "tick", "function": "touch", "every": "1h", "catch_up": "none"}])))
    assert workerhost(sandbox, "check", "--connect", "-c", str(config)).returncode == 0
    # Its last slot three nights ago (02:00 UTC, 03:00 in Paris in winter): no host has led
    # it since, so the slots after it are overdue.
    last = (datetime.now(UTC) - timedelta(days=3)).replace(hour=2, minute=0, second=0,
                                                           microsecond=0, tzinfo=None)
    db.cursor().execute("INSERT INTO workerhost_schedules (name, last_slot, fired_slot, fired_at, "
                        "fired_by) VALUES ('nightly', %s, %s, %s, 'web1:42')", (last, last, last))

    listed = workerhost(sandbox, "schedules", "-c", str(config))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["SCHEDULE", "FUNCTION", "LAST", "SLOT", "AGO", "NEXT", "SLOT",
                                "OVERDUE"]
    paris = last.replace(tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris")).isoformat()
    # Days ago, and the slot after it days overdue; the next one is still to come.
    assert re.fullmatch(rf"nightly +report +{re.escape(paris)} +\dd \d+h +\S+T03:00:00"
                        rf"{re.escape(paris[-6:])} \dd \d+h", lines[1]), lines[1]
    assert lines[2].split()[:3] == ["tick", "touch", "never"]
    assert "  nightly: cron '0 3 * * *' Europe/Paris, catch_up: latest, fired by web1:42" in lines
    assert "  tick: every 1h, catch_up: none" in lines

    as_json = json.loads(workerhost(sandbox, "schedules", "--json", "-c", str(config)).stdout)
    assert [(s["name"], s["last_slot"], s["fired_by"]) for s in as_json] == [
        ("nightly", f"{last.isoformat()}+00:00", "web1:42"), ("tick", None, None)]
    assert as_json[0]["overdue_seconds"] > 0 and as_json[1]["overdue_seconds"] == 0

    shown = workerhost(sandbox, "status", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    assert "  schedules: 2" in shown.stdout
    assert json.loads(workerhost(sandbox, "status", "--json", "-c", str(config)).stdout)[
        "schedules"][0]["last_slot"] == f"{last.isoformat()}+00:00"


@ON_FIRST_SERVER  # no database is reached
def test_schedules_without_the_section_or_the_database(sandbox: Sandbox, tmp_path: Path) -> None:
    config = tmp_path / "workerhost.yaml"
    settings = host_config(sandbox, "nowhere", {"touch": {"sql": "DELETE FROM t"}})
    config.write_text(yaml.safe_dump(settings))
    none = workerhost(sandbox, "schedules", "-c", str(config))
    assert (none.returncode, none.stdout) == (0, f"{config} has no schedules: section\n")
    settings["schedules"] = [{"name": "tick", "function": "touch", "every": "1m"}]
    settings["database"]["port"] = 1  # nothing listens there
    config.write_text(yaml.safe_dump(settings))
    away = workerhost(sandbox, "schedules", "-c", str(config))
    assert away.returncode == 4 and "Traceback" not in away.stderr
    assert "workerhost: error: cannot connect to database 'nowhere' at 127.0.0.1:1" in away.stderr
