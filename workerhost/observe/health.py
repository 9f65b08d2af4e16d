"""`/healthz` of `workerhost run`: healthy while every handler has a worker of this host
registered with each gearmand and the database answers, each within a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mysql.connector

from workerhost.errors import ConnectError
from workerhost.gearman import admin as gearadmin
from workerhost.observe import status

if TYPE_CHECKING:
    from workerhost.config.settings import Config

# How long one scrape or health check may wait for each server; Prometheus' own scrape
# timeout is 10s by default, and a scrape must answer within it even when a server is dead.
SCRAPE_TIMEOUT = 2.0


def is_child_of(parent: int) -> Callable[[int], bool]:
    """A test: is `pid` a process that `parent` started (read from /proc on Linux)?"""

    def test(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return not Path("/proc/self/stat").exists()  # no /proc at all: cannot tell
        except OSError:
            return False
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses; split after it.
        return int(stat.rpartition(")")[2].split()[1]) == parent

    return test


def check_health(
    config: Config, *, ours: Callable[[int], bool], timeout: float = SCRAPE_TIMEOUT,
    workers: Callable[..., list[gearadmin.Connection]] = gearadmin.workers,
    database: Callable[[], str | None] | None = None,
) -> tuple[bool, dict[str, Any]]:
    """Healthy when the database answers and a worker of this host is on some gearmand.

    A worker is this host's when gearmand lists it under the client id the worker sets
    (`workerhost-PID`) and `ours(PID)` says the process is our child.
    """
    reasons: list[str] = []
    servers: dict[str, Any] = {}
    connected = 0
    for server in config.gearman.servers:
        try:
            found = [c for c in workers(server.host, server.port, timeout=timeout)
                     if c.functions and _our_worker(c.client_id, ours)]
        except OSError as exc:
            servers[str(server)] = {"error": exc.strerror or str(exc) or type(exc).__name__}
            continue
        # Count processes (client ids), whatever connections each of them keeps.
        processes = len({c.client_id for c in found})
        servers[str(server)] = {"workers": processes}
        connected += processes
    if not connected:
        reasons.append("no worker of this host is connected to any gearmand")
    problem = (database or (lambda: _database_answers(config, timeout)))()
    if problem:
        reasons.append(f"the database does not answer: {problem}")
    body = {"status": "ok" if not reasons else "unhealthy", "reasons": reasons,
            "gearmand": servers, "database": problem or "ok"}  # fmt: skip
    return not reasons, body


def _our_worker(client_id: str, ours: Callable[[int], bool]) -> bool:
    prefix, _, pid = client_id.rpartition("-")
    return prefix == "workerhost" and pid.isdigit() and ours(int(pid))


def _database_answers(config: Config, timeout: float) -> str | None:
    db = status.open_database(config.database, timeout=timeout)
    try:
        db.run(lambda conn: _select_one(conn), deadline=time.monotonic() + timeout)
    except (mysql.connector.Error, ConnectError) as exc:
        return str(exc)
    finally:
        db.close()
    return None


def _select_one(conn: Any) -> None:
    cursor = conn.cursor()
    cursor.execute("SELECT 1")
    cursor.fetchall()
    cursor.close()
