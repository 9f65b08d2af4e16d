"""workerhost/triggers.py: the SQL it generates, and the triggers it installs in the sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import host_config, host_env, scalar, wait_until
from trigger_handlers import CAPTURED

from workerhost import triggers
from workerhost.config import parse_config
from workerhost.errors import ConfigError
from workerhost.sandbox import Sandbox

# -- the generated SQL, without a server -------------------------------------------------


def config_with(entries: list[dict[str, Any]]) -> Any:
    return parse_config({
        "gearman": {"servers": ["127.0.0.1:4730"]},
        "database": {"user": "u", "database": "d"},
        "handlers": {"h": {"sql": "UPDATE t SET x = 1 WHERE id = %(id)s"}},
        "triggers": entries,
    }, file="t.yaml")  # fmt: skip


def test_entries_on_one_table_and_event_become_one_trigger() -> None:
    plan = triggers.plan(config_with([
        {"table": "orders", "events": ["insert", "delete"], "function": "a", "columns": ["id"]},
        {"table": "users", "events": ["update"], "function": "c", "columns": ["id"]},
        {"table": "orders", "events": ["insert"], "function": "b", "columns": ["id", "total"],
         "delivery": "outbox"},
    ]))  # fmt: skip
    assert [(t.name, [j.function for j in t.jobs]) for t in plan] == [
        ("workerhost_orders_insert", ["a", "b"]),
        ("workerhost_orders_delete", ["a"]),
        ("workerhost_users_update", ["c"]),
    ]
    insert = plan[0].create_sql()
    assert insert.startswith("CREATE OR REPLACE TRIGGER `workerhost_orders_insert`\n"
                             "AFTER INSERT ON `orders` FOR EACH ROW\nBEGIN")
    assert insert.count("DECLARE wh_event_id CHAR(36) DEFAULT UUID();") == 1
    assert ("JSON_OBJECT('id', NEW.`id`, 'total', NEW.`total`, 'table', 'orders', "
            "'event', 'insert', 'event_id', wh_event_id)") in insert
    # a: immediate, the outbox only when the UDF gives NULL; b: outbox, unconditionally.
    assert ("IF gman_do_background('a', JSON_OBJECT('id', NEW.`id`, 'table', 'orders', "
            "'event', 'insert', 'event_id', wh_event_id), wh_event_id) IS NULL THEN") in insert
    assert insert.count("DECLARE") == 1  # the body runs per row: one local variable only
    assert insert.count("INSERT INTO `workerhost_outbox`") == 2
    assert "gman_do_background('b'" not in insert
    assert "OLD.`id`" in plan[1].create_sql() and "NEW." not in plan[1].create_sql()


def test_a_lone_outbox_entry_declares_nothing() -> None:
    (trigger,) = triggers.plan(config_with([
        {"table": "orders", "events": ["insert"], "function": "b", "columns": ["id"],
         "delivery": "outbox"},
    ]))  # fmt: skip
    sql = trigger.create_sql()
    # One statement per row: the event id is made inside the payload, and the relay reads
    # it back from there as the job's unique.
    assert "DECLARE" not in sql
    assert ("INSERT INTO `workerhost_outbox` (`function`, `payload`) VALUES ('b', JSON_OBJECT("
            "'id', NEW.`id`, 'table', 'orders', 'event', 'insert', 'event_id', UUID()));") in sql


def test_names_and_strings_cannot_break_out_of_the_sql() -> None:
    table = "t" * 64
    plan = triggers.plan(config_with([
        {"table": table, "events": ["insert", "update"], "function": "it's\\ours;--",
         "columns": ["$weird_1"]},
    ]))  # fmt: skip
    names = [t.name for t in plan]
    assert all(len(name) <= triggers.MAX_IDENTIFIER for name in names)
    assert len(set(names)) == 2 and names[0].endswith("_insert")
    sql = plan[0].create_sql()
    # Written as hex: neither a quote nor a backslash nor sql_mode can change its meaning.
    assert "it's" not in sql and "ours;" not in sql
    assert "_utf8mb4 X'" + b"it's\\ours;--".hex() + "'" in sql
    assert "NEW.`$weird_1`" in sql and f"ON `{table}`" in sql
    assert triggers.sql_string("order.placed:v2") == "'order.placed:v2'"
    assert triggers.quote("a`b") == "`a``b`"


def test_a_column_named_like_a_payload_key_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        triggers.plan(config_with([
            {"table": "t", "events": ["insert"], "function": "f", "columns": ["id", "event"]},
        ]))
    assert str(caught.value).startswith("t.yaml: triggers[0].columns: column 'event' would "
                                        "clash with the payload key the trigger sets itself")


def test_the_printed_script_runs_in_the_mariadb_client() -> None:
    config = config_with([{"table": "t", "events": ["insert"], "function": "f",
                           "columns": ["id"]}])
    text = triggers.script(config)
    assert text.splitlines()[3] == "DELIMITER //" and text.endswith("END //\nDELIMITER ;\n")
    mysql = triggers.script(config, "mysql")
    assert "DROP TRIGGER IF EXISTS `workerhost_t_insert` //\nCREATE TRIGGER" in mysql
    assert "OR REPLACE" not in mysql


# -- installed in the sandbox ------------------------------------------------------------


@pytest.fixture
def shop(db: Any) -> Any:
    cursor = db.cursor()
    cursor.execute(CAPTURED)
    cursor.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(64), "
                   "price DECIMAL(8, 2), secret VARCHAR(64))")
    return db


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "triggers.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workerhost.cli", *args], capture_output=True,
                          text=True, env=host_env(sandbox), timeout=60, check=False)


def captured(db: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(function, unique, payload) of every captured job, in payload id, event order."""
    cursor = db.cursor()
    cursor.execute("SELECT function, unique_key, payload FROM captured")
    rows = [(f, u, json.loads(p)) for f, u, p in cursor.fetchall()]
    cursor.close()
    order = {"insert": 0, "update": 1, "delete": 2}
    return sorted(rows, key=lambda r: (r[2]["id"], order[r[2]["event"]], r[0]))


