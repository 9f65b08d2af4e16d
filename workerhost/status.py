"""What the queues hold right now: gearmand's figures per function, the outbox, dead letters.

`workerhost status` prints this; the metrics endpoint reads the same figures on every scrape.
Every query is bounded by a short timeout, and a server that does not answer is reported as
such instead of raised, so that one dead server never hides the figures of the others.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mysql.connector
from mysql.connector import errorcode

from workerhost import gearadmin, logs, tables
from workerhost.config import Config, DatabaseConfig, Server
from workerhost.db import Connection, Database, is_transient
from workerhost.errors import ConnectError

# Seconds one server may take to answer; a status that waits longer than that on a dead
# server is worse than one that says the server is dead.
STATUS_TIMEOUT = 2.0


@dataclass(frozen=True)
class ServerStatus:
    """One gearmand: its figures per function, or why it could not be asked."""

    server: str
    functions: Mapping[str, gearadmin.FunctionStatus] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Outbox:
    """The ledger (outbox table): every job from its trigger until its effect commits."""

    rows: int
    due: int  # rows whose not_before has passed: the relay should be shipping them
    leased: int  # shipped, their lease running: in gearmand or with a worker
    delayed: int  # failed attempts waiting for their retry
    oldest_age: float | None  # seconds since the oldest row was written; None when empty
    overdue: float | None  # seconds the longest-waiting due row is past its due time


@dataclass(frozen=True)
class DatabaseStatus:
    where: str
    dead_letters: Mapping[str, int] = field(default_factory=dict)  # rows per function
    outbox: Outbox | None = None
    error: str | None = None
    reachable: bool = True  # False: no answer at all; else `error` is about what it answered


@dataclass(frozen=True)
class Report:
    servers: tuple[ServerStatus, ...]
    database: DatabaseStatus

    @property
    def reachable(self) -> bool:
        return self.database.reachable and not any(s.error for s in self.servers)

    def problems(self) -> list[str]:
        """One line per server whose figures are missing; empty when all answered."""
        found = [f"gearmand {s.server} did not answer: {s.error}" for s in self.servers if s.error]
        if self.database.error:
            found.append(f"{self.database.where}: {self.database.error}")
        return found


def gearmand(server: Server, *, timeout: float = STATUS_TIMEOUT) -> ServerStatus:
    try:
        return ServerStatus(str(server), gearadmin.status(server.host, server.port,
                                                          timeout=timeout))
    except OSError as exc:
        return ServerStatus(str(server), error=exc.strerror or str(exc) or type(exc).__name__)
    except ValueError as exc:  # an answer that is not gearmand's status format
        return ServerStatus(str(server), error=f"unexpected answer: {exc}")


def outbox_figures(conn: Connection) -> Outbox:
    rows, due, leased, delayed, oldest, overdue = tables.outbox_figures(conn)
    return Outbox(rows, due, leased, delayed, _seconds(oldest), _seconds(overdue))


def _seconds(microseconds: Any) -> float | None:
    return None if microseconds is None else max(0.0, int(microseconds) / 1e6)


def open_database(config: DatabaseConfig, *, timeout: float = STATUS_TIMEOUT) -> Database:
    """A connection for status queries: it gives up after `timeout`, not `connect_timeout`."""
    params = config.connect_kwargs()
    params["connection_timeout"] = max(1, math.ceil(min(timeout, config.connect_timeout)))
    return Database(params)


def database(db: Database, *, timeout: float = STATUS_TIMEOUT) -> DatabaseStatus:
    def query(conn: Connection) -> tuple[dict[str, int], Outbox]:
        return tables.dead_letters_by_function(conn), outbox_figures(conn)

    def failed(message: str, *, reachable: bool) -> DatabaseStatus:
        # The server's words may quote the password (a statement, a connection string).
        shown = logs.mask(message, str(db.param("password") or ""))
        return DatabaseStatus(db.describe(), error=shown, reachable=reachable)

    try:
        letters, outbox = db.run(query, deadline=time.monotonic() + timeout)
    except ConnectError as exc:
        return failed(f"unreachable ({exc.__cause__ or exc})", reachable=False)
    except mysql.connector.Error as exc:
        db.reset()
        if exc.errno == errorcode.ER_NO_SUCH_TABLE:
            message = "the host's tables are missing; `workerhost check --connect` creates them"
        else:
            message = str(exc)
        return failed(message, reachable=not is_transient(exc))
    return DatabaseStatus(db.describe(), letters, outbox)


def gather(config: Config, *, timeout: float = STATUS_TIMEOUT) -> Report:
    servers = tuple(gearmand(server, timeout=timeout) for server in config.gearman.servers)
    db = open_database(config.database, timeout=timeout)
    try:
        return Report(servers, database(db, timeout=timeout))
    finally:
        db.close()


def render(report: Report) -> str:
    """The report as tables for a person."""
    lines: list[str] = []
    for server in report.servers:
        if server.error:
            lines += [f"gearmand {server.server}: unreachable ({server.error})", ""]
            continue
        lines.append(f"gearmand {server.server}")
        lines.append(f"  {'FUNCTION':32} {'QUEUED':>8} {'RUNNING':>8} {'WORKERS':>8}")
        for name in sorted(server.functions):
            f = server.functions[name]
            lines.append(f"  {name:32} {f.queued:>8} {f.running:>8} {f.workers:>8}")
        if not server.functions:
            lines.append("  (no functions known to this server)")
        lines.append("")
    db = report.database
    if db.error:
        lines.append(f"{db.where}: {db.error}")
        return "\n".join(lines)
    lines.append(db.where)
    if db.outbox is not None:
        lines.append(f"  outbox: {_describe_outbox(db.outbox)}")
    lines.append(f"  dead letters: {sum(db.dead_letters.values())}")
    if db.dead_letters:
        lines.append(f"  {'FUNCTION':32} {'DEAD LETTERS':>12}")
        lines += [f"  {name:32} {count:>12}" for name, count in db.dead_letters.items()]
    return "\n".join(lines)


def _describe_outbox(outbox: Outbox) -> str:
    text = (f"{outbox.rows} rows: {outbox.due} due, {outbox.leased} leased, "
            f"{outbox.delayed} delayed")
    if outbox.oldest_age is not None:
        text += f", oldest written {outbox.oldest_age:.1f}s ago"
    if outbox.overdue is not None:
        text += f", longest overdue {outbox.overdue:.1f}s"
    return text


def as_json(report: Report) -> dict[str, Any]:
    """The report for scripts; every figure a number, every failure an "error" string."""
    db = report.database
    return {
        "gearmand": [
            {"server": s.server, "error": s.error,
             "functions": {name: {"queued": f.queued, "running": f.running,
                                  "workers": f.workers}
                           for name, f in sorted(s.functions.items())}}
            for s in report.servers
        ],
        "database": {
            "where": db.where, "error": db.error, "dead_letters": dict(db.dead_letters),
            "outbox": None if db.outbox is None else {
                "rows": db.outbox.rows, "due": db.outbox.due, "leased": db.outbox.leased,
                "delayed": db.outbox.delayed,
                "oldest_age_seconds": db.outbox.oldest_age,
                "overdue_seconds": db.outbox.overdue,
            },
        },
    }  # fmt: skip
