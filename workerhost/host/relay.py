"""The relay: ships due rows of the ledger (`workerhost_outbox`) to gearmand, and leases them.

A row stays in the ledger until the transaction that commits its job's effect deletes it
(worker.py). The relay ships the rows that are due (new rows of outbox delivery, retries whose
delay is over, and rows whose lease ran out because gearmand lost their job or a worker died
with it) and moves each one's due time on by its lease, in the transaction that locked it,
committed once gearmand has answered every job of the batch. When a gearmand takes too long
to answer (ACCEPT_TIMEOUT without an answer: one slow to write its persistent queue, say),
the rows it answered before are shipped and the rest stay due (or, if it answered none and
no other server took the batch, the batch is rolled back), and the next batch is half as
big, down to one row. Batches keep to that size for SHRUNK_FOR, then each full batch shipped
doubles it again, up to `host.relay.batch`: a slow gearmand gets batches it can take, instead
of the same batch failing for ever while its rows stay locked, and a batch fails once in
SHRUNK_FOR at most while the relay tries bigger ones.

It polls again after `host.relay.interval`, and at once only after a full batch (a backlog):
rows that commit one by one go out many to a transaction, and a poll with its durable commit
serves many rows, not a few. Each job carries its row's id and token in its unique
(job.ledger_unique): one gearmand queues a row shipped twice once, and a worker that gets a
job whose row is gone already, or a second copy from another gearmand, answers it without
running it. Relays on several hosts share the table: `FOR UPDATE SKIP LOCKED` gives each
batch to one of them.

A row shipped again (its lease ran out) at `host.relay.unserved_after` or older has waited
that long for a worker to complete it: most often no host serves its function, and its rows
would pile up unseen. The relay counts such rows in the metrics and warns, per function, at
most once a minute. It learns their age from the rows it locks anyway, so that the poll still
costs the due rows only.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mysql.connector

from workerhost.config.settings import Config
from workerhost.errors import ConnectError
from workerhost.gearman.conn import GearmanLost, Refused, Submitter
from workerhost.model.job import ledger_unique
from workerhost.observe import events
from workerhost.observe.status import span
from workerhost.store import ledger, letters
from workerhost.store.db import Connection, Database

log = logging.getLogger("workerhost.relay")

# How long gearmand may take to accept a batch before the relay gives up on it (and retries).
ACCEPT_TIMEOUT = 10.0
# After a batch no gearmand took in time, the batches keep to half its size this long.
SHRUNK_FOR = 60.0
# Seconds between two warnings about one function's unserved rows: the rows come back at
# every lease, and one line a minute is enough to act on.
UNSERVED_WARNING_INTERVAL = 60.0


class SubmitFailed(Exception):
    """gearmand did not accept every job of a batch; the batch stays in the outbox.

    `timed_out`: a gearmand was reachable but did not take the batch in time.
    """

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass
class _Unserved:
    """Unserved rows of one function shipped since the last warning about it."""

    ids: set[int] = field(default_factory=set)
    oldest: float = 0.0  # seconds
    warned: float | None = None  # clock() of the last warning


class Relay:
    def __init__(self, config: Config, *, database: Database | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.unserved: dict[str, _Unserved] = {}
        self.db = database or Database(config.database.connect_kwargs())
        self.servers = [str(server) for server in config.gearman.servers]
        self.submitters = [Submitter(server, ACCEPT_TIMEOUT) for server in config.gearman.servers]
        self.turn = 0  # batches go round the servers; a server that fails passes its turn on
        # Rows a poll takes: host.relay.batch, halved after each batch no gearmand took.
        self.batch = config.host.relay.batch
        self.shrunk_at = -SHRUNK_FOR  # clock() of the last batch no gearmand took
        # Why gearmand answered only the first rows of the last batch, if it did.
        self.cut_short: GearmanLost | None = None
        self.stopping = False
        self.shipped = 0

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def ship_once(self, limit: int | None = None) -> int:
        """Ship one batch of due rows (`limit` at most); returns how many were shipped.

        Raises SubmitFailed when no gearmand took any job of the batch. When a gearmand
        took too long to answer, the rows it answered before are leased and shipped, the rest
        stay due, and the next batch is half as big.
        """
        batch = min(limit or self.batch, self.batch)
        tried = answered = 0

        def ship(conn: Connection) -> list[tuple[Any, ...]]:
            nonlocal tried, answered
            rows = ledger.lock_due(conn, batch)
            tried = answered = len(rows)
            if not rows:
                return []
            answers = self.submit(rows)
            answered = len(answers)  # fewer than the rows when gearmand timed out
            rows = rows[:answered]
            refused = [(row, answer) for row, answer in zip(rows, answers, strict=True)
                       if isinstance(answer, Refused)]
            for (ident, function, *_), answer in refused:
                # Shipping it again would be refused again, and hold up every row after it.
                letters.unshippable_to_dead_letters(
                    conn, ident, f"gearmand refused the job: {answer.reason}")
                log.error("ledger row %s (%s) dead-lettered: gearmand refused it: %s",
                          ident, function, answer.reason)
            shipped = [row for row, answer in zip(rows, answers, strict=True)
                       if not isinstance(answer, Refused)]
            if shipped:
                ledger.lease(conn, [row[0] for row in shipped], self.config.host.relay.lease)
            return shipped

        try:
            shipped: list[tuple[Any, ...]] = self.db.run(
                ship, deadline=time.monotonic() + ACCEPT_TIMEOUT)
        except SubmitFailed as exc:
            if not exc.timed_out:  # no gearmand reachable: the batch's size is not the cause
                raise
            self._shrink(tried)
            raise SubmitFailed(f"{exc}; the next batch has {self.batch} rows at most "
                               f"(host.relay.batch: {self.config.host.relay.batch})",
                               timed_out=True) from None
        if answered < tried:
            assert self.cut_short is not None
            if self.cut_short.timed_out:  # not when it went away: its size was not the cause
                self._shrink(tried)
            log.warning("relay: %s; the %d rows it answered are shipped, the rest stay due; "
                        "the next batch has %d rows at most (host.relay.batch: %d)",
                        self.cut_short, answered, self.batch, self.config.host.relay.batch)
        elif tried == batch and self.clock() - self.shrunk_at >= SHRUNK_FOR:
            self.batch = min(self.config.host.relay.batch, 2 * self.batch)  # a full batch went
        self.shipped += len(shipped)
        self.note_unserved(shipped)
        return len(shipped)

    def note_unserved(self, shipped: list[tuple[Any, ...]]) -> None:
        """Count the rows of a committed batch that were shipped before and are older than
        unserved_after, and warn about their functions (each at most once a minute)."""
        after = self.config.host.relay.unserved_after
        found: dict[str, list[tuple[int, float]]] = {}
        for ident, function, *_, ships, age in shipped:
            # A row never shipped before may be old only because no relay ran, or because a
            # worker failed it and it waited for its retry: neither means it is unserved.
            if ships > 0 and age / 1e6 >= after:
                found.setdefault(function, []).append((int(ident), age / 1e6))
        now = self.clock()
        for function, rows in found.items():
            events.emit(events.UnservedShipped(function, len(rows)))
            seen = self.unserved.setdefault(function, _Unserved())
            seen.ids.update(ident for ident, _ in rows)
            seen.oldest = max(seen.oldest, *(age for _, age in rows))
            if seen.warned is not None and now - seen.warned < UNSERVED_WARNING_INTERVAL:
                continue
            served = function in self.config.handlers
            log.warning(
                "ledger: %d rows of %s older than %s shipped again (oldest %s): no worker "
                "completes them: is a handler for %s (accept: ledger or any) running on some "
                "host?%s", len(seen.ids), function, span(after), span(seen.oldest), function,
                "" if served else " (this host's config has none)")
            seen.ids.clear()
            seen.oldest, seen.warned = 0.0, now

    def _shrink(self, tried: int) -> None:
        """A batch of `tried` rows was too big for gearmand to answer in time."""
        self.batch = max(1, min(self.batch, tried) // 2)
        self.shrunk_at = self.clock()

    def submit(self, rows: list[tuple[Any, ...]]) -> list[bytes | Refused]:
        """Hand every row's job to one gearmand; its answer to each (a handle, or why it
        refused that one), in order. A gearmand that answered the first rows and then took
        too long gives the answers to those only (and `cut_short` says why). SubmitFailed when
        no server answered any."""
        jobs = [(function, ledger_unique(ident, token).encode(), bytes(payload), priority)
                for ident, function, payload, _unique, priority, token, *_ in rows]
        errors = []
        for _ in self.submitters:
            submitter = self.submitters[self.turn % len(self.submitters)]
            self.turn += 1
            try:
                return submitter.submit(jobs)
            except GearmanLost as exc:
                if exc.answers:  # it took those: they are shipped, whatever became of the rest
                    self.cut_short = exc
                    return exc.answers
                errors.append(exc)
        raise SubmitFailed("; ".join(map(str, errors)),
                           timed_out=any(exc.timed_out for exc in errors))

    def close(self) -> None:
        for submitter in self.submitters:
            submitter.close()

    def serve(self) -> int:
        interval = self.config.host.relay.interval
        backoff = self.config.gearman.reconnect_backoff
        while not self.stopping:
            batch = self.batch
            try:
                shipped = self.ship_once()
                backoff = self.config.gearman.reconnect_backoff
            except (SubmitFailed, ConnectError, mysql.connector.Error) as exc:
                log.warning("relay: %s; trying again in %.1fs", exc, backoff)
                self._sleep(backoff)
                backoff = min(backoff * 2, self.config.gearman.max_reconnect_backoff)
                continue
            if shipped:
                log.debug("relay shipped %d jobs", shipped)
            # Only a full batch means a backlog, polled again at once. Rows that commit one
            # by one would otherwise be shipped a few per poll, each poll a durable commit.
            if shipped < batch:
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
