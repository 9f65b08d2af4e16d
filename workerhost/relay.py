"""The relay: ships due rows of the ledger (`workerhost_outbox`) to gearmand, and leases them.

A row stays in the ledger until the transaction that commits its job's effect deletes it
(worker.py). The relay ships the rows that are due (new rows of outbox delivery, retries whose
delay is over, and rows whose lease ran out because gearmand lost their job or a worker died
with it) and moves each one's due time on by its lease, in the transaction that locked it,
committed once gearmand has answered every job of the batch. Each job carries its row's id in
its unique (job.ledger_unique): gearmand queues a row shipped twice once, and a worker that gets
a job whose row is gone already answers it without running it. Relays on several hosts share
the table: `FOR UPDATE SKIP LOCKED` gives each batch to one of them.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import time
from typing import Any

import mysql.connector

from workerhost import tables
from workerhost.config import Config
from workerhost.db import Connection, Database
from workerhost.errors import ConnectError
from workerhost.gearconn import GearmanLost, Refused, Submitter
from workerhost.job import ledger_unique

log = logging.getLogger("workerhost.relay")

# How long gearmand may take to accept a batch before the relay gives up on it (and retries).
ACCEPT_TIMEOUT = 10.0
# How a trigger's payload ends on MariaDB, which keeps JSON_OBJECT's key order.
_EVENT_ID_TAIL = re.compile(rb'"event_id": "([0-9a-f-]{36})"}\Z')


class SubmitFailed(Exception):
    """gearmand did not accept every job of a batch; the batch stays in the outbox."""


class Relay:
    def __init__(self, config: Config, *, database: Database | None = None) -> None:
        self.config = config
        self.db = database or Database(config.database.connect_kwargs())
        self.servers = [str(server) for server in config.gearman.servers]
        self.submitters = [Submitter(server, ACCEPT_TIMEOUT) for server in config.gearman.servers]
        self.turn = 0  # batches go round the servers; a server that fails passes its turn on
        self.stopping = False
        self.shipped = 0

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def ship_once(self, limit: int | None = None) -> int:
        """Ship one batch of due rows; returns how many were shipped."""
        batch = limit or self.config.host.relay.batch

        def ship(conn: Connection) -> int:
            rows = tables.lock_due(conn, batch)
            if not rows:
                return 0
            answers = self.submit(rows)
            refused = [(row, answer) for row, answer in zip(rows, answers, strict=True)
                       if isinstance(answer, Refused)]
            for (ident, function, *_), answer in refused:
                # Shipping it again would be refused again, and hold up every row after it.
                tables.outbox_to_dead_letters(
                    conn, ident, f"gearmand refused the job: {answer.reason}")
                log.error("outbox row %s (%s) dead-lettered: gearmand refused it: %s",
                          ident, function, answer.reason)
            shipped = [row[0] for row, answer in zip(rows, answers, strict=True)
                       if not isinstance(answer, Refused)]
            if shipped:
                tables.lease(conn, shipped, self.config.host.relay.lease)
            return len(shipped)

        shipped: int = self.db.run(ship, deadline=time.monotonic() + ACCEPT_TIMEOUT)
        self.shipped += shipped
        return shipped

    def submit(self, rows: list[tuple[Any, ...]]) -> list[bytes | Refused]:
        """Hand every row's job to one gearmand; its answer to each (a handle, or why it
        refused that one). SubmitFailed when no server answered them all."""
        jobs = []
        for ident, function, payload, unique, priority in rows:
            data = bytes(payload)
            own = unique.encode() if unique else row_unique(data, ident)
            jobs.append((function, ledger_unique(ident, own.decode()).encode(), data, priority))
        errors = []
        for _ in self.submitters:
            submitter = self.submitters[self.turn % len(self.submitters)]
            self.turn += 1
            try:
                return submitter.submit(jobs)
            except GearmanLost as exc:
                errors.append(str(exc))
        raise SubmitFailed("; ".join(errors))

    def close(self) -> None:
        for submitter in self.submitters:
            submitter.close()

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
        self.close()
        self.db.close()
        return 0

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, deadline - time.monotonic()))


def row_unique(payload: bytes, ident: int) -> bytes:
    """The unique of a row written without one: its payload's event id, else one made of the
    row's id, so that a row shipped twice (its batch retried) keeps its unique and gearmand
    queues it once.

    A trigger with a single outbox entry leaves unique_key NULL: a second UUID() would cost
    every INSERT a local variable, while the event id is already in the payload.
    """
    match = _EVENT_ID_TAIL.search(payload, max(0, len(payload) - 64))
    if match:
        return match.group(1)
    if payload.startswith(b"{") and b'"event_id"' in payload:  # MySQL 8 reorders the keys
        try:
            event_id = json.loads(payload).get("event_id")
        except (ValueError, AttributeError):
            event_id = None
        if isinstance(event_id, str) and 0 < len(event_id.encode()) < 64:
            return event_id.encode()
    # Anything else (a row written by hand).
    return f"workerhost-outbox-{ident}".encode()


def main(config: Config) -> int:
    """Entry point of the relay process (forked by the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    relay = Relay(config)
    signal.signal(signal.SIGTERM, relay.request_stop)
    return relay.serve()
