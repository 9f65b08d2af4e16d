"""Table triggers, generated from the ``triggers:`` section, that submit one job per row change.

All entries on the same table and event become ONE trigger, ``workerhost_<table>_<event>``
(AFTER INSERT, UPDATE or DELETE), because a table can carry many triggers but their order is
easy to get wrong. For each changed row the trigger builds, per entry::

    JSON_OBJECT(<column>, NEW.<column> (OLD.<column> on delete), ...,
                'table', '<table>', 'event', '<event>', 'event_id', <UUID() of this row change>)

The event id is also the job's Gearman unique: gearmand coalesces a re-submission of a job
that is still queued, and a handler can use it to make its effect happen once (see below).
Every entry on one row change shares the event id; gearmand scopes uniques per function.

Delivery, per entry:

``immediate``
    ``gman_do_background(function, payload, event_id)`` runs inside the trigger; when it returns
    NULL (gearmand down or stalled; the UDF never raises) the job goes to ``workerhost_outbox``
    instead, and the relay ships it later. Nothing is lost when gearmand is down, and the job
    is on its way within milliseconds. The price: the job is submitted *before the transaction
    commits*. A handler may run before the row is visible (give ``sql:`` handlers
    ``on_no_rows: retry``, and Python handlers a ``JobError`` or a retryable exception when
    the row is missing), and a rolled-back transaction still sends its job (the handler finds
    no row, and the retries end in a dead letter, or ``on_no_rows: ignore`` drops it).
``outbox``
    Only an INSERT into ``workerhost_outbox``, in the same transaction as the row change. A
    rolled-back transaction sends nothing, a committed one always sends its job (the relay in
    ``workerhost run`` ships it once gearmand accepts it). The price: relay latency, by default
    up to ``host.relay.interval`` (200ms) plus one round trip.

Idempotency: delivery is at least once on both paths (a worker killed mid-job, gearmand
restarting with its persistent queue, or a relay crashing between gearmand's acceptance and its
own commit all re-run a job). Make the effect idempotent by keying it on ``event_id``: an
``INSERT ... ON DUPLICATE KEY UPDATE`` into a table whose key is the event id or the row id,
an ``UPDATE ... WHERE`` that sets absolute values (never ``x = x + 1``), or a
processed-events table (``INSERT INTO processed (event_id) VALUES (...)`` first, in the same
transaction, and stop on a duplicate-key error). ``examples/shop_jobs.py`` shows the last one.

Do not write back from an ``update`` trigger's handler to the same table with a statement that
changes a row: every write-back fires the trigger again. Write results to another table, or
trigger on ``insert`` only.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import mysql.connector

from workerhost.config import Config, TriggerConfig
from workerhost.db import Connection, Database
from workerhost.errors import ConfigError, WorkerHostError
from workerhost.failures import OUTBOX_TABLE

TRIGGER_PREFIX = "workerhost_"  # every trigger with this prefix belongs to workerhost
MAX_IDENTIFIER = 64  # MySQL and MariaDB limit on a trigger name
EVENTS = ("insert", "update", "delete")  # the order triggers are created and printed in
ROW = {"insert": "NEW", "update": "NEW", "delete": "OLD"}  # the row image a payload reads
RESERVED_KEYS = ("table", "event", "event_id")  # payload keys the trigger itself sets
UDF = "gman_do_background"  # the UDF immediate delivery calls (sql/install.sql)
ER_SP_DOES_NOT_EXIST = 1305  # "FUNCTION db.gman_do_background does not exist"

Dialect = Literal["mariadb", "mysql"]
T = TypeVar("T")
# Strings written as plain '...' literals; anything else becomes a hex literal, which no
# sql_mode (NO_BACKSLASH_ESCAPES, ANSI_QUOTES) can read differently.
_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+= -]*")


@dataclass(frozen=True)
class Trigger:
    """One trigger: a table, an event, and the entries (jobs) it submits for each row."""

    table: str
    event: str
    jobs: tuple[TriggerConfig, ...]
    sources: tuple[int, ...]  # indexes of the entries in triggers:, for messages

    @property
    def name(self) -> str:
        return trigger_name(self.table, self.event)

    def create_sql(self, dialect: Dialect = "mariadb") -> str:
        """The CREATE statement; MariaDB replaces an existing trigger in the same statement.

        The body runs once per changed row, so it stays lean: at most one local variable (the
        event id, shared by every entry), the payload built inside the statement that uses it,
        and for immediate delivery built a second time only when the UDF failed.
        """
        verb = "CREATE OR REPLACE TRIGGER" if dialect == "mariadb" else "CREATE TRIGGER"
        row = ROW[self.event]
        lines = [
            f"{verb} {quote(self.name)}",
            f"AFTER {self.event.upper()} ON {quote(self.table)} FOR EACH ROW",
            "BEGIN",
            "  -- generated by `workerhost triggers --apply`; edit the YAML file, not this",
        ]
        # A local variable costs each row about as much as the outbox INSERT's payload: only
        # a UDF call (which needs the event id as unique) or entries sharing it declare one.
        # A lone outbox entry leaves unique_key NULL; the relay reads the id from the payload.
        shared = len(self.jobs) > 1 or self.jobs[0].delivery == "immediate"
        if shared:
            lines.append("  DECLARE wh_event_id CHAR(36) DEFAULT UUID();")
        event_id = "wh_event_id" if shared else "UUID()"
        for job in self.jobs:
            pairs = [f"{sql_string(column)}, {row}.{quote(column)}" for column in job.columns]
            pairs += [f"'table', {sql_string(self.table)}", f"'event', '{self.event}'",
                      f"'event_id', {event_id}"]  # fmt: skip
            function = sql_string(job.function)
            payload = f"JSON_OBJECT({', '.join(pairs)})"
            if shared:
                outbox = (f"INSERT INTO {quote(OUTBOX_TABLE)} (`function`, `payload`, "
                          f"`unique_key`) VALUES ({function}, {payload}, wh_event_id);")
            else:
                outbox = (f"INSERT INTO {quote(OUTBOX_TABLE)} (`function`, `payload`) "
                          f"VALUES ({function}, {payload});")
            if job.delivery == "immediate":
                lines += [
                    f"  IF {UDF}({function}, {payload}, wh_event_id) IS NULL THEN",
                    f"    {outbox}",
                    "  END IF;",
                ]
            else:
                lines.append(f"  {outbox}")
        lines.append("END")
        return "\n".join(lines)

    def drop_sql(self) -> str:
        return f"DROP TRIGGER IF EXISTS {quote(self.name)}"


@dataclass(frozen=True)
class Applied:
    """What `apply` changed: triggers created or replaced, and stale ones dropped."""

    created: tuple[str, ...]
    dropped: tuple[str, ...]


def trigger_name(table: str, event: str) -> str:
    """``workerhost_<table>_<event>``; a long table name is shortened and given a hash."""
    name = f"{TRIGGER_PREFIX}{table}_{event}"
    if len(name) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    keep = MAX_IDENTIFIER - len(TRIGGER_PREFIX) - len(digest) - len(event) - 2
    return f"{TRIGGER_PREFIX}{table[:keep]}_{digest}_{event}"


def quote(identifier: str) -> str:
    """A backtick-quoted identifier (config.py has already checked its characters)."""
    return "`" + identifier.replace("`", "``") + "`"


def sql_string(text: str) -> str:
    """A string literal that means `text` under every sql_mode."""
    if _PLAIN.fullmatch(text):
        return f"'{text}'"
    return f"_utf8mb4 X'{text.encode('utf-8').hex()}'"


def plan(config: Config) -> list[Trigger]:
    """Group the ``triggers:`` entries into one Trigger per (table, event), in file order."""
    grouped: dict[tuple[str, str], list[tuple[int, TriggerConfig]]] = {}
    for index, entry in enumerate(config.triggers):
        for column in entry.columns:
            if column in RESERVED_KEYS:
                raise ConfigError(
                    f"column {column!r} would clash with the payload key the trigger sets "
                    f"itself ({', '.join(RESERVED_KEYS)}); drop it from columns (a view or "
                    "generated column can rename it)",
                    file=config.file, path=f"triggers[{index}].columns",
                )
        for event in entry.events:
            grouped.setdefault((entry.table, event), []).append((index, entry))
    ordered = sorted(grouped.items(), key=lambda item: (item[1][0][0], EVENTS.index(item[0][1])))
    return [
        Trigger(table=table, event=event, jobs=tuple(e for _, e in entries),
                sources=tuple(i for i, _ in entries))
        for (table, event), entries in ordered
    ]  # fmt: skip


def script(config: Config, dialect: Dialect = "mariadb") -> str:
    """The whole SQL, ready for the ``mariadb``/``mysql`` command-line client."""
    triggers = plan(config)
    if not triggers:
        return f"-- {config.file} has no triggers: section; nothing to create\n"
    out = [
        f"-- Triggers generated by workerhost from {config.file}.",
        f"-- They write to {OUTBOX_TABLE} (sql/workerhost.sql creates it); immediate delivery",
        f"-- also needs the UDF {UDF} (sql/install.sql).",
        "DELIMITER //",
    ]
    for trigger in triggers:
        if dialect == "mysql":
            out.append(trigger.drop_sql() + " //")
        out.append(trigger.create_sql(dialect) + " //")
    out.append("DELIMITER ;")
    return "\n".join(out) + "\n"


def drop_script(config: Config) -> str:
    lines = [trigger.drop_sql() + ";" for trigger in plan(config)]
    return "\n".join(lines) + "\n" if lines else "-- no triggers: section; nothing to drop\n"


def installed(conn: Connection) -> dict[str, str]:
    """workerhost's triggers in the connection's database: name -> table."""
    cursor = conn.cursor()
    cursor.execute(
        "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS "
        "WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE %s",
        (TRIGGER_PREFIX.replace("_", "\\_") + "%",),
    )
    found = {str(name): str(table) for name, table in cursor.fetchall()}
    cursor.close()
    return found


def apply(config: Config, db: Database) -> Applied:
    """Create or replace the configured triggers; drop workerhost triggers no longer listed.

    The host's tables are created first when missing, since every trigger writes to the
    outbox. Tables and columns are checked before anything changes, so a typo changes nothing.
    """
    triggers = plan(config)
    db.ensure_schema()

    def work(conn: Connection) -> Applied:
        dialect = server_dialect(conn)
        _check_tables(conn, config, triggers)
        if any(job.delivery == "immediate" for trigger in triggers for job in trigger.jobs):
            _check_udf(conn, db)
        cursor = conn.cursor()
        wanted = {trigger.name for trigger in triggers}
        stale = sorted(set(installed(conn)) - wanted)
        for name in stale:
            cursor.execute(f"DROP TRIGGER IF EXISTS {quote(name)}")
        for trigger in triggers:
            # MySQL lacks CREATE OR REPLACE TRIGGER: rows changed between the two statements
            # send no job. MariaDB replaces the trigger in one statement.
            if dialect == "mysql":
                cursor.execute(trigger.drop_sql())
            cursor.execute(trigger.create_sql(dialect))
        cursor.close()
        return Applied(created=tuple(t.name for t in triggers), dropped=tuple(stale))

    return _run(db, work, "create the triggers")


def drop(db: Database) -> tuple[str, ...]:
    """Drop every workerhost trigger in the configured database; returns their names."""

    def work(conn: Connection) -> tuple[str, ...]:
        names = sorted(installed(conn))
        cursor = conn.cursor()
        for name in names:
            cursor.execute(f"DROP TRIGGER IF EXISTS {quote(name)}")
        cursor.close()
        return tuple(names)

    return _run(db, work, "drop the triggers")


def server_dialect(conn: Connection) -> Dialect:
    cursor = conn.cursor()
    cursor.execute("SELECT VERSION()")
    (version,) = cursor.fetchone()
    cursor.close()
    return "mariadb" if "mariadb" in str(version).lower() else "mysql"


def _run(db: Database, work: Callable[[Connection], T], what: str) -> T:
    try:
        result: T = db.run(work)
        return result
    except mysql.connector.Error as exc:
        hint = ""
        if exc.errno in (1142, 1227, 1419):  # no TRIGGER privilege / needs SUPER
            hint = ("; the database user needs the TRIGGER privilege on these tables "
                    "(and, with binary logging on, SUPER or log_bin_trust_function_creators=1)")
        raise WorkerHostError(f"could not {what} in {db.describe()}: {exc.msg}{hint}") from exc


def _check_tables(conn: Connection, config: Config, triggers: Sequence[Trigger]) -> None:
    cursor = conn.cursor()
    cursor.execute(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, ORDINAL_POSITION"
    )
    columns: dict[str, list[str]] = {}
    for table, column in cursor.fetchall():
        columns.setdefault(str(table), []).append(str(column))
    cursor.execute("SELECT DATABASE()")
    (database,) = cursor.fetchone()
    cursor.close()
    for trigger in triggers:
        index = trigger.sources[0]
        if trigger.table not in columns:
            close = difflib.get_close_matches(trigger.table, list(columns), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"table {trigger.table!r} does not exist in database {database!r}{hint}; "
                "create it first, or fix the name",
                file=config.file, path=f"triggers[{index}].table",
            )
        for job, source in zip(trigger.jobs, trigger.sources, strict=True):
            for column in job.columns:
                # MySQL and MariaDB compare column names without regard to case.
                if column.lower() not in (c.lower() for c in columns[trigger.table]):
                    raise ConfigError(
                        f"table {trigger.table!r} has no column {column!r}; it has "
                        f"{', '.join(columns[trigger.table])}",
                        file=config.file, path=f"triggers[{source}].columns",
                    )


def _check_udf(conn: Connection, db: Database) -> None:
    """A trigger calling a missing function would make every INSERT on its table fail."""
    cursor = conn.cursor()
    try:
        cursor.execute(f"SELECT {UDF}(NULL, NULL)")  # a NULL function submits nothing
        cursor.fetchall()
    except mysql.connector.Error as exc:
        if exc.errno != ER_SP_DOES_NOT_EXIST:
            raise
        raise WorkerHostError(
            f"{db.describe()} has no function {UDF}, which delivery: immediate calls; install "
            "the UDF (make install-udf, or workerhost sandbox install-udf) or use "
            "delivery: outbox"
        ) from exc
    finally:
        cursor.close()