def trigger_names(db: Any) -> list[tuple[str, str, str]]:
    cursor = db.cursor()
    cursor.execute("SELECT TRIGGER_NAME, EVENT_MANIPULATION, EVENT_OBJECT_TABLE "
                   "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
                   "ORDER BY TRIGGER_NAME")
    return [tuple(row) for row in cursor.fetchall()]


ITEM_TRIGGERS = [
    {"table": "items", "events": ["insert", "update", "delete"], "function": "capture",
     "columns": ["id", "name", "price"]},
    {"table": "items", "events": ["insert"], "function": "capture_outbox",
     "columns": ["id"], "delivery": "outbox"},
]
CAPTURE_HANDLERS = {"capture": {"python": "trigger_handlers:capture"},
                    "capture_outbox": {"python": "trigger_handlers:capture"}}


def test_triggers_send_the_documented_payload(
    udf: Sandbox, shop: Any, host_factory: Callable[..., Any], tmp_path: Path
) -> None:
    config = host_config(udf, shop.database, CAPTURE_HANDLERS, triggers=ITEM_TRIGGERS)
    applied = run_cli(udf, "triggers", "-c", str(write_config(tmp_path, config)), "--apply")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == ["created workerhost_items_insert",
                                           "created workerhost_items_update",
                                           "created workerhost_items_delete"]
    host_factory(config)
    cursor = shop.cursor()
    cursor.execute("INSERT INTO items VALUES (1, 'pen', 1.50, 'x'), (2, 'it''s \"ü\"', NULL, 'y')")
    cursor.execute("UPDATE items SET price = 2.25 WHERE id = 1")
    cursor.execute("DELETE FROM items WHERE id = 2")
    rows = wait_until(lambda: len(captured(shop)) == 6 and captured(shop), what="6 jobs")

    for _function, unique, payload in rows:
        assert unique == payload["event_id"] and len(unique) == 36
    assert [(f, {k: v for k, v in p.items() if k != "event_id"}) for f, _, p in rows] == [
        ("capture", {"id": 1, "name": "pen", "price": 1.5, "table": "items", "event": "insert"}),
        ("capture_outbox", {"id": 1, "table": "items", "event": "insert"}),
        ("capture", {"id": 1, "name": "pen", "price": 2.25, "table": "items", "event": "update"}),
        ("capture", {"id": 2, "name": 'it\'s "ü"', "price": None, "table": "items",
                     "event": "insert"}),
        ("capture_outbox", {"id": 2, "table": "items", "event": "insert"}),
        ("capture", {"id": 2, "name": 'it\'s "ü"', "price": None, "table": "items",
                     "event": "delete"}),
    ]
    # One row change, one event id, shared by the jobs it fires; a new one for each change.
    ids = [p["event_id"] for _, _, p in rows]
    assert ids[0] == ids[1] and ids[3] == ids[4] and len(set(ids)) == 4


