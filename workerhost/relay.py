"""The outbox relay: ships due rows of `workerhost_outbox` to gearmand, then deletes them.

A row is deleted in the same transaction that locked it, and that transaction commits only
after gearmand has accepted every job of the batch (JOB_CREATED). A crash before the commit
leaves the rows in place to be shipped again: delivery is at least once, never lost. Relays on
several hosts share the table: `FOR UPDATE SKIP LOCKED` gives each batch to one of them.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import gearman
import mysql.connector
from gearman.constants import JOB_CREATED, PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NONE
from gearman.errors import GearmanError

from workerhost.config import Config
from workerhost.db import Connection, Database
from workerhost.errors import ConnectError
from workerhost.failures import OUTBOX_TABLE

log = logging.getLogger("workerhost.relay")

PRIORITIES = {"normal": PRIORITY_NONE, "high": PRIORITY_HIGH, "low": PRIORITY_LOW}
# How long gearmand may take to accept a batch before the relay gives up on it (and retries).
ACCEPT_TIMEOUT = 10.0


class SubmitFailed(Exception):
    """gearmand did not accept every job of a batch; the batch stays in the outbox."""


class Relay:
    def __init__(self, config: Config, *, database: Database | None = None,
                 client: Any = None) -> None:
        self.config = config
        self.db = database or Database(config.database.connect_kwargs())
        self.servers = [str(server) for server in config.gearman.servers]
        self.client = client
        self.stopping = False
        self.shipped = 0

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def _client(self) -> Any:
        if self.client is None:
            self.client = gearman.GearmanClient(self.servers)
        return self.client

    def ship_once(self, limit: int | None = None) -> int:
        """Ship one batch of due rows; returns how many were shipped."""
        batch = limit or self.config.host.relay.batch

        def ship(conn: Connection) -> int:
            cursor = conn.cursor()
            # No gap locks: under REPEATABLE READ they deadlock the triggers' outbox INSERTs.
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cursor.execute(
                f"SELECT id, function, payload, unique_key, priority FROM {OUTBOX_TABLE} "
                "WHERE not_before <= NOW(6) ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (batch,),
            )
            rows = cursor.fetchall()
            if not rows:
                return 0
            self.submit(rows)
            cursor.execute(
                f"DELETE FROM {OUTBOX_TABLE} WHERE id IN ({', '.join(['%s'] * len(rows))})",
                [row[0] for row in rows],
            )
            cursor.close()
            return len(rows)

        shipped: int = self.db.run(ship, deadline=time.monotonic() + ACCEPT_TIMEOUT)
        self.shipped += shipped
        return shipped

    def submit(self, rows: list[tuple[Any, ...]]) -> None:
        jobs = [
            {"task": function, "data": bytes(payload), "unique": unique,
             "priority": PRIORITIES.get(priority, PRIORITY_NONE)}
            for _id, function, payload, unique, priority in rows
        ]
        try:
            requests = self._client().submit_multiple_jobs(
                jobs, background=True, wait_until_complete=False, poll_timeout=ACCEPT_TIMEOUT
            )
        except GearmanError as exc:
            self._drop_client()
            raise SubmitFailed(
                f"gearmand ({', '.join(self.servers)}) refused the batch: {exc}"
            ) from exc
        refused = [r for r in requests if r.state != JOB_CREATED]
        if refused:
            self._drop_client()
            raise SubmitFailed(
                f"gearmand did not accept {len(refused)} of {len(requests)} jobs "
                f"within {ACCEPT_TIMEOUT:.0f}s"
            )

    def _drop_client(self) -> None:
        if self.client is not None:
            self.client.shutdown()
            self.client = None

    def serve(self) -> int:
        interval = self.config.host.relay.interval
        backoff = self.config.gearman.reconnect_backoff
        while not self.stopping:
            try:
                shipped = self.ship_once()
                backoff = self.config.gearman.reconnect_backoff
            except (SubmitFailed, ConnectError, mysql.connector.Error) as exc:
                log.warning("outbox relay: %s; trying again in %.1fs", exc, backoff)
                self._sleep(backoff)
                backoff = min(backoff * 2, self.config.gearman.max_reconnect_backoff)
                continue
            if shipped:
                log.debug("outbox relay shipped %d jobs", shipped)
            else:
                self._sleep(interval)
        self._drop_client()
        self.db.close()
        return 0

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, deadline - time.monotonic()))


def main(config: Config) -> int:
    """Entry point of the relay process (forked by the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    relay = Relay(config)
    signal.signal(signal.SIGTERM, relay.request_stop)
    return relay.serve()
