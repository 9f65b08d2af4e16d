"""Console sessions logged out (`workerhost_logouts`): each session's id until it would have
run out anyway, so that a copy of its cookie is refused after a restart of the console too
(console/auth.py keeps them in memory, and reads these when the console starts).

Times are seconds since the epoch by the console's clock, as the sessions' own are.
"""

from __future__ import annotations

from workerhost.store import db
from workerhost.store.db import Connection
from workerhost.store.schema import LOGOUTS


def add_logout(conn: Connection, sid: str, ends_at: float, now: float) -> None:
    """Keep `sid` until `ends_at`, and forget the sessions that have run out by `now` (a
    range of few rows: one per logout of the last SESSION_LIFETIME)."""
    cursor = db.cursor(conn)
    cursor.execute(f"DELETE FROM {LOGOUTS} WHERE ends_at <= %s", (int(now),))
    cursor.execute(f"REPLACE INTO {LOGOUTS} (sid, ends_at) VALUES (%s, %s)",
                   (sid[:64], int(ends_at) + 1))


def logouts(conn: Connection, now: float) -> dict[str, float]:
    """Every session logged out that has not run out by `now`: its id and when it would."""
    cursor = db.cursor(conn)
    cursor.execute(f"SELECT sid, ends_at FROM {LOGOUTS} WHERE ends_at > %s", (int(now),))
    return {str(sid): float(ends_at) for sid, ends_at in cursor.fetchall()}
