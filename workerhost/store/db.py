"""The database seam: one connection, re-opened when lost, and the transient-error rules."""

from __future__ import annotations

import itertools
import os
import random
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import mysql.connector
import mysql.connector.cursor
import mysql.connector.cursor_cext
from mysql.connector import errorcode
from mysql.connector.errors import get_mysql_exception
from mysql.connector.types import MySQLScriptPartition

from workerhost.errors import ConnectError

try:
    # The C extension's own error: its commit() and rollback() raise it untranslated, for a
    # lost connection too, so it must be met wherever mysql.connector.Error is.
    from _mysql_connector import MySQLInterfaceError  # type: ignore[import-not-found]
except ImportError:  # the pure-Python connector: no such class

    class MySQLInterfaceError(Exception):  # type: ignore[no-redef]
        """Stands in for the C extension's error class where there is no C extension."""

# Every error class a connection can raise.
ERRORS: tuple[type[BaseException], ...] = (mysql.connector.Error, MySQLInterfaceError)
# ERRORS, and a connection that could not be opened.
RUN_ERRORS: tuple[type[BaseException], ...] = (*ERRORS, ConnectError)

# Errors after which the same work can simply run again: deadlock, lock wait timeout, and a lost
# or unreachable server. They never count against a handler's attempts.
TRANSIENT_ERRNOS = frozenset({
    errorcode.ER_LOCK_DEADLOCK,  # 1213
    errorcode.ER_LOCK_WAIT_TIMEOUT,  # 1205
    errorcode.CR_SERVER_GONE_ERROR,  # 2006
    errorcode.CR_SERVER_LOST,  # 2013
    errorcode.CR_CONN_HOST_ERROR,  # 2003
    errorcode.CR_CONNECTION_ERROR,  # 2002
    2055,  # lost connection (mysql-connector's own code)
    errorcode.ER_SERVER_SHUTDOWN,  # 1053
    errorcode.ER_CON_COUNT_ERROR,  # 1040
})
# Back-off between tries of transient failures: doubled each time, with jitter, up to the cap.
# How long an operation keeps trying through transient errors unless its caller says otherwise.
PATIENCE = 15.0
TRANSIENT_BACKOFF = 0.05
TRANSIENT_BACKOFF_MAX = 2.0



def _as_written(sql_code: bytes, map_results: bool = False) -> Iterator[MySQLScriptPartition]:
    """A statement goes to the server as written, its values bound in it.

    mysql-connector 9.2 to 9.4 look for a DELIMITER command in every statement after the
    values are bound in, and when they think they see one they strip what looks like
    comments and split the text again; their quote tracking ignores backslash escapes, so
    values such as "O'Brien delimiter $$" and "D'Arcy" in one query changed what it wrote.
    Neither the host nor a handler sends DELIMITER scripts (a client-side command of the
    mysql shell), so the connector's splitting is switched off for both of its cursors.
    """
    yield MySQLScriptPartition(single_stmts=deque(), mappable_stmt=sql_code)


def send_statements_as_written() -> None:
    """Switch the connector's splitting off (_as_written), for the whole process.

    Called by cursor(), through which every statement of the host's goes (those of
    workerhost.enqueue on the application's connection too), so that importing this module
    changes nothing: only a process that runs the host's statements gets it. The connector
    reads the function from its cursor modules on every execute, so the switch is
    process-wide: a Python handler's own connections in a worker process get it too, which
    only stops the same corruption of their statements.
    """
    for module in (mysql.connector.cursor, mysql.connector.cursor_cext):
        module.split_multi_statement = _as_written  # type: ignore[attr-defined]

Connection = Any  # mysql.connector's connection classes carry no usable type information
Connector = Callable[[], Connection]


_cursors: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def cursor(conn: Connection) -> Any:
    """The connection's one reused cursor (buffered: every result is read at once).

    mysql-connector's conn.cursor() pings the server before it returns, a round trip each
    time; the host's own statements share this cursor instead, and never close it.
    """
    found = _cursors.get(conn)
    if found is None:
        send_statements_as_written()
        found = _cursors[conn] = conn.cursor(buffered=True)
    return found


def translate(exc: BaseException) -> BaseException:
    """A C-extension error as the mysql.connector.Error it stands for (errno and message kept);
    anything else as it is."""
    if isinstance(exc, MySQLInterfaceError) and not isinstance(exc, mysql.connector.Error):
        errno = getattr(exc, "errno", None) or errorcode.CR_SERVER_LOST
        translated = get_mysql_exception(errno, msg=getattr(exc, "msg", None) or str(exc),
                                         sqlstate=getattr(exc, "sqlstate", None))
        translated.__cause__ = exc
        return translated
    return exc


@contextmanager
def translating() -> Iterator[None]:
    """Raise the C extension's raw errors as the mysql.connector errors they stand for: the
    connector translates the errors of a query's first result, not those nextset() meets."""
    try:
        yield
    except MySQLInterfaceError as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc


def is_transient(exc: BaseException) -> bool:
    exc = translate(exc)
    if isinstance(exc, mysql.connector.Error):
        return exc.errno in TRANSIENT_ERRNOS or (
            exc.errno is None and isinstance(exc, mysql.connector.OperationalError)
        )
    return False


def backoff_delays(first: float = TRANSIENT_BACKOFF, cap: float = TRANSIENT_BACKOFF_MAX) -> Any:
    """An endless iterator of jittered, doubling delays."""
    delay = first
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(delay * 2, cap)


