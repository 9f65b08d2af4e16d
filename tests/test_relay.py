"""The relay: its choice of unique, and rows gearmand refuses (its shipping under faults runs
in test_delivery)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import StallingProxy, host_config, scalar, sequence, wait_until

from workerhost.config.load import parse_config
from workerhost.gearman.conn import GearmanLost
from workerhost.host.relay import SHRUNK_FOR, Relay, SubmitFailed
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


def test_the_relay_sleeps_an_interval_after_any_poll_but_a_full_batch() -> None:
    """A full batch is a backlog: the next poll comes at once. After a partial batch, or none,
    the relay sleeps host.relay.interval, so that what commits meanwhile goes out together."""
    config = parse_config(
        {"gearman": {"servers": ["127.0.0.1:4999"]}, "database": {"user": "u", "database": "d"},
         "handlers": {"f": {"sql": "DO 1"}},
         "host": {"relay": {"interval": "150ms", "batch": 50}}}, file="test.yaml")
    relay = Relay(config)
    shipped = iter([50, 50, 7, 0, 50, 1])
    happened: list[str] = []

    def ship_once(limit: int | None = None) -> int:
        count = next(shipped, None)
        if count is None:
            relay.request_stop()
            return 0
        happened.append(f"shipped {count}")
        return count

    relay.ship_once = ship_once  # type: ignore[method-assign]
    relay._sleep = lambda seconds: happened.append(f"slept {seconds}")  # type: ignore[method-assign]
    assert relay.serve() == 0
    assert happened == ["shipped 50", "shipped 50", "shipped 7", "slept 0.15", "shipped 0",
                        "slept 0.15", "shipped 50", "shipped 1", "slept 0.15",
                        "slept 0.15"]  # the last: after the poll that found it stopping


class _Ledger:
    """The ledger's due rows, without a database: each poll locks the first `limit` of the
    rows not shipped yet (a row whose job gearmand did not answer stays due)."""

    def __init__(self, rows: int) -> None:
        self.due = list(range(1, rows + 1))
        self.shipped: list[int] = []

    def run(self, work: Any, **_: Any) -> Any:
        return work(None)

    def close(self) -> None:
        pass

    def lock_due(self, _conn: Any, limit: int) -> list[tuple[Any, ...]]:
        return [(ident, "f", b"{}", None, "normal", "t" * 32, 0, 0) for ident in self.due[:limit]]

    def lease(self, _conn: Any, ids: list[int], _seconds: float) -> None:
        self.shipped += ids
        self.due = [ident for ident in self.due if ident not in set(ids)]


class _SlowGearmand:
    """A gearmand that answers `takes` jobs of a batch in time and then none (timed out), or
    goes away after them (`crashes`), or refuses the connection (`down`)."""

    def __init__(self, takes: int) -> None:
        self.takes = takes
        self.down = False
        self.crashes = False  # after `takes` answers, it goes away instead of stalling
        self.batches: list[int] = []

    def submit(self, jobs: list[Any]) -> list[bytes]:
        self.batches.append(len(jobs))
        if self.down:
            raise GearmanLost("gearmand 127.0.0.1:4999 did not take the jobs: refused")
        answers = [b"H:%d" % i for i in range(min(len(jobs), self.takes))]
        if len(jobs) > self.takes:
            why = "connection closed" if self.crashes else "timed out"
            raise GearmanLost(f"gearmand 127.0.0.1:4999 did not take the jobs: {why}",
                              timed_out=not self.crashes, answers=answers)
        return answers

    def close(self) -> None:
        pass


def slow_relay(monkeypatch: pytest.MonkeyPatch, rows: int, takes: int, batch: int
               ) -> tuple[Relay, _Ledger, _SlowGearmand, list[float]]:
    """A relay of `batch` rows a poll over a ledger of `rows` due rows, shipping to a gearmand
    that answers `takes` jobs of a batch; its clock is the list's last value."""
    config = parse_config(
        {"gearman": {"servers": ["127.0.0.1:4999"]}, "database": {"user": "u", "database": "d"},
         "handlers": {"f": {"sql": "DO 1"}}, "host": {"relay": {"batch": batch}}},
        file="test.yaml")
    now = [1000.0]
    table, gearmand = _Ledger(rows), _SlowGearmand(takes)
    relay = Relay(config, database=table, clock=lambda: now[-1])  # type: ignore[arg-type]
    relay.submitters = [gearmand]  # type: ignore[list-item]
    monkeypatch.setattr(ledger, "lock_due", table.lock_due)
    monkeypatch.setattr(ledger, "lease", table.lease)
    return relay, table, gearmand, now


