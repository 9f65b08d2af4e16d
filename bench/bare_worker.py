"""The baselines: a bare pygearman worker loop, as users write them by hand.

`empty` answers every job at once; `update` runs one UPDATE and one COMMIT per job.
Run as: python bare_worker.py MODE FUNCTION HOST:PORT [DB-JSON]
"""

from __future__ import annotations

import json
import sys
from typing import Any

import gearman


def main() -> None:
    mode, function, server = sys.argv[1:4]
    worker = gearman.GearmanWorker([server])
    if mode == "update":
        import mysql.connector

        conn = mysql.connector.connect(**json.loads(sys.argv[4]))
        cursor = conn.cursor()

        def task(_worker: Any, job: Any) -> bytes:
            cursor.execute("UPDATE bench_rows SET done_at = NOW(6) WHERE id = %(id)s",
                           json.loads(job.data))
            conn.commit()
            return b""
    else:
        def task(_worker: Any, job: Any) -> bytes:
            return b""

    worker.register_task(function.encode(), task)
    worker.work()


if __name__ == "__main__":
    main()
