"""What the console shows, read from gearmand, the database and the host's metrics.

A page must answer within a few hundred milliseconds however big the tables grow, so every
page reads by key (an id range, or `function` and id on the dead letters) and never counts a
whole table. The two figures that need a whole table, or a slow answer (the ledger's backlog
and the host's job rates), are read by the Sampler thread instead (sampling.py), and pages
show its latest reading with its age. How long a page waits for the database: deadlines.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workerhost.config.settings import Config
from workerhost.console.deadlines import PAGE_DEADLINE
from workerhost.console.sampling import LedgerCount, Rates, Sampler
from workerhost.gearman import admin as gearadmin
from workerhost.host import scheduler
from workerhost.model.ledger_state import LedgerState
from workerhost.observe import logs, status
from workerhost.store import job_control, ledger_pages, schedule_table
from workerhost.store import letters as letters_store
from workerhost.store.db import RUN_ERRORS, Database
from workerhost.store.deadletters import DeadLetter, letter_of_row

log = logging.getLogger("workerhost.console")

PAGE_SIZE = 50  # rows on one page of dead letters or of the ledger
DETAIL_BYTES = 1 << 20  # bytes of a payload a ledger row's page shows at most
FUNCTION_WINDOW = 10_000  # newest ledger rows whose functions the filters offer
PREVIEW = 160  # characters of an error, bytes of a payload, shown in a list
LEDGER_SCAN = 20_000  # ledger rows one page reads at most to find its rows of one state
SEARCH_SCAN = 20_000  # dead letter ids one page of a search looks through at most
COUNT_CHUNK = 20_000  # dead letter ids counted per statement for a confirmation
COUNT_BUDGET = 0.1  # seconds a confirmation page counts; past it, "at least N"


@dataclass(frozen=True)
class Overview:
    servers: tuple[status.ServerStatus, ...]
    dead_letters: Mapping[str, int]
    database_error: str | None
    ledger: LedgerCount | None
    ledger_error: str | None
    rates: Rates | None
    rates_note: str | None  # why there are no rates (no host.metrics, no answer, too early)
    functions: tuple[str, ...]  # every function any of the above knows, sorted
    schedules: Schedules | None = None  # None: the file has no schedules
    # The paused functions, by name (empty, and not known, with a database_error).
    paused: Mapping[str, Paused] = field(default_factory=dict)


@dataclass(frozen=True)
class Paused:
    """A function paused on every host (`workerhost pause`, or the console)."""

    function: str
    since: datetime
    by: str | None  # host:pid of a `workerhost pause`, or "NAME (console)"


@dataclass(frozen=True)
class ScheduleLine:
    """One schedule of the file: how far it has got, and whether a host leads it now."""

    status: status.ScheduleStatus
    leader: int | None  # the connection holding its lock; None: no host leads it

    @property
    def overdue(self) -> bool:
        return self.status.overdue >= status.OVERDUE_SHOWN


@dataclass(frozen=True)
class Schedules:
    lines: tuple[ScheduleLine, ...]
    error: str | None  # the database's answer when it gave none of the above


# -- what pages read at once -------------------------------------------------------------------


def overview(config: Config, db: Database, sampler: Sampler) -> Overview:
    if sampler.want():
        sampler.wait_first(0.15)
    servers = tuple(status.gearmand(server) for server in config.gearman.servers)
    letters: Mapping[str, int] = {}
    paused: dict[str, Paused] = {}
    error = None

    def read(conn: Any) -> tuple[Mapping[str, int], list[tuple[str, datetime, str | None]]]:
        return (letters_store.dead_letters_by_function(conn),
                job_control.paused_functions(conn))

    try:
        letters, stopped = db.run(read, deadline=_deadline())
        paused = {name: Paused(name, since, by) for name, since, by in stopped}
    except RUN_ERRORS as exc:
        db.reset()
        error = logs.mask(str(exc), config.database.password)
    rates, note = sampler.rates()
    with sampler.lock:
        ledger, ledger_error = sampler.ledger, sampler.ledger_error
    names = {*config.handlers, *letters, *paused}
    for server in servers:
        names.update(server.functions)
    if rates is not None:
        names.update(rates.completed, rates.failed)
    return Overview(servers, letters, error, ledger, ledger_error, rates, note,
                    tuple(sorted(names)), schedules(config, db) if config.schedules else None,
                    paused)


def schedules(config: Config, db: Database) -> Schedules:
    """The file's schedules, with their rows in the database and the holders of their locks
    (a few rows and one statement: cheap enough for every refresh of the overview)."""
    names = [schedule.name for schedule in config.schedules]

    def read(conn: Any) -> tuple[dict[str, schedule_table.ScheduleRow], dict[str, int | None]]:
        return (schedule_table.schedule_rows(conn),
                scheduler.lock_holders(conn, config.database.database, names))

    try:
        rows, holders = db.run(read, deadline=_deadline())
    except RUN_ERRORS as exc:
        db.reset()
        return Schedules((), logs.mask(str(exc), config.database.password))
    return Schedules(tuple(ScheduleLine(found, holders.get(found.name))
                           for found in status.schedules(config, rows)), None)


def _deadline() -> float:
    return time.monotonic() + PAGE_DEADLINE


def secret_spellings(config: Config) -> tuple[str, ...]:
    """Every spelling of every secret a page masks, longest first (a longer secret that holds
    a shorter one goes first), ties in a fixed order: the pages mask them, and the searches
    match text masked by letters.masked, in this one order, so that both see the same text."""
    found = {*logs._secrets}
    for secret in (config.database.password, config.host.console.secret_key,
                   *(user.password for user in config.host.console.users.values())):
        found.update(logs._spellings(secret))
    return tuple(sorted(found, key=lambda text: (-len(text), text)))


def masked(text: str, secrets: Sequence[str], limit: int | None = None) -> str:
    """`text` as a page shows it: each of `secrets` as ***, then cut to `limit` characters
    (after masking: a secret cut in two would show its first half)."""
    for secret in secrets:
        text = text.replace(secret, logs.MASK)
    return text if limit is None else text[:limit]


def _reach(preview: int, secrets: Sequence[str]) -> int:
    """Characters to read for a preview of `preview`: a secret that straddles its end must be
    read whole to be masked."""
    return preview + max((len(secret) for secret in secrets), default=0)


@dataclass(frozen=True)
class LetterLine:
    """One dead letter in a list."""

    id: int
    function: str
    attempts: int
    error: str
    payload: str
    failed_at: datetime


@dataclass(frozen=True)
class LetterPage:
    lines: list[LetterLine]
    older: int | None  # the next (older) page shows ids below this one; None: no more
    searched: tuple[int, int] | None  # a search: the ids it looked through, lowest first


def dead_letter_page(db: Database, function: str | None, search: str | None,
                     before: int | None, secrets: Sequence[str]) -> LetterPage:
    """A page of dead letters, newest first. A search (a LIKE over error and payload, which
    no index serves) looks through SEARCH_SCAN ids at most, and the next page goes on below
    them, however few it found."""

    def read(conn: Any) -> tuple[list[tuple[Any, ...]], int | None, int]:
        floor, top = None, 0
        if search:
            low, high = letters_store.dead_letter_ids(conn)
            top = min(before - 1, high) if before is not None else high
            floor = max(low, top - SEARCH_SCAN + 1)
        rows = letters_store.dead_letter_page(conn, function, search, before, floor, PAGE_SIZE + 1,
                                       _reach(PREVIEW, secrets), secrets)
        return rows, floor, top

    rows, floor, top = db.run(read, deadline=_deadline())
    lines = [LetterLine(int(ident), str(fn), int(attempts),
                        masked(str(err), secrets, PREVIEW),
                        masked(_text(payload), secrets, PREVIEW), failed_at)
             for ident, fn, attempts, err, payload, failed_at in rows[:PAGE_SIZE]]
    if len(rows) > PAGE_SIZE:
        return LetterPage(lines, lines[-1].id, None if floor is None else (lines[-1].id, top))
    if floor is None:
        return LetterPage(lines, None, None)
    low = db.run(letters_store.dead_letter_ids, deadline=_deadline())[0]
    return LetterPage(lines, floor if floor > low else None, (floor, top))


def dead_letter(db: Database, ident: int) -> DeadLetter | None:
    row = db.run(lambda conn: letters_store.dead_letter(conn, ident), deadline=_deadline())
    return letter_of_row(row, str(db.param("password") or "")) if row else None


def pretty_payload(payload: bytes) -> str:
    """A JSON payload indented, anything else as text (bytes that are not UTF-8 escaped)."""
    text = _text(payload)
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _text(payload: Any) -> str:
    return bytes(payload).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Matching:
    count: int  # dead letters the filter matches up to `upto`, or at least that many
    upto: int  # the newest id now: an action stops there, so letters that die again
    # meanwhile are not retried in the same go
    complete: bool  # False: counting stopped after COUNT_BUDGET, at id `counted_from`
    counted_from: int


def matching(db: Database, function: str | None, search: str | None,
             secrets: Sequence[str]) -> Matching:
    """How many dead letters a filter matches, newest first, for COUNT_BUDGET seconds."""
    low, upto = db.run(letters_store.dead_letter_ids, deadline=_deadline())
    budget = time.monotonic() + COUNT_BUDGET
    count, high = 0, upto
    while high >= low and (time.monotonic() < budget or not search):
        above = max(low - 1, high - COUNT_CHUNK) if search else low - 1
        def chunk(conn: Any, a: int = above, b: int = high) -> int:
            return letters_store.count_dead_letters(conn, function, search, a, b, secrets)

        count += db.run(chunk, deadline=_deadline())
        high = above
    return Matching(count, upto, high < low, high + 1)


@dataclass(frozen=True)
class LedgerLine:
    id: int
    function: str
    unique: str | None
    priority: str
    not_before: datetime
    created_at: datetime
    ships: int
    size: int
    payload: str
    state: str


def ledger_page(db: Database, state: str | None, after: int, function: str | None,
                search: str | None, secrets: Sequence[str], newest: bool = False
                ) -> tuple[list[LedgerLine], int | None]:  # fmt: skip
    rows, following = db.run(
        lambda conn: ledger_pages.ledger_page(conn, state, after, PAGE_SIZE, LEDGER_SCAN,
                                        _reach(PREVIEW, secrets), function, search, secrets,
                                        newest),
        deadline=_deadline())  # fmt: skip
    return [_ledger_line(row, secrets, PREVIEW) for row in rows], following


def _ledger_line(row: Sequence[Any], secrets: Sequence[str], limit: int) -> LedgerLine:
    ident, function, unique, priority, not_before, created, ships, size, head, due = row
    shown = LedgerState.of(not_before, due, int(ships)).value
    return LedgerLine(int(ident), str(function),
                      None if unique is None else masked(str(unique), secrets),
                      str(priority), not_before, created, int(ships), int(size),
                      masked(_text(head), secrets, limit), shown)


@dataclass(frozen=True)
class Attempts:
    """A ledger row's job's failed attempts so far (workerhost_attempts)."""

    failures: int
    first_at: datetime
    last_error: str
    traceback: str | None


@dataclass(frozen=True)
class LedgerDetail:
    line: LedgerLine  # its payload whole, up to DETAIL_BYTES
    attempts: Attempts | None  # None: no failed attempt so far

    @property
    def cut(self) -> bool:
        return self.line.size > DETAIL_BYTES


def ledger_row(db: Database, ident: int, secrets: Sequence[str]) -> LedgerDetail | None:
    row, attempts = db.run(
        lambda conn: ledger_pages.ledger_row(conn, ident, _reach(DETAIL_BYTES, secrets)),
        deadline=_deadline())  # fmt: skip
    if row is None:
        return None
    tried = None
    if attempts is not None:
        failures, first_at, error, traceback = attempts
        tried = Attempts(int(failures), first_at, masked(str(error or "unknown"), secrets),
                         None if traceback is None else masked(str(traceback), secrets))
    return LedgerDetail(_ledger_line(row, secrets, DETAIL_BYTES), tried)


def functions(config: Config, db: Database) -> list[str]:
    """Every function a filter offers: the file's handlers, every dead letter's, and those
    of the newest FUNCTION_WINDOW ledger rows."""
    seen = db.run(lambda conn: ledger_pages.functions_seen(conn, FUNCTION_WINDOW),
                  deadline=_deadline())  # fmt: skip
    return sorted({*config.handlers, *seen})


def workers(config: Config) -> list[tuple[str, list[gearadmin.Connection] | None, str | None]]:
    """gearmand's `workers` per server: (server, connections or None, error or None)."""
    found: list[tuple[str, list[gearadmin.Connection] | None, str | None]] = []
    for server in config.gearman.servers:
        try:
            found.append((str(server), gearadmin.workers(server.host, server.port,
                                                         timeout=status.STATUS_TIMEOUT), None))
        except OSError as exc:
            found.append((str(server), None, exc.strerror or str(exc) or type(exc).__name__))
    return found