# What the server answers to COMMIT, ROLLBACK, DDL, START TRANSACTION, LOCK TABLES or a change
# of autocommit inside an XA transaction: how a guarded transaction refuses to be ended early.
ER_XAER_RMFAIL = 1399
# A SIGNAL SQLSTATE '45000' of the application's own (an sql: handler's snooze, say).
ER_SIGNAL_EXCEPTION = 1644


class Database:
    """A lazily opened connection that is re-opened after a transient failure.

    `session` statements run on every new connection (and after a session reset).
    """

    def __init__(self, params: Mapping[str, Any], *, connect: Connector | None = None,
                 session: Sequence[str] = ()) -> None:
        self._params = dict(params)
        self._connect = connect or (lambda: mysql.connector.connect(**self._params))
        self._conn: Any = None
        self._session = tuple(session)
        self._xid: str | None = None  # the guarded transaction under way, if any
        self._xids = itertools.count(1)
        # How long the last commit took: a cost per transaction, not per job (pace.py).
        self.last_commit_seconds = 0.0

    def param(self, key: str) -> Any:
        """One of the connection's settings (user, database, ...), None when unset."""
        return self._params.get(key)

    def describe(self) -> str:
        where = self._params.get("unix_socket") or (
            f"{self._params.get('host', 'localhost')}:{self._params.get('port', 3306)}"
        )
        return f"database {self._params.get('database', '')!r} at {where}"

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            try:
                self._conn = self._connect()
            except mysql.connector.Error as exc:
                raise ConnectError(f"cannot connect to {self.describe()}: {exc}") from exc
            self._start_session(self._conn)
        return self._conn

    def _start_session(self, conn: Connection) -> None:
        conn.autocommit = False
        for statement in self._session:
            cursor(conn).execute(statement)

    def reset(self) -> None:
        """Forget the connection (after an error); the next use opens a new one."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def forget(self) -> None:
        """Drop the connection without a word to the server (in a forked child: the
        connection is the parent's, which goes on using it)."""
        self._conn = None

    def rollback(self) -> None:
        if self._conn is None:
            self._xid = None
            return
        xid, self._xid = self._xid, None
        try:
            if xid is None:
                self._conn.rollback()
            else:
                if self._conn.unread_result:
                    self._conn.consume_results()
                cursor(self._conn).execute(f"XA END '{xid}'")
                cursor(self._conn).execute(f"XA ROLLBACK '{xid}'")
        except Exception:  # whatever it is, the connection is of no further use
            self.reset()  # the server rolls back a transaction whose connection closes

    def restart(self) -> None:
        """Roll back what the transaction under way did, and go on in a new one (guarded if
        it was), which run() then commits."""
        guarded = self._xid is not None
        self.rollback()
        if guarded:
            self._begin_guarded(self.conn)

    def _begin_guarded(self, conn: Connection) -> None:
        self._xid = f"workerhost-{os.getpid()}-{next(self._xids)}"
        cursor(conn).execute(f"XA START '{self._xid}'")

    def _commit(self, conn: Connection) -> None:
        xid, self._xid = self._xid, None
        if xid is None:
            conn.commit()
            return
        cursor(conn).execute(f"XA END '{xid}'")
        cursor(conn).execute(f"XA COMMIT '{xid}' ONE PHASE")

    def run(self, work: Callable[[Connection], Any], *, deadline: float | None = None,
            give_up: Callable[[], bool] = lambda: False, guarded: bool = False) -> Any:
        """Run `work(conn)` in a transaction and commit; retry it on transient errors.

        Gives up with the last error once `deadline` (a time.monotonic() value) has passed;
        by default PATIENCE seconds from now, so that a refused connection fails, not hangs.
        `give_up()` true ends the retries early the same way (a stop requested meanwhile).

        `guarded`: the transaction is an XA transaction, in which the server refuses every
        statement that would end it early (COMMIT, ROLLBACK, DDL, START TRANSACTION, LOCK
        TABLES, SET autocommit: ER_XAER_RMFAIL), so that code run inside it (a handler's)
        cannot commit part of its work; the session is reset after it, so that nothing that
        code set reaches the next transaction.
        """
        if deadline is None:
            deadline = time.monotonic() + PATIENCE
        delays = backoff_delays()
        while True:
            try:
                conn = self.conn
                if guarded:
                    self._begin_guarded(conn)
                result = work(conn)
                started = time.monotonic()
                self._commit(conn)
                self.last_commit_seconds = time.monotonic() - started
            except RUN_ERRORS as raised:
                exc = translate(raised)
                cause = exc.__cause__ if isinstance(exc, ConnectError) else exc
                self.rollback()
                if guarded:
                    self._fresh_session()
                transient = cause is not None and is_transient(cause)
                if cause is not None and transient and _connection_lost(cause):
                    self.reset()
                if not transient or time.monotonic() >= deadline or give_up():
                    if exc is raised:
                        raise
                    raise exc from raised
                time.sleep(next(delays))
                continue
            except BaseException:
                self.rollback()
                if guarded:
                    self._fresh_session()
                raise
            if guarded:
                self._fresh_session()
            return result

    def _fresh_session(self) -> None:
        """After a guarded transaction: what it left in the session (variables, temporary
        tables, settings) goes, and the host's own settings come back. When that fails the
        connection goes, and the next one starts afresh."""
        if self._conn is None:
            return
        try:
            self._conn.cmd_reset_connection()
            self._start_session(self._conn)
        except Exception:
            self.reset()

    def close(self) -> None:
        self.reset()


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, mysql.connector.Error) and exc.errno not in (
        errorcode.ER_LOCK_DEADLOCK, errorcode.ER_LOCK_WAIT_TIMEOUT,
    )
