"""How far each schedule has got (`workerhost_schedules`): one row per schedule, locked
while a slot's jobs are enqueued, so that every slot fires once across every host.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from workerhost.store import db
from workerhost.store.db import Connection
from workerhost.store.schema import SCHEDULES

# -- schedules ---------------------------------------------------------------------------------
# Slots are stored as DATETIME in UTC, whatever the session's time zone: they are written as
# values, never with NOW().


@dataclass(frozen=True)
class ScheduleRow:
    """How far a schedule has got: no slot at or before `last_slot` fires again; `fired_slot`
    is the newest slot that fired, when, and by which host."""

    last_slot: datetime
    fired_slot: datetime | None
    fired_at: datetime | None
    fired_by: str | None


def _utc(value: Any) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)


def _stored(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def lock_schedule(conn: Connection, name: str, start: datetime) -> datetime:
    """The schedule's last_slot, its row locked until the transaction ends, so that no other
    host fires a slot of it meanwhile. A schedule new to the database starts at `start`."""
    cursor = db.cursor(conn)
    cursor.execute(f"INSERT INTO {SCHEDULES} (name, last_slot) VALUES (%s, %s) "
                   "ON DUPLICATE KEY UPDATE name = name", (name, _stored(start)))
    cursor.execute(f"SELECT last_slot FROM {SCHEDULES} WHERE name = %s FOR UPDATE", (name,))
    last_slot: datetime = cursor.fetchone()[0]
    return last_slot.replace(tzinfo=timezone.utc)


def advance_schedule(conn: Connection, name: str, last_slot: datetime,
                     fired_slot: datetime | None, fired_by: str) -> None:  # fmt: skip
    """Move the locked schedule past `last_slot`; `fired_slot`, if any, is the newest of the
    slots whose jobs this transaction writes to the outbox."""
    cursor = db.cursor(conn)
    if fired_slot is None:
        cursor.execute(f"UPDATE {SCHEDULES} SET last_slot = %s WHERE name = %s",
                       (_stored(last_slot), name))
    else:
        cursor.execute(f"UPDATE {SCHEDULES} SET last_slot = %s, fired_slot = %s, "
                       "fired_at = UTC_TIMESTAMP(6), fired_by = %s WHERE name = %s",
                       (_stored(last_slot), _stored(fired_slot), fired_by[:255], name))


def schedule_rows(conn: Connection) -> dict[str, ScheduleRow]:
    """Every schedule the database knows, by name (also those no file lists any more)."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT name, last_slot, fired_slot, fired_at, fired_by FROM {SCHEDULES}")
    return {str(name): ScheduleRow(last_slot.replace(tzinfo=timezone.utc), _utc(fired_slot),
                                   _utc(fired_at), None if fired_by is None else str(fired_by))
            for name, last_slot, fired_slot, fired_at, fired_by in cursor.fetchall()}
