"""The console's workers page, in a real browser, against a running host: every worker process
its supervisor publishes (heartbeat.py), the job each one runs, and nothing once it stops."""

from __future__ import annotations

import json
from typing import Any

from conftest import host_config, scalar, wait_until
from test_console import (  # browser, console_factory: fixtures, used by name
    USERS,
    browser,  # noqa: F401
    console_factory,  # noqa: F401
    log_in,
    request,
    text_of,
)

from workerhost.observe import heartbeat
from workerhost.sandbox.stack import Sandbox
from workerhost.store import ledger

# Long enough to be seen running across two refreshes of the page; a stop waits for it.
SLOW_JOB_SECONDS = 16


def shown(driver: Any) -> list[dict[str, str]]:
    """The rows of the page's table of worker processes, read in one step (it is refreshed
    in place every few seconds)."""
    rows: list[dict[str, str]] = driver.execute_script("""
        return Array.from(document.querySelectorAll("table.processes tbody tr"), tr => ({
          pid: tr.dataset.pid, function: tr.dataset.function,
          state: tr.querySelector(".state").textContent.trim(),
          job: tr.querySelector(".job").textContent.trim(),
          href: (tr.querySelector(".job a") || {}).pathname || "",
          seconds: tr.querySelector(".running").dataset.seconds || "",
          memory: tr.querySelector(".memory").textContent.trim()}));""")
    return rows


def test_in_a_browser_the_workers_page_lists_every_worker_process_of_a_running_host(
        sandbox: Sandbox, db: Any, host_factory: Any,
        console_factory: Any, browser: Any) -> None:  # noqa: F811 (the fixtures imported)
    from selenium.webdriver.common.by import By

    db.cursor().execute("CREATE TABLE results (id BIGINT PRIMARY KEY, attempt INT, "
                        "unique_key VARCHAR(255), runs INT NOT NULL DEFAULT 1)")
    slow, mail = f"slow_{db.database}", f"mail_{db.database}"  # gearmand lives for the session
    config = host_config(sandbox, db.database, {
        slow: {"python": "sample_handlers:sleeps", "processes": 2, "timeout": "60s"},
        mail: {"python": "sample_handlers:record"},
    })
    host = host_factory(config)
    console = console_factory({**config, "host": {**config["host"],
                                                  "console": {"users": USERS}}})
    log_in(browser, console, "vic")
    browser.find_element(By.LINK_TEXT, "Workers").click()
    wait_until(lambda: len(shown(browser)) == 3 and all(
        row["state"] == "running" for row in shown(browser)), timeout=3 * heartbeat.EVERY,
        what="the page to list the 3 worker processes, running")
    rows = shown(browser)
    assert sorted(row["function"] for row in rows) == sorted([slow, slow, mail])
    children = set(host.worker_pids())  # the workers, and the relay
    assert {int(row["pid"]) for row in rows} < children, "the relay runs no jobs: left out"
    assert all(row["job"] == "idle" and row["memory"].endswith(" MB") for row in rows)

    # A slow job from the ledger: the page shows it, linked to its row, and for how long.
    ident = ledger.enqueue(db, slow, json.dumps({"id": 1, "seconds": SLOW_JOB_SECONDS}).encode(),
                           None)

    def running() -> dict[str, str] | None:
        return next((row for row in shown(browser) if row["job"] == f"L{ident}"), None)

    first = wait_until(lambda: (row := running()) and row["seconds"] and row,
                       timeout=3 * heartbeat.EVERY, what=f"the page to show job L{ident}")
    assert first["function"] == slow and first["href"] == f"/ledger/{ident}"
    wait_until(lambda: (row := running()) and float(row["seconds"]) >= float(
        first["seconds"]) + 2, timeout=10, what="the job's time to grow on the page")
    api = request(console.url + "/api/workers", user="vic")
    assert api.status == 200, api.body
    found = json.loads(api.body)
    assert sorted(p["function"] for p in found["processes"]) == sorted([slow, slow, mail])
    assert [p["job"] for p in found["processes"] if p["job"]] == [f"L{ident}"]

    # Stopped (the slow job finishes first), the host has deleted its rows: none is left to
    # time out, and the page says so.
    assert host.stop() == 0
    assert scalar(db, "SELECT COUNT(*) FROM results") == 1
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_workers") == 0
    wait_until(lambda: text_of(browser, "#no-processes"), timeout=10,
               what="the page to list no worker process")
    assert shown(browser) == []
