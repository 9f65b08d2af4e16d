"""Ledger rows nobody completes (most often: no host serves their function): the relay's
warning and counter, `workerhost status` and the scrape (`host.relay.unserved_after`)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import uuid
from typing import Any

import pytest
from conftest import host_config, host_env, scalar, wait_until
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from test_metrics import parse, scrape, value

from workerhost.config.load import parse_config
from workerhost.errors import ConfigError
from workerhost.host.relay import UNSERVED_WARNING_INTERVAL, Relay
from workerhost.observe import metrics
from workerhost.sandbox.processes import free_port
from workerhost.sandbox.stack import Sandbox
from workerhost.store import schema


def _counted(function: str) -> float | None:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=os.environ[metrics.ENV])  # type: ignore[no-untyped-call]
    return value(parse(generate_latest(registry).decode()),
                 "workerhost_ledger_unserved_ships_total", function=function)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "workerhost.relay" and r.levelno == logging.WARNING]


def test_unserved_after_is_a_duration_with_a_default() -> None:
    def relay(settings: dict[str, Any]) -> Any:
        return parse_config({
            "gearman": {"servers": ["127.0.0.1:1"]}, "database": {"user": "u", "database": "d"},
            "handlers": {"touch": {"sql": "DO 1"}}, "host": {"relay": settings},
        }, file="test.yaml").host.relay  # fmt: skip

    assert relay({}).unserved_after == 600.0
    assert relay({"unserved_after": "90s"}).unserved_after == 90.0
    for bad in ("-1", "0", "soon"):
        with pytest.raises(ConfigError, match=r"^test\.yaml: host\.relay\.unserved_after: "
                                              r"expected a duration"):
            relay({"unserved_after": bad})


def test_the_relay_counts_rows_shipped_again_past_the_age_and_warns_once_a_minute(
    sandbox: Sandbox, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    nobody, served = (f"{name}_{uuid.uuid4().hex[:8]}" for name in ("nobody", "served"))
    config = parse_config(host_config(sandbox, db.database, {served: {"sql": "DO 1"}},
                                      host={"relay": {"unserved_after": "1m"}}),
                          file="test.yaml", env={"SANDBOX_DB_PASSWORD": sandbox.password})
    now = [1000.0]
    relay = Relay(config, clock=lambda: now[0])
    cursor = db.cursor()
    caplog.set_level(logging.WARNING, logger="workerhost.relay")
    try:
        relay.db.run(schema.create)
        insert = ("INSERT INTO workerhost_outbox (`function`, payload, ships, created_at) "
                  "VALUES (%s, '{}', %s, NOW(6) - INTERVAL %s SECOND)")
        # Shipped before and two hours old: unserved. Young, or never shipped before (a
        # retry after a failed attempt, or a relay that did not run): not.
        cursor.executemany(insert, [(nobody, 2, 7200), (nobody, 1, 7000), (nobody, 5, 3600),
                                    (nobody, 1, 5), (served, 0, 7200), (served, 1, 1)])
        with metrics.collecting():
            assert relay.ship_once() == 6
            assert _warnings(caplog) == [
                f"ledger: 3 rows of {nobody} older than 1m 0s shipped again (oldest 2h 0m): no "
                f"worker completes them: is a handler for {nobody} (accept: ledger or any) "
                "running on some host? (this host's config has none)"]
            assert (_counted(nobody), _counted(served)) == (3, None)
            # A worker completes the served rows; the others come due again.
            cursor.execute("DELETE FROM workerhost_outbox WHERE `function` = %s", (served,))

            def ship_again() -> None:
                cursor.execute("UPDATE workerhost_outbox SET not_before = NOW(6)")
                assert relay.ship_once() == 4

            # Within the minute: counted, not logged again.
            now[0] += UNSERVED_WARNING_INTERVAL / 2
            ship_again()
            assert len(_warnings(caplog)) == 1
            assert _counted(nobody) == 6
            # A minute after the last line: one more, counting each row once.
            now[0] += UNSERVED_WARNING_INTERVAL / 2
            ship_again()
            assert len(_warnings(caplog)) == 2
            assert _warnings(caplog)[1].startswith(f"ledger: 3 rows of {nobody} older than")
            assert _counted(nobody) == 9 and _counted(served) is None
    finally:
        relay.close()
        relay.db.close()


def test_rows_of_a_function_no_host_serves_show_in_the_log_status_and_metrics(
    sandbox: Sandbox, db: Any, host_factory: Any
) -> None:
    nobody, served = (f"{name}_{uuid.uuid4().hex[:8]}" for name in ("nobody", "served"))
    port = free_port()
    host = host_factory(host_config(sandbox, db.database, {
        served: {"sql": "DO 1", "accept": "ledger"},
    }, host={"metrics": f"127.0.0.1:{port}",
             "relay": {"interval": "50ms", "lease": "200ms", "unserved_after": "1s"}}))
    host.wait_for_log("metrics on http://")
    cursor = db.cursor()
    cursor.executemany("INSERT INTO workerhost_outbox (`function`, payload) VALUES (%s, '{}')",
                       [(nobody,), (nobody,)] + [(served,)] * 5)
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE `function` = %s",
                              served) == 0, what="the served rows done")
    # Shipped at once, then again at the end of every lease (0.2s, doubling): past 1s soon.
    host.wait_for_log(f"ledger: 2 rows of {nobody} older than 1.0s shipped again")
    warned = [line for line in host.log().splitlines() if "ledger: " in line]
    assert all(nobody in line and served not in line for line in warned), warned
    assert "(this host's config has none)" in warned[0]

    samples = wait_until(lambda: (s := scrape(port)) and value(
        s, "workerhost_ledger_unserved_rows", function=nobody) == 2 and s, what="the gauge")
    assert (value(samples, "workerhost_ledger_unserved_ships_total", function=nobody) or 0) >= 2
    assert (value(samples, "workerhost_ledger_unserved_oldest_age_seconds", function=nobody)
            or 0) >= 1
    for name in ("workerhost_ledger_unserved_rows", "workerhost_ledger_unserved_ships_total"):
        assert value(samples, name, function=served) is None

    def status(*args: str) -> str:
        shown = subprocess.run(
            [sys.executable, "-m", "workerhost.cli", "status", *args, "-c",
             str(host.config_path)], capture_output=True, text=True, env=host_env(sandbox),
            timeout=60, check=False)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout

    text = status()
    assert "  rows older than 1.0s (host.relay.unserved_after): 2\n" in text
    assert re.search(rf"^  {nobody} +2 +\d+\.\ds  no handler in this file$", text, re.M), text
    assert served not in text.split("rows older than", 1)[1]
    found = json.loads(status("--json"))["database"]
    assert found["unserved_after_seconds"] == 1.0
    assert [(u["function"], u["rows"], u["handled_here"]) for u in found["unserved"]] == [
        (nobody, 2, False)]
    assert found["unserved"][0]["oldest_age_seconds"] >= 1.0
