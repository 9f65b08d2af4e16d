"""Unit tests of the relay's choice of unique (the relay's shipping runs in test_delivery)."""

from __future__ import annotations

import re

from workerhost.relay import row_unique

EVENT_ID = "bb4bb0aa-e9a0-11f1-9215-02fc00000001"


def test_a_trigger_payload_gives_its_event_id() -> None:
    payload = ('{"id": 7, "name": "it\'s", "table": "t", "event": "insert", '
               f'"event_id": "{EVENT_ID}"}}').encode()
    assert row_unique(payload) == EVENT_ID.encode()


def test_keys_in_another_order_still_give_the_event_id() -> None:
    # MySQL 8 stores JSON objects with their keys sorted by length.
    payload = f'{{"id": 7, "event_id": "{EVENT_ID}", "customer_name": "x"}}'.encode()
    assert row_unique(payload) == EVENT_ID.encode()


def test_a_payload_without_an_event_id_gets_a_random_unique() -> None:
    for payload in (b'{"id": 7}', b"not json", b"", b'{"event_id": 12}', b'["event_id"]',
                    b'{"event_id": "x", "broken"'):
        first, second = row_unique(payload), row_unique(payload)
        assert first != second and re.fullmatch(rb"[0-9a-f]{32}", first), payload