def test_a_gearmand_too_slow_for_a_batch_gets_half_of_it_and_the_rows_it_answered_are_shipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gearmand that answers 70 jobs of a batch and then nothing in time (busy writing its
    persistent queue, or serving another relay): the 70 rows it answered are leased and
    shipped, the rest stay due, and the next batch is half as big, down to what it takes;
    bigger batches are tried again only SHRUNK_FOR later. Before, the whole batch was rolled
    back and the same 400 rows failed again at every poll: nothing was ever shipped."""
    relay, table, gearmand, now = slow_relay(monkeypatch, rows=1000, takes=70, batch=400)
    assert relay.ship_once() == 70
    assert table.shipped == list(range(1, 71)), "the rows it answered, each leased once"
    assert relay.batch == 200
    assert relay.ship_once() == 70 and relay.batch == 100
    assert relay.ship_once() == 70 and relay.batch == 50
    for _ in range(3):  # full batches it takes: the size holds while SHRUNK_FOR runs
        assert relay.ship_once() == 50 and relay.batch == 50
    now.append(now[-1] + SHRUNK_FOR)
    assert relay.ship_once() == 50 and relay.batch == 100, "then grows"
    assert relay.ship_once() == 70 and relay.batch == 50, "and shrinks again at once"
    assert gearmand.batches == [400, 200, 100, 50, 50, 50, 50, 100]
    assert table.shipped == list(range(1, 481)), "each row once, in order"


def test_a_batch_gearmand_answered_none_of_in_time_is_rolled_back_and_halved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay, table, gearmand, _ = slow_relay(monkeypatch, rows=100, takes=0, batch=100)
    for size in (50, 25, 12):
        with pytest.raises(SubmitFailed, match=f"timed out; the next batch has {size} rows at "
                                               r"most \(host.relay.batch: 100\)"):
            relay.ship_once()
    assert table.shipped == [] and gearmand.batches == [100, 50, 25]
    gearmand.takes = 12
    assert relay.ship_once() == 12


def test_the_rows_a_gearmand_answered_before_it_went_away_are_shipped_and_the_size_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gearmand that answers 30 jobs and then closes the connection: those 30 are its jobs
    (kept in its persistent queue, or shipped again when their lease runs out); the rest
    stay due. Its going away says nothing about the batch's size."""
    relay, table, gearmand, _ = slow_relay(monkeypatch, rows=500, takes=30, batch=100)
    gearmand.crashes = True
    assert relay.ship_once() == 30
    assert table.shipped == list(range(1, 31)) and relay.batch == 100
    gearmand.takes = 1000
    assert relay.ship_once() == 100 and table.shipped == list(range(1, 131))


