"""The scheduler: fires the jobs of the `schedules:` section, once per slot across every host.

Every `workerhost run` whose file has schedules runs one, as a child of its supervisor, and any
number of hosts may share the database. Each schedule is led by one host at a time: the one
that holds its lock (GET_LOCK), taken on a connection of its own, which the server frees the
moment that connection ends. So when the leader dies, another host takes the lock at its next
look, within LEAD_CHECK.

The leader fires a slot by writing the slot's job to the ledger (`workerhost_outbox`) in the
transaction that moves the schedule's row (`workerhost_schedules`) past the slot, with that
row locked. A host that still believes it leads after its lock went elsewhere (a process
stalled past the lock connection's idle timeout) finds the row moved on and fires nothing, so
the lock decides who does the work and the row decides what is done, once. From the ledger the
job goes as a trigger's does: the relay ships it (its row's unique_key, `schedule:NAME:SLOT`, is
the job's unique for its handler), a worker runs it, and its effect commits once.

A slot that came due while no host led its schedule (every host stopped, the database away,
the moments of a takeover or of a reload) is missed. `catch_up` says what becomes of missed
slots: the newest fires once (`latest`), every one fires in order (`all`, at most
CATCH_UP_LIMIT at once), or none does (`none`). Slots that came due while this host led
always fire, however late the database let it get to them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import mysql.connector

from workerhost.config.settings import CatchUp, Config, ScheduleConfig
from workerhost.exitcodes import EXIT_OK
from workerhost.model.timetable import UTC, Timetable, whole_seconds
from workerhost.observe import events
from workerhost.store import ledger, schedule_table
from workerhost.store.db import RUN_ERRORS, Connection, Database

log = logging.getLogger("workerhost.scheduler")

LEAD_CHECK = 1.0  # seconds between two looks at the locks: how soon a standby takes over
# The lock connection's wait_timeout, in seconds: a leader whose machine vanished (nothing
# closed its connection) keeps its locks this long after its last look, at most.
LOCK_IDLE_TIMEOUT = 10
LOCK_NAME_LIMIT = 64  # MySQL refuses longer names for GET_LOCK
CATCH_UP_LIMIT = 1000  # slots fired at once at most; older ones due as well are skipped
FIRE_PATIENCE = 10.0  # seconds a firing is retried through transient database errors
POLL = 0.05  # how often a sleeping scheduler looks at its stop flag
SLOT_STAMP = "%Y%m%dT%H%M%SZ"  # a slot in a job's unique: ISO 8601's basic form, in UTC
# Event ids are uuid5 of "name:slot" in this namespace: the same for a slot on every host.
EVENT_NAMESPACE = uuid.UUID("5b0e3f4e-6a63-4d2e-9a55-7c2c6d3f1a10")


def lock_name(database: str, schedule: str) -> str:
    """The GET_LOCK name of a schedule: lock names are the whole server's, so the database's
    name is part of it (hashed when the two are too long to spell out)."""
    name = f"workerhost:{database}:{schedule}"
    if len(name) <= LOCK_NAME_LIMIT:
        return name
    return "workerhost:" + hashlib.sha1(f"{database}\0{schedule}".encode()).hexdigest()


def lock_holders(conn: Connection, database: str,
                 names: list[str]) -> dict[str, int | None]:  # fmt: skip
    """Who leads each schedule now: the id of the connection that holds its lock (a
    `workerhost run` host's scheduler), or None when no host leads it."""
    if not names:
        return {}
    cursor = conn.cursor()
    cursor.execute("SELECT " + ", ".join(["IS_USED_LOCK(%s)"] * len(names)),
                   [lock_name(database, name) for name in names])
    row = cursor.fetchone()
    cursor.close()
    return {name: None if held is None else int(held)
            for name, held in zip(names, row, strict=True)}


def job_of(schedule: ScheduleConfig, slot: datetime) -> tuple[str, bytes, str]:
    """(function, payload, unique) of the job of `slot`."""
    stamp = slot.astimezone(UTC).strftime(SLOT_STAMP)
    payload = {**schedule.payload, "schedule": schedule.name,
               "slot": slot.astimezone(ZoneInfo(schedule.timezone)).isoformat(),
               "event_id": str(uuid.uuid5(EVENT_NAMESPACE, f"{schedule.name}:{stamp}"))}
    return (schedule.function, json.dumps(payload).encode(),
            f"schedule:{schedule.name}:{stamp}")  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """What one look at a schedule decided."""

    fire: tuple[datetime, ...]  # the slots to fire, oldest first
    missed: tuple[datetime, ...]  # slots due that came due while no host led (fired or not)
    cursor: datetime  # the newest slot decided: none at or before it fires again
    overflow: bool = False  # more than the limit were due; the older ones are skipped


def plan(timetable: Timetable, catch_up: CatchUp, last_slot: datetime, now: datetime,
         lead_since: datetime, limit: int = CATCH_UP_LIMIT) -> Plan:  # fmt: skip
    """The slots in (last_slot, now] and what becomes of each: those due since `lead_since`
    fire; those before it were missed, and `catch_up` decides."""
    due = timetable.newest(last_slot, now, limit + 1)
    overflow = len(due) > limit
    due = sorted(due[:limit])
    if not due:
        return Plan((), (), last_slot)
    missed = [slot for slot in due if slot < lead_since]
    caught = {"all": missed, "latest": missed[-1:], "none": []}[catch_up]
    return Plan(tuple(caught + due[len(missed):]), tuple(missed), due[-1], overflow)


class Leadership(Protocol):
    """Which schedules this host leads (Locks; tests give fakes)."""

    def held(self) -> set[str]: ...

    def close(self) -> None: ...


class Locks:
    """The schedules' locks, held on a connection of their own.

    GET_LOCK belongs to the connection that took it, and the server frees it when that
    connection ends: a leader killed outright (SIGKILL, a crash) gives its schedules up at
    once, and one whose machine vanished after LOCK_IDLE_TIMEOUT.
    """

    def __init__(self, params: Mapping[str, Any], names: Mapping[str, str], *,
                 connect: Callable[[], Connection] | None = None) -> None:  # fmt: skip
        self.names = dict(names)  # schedule -> lock name
        self._connect = connect or (lambda: mysql.connector.connect(**params))
        self._conn: Connection = None

    def held(self) -> set[str]:
        """Take the free locks; the schedules whose locks this host holds now. A database
        error closes the connection (so every lock goes) and is raised."""
        try:
            if self._conn is None:
                self._conn = self._connect()
                self._conn.autocommit = True
                self._conn.cursor().execute(f"SET SESSION wait_timeout = {LOCK_IDLE_TIMEOUT}")
            cursor = self._conn.cursor()
            # A lock held already is not taken again: each GET_LOCK of it would nest.
            cursor.execute("SELECT " + ", ".join(
                ["IF(IS_USED_LOCK(%s) = CONNECTION_ID(), 1, GET_LOCK(%s, 0))"] * len(self.names)),
                [name for name in self.names.values() for name in (name, name)])
            row = cursor.fetchone()
            cursor.close()
        except RUN_ERRORS:
            self.close()
            raise
        return {schedule for schedule, got in zip(self.names, row, strict=True) if got == 1}

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except RUN_ERRORS:
                pass  # gone already: its locks went with it
            self._conn = None


class Scheduler:
    def __init__(self, config: Config, *, database: Database | None = None,
                 locks: Leadership | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 identity: str | None = None) -> None:  # fmt: skip
        self.schedules = {schedule.name: schedule for schedule in config.schedules}
        self.timetables = {
            s.name: Timetable(every=s.every, cron=s.cron, zone=s.timezone)
            for s in config.schedules
        }
        self.db = database or Database(config.database.connect_kwargs())
        self.locks = locks or Locks(config.database.connect_kwargs(), {
            name: lock_name(config.database.database, name) for name in self.schedules})
        # Seams: `clock` paces the looks at the locks; `wall_clock` says which slots are due.
        self.clock = clock
        self.wall_clock = wall_clock
        self.identity = identity or f"{socket.gethostname()}:{os.getppid()}"
        self.leading: dict[str, datetime] = {}  # schedules this host leads, and since when
        self.next_slot: dict[str, datetime] = {}  # when a led schedule is next worth a look
        self.next_check = 0.0
        self.lock_trouble = False  # the last look at the locks failed (logged once)
        self.stopping = False

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wall_clock(), UTC)

    def step(self) -> float:
        """Look at the locks when it is time, and at each led schedule with a slot due; the
        seconds until something is worth a look again."""
        if self.clock() >= self.next_check:
            self.check_locks()
        now = self.now()
        for name in list(self.leading):
            if self.next_slot.get(name, now) <= now:
                self.look(name, now)
        now = self.now()
        waits = [self.next_check - self.clock()]
        waits += [(self.next_slot[name] - now).total_seconds() for name in self.leading]
        return max(0.0, min(waits))

    def check_locks(self) -> None:
        since = self.now()  # a slot that comes due while the locks are taken is on time
        try:
            held = self.locks.held()
        except RUN_ERRORS as exc:
            if not self.lock_trouble:
                log.warning("scheduler: cannot take the schedules' locks (%s); this host leads "
                            "none until the database answers", exc)
            self.lock_trouble = True
            held = set()
        else:
            if self.lock_trouble:
                log.info("scheduler: the database answers again")
            self.lock_trouble = False
        for name in sorted(held - set(self.leading)):
            self.leading[name] = since
            self.next_slot.pop(name, None)
            log.info("scheduler: this host leads schedule %s (%s)", name,
                     self.timetables[name].describe())
        for name in sorted(set(self.leading) - held):
            del self.leading[name]
            log.warning("scheduler: this host no longer leads schedule %s", name)
        self.next_check = self.clock() + LEAD_CHECK

    def look(self, name: str, now: datetime) -> None:
        """Fire what is due of schedule `name`, in one transaction with its row locked."""
        schedule, timetable = self.schedules[name], self.timetables[name]
        since = self.leading[name]

        def work(conn: Connection) -> Plan:
            last_slot = schedule_table.lock_schedule(conn, name, whole_seconds(now))
            decided = plan(timetable, schedule.catch_up, last_slot, now, since)
            if decided.cursor > last_slot:
                ledger.enqueue_many(conn, [job_of(schedule, slot) for slot in decided.fire])
                schedule_table.advance_schedule(conn, name, decided.cursor,
                                        decided.fire[-1] if decided.fire else None,
                                        self.identity)
            return decided

        try:
            decided: Plan = self.db.run(work, deadline=time.monotonic() + FIRE_PATIENCE)
        except RUN_ERRORS as exc:
            log.warning("scheduler: schedule %s: %s; trying again in %gs", name, exc,
                        LEAD_CHECK)
            self.next_slot[name] = datetime.fromtimestamp(now.timestamp() + LEAD_CHECK, UTC)
            return
        self.report(schedule, decided)
        self.next_slot[name] = timetable.after(decided.cursor)

    def report(self, schedule: ScheduleConfig, decided: Plan) -> None:
        name, zone = schedule.name, ZoneInfo(schedule.timezone)
        if decided.overflow:
            log.warning("scheduler: schedule %s: more than %d slots were due at once; the "
                        "older ones are skipped", name, CATCH_UP_LIMIT)
        fired = sum(1 for slot in decided.missed if slot in decided.fire)
        events.emit(events.ScheduleLooked(name, fired=len(decided.fire),
                                          missed=len(decided.missed),
                                          skipped=len(decided.missed) - fired))
        if decided.missed:
            what = {"latest": "fires the newest of them", "all": "fires them in order",
                    "none": "skips them"}[schedule.catch_up]
            log.warning("scheduler: schedule %s: %d slot(s) came due while no host led it (%s "
                        "to %s); catch_up: %s %s (%d fired)", name, len(decided.missed),
                        decided.missed[0].astimezone(zone).isoformat(),
                        decided.missed[-1].astimezone(zone).isoformat(), schedule.catch_up,
                        what, fired)
        for slot in decided.fire:
            log.debug("scheduler: schedule %s fired slot %s", name,
                      slot.astimezone(zone).isoformat())

    def serve(self) -> int:
        log.info("scheduler: %s", ", ".join(f"{name} ({timetable.describe()})"
                                            for name, timetable in self.timetables.items()))
        while not self.stopping:
            self._sleep(self.step())
        self.locks.close()
        self.db.close()
        return EXIT_OK

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))


def main(config: Config) -> int:
    """Entry point of the scheduler process (forked by the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    scheduler = Scheduler(config)
    signal.signal(signal.SIGTERM, scheduler.request_stop)
    return scheduler.serve()
