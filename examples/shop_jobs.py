"""The Python handler of the example shop (examples/shop.yaml).

The pattern for an effect that must happen once although its job may run twice (workerhost
delivers at least once): record the trigger's `event_id` in a processed-events table, in the
same transaction as the effect. A second run hits the duplicate key and changes nothing; a run
whose transaction rolls back leaves no record, so its retry does the work.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import mysql.connector
from mysql.connector import errorcode

from workerhost import Job

POINTS_PER_EURO = 1


def award_points(job: Job, db: Any) -> dict[str, Any]:
    """Loyalty points for a new order: one per whole euro, added to the customer's sum."""
    event = job.json()
    cursor = db.cursor()
    try:
        cursor.execute(
            "INSERT INTO processed_events (event_id, `function`) VALUES (%s, %s)",
            (event["event_id"], job.function),
        )
    except mysql.connector.IntegrityError as exc:
        if exc.errno != errorcode.ER_DUP_ENTRY:
            raise
        return {"order": event["id"], "duplicate": True}  # applied by an earlier run
    points = int(Decimal(str(event["total"]))) * POINTS_PER_EURO
    cursor.execute(
        "INSERT INTO order_points (order_id, points, event_id) VALUES (%s, %s, %s)",
        (event["id"], points, event["event_id"]),
    )
    cursor.execute(
        # The points twice rather than VALUES(points), which MySQL deprecates since 8.0.20
        # and MariaDB has no replacement for: this form means the same on both servers.
        "INSERT INTO loyalty (customer, points, orders) VALUES (%s, %s, 1) "
        "ON DUPLICATE KEY UPDATE points = points + %s, orders = orders + 1",
        (event["customer"], points, points),
    )
    cursor.close()
    return {"order": event["id"], "points": points}