def test_apply_replaces_drops_stale_triggers_and_drop_removes_them(
    udf: Sandbox, shop: Any, tmp_path: Path
) -> None:
    config = host_config(udf, shop.database, CAPTURE_HANDLERS, triggers=ITEM_TRIGGERS)
    path = write_config(tmp_path, config)
    shop.cursor().execute("CREATE TRIGGER mine BEFORE INSERT ON items FOR EACH ROW "
                          "SET NEW.secret = 'set by the application'")
    for _ in range(2):
        assert run_cli(udf, "triggers", "-c", str(path), "--apply").returncode == 0
    assert trigger_names(shop) == [
        ("mine", "INSERT", "items"),
        ("workerhost_items_delete", "DELETE", "items"),
        ("workerhost_items_insert", "INSERT", "items"),
        ("workerhost_items_update", "UPDATE", "items"),
    ]
    # The outbox entry alone: update and delete triggers go, insert loses its UDF call.
    config["triggers"] = ITEM_TRIGGERS[1:]
    path = write_config(tmp_path, config)
    again = run_cli(udf, "triggers", "-c", str(path), "--apply")
    assert again.stdout.splitlines() == ["dropped workerhost_items_delete (no longer in "
                                         f"{path})", f"dropped workerhost_items_update (no "
                                         f"longer in {path})", "created workerhost_items_insert"]
    shop.cursor().execute("INSERT INTO items (id) VALUES (7)")
    assert scalar(shop, "SELECT COUNT(*) FROM workerhost_outbox") == 1
    assert scalar(shop, "SELECT secret FROM items WHERE id = 7") == "set by the application"

    dropped = run_cli(udf, "triggers", "-c", str(path), "--drop")
    assert dropped.returncode == 0 and dropped.stdout == "dropped workerhost_items_insert\n"
    assert trigger_names(shop) == [("mine", "INSERT", "items")]


def test_printed_sql_applied_with_the_mariadb_client_works(
    udf: Sandbox, shop: Any, tmp_path: Path
) -> None:
    config = host_config(udf, shop.database, CAPTURE_HANDLERS, triggers=ITEM_TRIGGERS)
    printed = run_cli(udf, "triggers", "-c", str(write_config(tmp_path, config)))
    assert printed.returncode == 0, printed.stderr
    script = tmp_path / "triggers.sql"
    script.write_text(printed.stdout)
    # The host's tables come from `check --connect` (or `run`); the script adds the triggers.
    path = write_config(tmp_path, config)
    assert run_cli(udf, "check", "-c", str(path), "--connect").returncode == 0
    udf.run_sql_file(script, database=shop.database)
    assert len(trigger_names(shop)) == 3
    shop.cursor().execute("INSERT INTO items (id) VALUES (1)")
    assert scalar(shop, "SELECT function FROM workerhost_outbox") == "capture_outbox"


def test_a_missing_table_or_column_changes_nothing_and_says_what_to_fix(
    udf: Sandbox, shop: Any, tmp_path: Path
) -> None:
    bad_table = [{**ITEM_TRIGGERS[0], "table": "itemz"}]
    result = run_cli(udf, "triggers", "-c", str(write_config(
        tmp_path, host_config(udf, shop.database, CAPTURE_HANDLERS, triggers=bad_table))),
        "--apply")
    assert result.returncode == 3
    assert result.stderr.endswith(f"triggers[0].table: table 'itemz' does not exist in database "
                                  f"'{shop.database}' (did you mean 'items'?); create it first, "
                                  "or fix the name\n")
    bad_column = [ITEM_TRIGGERS[0], {**ITEM_TRIGGERS[1], "columns": ["id", "colour"]}]
    result = run_cli(udf, "triggers", "-c", str(write_config(
        tmp_path, host_config(udf, shop.database, CAPTURE_HANDLERS, triggers=bad_column))),
        "--apply")
    assert result.returncode == 3
    assert "triggers[1].columns: table 'items' has no column 'colour'; it has id, name, " \
        "price, secret" in result.stderr
    assert trigger_names(shop) == []



