"""The relay: its choice of unique, and rows gearmand refuses (its shipping under faults runs
in test_delivery)."""

from __future__ import annotations

import uuid
from typing import Any

from conftest import host_config, scalar

from workerhost.config.load import parse_config
from workerhost.host.relay import Relay
from workerhost.model.job import row_unique
from workerhost.sandbox.stack import Sandbox
from workerhost.store import ledger, schema

EVENT_ID = "bb4bb0aa-e9a0-11f1-9215-02fc00000001"


def relay_of(sandbox: Sandbox, database: str, function: str) -> Relay:
    """A relay for a host config of one sql: handler, the host's tables created."""
    config = parse_config(host_config(sandbox, database, {function: {"sql": "DO 1"}}),
                          file="test.yaml", env={"SANDBOX_DB_PASSWORD": sandbox.password})
    relay = Relay(config)
    relay.db.run(schema.create)
    return relay


def test_a_trigger_payload_gives_its_event_id() -> None:
    payload = ('{"id": 7, "name": "it\'s", "table": "t", "event": "insert", '
               f'"event_id": "{EVENT_ID}"}}').encode()
    assert row_unique(payload, 1) == EVENT_ID


def test_keys_in_another_order_still_give_the_event_id() -> None:
    # MySQL 8 stores JSON objects with their keys sorted by length.
    payload = f'{{"id": 7, "event_id": "{EVENT_ID}", "customer_name": "x"}}'.encode()
    assert row_unique(payload, 1) == EVENT_ID


def test_a_payload_without_an_event_id_gets_a_unique_made_of_its_row() -> None:
    for payload in (b'{"id": 7}', b"not json", b"", b'{"event_id": 12}', b'["event_id"]',
                    b'{"event_id": "x", "broken"'):
        # The same row shipped twice (its batch retried) keeps its unique; rows differ.
        assert row_unique(payload, 41) == row_unique(payload, 41) == "workerhost-outbox-41"
        assert row_unique(payload, 42) != row_unique(payload, 41)


def test_every_row_ships_under_its_id_and_token_whatever_its_unique_key(
    sandbox: Sandbox, db: Any
) -> None:
    function = "tokens_" + uuid.uuid4().hex[:8]
    relay = relay_of(sandbox, db.database, function)
    try:
        cursor = db.cursor()
        for unique in ("good-1", "x" * 100, None):  # gearmand's limit is 64 bytes
            cursor.execute("INSERT INTO workerhost_outbox (`function`, payload, unique_key) "
                           "VALUES (%s, '{}', %s)", (function, unique))
        # The Gearman unique is L<id>:<token> whatever the row's unique_key: a long one
        # ships too, and every row has a token of its own.
        assert relay.ship_once() == 3
        assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE ships = 1") == 3
        assert scalar(db, "SELECT COUNT(DISTINCT token) FROM workerhost_outbox") == 3
        assert scalar(db, "SELECT MIN(LENGTH(token)) FROM workerhost_outbox") == 32
        assert sandbox.gearman_status()[function].queued == 3
        # A batch shipped again (its commit lost) queues nothing twice: the uniques are stable.
        cursor.execute("INSERT INTO workerhost_outbox (`function`, payload) VALUES (%s, '{}')",
                       (function,))
        rows = relay.db.run(lambda conn: ledger.lock_due(conn, 10))
        assert len(rows) == 1, "leased rows are not due"
        relay.submit(rows)
        relay.submit(rows)
        assert sandbox.gearman_status()[function].queued == 4
    finally:
        relay.close()
        relay.db.close()


def test_a_poll_reads_the_due_rows_not_the_leased_backlog(sandbox: Sandbox, db: Any) -> None:
    """2,000 leased rows before one due row: the relay's poll reads a handful of index
    entries (the server's own handler counters say so), not the backlog."""
    from conftest import sequence

    function = "backlog_" + uuid.uuid4().hex[:8]
    relay = relay_of(sandbox, db.database, function)
    try:
        cursor = db.cursor()
        cursor.execute("INSERT INTO workerhost_outbox (`function`, payload, not_before, ships) "
                       f"SELECT %s, '{{}}', NOW(6) + INTERVAL 1 HOUR, 1 FROM {sequence(1, 2000)}",
                       (function,))
        cursor.execute("INSERT INTO workerhost_outbox (`function`, payload) VALUES (%s, '{}')",
                       (function,))

        def poll(conn: Any) -> tuple[int, int]:
            counters = "SHOW SESSION STATUS WHERE Variable_name LIKE 'Handler_read%'"
            cur = conn.cursor(buffered=True)
            cur.execute(counters)
            before = sum(int(value) for _, value in cur.fetchall())
            rows = ledger.lock_due(conn, 10)
            cur.execute(counters)
            return len(rows), sum(int(value) for _, value in cur.fetchall()) - before

        due, reads = relay.db.run(poll)
        assert due == 1
        assert reads < 50, f"the poll read {reads} rows or index entries"
    finally:
        relay.close()
