"""What the queues hold right now: gearmand's figures per function, the ledger, dead letters,
and how far each schedule has got.

`workerhost status` prints this; the metrics endpoint reads the same figures on every scrape.
Every query is bounded by a short timeout, and a server that does not answer is reported as
such instead of raised, so that one dead server never hides the figures of the others.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import mysql.connector
from mysql.connector import errorcode

from workerhost.config.converters import Server
from workerhost.config.settings import Config, DatabaseConfig, ScheduleConfig
from workerhost.errors import ConnectError
from workerhost.gearman import admin as gearadmin
from workerhost.model.timetable import UTC, Timetable
from workerhost.observe import logs
from workerhost.store import job_control, ledger, schedule_table
from workerhost.store import letters as letters_store
from workerhost.store.db import Connection, Database, is_transient
from workerhost.store.schedule_table import ScheduleRow

# A schedule's next slot this late is shown as overdue: a leader fires at the slot's time, and
# takes a moment to write it down.
OVERDUE_SHOWN = 1.0
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
    """The ledger (table workerhost_outbox): every job from its trigger until its effect commits."""

    rows: int
    due: int  # rows whose not_before has passed: the relay should be shipping them
    leased: int  # shipped, their lease running: in gearmand or with a worker
    delayed: int  # failed attempts waiting for their retry
    oldest_age: float | None  # seconds since the oldest row was written; None when empty
    overdue: float | None  # seconds the longest-waiting due row is past its due time


@dataclass(frozen=True)
class Unserved:
    """Ledger rows of one function written host.relay.unserved_after ago or earlier and not
    done yet: most often, no host serves the function."""

    function: str
    rows: int
    oldest_age: float  # seconds since the oldest of them was written


@dataclass(frozen=True)
class DatabaseStatus:
    where: str
    dead_letters: Mapping[str, int] = field(default_factory=dict)  # rows per function
    outbox: Outbox | None = None
    # Per function, rows older than unserved_after (read only when it is given).
    unserved: Mapping[str, Unserved] = field(default_factory=dict)
    error: str | None = None
    reachable: bool = True  # False: no answer at all; else `error` is about what it answered
    # How far each schedule the database knows has got; read only when the file has schedules.
    schedules: Mapping[str, schedule_table.ScheduleRow] = field(default_factory=dict)
    paused: tuple[str, ...] = ()  # functions paused on every host (`workerhost pause`)


@dataclass(frozen=True)
class ScheduleStatus:
    """One schedule of the file, and how far the database says it has got."""

    name: str
    function: str
    timetable: str  # "every 1h", "cron '0 3 * * *' Europe/Paris"
    timezone: str  # the slots are shown in it
    catch_up: str
    last_slot: datetime | None  # the newest slot that fired; None: none yet
    fired_at: datetime | None  # when it fired
    fired_by: str | None  # the host (name:pid) that fired it
    next_slot: datetime  # the next slot still to come
    since_last: float | None  # seconds since last_slot
    # How long the slot after the last one decided is past due: 0 while a host leads the
    # schedule (the slot fires at its time), growing while none does.
    overdue: float


def schedule_status(schedule: ScheduleConfig, row: schedule_table.ScheduleRow | None,
                    now: datetime) -> ScheduleStatus:  # fmt: skip
    timetable = Timetable(every=schedule.every, cron=schedule.cron, zone=schedule.timezone)
    decided = now if row is None else row.last_slot  # a new schedule starts from now
    due = timetable.after(decided)
    last = None if row is None else row.fired_slot
    return ScheduleStatus(
        name=schedule.name, function=schedule.function, timetable=timetable.describe(),
        timezone=schedule.timezone, catch_up=schedule.catch_up, last_slot=last,
        fired_at=None if row is None else row.fired_at,
        fired_by=None if row is None else row.fired_by,
        next_slot=timetable.after(max(decided, now)),
        since_last=None if last is None else max(0.0, (now - last).total_seconds()),
        overdue=max(0.0, (now - due).total_seconds()),
    )  # fmt: skip


def schedules(config: Config, rows: Mapping[str, schedule_table.ScheduleRow],
              now: datetime | None = None) -> tuple[ScheduleStatus, ...]:  # fmt: skip
    """The file's schedules, in file order, with the database's rows of them."""
    now = now or datetime.now(UTC)
    return tuple(schedule_status(s, rows.get(s.name), now) for s in config.schedules)


@dataclass(frozen=True)
class Report:
    servers: tuple[ServerStatus, ...]
    database: DatabaseStatus
    schedules: tuple[ScheduleStatus, ...] = ()
    unserved_after: float | None = None  # host.relay.unserved_after: the age rows are listed at
    handled: frozenset[str] = frozenset()  # the functions of this file's handlers

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


def ledger_figures(conn: Connection) -> Outbox:
    rows, due, leased, delayed, oldest, overdue = ledger.ledger_figures(conn)
    return Outbox(rows, due, leased, delayed, _seconds(oldest), _seconds(overdue))


def _seconds(microseconds: Any) -> float | None:
    return None if microseconds is None else max(0.0, int(microseconds) / 1e6)


def open_database(config: DatabaseConfig, *, timeout: float = STATUS_TIMEOUT) -> Database:
    """A connection for status queries: it gives up after `timeout`, not `connect_timeout`."""
    params = config.connect_kwargs()
    params["connection_timeout"] = max(1, math.ceil(min(timeout, config.connect_timeout)))
    return Database(params)


def database(db: Database, *, timeout: float = STATUS_TIMEOUT, schedules: bool = False,
             unserved_after: float | None = None) -> DatabaseStatus:
    """The database's figures; with `schedules`, also the rows of workerhost_schedules (a
    table that a database older than schedules may lack); with `unserved_after`, the ledger
    rows that old or older per function."""

    def query(conn: Connection) -> tuple[dict[str, int], Outbox, dict[str, ScheduleRow],
                                         dict[str, Unserved], tuple[str, ...]]:
        rows = schedule_table.schedule_rows(conn) if schedules else {}
        unserved = {} if unserved_after is None else {
            function: Unserved(function, count, int(oldest) / 1e6)
            for function, (count, oldest) in ledger.unserved_rows(conn, unserved_after).items()}
        paused = tuple(name for name, _, _ in job_control.paused_functions(conn))
        return (letters_store.dead_letters_by_function(conn), ledger_figures(conn), rows, unserved,
                paused)

    def failed(message: str, *, reachable: bool) -> DatabaseStatus:
        # The server's words may quote the password (a statement, a connection string).
        shown = logs.mask(message, str(db.param("password") or ""))
        return DatabaseStatus(db.describe(), error=shown, reachable=reachable)

    try:
        letters, outbox, rows, unserved, paused = db.run(
            query, deadline=time.monotonic() + timeout)
    except ConnectError as exc:
        return failed(f"unreachable ({exc.__cause__ or exc})", reachable=False)
    except mysql.connector.Error as exc:
        db.reset()
        if exc.errno == errorcode.ER_NO_SUCH_TABLE:
            message = "the host's tables are missing; `workerhost check --connect` creates them"
        else:
            message = str(exc)
        return failed(message, reachable=not is_transient(exc))
    return DatabaseStatus(db.describe(), letters, outbox, unserved, schedules=rows,
                          paused=paused)


def gather(config: Config, *, timeout: float = STATUS_TIMEOUT) -> Report:
    servers = tuple(gearmand(server, timeout=timeout) for server in config.gearman.servers)
    db = open_database(config.database, timeout=timeout)
    try:
        answer = database(db, timeout=timeout, schedules=bool(config.schedules),
                          unserved_after=config.host.relay.unserved_after)
    finally:
        db.close()
    return Report(servers, answer,
                  schedules(config, answer.schedules) if not answer.error else (),
                  unserved_after=config.host.relay.unserved_after,
                  handled=frozenset(config.handlers))


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
    if report.unserved_after is not None:
        lines += ["  " + line for line in render_unserved(report)]
    if db.paused:
        lines.append(f"  paused: {', '.join(db.paused)} (`workerhost resume FUNCTION` runs "
                     "their parked jobs)")
    lines.append(f"  dead letters: {sum(db.dead_letters.values())}")
    if db.dead_letters:
        lines.append(f"  {'FUNCTION':32} {'DEAD LETTERS':>12}")
        lines += [f"  {name:32} {count:>12}" for name, count in db.dead_letters.items()]
    if report.schedules:
        lines.append(f"  schedules: {len(report.schedules)}")
        lines += ["  " + line for line in render_schedules(report.schedules)]
    return "\n".join(lines)


def span(seconds: float) -> str:
    """A length of time for a person: 4.2s, 12m 5s, 3h 4m, 2d 6h."""
    whole = int(seconds)
    for big, small, size, unit in (("d", "h", 86400, 3600), ("h", "m", 3600, 60),
                                   ("m", "s", 60, 1)):
        if whole >= size:
            return f"{whole // size}{big} {whole % size // unit}{small}"
    return f"{seconds:.1f}s"


def _moment(moment: datetime | None, zone: str) -> str:
    return "never" if moment is None else moment.astimezone(ZoneInfo(zone)).isoformat()


def render_schedules(found: tuple[ScheduleStatus, ...]) -> list[str]:
    """A table of schedules: the last slot that fired, how long ago, and the next one."""
    lines = [f"{'SCHEDULE':24} {'FUNCTION':20} {'LAST SLOT':25} {'AGO':>8}  {'NEXT SLOT':25} "
             "OVERDUE"]
    for s in found:
        ago = "" if s.since_last is None else span(s.since_last)
        overdue = span(s.overdue) if s.overdue >= OVERDUE_SHOWN else "-"
        lines.append(f"{s.name:24} {s.function:20} {_moment(s.last_slot, s.timezone):25} "
                     f"{ago:>8}  {_moment(s.next_slot, s.timezone):25} {overdue}")
    return lines


NOT_HANDLED = "no handler in this file"  # marks a function of unserved rows


def render_unserved(report: Report) -> list[str]:
    """The ledger rows older than unserved_after, per function, as a table."""
    after = span(report.unserved_after or 0.0)
    found = report.database.unserved
    if not found:
        return [f"rows older than {after} (host.relay.unserved_after): none"]
    lines = [f"rows older than {after} (host.relay.unserved_after): "
             f"{sum(u.rows for u in found.values())}",
             f"{'FUNCTION':32} {'ROWS':>8} {'OLDEST':>8}"]
    for name, u in sorted(found.items()):
        mark = "" if name in report.handled else f"  {NOT_HANDLED}"
        lines.append(f"{name:32} {u.rows:>8} {span(u.oldest_age):>8}{mark}")
    return lines


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
            "paused": list(db.paused),
            "unserved_after_seconds": report.unserved_after,
            "unserved": [{"function": name, "rows": u.rows, "oldest_age_seconds": u.oldest_age,
                          "handled_here": name in report.handled}
                         for name, u in sorted(db.unserved.items())],
        },
        "schedules": [schedule_json(s) for s in report.schedules],
    }  # fmt: skip


def schedule_json(s: ScheduleStatus) -> dict[str, Any]:
    def moment(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {"name": s.name, "function": s.function, "timetable": s.timetable,
            "timezone": s.timezone, "catch_up": s.catch_up, "last_slot": moment(s.last_slot),
            "fired_at": moment(s.fired_at), "fired_by": s.fired_by,
            "next_slot": moment(s.next_slot), "seconds_since_last_slot": s.since_last,
            "overdue_seconds": s.overdue}
