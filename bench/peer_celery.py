"""A peer: Celery with a Redis broker, wired to the database as Celery's own guide advises.

The application commits its row, then enqueues one task per row (`enqueue()`, after the commit,
so that no task looks for a row that is not there yet; a crash between the two loses the job,
which is the design's known gap). The worker acknowledges a task after it ran (acks_late: a
killed worker's task runs again) and writes back with the same UPDATE as the project's bench
handler, autocommit, on one connection per worker process. Redis keeps what it accepts with
appendonly yes and appendfsync always: an enqueued job survives a broker crash, as the other
systems' committed rows do.

Run as: celery -A peer_celery worker, with PEER_CELERY_DB (the database as JSON) and
PEER_CELERY_BROKER (redis://127.0.0.1:PORT/0) set; peers.py does both, and starts Redis.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from celery import Celery

TASK = "peer_celery.write_back"
UPDATE = "UPDATE bench_rows SET done_at = NOW(6) WHERE id = %s"
REDIS_START_TIMEOUT = 10.0


def make_app(broker: str) -> Celery:
    app = Celery("peer_celery", broker=broker)
    app.conf.update(
        task_acks_late=True,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


app = make_app(os.environ.get("PEER_CELERY_BROKER", "redis://127.0.0.1:6379/0"))
_conn: Any = None


@app.task(name=TASK)
def write_back(row_id: int) -> None:
    global _conn
    if _conn is None:
        import mysql.connector

        _conn = mysql.connector.connect(**json.loads(os.environ["PEER_CELERY_DB"]),
                                        autocommit=True)
    cursor = _conn.cursor()
    cursor.execute(UPDATE, (row_id,))
    cursor.close()


class Client:
    """The application's side: a task per committed row (thread-safe: Celery's producer
    pool hands each thread a connection of its own)."""

    def __init__(self, broker: str) -> None:
        self.app = make_app(broker)

    def enqueue(self, ids: Iterable[int]) -> None:
        for row_id in ids:
            self.app.send_task(TASK, (row_id,))


def redis_argv(port: int, directory: Path) -> list[str]:
    """A Redis of the bench's own: loopback, durable (every write fsynced), no snapshots."""
    return [shutil.which("redis-server") or "redis-server", "--port", str(port),
            "--bind", "127.0.0.1", "--dir", str(directory), "--appendonly", "yes",
            "--appendfsync", "always", "--save", "", "--daemonize", "no"]


def wait_for_redis(port: int) -> None:
    deadline = time.monotonic() + REDIS_START_TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not answer on port {port} within "
                               f"{REDIS_START_TIMEOUT:g}s")
        time.sleep(0.05)
