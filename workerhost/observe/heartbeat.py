"""Heartbeats: the supervisor publishes its worker processes in `workerhost_workers`.

Every EVERY seconds the supervisor writes one row per worker process (function, state, the
job it runs and for how long, jobs done, memory, uptime) in one statement, and deletes the
rows of processes that ended since; when it stops it deletes all of its rows. The console's
workers page reads the table. A row not seen for GONE_AFTER is of a host that died without a
word (SIGKILL): the console leaves it out, and the next host to start deletes it.

A heartbeat only informs: it runs in the supervisor's loop with a short deadline (BEAT_TIMEOUT
on each call to the database, BEAT_PATIENCE in all), its errors are logged at most once a
minute, and none of them stops the supervisor, which goes on running the jobs.

Its connection stays open between beats. Children forked meanwhile inherit its socket but
never use it, and end with os._exit (multiprocessing's fork start), which says nothing to
the server on it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence

from workerhost.config.settings import Config
from workerhost.store import worker_table
from workerhost.store.db import RUN_ERRORS, Database
from workerhost.store.worker_table import WorkerBeat

log = logging.getLogger("workerhost.heartbeat")

EVERY = 5.0  # seconds between two heartbeats of a host
GONE_AFTER = 3 * EVERY  # a row not seen for this long is of a host that is gone
BEAT_TIMEOUT = 1  # whole seconds one database call of a heartbeat may take (to connect, read)
BEAT_PATIENCE = 1.0  # seconds a heartbeat retries through transient errors
LOG_EVERY = 60.0  # seconds between two log lines about failing heartbeats


def database(config: Config) -> Database:
    """The heartbeat's own connection: BEAT_TIMEOUT on every call, so that a hung database
    holds the supervisor's loop for a second or two, not for good."""
    params = config.database.connect_kwargs()
    params["connection_timeout"] = BEAT_TIMEOUT
    params["read_timeout"] = params["write_timeout"] = BEAT_TIMEOUT
    return Database(params)


class Heartbeat:
    """The rows of one supervisor: written every EVERY seconds by `tick`, deleted by `stop`.

    `database` opens the connection (the supervisor's seam); `clock` is the supervisor's.
    """

    def __init__(self, database: Callable[[], Database], *, host: str | None = None,
                 supervisor_pid: int | None = None) -> None:
        self.database = database
        self.host = host or socket.gethostname()
        self.supervisor_pid = supervisor_pid or os.getpid()
        self.db: Database | None = None
        self.next_beat: float | None = None  # None: at the next tick
        self.published: set[int] = set()  # pids whose rows may be in the table
        self.swept = False  # rows of hosts that are gone deleted, once per run
        self.failing_since: float | None = None
        self.logged_at: float | None = None

    def tick(self, now: float, workers: Callable[[], Sequence[WorkerBeat]]) -> None:
        """Write the rows of `workers()` (called only when a heartbeat is due)."""
        if self.next_beat is not None and now < self.next_beat:
            return
        self.next_beat = now + EVERY
        beats = list(workers())
        pids = {beat.pid for beat in beats}
        ended = sorted(self.published - pids)
        sweep = not self.swept

        def write(conn: object) -> None:
            worker_table.publish_workers(conn, self.host, self.supervisor_pid, beats)
            worker_table.forget_workers(conn, self.host, self.supervisor_pid, ended)
            if sweep:
                worker_table.sweep_workers(conn, GONE_AFTER)

        if self._run(write, now, "publish the worker processes"):
            self.published = pids
            self.swept = True
            if self.failing_since is not None:
                log.info("heartbeat: the worker processes are published again (after %.0fs)",
                         now - self.failing_since)
                self.failing_since = None
        else:
            self.published |= pids  # written or not: its rows go when they end
            if self.failing_since is None:
                self.failing_since = now

    def stop(self, now: float) -> None:
        """The supervisor stops: every row of it goes."""
        def forget(conn: object) -> None:
            worker_table.forget_workers(conn, self.host, self.supervisor_pid)

        if self._run(forget, now, "delete the rows of the worker processes"):
            self.published = set()
        self.close()

    def close(self) -> None:
        """Drop the connection; the next heartbeat opens one (after a reload, with the
        database settings of the new file)."""
        if self.db is not None:
            self.db.close()
            self.db = None

    def _run(self, work: Callable[[object], None], now: float, what: str) -> bool:
        """Run `work` in a transaction within BEAT_PATIENCE; False when it failed (logged at
        most once every LOG_EVERY seconds)."""
        try:
            if self.db is None:
                self.db = self.database()
            # db.run's deadline is on time.monotonic(), whatever clock the supervisor has.
            self.db.run(work, deadline=time.monotonic() + BEAT_PATIENCE)
            return True
        except RUN_ERRORS as exc:
            error: BaseException = exc
        except Exception as exc:  # a heartbeat must never stop the supervisor: said, not raised
            error = exc
        if self.logged_at is None or now - self.logged_at >= LOG_EVERY:
            self.logged_at = now
            log.warning("heartbeat: could not %s (%s: %s); the console's workers page misses "
                        "this host until it can (said at most every %gs)", what,
                        type(error).__name__, error, LOG_EVERY)
        return False
