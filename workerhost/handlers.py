"""Running one job through its handler: a Python callable, or SQL with bound parameters."""

from __future__ import annotations

import json
from typing import Any

from workerhost import db
from workerhost.config import HandlerConfig
from workerhost.db import Connection
from workerhost.errors import JobError
from workerhost.job import Job


class NoRowsMatched(JobError):
    """An `sql:` write-back matched no row (the row was rolled back, or never existed)."""


class ConnectionMisuse(JobError):
    """A handler tried to end the host's transaction or connection."""


class HandlerConnection:
    """The host's connection as a Python handler gets it: everything but ending it.

    The host commits the handler's writes, and only then answers gearmand; a handler that
    commits, rolls back or closes the connection itself would break that order (and, closing
    it, leave the worker without a connection). Those calls raise ConnectionMisuse instead,
    which fails the attempt like any other exception.
    """

    _ENDINGS = frozenset({
        "close", "disconnect", "shutdown", "cmd_quit", "reconnect", "commit", "rollback",
        "start_transaction", "reset_session", "cmd_reset_connection", "cmd_change_user",
    })

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        if name in HandlerConnection._ENDINGS:
            raise ConnectionMisuse(
                f"a handler may not call {name}() on the connection it is given: the host "
                "commits what the handler wrote, then answers gearmand (raise to roll back)",
                retryable=False,
            )
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "_conn":
            raise ConnectionMisuse(f"a handler may not set {name} on the connection it is given",
                                   retryable=False)
        object.__setattr__(self, name, value)


def run(handler: HandlerConfig, job: Job, conn: Connection, cursor: Any = None) -> bytes:
    """Run the handler inside the caller's transaction; the result goes back to gearmand.

    `sql:` handlers run on `cursor`, by default the connection's reused one (db.cursor).
    """
    if handler.callable is not None:
        return to_bytes(handler.callable(job, HandlerConnection(conn)))
    return run_sql(handler, job, cursor if cursor is not None else db.cursor(conn))


def run_sql(handler: HandlerConfig, job: Job, cursor: Any) -> bytes:
    params = sql_params(handler, job)
    matched = 0
    for statement in handler.sql:
        # Bound parameters only: the payload can never change the statement's text.
        cursor.execute(statement, params)
        matched += max(cursor.rowcount, 0)
    if matched == 0 and handler.on_no_rows != "ignore":
        # "retry": the row may commit later (a trigger fired before its transaction ended).
        raise NoRowsMatched(
            f"the write matched no row (params {params!r}); the row may not be committed yet, "
            f"or never existed",
            retryable=handler.on_no_rows == "retry",
        )
    return json.dumps({"rows": matched}).encode()


def sql_params(handler: HandlerConfig, job: Job) -> dict[str, Any]:
    payload = job.json()
    if not isinstance(payload, dict):
        raise JobError(f"payload must be a JSON object for an sql: handler, got {payload!r:.80}")
    missing = [name for name in handler.params if name not in payload]
    if missing:
        raise JobError(
            f"payload lacks {', '.join(map(repr, missing))} needed by the handler's SQL; "
            f"it has {sorted(payload)!r}"
        )
    params = {}
    for name in handler.params:
        value = payload[name]
        # JSON containers are passed as their JSON text; scalars as themselves.
        params[name] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return params


def to_bytes(result: object) -> bytes:
    """A handler's return value as the bytes gearmand hands the client."""
    if result is None:
        return b""
    if isinstance(result, bytes):
        return result
    if isinstance(result, str):
        return result.encode()
    return json.dumps(result, default=str).encode()