def test_a_gearmand_that_refuses_connections_does_not_shrink_the_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused connection says nothing about the batch's size: once gearmand is back, the
    backlog goes out in batches as big as before."""
    relay, _, gearmand, _ = slow_relay(monkeypatch, rows=1000, takes=1000, batch=400)
    gearmand.down = True
    for _ in range(3):
        with pytest.raises(SubmitFailed, match=r"refused$"):
            relay.ship_once()
    assert relay.batch == 400
    gearmand.down = False
    assert relay.ship_once() == 400


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


def test_rows_that_commit_one_by_one_are_shipped_a_poll_an_interval_not_a_few_a_poll(
    sandbox: Sandbox, db: Any
) -> None:
    """A stream of rows, each committed on its own: the relay polls once an interval and
    ships what came in meanwhile, instead of polling again at once after every few rows (a
    durable commit each). A full batch is a backlog, polled again at once."""
    import threading
    import time

    function = "stream_" + uuid.uuid4().hex[:8]
    config = parse_config(host_config(sandbox, db.database, {function: {"sql": "DO 1"}},
                                      host={"relay": {"interval": "200ms", "batch": 50}}),
                          file="test.yaml", env={"SANDBOX_DB_PASSWORD": sandbox.password})
    relay = Relay(config)
    relay.db.run(schema.create)
    polls: list[int] = []
    ship_once = relay.ship_once

    def counted(limit: int | None = None) -> int:
        shipped = ship_once(limit)
        polls.append(shipped)
        return shipped

    relay.ship_once = counted  # type: ignore[method-assign]
    serving = threading.Thread(target=relay.serve)
    serving.start()
    try:
        cursor = db.cursor()
        started = time.monotonic()
        for _ in range(2000):  # each its own transaction, as fast as they commit
            cursor.execute("INSERT INTO workerhost_outbox (`function`, payload) "
                           "VALUES (%s, '{}')", (function,))
        elapsed = time.monotonic() - started
        cursor.execute("INSERT INTO workerhost_outbox (`function`, payload) SELECT %s, '{}' "
                       f"FROM {sequence(1, 120)}", (function,))  # a backlog of 2.4 batches
        wait_until(lambda: sum(polls) == 2120, what="every row shipped")
    finally:
        relay.request_stop()
        serving.join()
    partial = [n for n in polls if 0 < n < 50]
    # One poll an interval while the stream lasts (and one after its end), where polling at
    # once after every non-empty poll made one every few rows.
    assert len(partial) <= elapsed / 0.2 + 3, polls
    # What piled up between two polls went in full batches.
    assert polls.count(50) >= 2, polls
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE ships = 1") == 2120


def test_a_gearmand_that_stalls_mid_batch_still_gets_every_row_once(
    sandbox: Sandbox, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real gearmand and database, with a proxy that stalls after every 60 jobs for longer
    than the relay waits for an answer. The relay leases the rows gearmand answered,
    leaves the rest due, and halves its batches: every row is shipped and leased once, and
    gearmand queues each once. Before, every batch of 200 was rolled back: none ever went."""
    from workerhost.host import relay as relay_module

    monkeypatch.setattr(relay_module, "ACCEPT_TIMEOUT", 0.5)
    proxy = StallingProxy(sandbox.gearman_port, passes=60, stall=1.0)
    function = "stalled_" + uuid.uuid4().hex[:8]
    config = parse_config(
        host_config(sandbox, db.database, {function: {"sql": "DO 1"}},
                    gearman={"servers": [f"127.0.0.1:{proxy.port}"]},
                    host={"relay": {"batch": 200}}),
        file="test.yaml", env={"SANDBOX_DB_PASSWORD": sandbox.password})
    relay = Relay(config)
    relay.db.run(schema.create)
    try:
        db.cursor().execute("INSERT INTO workerhost_outbox (`function`, payload) "
                            f"SELECT %s, '{{}}' FROM {sequence(1, 300)}", (function,))
        polls: list[int | str] = []
        while sum(n for n in polls if isinstance(n, int)) < 300 and len(polls) < 20:
            try:
                polls.append(relay.ship_once())
            except relay_module.SubmitFailed as exc:
                polls.append(str(exc))
    finally:
        relay.db.close()
        relay.close()
        proxy.close()
    shipped = [n for n in polls if isinstance(n, int)]
    # 60 of the first batch (200 rows) and of the second (100); the batches that crossed a
    # stall later, a part each.
    assert shipped[:2] == [60, 60] and sum(shipped) == 300, polls
    assert relay.batch < 50, polls
    cursor = db.cursor()
    cursor.execute("SELECT ships, COUNT(*) FROM workerhost_outbox WHERE `function` = %s "
                   "GROUP BY ships", (function,))
    assert dict(cursor.fetchall()) == {1: 300}, "each row leased once"
    # The stalled jobs reached gearmand after the relay gave up on them, and were shipped
    # again: the same unique is one job.
    wait_until(proxy.idle, timeout=10, what="every stalled request through the proxy")
    assert sandbox.gearman_status()[function].queued == 300
