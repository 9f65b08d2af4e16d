"""The relay: ships due rows of the ledger (`workerhost_outbox`) to gearmand, and leases them.

A row stays in the ledger until the transaction that commits its job's effect deletes it
(worker.py). The relay ships the rows that are due (new rows of outbox delivery, retries whose
delay is over, and rows whose lease ran out because gearmand lost their job or a worker died
with it) and moves each one's due time on by its lease, in the transaction that locked it,
committed once gearmand has answered every job of the batch. Each job carries its row's id and
token in its unique (job.ledger_unique): one gearmand queues a row shipped twice once, and a
worker that gets a job whose row is gone already, or a second copy from another gearmand,
answers it without running it. Relays on several hosts share
the table: `FOR UPDATE SKIP LOCKED` gives each batch to one of them.
"""

from __future__ import annotations

import logging
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
        jobs = [(function, ledger_unique(ident, token).encode(), bytes(payload), priority)
                for ident, function, payload, _unique, priority, token in rows]
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


def main(config: Config) -> int:
    """Entry point of the relay process (forked by the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    relay = Relay(config)
    signal.signal(signal.SIGTERM, relay.request_stop)
    return relay.serve()
