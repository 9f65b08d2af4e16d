"""db.py with a fake connection: every error class a connection raises is met where it is used."""

from __future__ import annotations

from typing import Any

import mysql.connector
import pytest
from _mysql_connector import MySQLInterfaceError

from workerhost.store.db import Database, translate


def interface_error(errno: int, message: str) -> MySQLInterfaceError:
    """What the C extension's commit() and rollback() raise, untranslated."""
    error = MySQLInterfaceError(message)
    error.errno = errno
    return error


class FakeConnection:
    def __init__(self, commits: list[BaseException | None]) -> None:
        self.commits = commits
        self.autocommit = True
        self.closed = False

    def commit(self) -> None:
        failure = self.commits.pop(0) if self.commits else None
        if failure is not None:
            raise failure

    def rollback(self) -> None:
        raise interface_error(2013, "Lost connection to server during query")

    def close(self) -> None:
        self.closed = True


class Connector:
    def __init__(self, *commits: list[BaseException | None]) -> None:
        self.pending = list(commits)
        self.opened: list[FakeConnection] = []

    def __call__(self) -> FakeConnection:
        conn = FakeConnection(self.pending.pop(0) if self.pending else [])
        self.opened.append(conn)
        return conn


def test_a_lost_connection_in_commit_reopens_and_runs_the_work_again() -> None:
    connector = Connector([interface_error(2013, "Lost connection")])
    runs: list[Any] = []
    database = Database({}, connect=connector)
    assert database.run(lambda conn: runs.append(conn) or "done") == "done"
    assert len(runs) == 2 and runs[0] is not runs[1], "the work ran again on a new connection"
    assert connector.opened[0].closed


def test_a_refusal_in_commit_is_raised_as_the_connectors_own_error() -> None:
    connector = Connector([interface_error(1153, "Got a packet bigger than max_allowed_packet")])
    with pytest.raises(mysql.connector.Error) as raised:
        Database({}, connect=connector).run(lambda conn: None)
    assert raised.value.errno == 1153
    assert "max_allowed_packet" in str(raised.value)
    assert isinstance(raised.value.__cause__, MySQLInterfaceError)


def test_translate_keeps_the_connectors_errors_and_others_as_they_are() -> None:
    own = mysql.connector.errors.OperationalError(msg="x", errno=2006)
    assert translate(own) is own
    other = ValueError("not a database error")
    assert translate(other) is other
    assert translate(interface_error(1213, "Deadlock")).errno == 1213


def test_importing_changes_nothing_in_the_connector_and_the_first_cursor_fixes_it() -> None:
    """The connector's DELIMITER splitting (which corrupted values: db._as_written) is switched
    off by the host's first statement, not by an import: application code that imports
    workerhost keeps its connector as it was until it calls workerhost.enqueue."""
    import subprocess
    import sys

    code = (
        "import mysql.connector.cursor as c, mysql.connector.cursor_cext as x\n"
        "before = c.split_multi_statement, x.split_multi_statement\n"
        "import workerhost, workerhost.store.db as db, workerhost.store.ledger\n"
        "assert (c.split_multi_statement, x.split_multi_statement) == before, 'by an import'\n"
        "class Conn:\n"
        "    def cursor(self, buffered=False):\n"
        "        return object()\n"
        "db.cursor(Conn())\n"
        "assert c.split_multi_statement is x.split_multi_statement is db._as_written\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout == "ok\n", done.stderr
