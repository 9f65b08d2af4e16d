"""The host's own tables: their names, their DDL and their migrations.

The host's tables live in the application's database beside its data (`sql/workerhost.sql`,
package data): the ledger (`workerhost_outbox`) of jobs waiting or running, the failed
attempts of jobs in play, the dead letters, the refused deliveries, the paused functions, the
functions' concurrency slots, how far each schedule has got, the worker processes'
heartbeats, and the console's own: its charts' samples and the sessions logged out. Every
statement against them lives in this package (store/): ledger.py, letters.py,
schedule_table.py, worker_table.py, sample_table.py and logout_table.py, so that the SQL that
must run on MySQL and MariaDB alike is written once: ``function`` is a column name and a
reserved word in MySQL since 8.0.1, so it is always quoted; no statement uses ``VALUES(col)``
in ``ON DUPLICATE KEY UPDATE`` (deprecated by MySQL 8.0.20, while MariaDB lacks the row-alias
form that replaces it).

Callers own the transaction: the store's functions run their statements on the connection's
shared cursor (db.cursor) and never commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

from workerhost.store import db
from workerhost.store.db import Connection

log = logging.getLogger("workerhost.store")
LEDGER = "workerhost_outbox"
ATTEMPTS = "workerhost_attempts"
DEAD_LETTERS = "workerhost_dead_letters"
REFUSED = "workerhost_refused"
PAUSED = "workerhost_paused"
SLOTS = "workerhost_slots"
RATES = "workerhost_rates"  # a function's rate limit: its token bucket
JOBS_VIEW = "workerhost_jobs"  # the ledger as an operator reads it: states, never tokens
SCHEDULES = "workerhost_schedules"
WORKERS = "workerhost_workers"  # heartbeats: each worker process of each host
SAMPLES = "workerhost_samples"  # the console's charts: per minute and function, a day of them
LOGOUTS = "workerhost_logouts"  # console sessions logged out, until they would have run out
# Refused deliveries kept, the newest ones: forged jobs must not fill the disk.
REFUSED_KEPT = 1000
# Bytes of a refused delivery's payload kept to recognise it by (its digest covers the rest).
REFUSED_HEAD = 256
# Lock errors of a NOWAIT read: MariaDB answers a lock wait timeout, MySQL a NOWAIT error.
_LOCKED_ERRNOS = frozenset({1205, 3572})
SCHEMA_RESOURCE = "sql/workerhost.sql"
# The columns a trigger's ledger INSERT names: a lone entry leaves unique_key NULL.
LEDGER_TRIGGER_COLUMNS = "(`function`, `payload`)"
LEDGER_TRIGGER_COLUMNS_UNIQUE = "(`function`, `payload`, `unique_key`)"
# Immediate delivery's row: shipped by the trigger itself, so leased from the start, with the
# token the trigger ships (every other writer leaves the token to the column's default).
LEDGER_TRIGGER_COLUMNS_LEASED = ("(`function`, `payload`, `unique_key`, `not_before`, `ships`, "
                                 "`token`)")
# The same for a lone entry, whose payload holds the event id: unique_key left NULL.
LEDGER_TRIGGER_COLUMNS_LEASED_LONE = "(`function`, `payload`, `not_before`, `ships`, `token`)"
# What a trigger makes a row's token of, as the column's default does (sql/workerhost.sql).
TOKEN_EXPRESSION = "HEX(RANDOM_BYTES(16))"


def marks(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


# -- schema ------------------------------------------------------------------------------------
def schema_statements() -> list[str]:
    """The CREATE TABLE IF NOT EXISTS statements of sql/workerhost.sql, comments removed."""
    text = resources.files("workerhost").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in body.split(";") if statement.strip()]


def table_names() -> list[str]:
    """The host's tables, in the schema's order (its view, workerhost_jobs, left out: the host
    never writes through it)."""
    return [created_table(statement) for statement in schema_statements()
            if not statement.startswith("CREATE OR REPLACE")]


def created_table(statement: str) -> str:
    """The table a CREATE TABLE IF NOT EXISTS statement of the schema creates (or the view a
    CREATE ... VIEW statement does)."""
    if statement.startswith("CREATE OR REPLACE"):
        return statement.split(" VIEW ", 1)[1].split()[0].strip("`")
    return statement.split("EXISTS", 1)[1].split("(", 1)[0].strip().strip("`")


# Columns added since the first layout, with the statements that add them: create() runs
# those of the columns that are missing. The token is added empty, filled, and only then given
# its default: MySQL refuses (with binary logging on) to fill existing rows from a default
# that differs from call to call.
MIGRATIONS = (
    (LEDGER, "ships", (f"ALTER TABLE {LEDGER} ADD COLUMN ships INT UNSIGNED NOT NULL DEFAULT 0",)),
    (LEDGER, "token", (
        f"ALTER TABLE {LEDGER} ADD COLUMN token CHAR(32) CHARACTER SET ascii NULL",
        f"UPDATE {LEDGER} SET token = {TOKEN_EXPRESSION} WHERE token IS NULL",
        f"ALTER TABLE {LEDGER} MODIFY COLUMN token CHAR(32) CHARACTER SET ascii NOT NULL "
        f"DEFAULT ({TOKEN_EXPRESSION})",
    )),
    (LEDGER, "snoozes", (f"ALTER TABLE {LEDGER} ADD COLUMN snoozes INT UNSIGNED NOT NULL "
                         "DEFAULT 0",)),
    (LEDGER, "merge_key", (f"ALTER TABLE {LEDGER} ADD COLUMN merge_key VARCHAR(255) NULL",)),
)
# Indexes added since the first layout: create() adds what is missing.
INDEX_MIGRATIONS = ((LEDGER, "due", "INDEX due (not_before)"),
                    (LEDGER, "merge_key", "UNIQUE INDEX merge_key (`function`, merge_key)"))
# The view is the operator's, not the host's: an account that may create tables but not views
# runs the host all the same, and is told what to grant.
_VIEW_DENIED_ERRNOS = frozenset({1142, 1044})  # CREATE VIEW denied on the table / database


def create(conn: Connection) -> None:
    """Create the tables that are missing and bring older layouts up to date (re-runnable).

    Only what is missing is created: CREATE TABLE IF NOT EXISTS of a table that exists draws
    a note (a warning on MySQL) on every start of every host.
    """
    cursor = db.cursor(conn)
    cursor.execute("SELECT TABLE_NAME FROM information_schema.TABLES "
                   "WHERE TABLE_SCHEMA = DATABASE()")
    existing = {str(name) for (name,) in cursor.fetchall()}
    views: list[str] = []
    for statement in schema_statements():
        if created_table(statement) in existing:
            continue
        if created_table(statement) == JOBS_VIEW:
            views.append(statement)  # after the migrations: it reads their columns
        else:
            cursor.execute(statement)
    cursor.execute(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN "
        f"({marks(MIGRATIONS)})", [table for table, _, _ in MIGRATIONS],
    )
    present = {(str(table), str(column)) for table, column in cursor.fetchall()}
    for table, column, statements in MIGRATIONS:
        if (table, column) not in present:
            for statement in statements:
                cursor.execute(statement)
    cursor.execute(
        "SELECT DISTINCT TABLE_NAME, INDEX_NAME FROM information_schema.STATISTICS "
        f"WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ({marks(INDEX_MIGRATIONS)})",
        [table for table, _, _ in INDEX_MIGRATIONS],
    )
    indexed = {(str(table), str(index)) for table, index in cursor.fetchall()}
    for table, index, definition in INDEX_MIGRATIONS:
        if (table, index) not in indexed:
            cursor.execute(f"ALTER TABLE {table} ADD {definition}")
    for statement in views:
        try:
            with db.translating():
                cursor.execute(statement)
        except db.ERRORS as exc:
            if getattr(db.translate(exc), "errno", None) not in _VIEW_DENIED_ERRNOS:
                raise
            log.warning("view %s not created (%s): as an administrator grant CREATE VIEW on "
                        "the database to the host's account, or run sql/workerhost.sql",
                        JOBS_VIEW, exc)
