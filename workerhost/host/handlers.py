"""Running one job through its handler: a Python callable, SQL with bound parameters, or a
program (any language) with the payload on its stdin, contained as command.py says."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from workerhost.config.settings import HandlerConfig
from workerhost.errors import JobError
from workerhost.host import command
from workerhost.model.job import Job, strict_json
from workerhost.store import db
from workerhost.store.db import Connection


class NoRowsMatched(JobError):
    """An `sql:` write-back matched no row (the row was rolled back, or never existed)."""


# A statement that answers with exactly one result, an OK packet with its row count: a write
# with no `;` anywhere (not even quoted), so that every job's rows can be told apart when the
# statements of a whole batch go to the server in one round trip.
_SINGLE_WRITE = re.compile(r"\s*(UPDATE|INSERT|DELETE|REPLACE)\b[^;]*\Z", re.IGNORECASE)
# A placeholder as the connector reads it (sqlcheck has refused every other use of `%`).
_PLACEHOLDER = re.compile(r"%\(([A-Za-z_][A-Za-z0-9_]*)\)s")


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
    if handler.python is not None:
        if handler.callable is None:  # load_config(import_handlers=False): never on `run`
            raise RuntimeError(f"{handler.python} was not imported: the config was loaded "
                               "without its handlers")
        result = to_bytes(handler.callable(job, HandlerConnection(conn)))
        if conn.unread_result:
            # The host's next statement on the connection would fail ("Unread result found").
            conn.consume_results()
            raise ConnectionMisuse(
                "the handler left a result set unread on the connection it is given: read "
                "every row (fetchall()) or use a buffered cursor (conn.cursor(buffered=True))",
                retryable=True)
        return result
    if handler.command:
        output = command.run(handler, job)
        if not handler.sql:
            return output
        return run_sql(handler, job, cursor if cursor is not None else db.cursor(conn),
                       _command_result(output))
    return run_sql(handler, job, cursor if cursor is not None else db.cursor(conn))


def _command_result(output: bytes) -> dict[str, Any]:
    try:
        result = strict_json(output)
    except (ValueError, RecursionError) as exc:
        raise JobError(f"the program's output is not JSON ({exc}): {output[:80]!r}; with "
                       "sql: beside command:, it must print a JSON object",
                       retryable=True) from exc
    if not isinstance(result, dict):
        raise JobError(f"the program printed {result!r:.80}, not a JSON object, which sql: "
                       "needs to bind its parameters", retryable=True)
    return result


def run_sql(handler: HandlerConfig, job: Job, cursor: Any,
            source: dict[str, Any] | None = None) -> bytes:
    """Run the statements with their parameters bound from `source` (by default the job's
    payload)."""
    params = sql_params(handler, job, source)
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
    return rows_answer(matched)


def runs_together(handler: HandlerConfig) -> bool:
    """Whether a batch of this handler's jobs can run in one round trip (run_sql_together):
    an `sql:` handler alone, whose statements are all single writes."""
    return (handler.python is None and not handler.command and bool(handler.sql)
            and all(_SINGLE_WRITE.match(statement) for statement in handler.sql))


def run_sql_together(handler: HandlerConfig, jobs: Sequence[Job], cursor: Any,
                     then: tuple[str, Mapping[str, Any]] | None = None) -> list[bytes]:
    """What run_sql gives each job, with the statements of every job, and then `then` (one
    more single write with its named parameters), sent to the server as one multi-statement
    query: one round trip for the batch instead of one per statement.

    The server runs them in order and stops at the first error, which is raised here; so is
    NoRowsMatched for the first job whose writes matched no row (unless on_no_rows: ignore).
    Either way the caller rolls the whole transaction back.
    """
    texts: list[str] = []
    params: dict[str, Any] = {}
    for index, job in enumerate(jobs):
        prefix = f"j{index}_"  # each job's parameters get names of their own
        params.update((prefix + name, value)
                      for name, value in sql_params(handler, job).items())
        texts += [_renamed(statement, prefix) for statement in handler.sql]
    if then is not None:
        texts.append(then[0])
        params.update(then[1])
    with db.translating():
        # Each `;` on a line of its own: a statement's trailing -- comment cannot swallow it.
        cursor.execute("\n;\n".join(texts), params)
        counts = [max(cursor.rowcount, 0)]
        while cursor.nextset():
            counts.append(max(cursor.rowcount, 0))
    if len(counts) != len(texts):
        raise RuntimeError(f"{len(texts)} statements sent together gave {len(counts)} results")
    per_job = len(handler.sql)
    answers = []
    for index, job in enumerate(jobs):
        matched = sum(counts[index * per_job:(index + 1) * per_job])
        if matched == 0 and handler.on_no_rows != "ignore":
            raise NoRowsMatched(
                f"job {job.describe()}: the write matched no row (params "
                f"{sql_params(handler, job)!r}); the row may not be committed yet, or never "
                "existed", retryable=handler.on_no_rows == "retry")
        answers.append(rows_answer(matched))
    return answers


@functools.lru_cache(maxsize=1024)
def _renamed(statement: str, prefix: str) -> str:
    """`statement` with each placeholder's name prefixed: made once per statement and place
    in a batch, not once per job (the substitution was 2% of a worker's time)."""
    return _PLACEHOLDER.sub(rf"%({prefix}\1)s", statement)


def rows_answer(matched: int) -> bytes:
    """What an sql: job answers: its rows matched, as JSON ({"rows": 3}), formatted directly
    since it runs for every job."""
    return b'{"rows": %d}' % matched


def sql_params(handler: HandlerConfig, job: Job,
               source: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = job.json() if source is None else source
    what = "payload" if source is None else "the program's output"
    if not isinstance(payload, dict):
        raise JobError(f"payload must be a JSON object for an sql: handler, got {payload!r:.80}")
    missing = [name for name in handler.params if name not in payload]
    if missing:
        raise JobError(
            f"{what} lacks {', '.join(map(repr, missing))} needed by the handler's SQL; "
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
