"""Table triggers, generated from the ``triggers:`` section, that submit one job per row change.

All entries on the same table and event become ONE trigger, ``workerhost_<table>_<event>``
(AFTER INSERT, UPDATE or DELETE), because a table can carry many triggers but their order is
easy to get wrong. For each changed row the trigger builds, per entry::

    JSON_OBJECT(<column>, NEW.<column> (OLD.<column> on delete), ...,
                'table', '<table>', 'event', '<event>', 'event_id', <UUID() of this row change>)

The event id is also the job's Gearman unique: gearmand coalesces a re-submission of a job
that is still queued, and a handler can use it to make its effect happen once (see below).
Every entry on one row change shares the event id; gearmand scopes uniques per function.

An entry with ``when:`` (an SQL condition on ``NEW``/``OLD``, checked by config/load.py with the
tokenizer of ``sql:`` handlers) or ``on_change:`` (update only: one of these columns changed,
NULL-safe) wraps its statements in ``IF <condition> THEN ... END IF;``: a row change that does
not pass writes no ledger row and sends nothing.

Delivery, per entry:

``immediate``
    The job's ledger row goes into ``workerhost_outbox``, leased, with a random token that
    ``gman_token()`` makes, and ``gman_ship_ledger(function, <row id>)`` sends the job to
    gearmand at once, its unique ``L<row id>:<token>``, without waiting for its
    acknowledgement (the ledger row keeps the job until its effect commits). The token
    passes from one UDF to the other inside the UDF, never through SQL. (On MySQL the token
    is a local variable and ``gman_ship`` sends the job: see create_sql.) A job never runs
    before its row commits: the worker holds a job whose row the trigger's transaction
    still holds, runs its other jobs meanwhile, and runs it once the row commits; one whose
    transaction rolled back finds no row and does nothing. When the
    UDF gives NULL (no gearmand reachable; the UDF never raises) the row is made due at once
    and the relay ships it; a job lost after it was sent is shipped again when the lease
    ends.
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

Ownership: many configurations (one per fleet) may apply triggers to one database. Each
trigger's body carries the ``triggers_owner`` of the file that made it, in a comment the server
keeps, and ``apply`` replaces and drops only its own. A trigger of another owner on a table and
event this file lists is a conflict, refused; ``prune=True`` (``--prune``) makes this file the
whole truth for the database again. A ``workerhost_`` trigger whose body names no owner (made
before owners were recorded, or through a client that drops comments) is replaced when this
file lists it and otherwise left alone.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import mysql.connector

from workerhost.config.conditions import row_references
from workerhost.config.settings import DEFAULT_RELAY_LEASE, Config, TriggerConfig
from workerhost.errors import ConfigError, WorkerHostError
from workerhost.store import schema
from workerhost.store.db import Connection, Database
from workerhost.store.enqueue import install as install_routine
from workerhost.store.schema import (
    LEDGER,
    LEDGER_TRIGGER_COLUMNS,
    LEDGER_TRIGGER_COLUMNS_LEASED,
    LEDGER_TRIGGER_COLUMNS_LEASED_LONE,
    LEDGER_TRIGGER_COLUMNS_UNIQUE,
    TOKEN_EXPRESSION,
)
from workerhost.udf import installed as udf

TRIGGER_PREFIX = "workerhost_"  # every trigger with this prefix belongs to workerhost
MAX_IDENTIFIER = 64  # MySQL and MariaDB limit on a trigger name
EVENTS = ("insert", "update", "delete")  # the order triggers are created and printed in
ROW = {"insert": "NEW", "update": "NEW", "delete": "OLD"}  # the row image a payload reads
RESERVED_KEYS = ("table", "event", "event_id")  # payload keys the trigger itself sets
# Inside the body, where the server keeps it (one before the body's first word may be dropped);
# the mariadb client drops every comment of a script it runs, unless given --comments.
GENERATED = ("generated by `workerhost triggers --apply` for triggers_owner {owner}; edit the "
             "YAML file, not this")
_OWNER = re.compile(r"generated by `workerhost triggers --apply` for triggers_owner "
                    r"([A-Za-z0-9_.-]+);")
ER_TABLEACCESS_DENIED_ERROR = 1142  # "TRIGGER command denied to user ..."
ER_SPECIFIC_ACCESS_DENIED_ERROR = 1227  # "you need (at least one of) the SUPER privilege(s)"
ER_BINLOG_CREATE_ROUTINE_NEED_SUPER = 1419  # binary logging on, no SUPER

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
    owner: str = "workerhost"  # the configuration's triggers_owner, kept in the body
    lease: float = DEFAULT_RELAY_LEASE  # seconds an immediate job's ledger row is leased

    @property
    def name(self) -> str:
        return trigger_name(self.table, self.event)

    def create_sql(self, dialect: Dialect = "mariadb") -> str:
        """The CREATE statement; MariaDB replaces an existing trigger in the same statement.

        The body runs once per changed row, so it stays lean: local variables only for what
        two statements share (the event id of several entries, the token of immediate ones),
        and the payload built inside the statement that uses it. Every entry writes its
        ledger row; immediate delivery then submits the job at
        once, naming that row (LAST_INSERT_ID()) in its unique and without a workload (the
        worker reads the row's), with the row leased so that the relay leaves it alone, and
        makes the row due at once when the UDF failed.
        """
        verb = "CREATE OR REPLACE TRIGGER" if dialect == "mariadb" else "CREATE TRIGGER"
        head = [
            f"{verb} {quote(self.name)}",
            f"AFTER {self.event.upper()} ON {quote(self.table)} FOR EACH ROW",
        ]
        # A local variable costs each row about as much as the outbox INSERT's payload. A
        # lone outbox entry leaves unique_key NULL (the relay reads the event id from the
        # payload), and its one statement needs no BEGIN ... END block, which costs every row
        # too.
        generated = GENERATED.format(owner=self.owner)
        lone = self.jobs[0]
        if len(self.jobs) == 1 and lone.delivery == "outbox" and condition(lone) is None:
            return "\n".join([*head, self._outbox(lone, None, f"/* {generated} */ ")])
        lines = [*head, "BEGIN", f"  -- {generated}"]
        # Entries sharing the row change share its event id: a variable. A lone entry makes
        # it inside its payload, where the worker reads it back as the job's unique
        # (model/job.py, row_unique): a DECLARE costs each row about 12% of the trigger.
        shared = "wh_event_id" if len(self.jobs) > 1 else None
        if shared is not None:
            lines.append(f"  DECLARE {shared} CHAR(36) DEFAULT UUID();")
        # The proof the job carries (job.py): random, in the row, unreadable to the accounts
        # that may call the UDF. On MariaDB the UDF makes it (gman_token) and keeps it for the
        # ship (gman_ship_ledger): no variable, and the token never passes through SQL; the
        # trigger costs a bulk INSERT's row a quarter less. MySQL calls a UDF's init and deinit
        # for every row a trigger runs, so there a variable and one UDF call cost less.
        in_udf = dialect == "mariadb"
        if not in_udf and any(job.delivery == "immediate" for job in self.jobs):
            lines.append(f"  DECLARE wh_token CHAR(32) DEFAULT {TOKEN_EXPRESSION};")
        for job in self.jobs:
            if job.delivery == "immediate":
                lease = f"NOW(6) + INTERVAL {round(self.lease * 1_000_000)} MICROSECOND"
                columns, unique = ((LEDGER_TRIGGER_COLUMNS_LEASED, f"{shared}, ") if shared
                                   else (LEDGER_TRIGGER_COLUMNS_LEASED_LONE, ""))
                function = sql_string(job.function)
                # Should the kernel give gman_token() no randomness, the row gets the
                # server's, the ship finds no token and gives NULL, and the relay ships it.
                token = f"IFNULL({udf.TOKEN}(), {TOKEN_EXPRESSION})" if in_udf else "wh_token"
                # No workload: the worker reads the payload from the ledger row, so it is
                # neither built twice per row nor held twice, in gearmand as well.
                ship = (f"{udf.SHIP_LEDGER}({function}, LAST_INSERT_ID())" if in_udf else
                        f"{udf.SHIP}({function}, '', CONCAT('L', LAST_INSERT_ID(), ':', "
                        "wh_token))")
                statements = [
                    f"INSERT INTO {quote(LEDGER)} {columns} VALUES "
                    f"({function}, {self._payload(job, shared or 'UUID()')}, "
                    f"{unique}{lease}, 1, {token});",
                    f"IF {ship} IS NULL THEN",
                    f"  UPDATE {quote(LEDGER)} SET `not_before` = NOW(6), `ships` = 0 "
                    "WHERE `id` = LAST_INSERT_ID();",
                    "END IF;",
                ]
            else:
                statements = [f"{self._outbox(job, shared)};"]
            test = condition(job)
            if test is not None:  # the row changes that do not pass write and send nothing
                statements = [f"IF {test} THEN", *(f"  {line}" for line in statements),
                              "END IF;"]
            lines += [f"  {line}" for line in statements]
        lines.append("END")
        return "\n".join(lines)

    def _payload(self, job: TriggerConfig, event_id: str) -> str:
        row = ROW[self.event]
        pairs = [f"{sql_string(column)}, {row}.{quote(column)}" for column in job.columns]
        pairs += [f"'table', {sql_string(self.table)}", f"'event', '{self.event}'",
                  f"'event_id', {event_id}"]  # fmt: skip
        return f"JSON_OBJECT({', '.join(pairs)})"

    def _outbox(self, job: TriggerConfig, shared_id: str | None, comment: str = "") -> str:
        """The outbox INSERT of one entry: with the shared event id as its unique, or else
        with an event id made in the payload alone."""
        values = f"{sql_string(job.function)}, {self._payload(job, shared_id or 'UUID()')}"
        into = f"INSERT {comment}INTO {quote(LEDGER)}"
        if shared_id is None:
            return f"{into} {LEDGER_TRIGGER_COLUMNS} VALUES ({values})"
        return f"{into} {LEDGER_TRIGGER_COLUMNS_UNIQUE} VALUES ({values}, {shared_id})"

    def drop_sql(self) -> str:
        return f"DROP TRIGGER IF EXISTS {quote(self.name)}"


@dataclass(frozen=True)
class Installed:
    """A workerhost trigger found in the database."""

    name: str
    table: str
    owner: str | None  # None: its body names none (an older workerhost, or a comment dropped)

    def made_by(self) -> str:
        return f"triggers_owner {self.owner!r}" if self.owner else "no recorded triggers_owner"


@dataclass(frozen=True)
class Applied:
    """What `apply` changed: triggers created or replaced, stale ones dropped, and stale ones
    left alone because nothing says they are this file's."""

    owner: str
    created: tuple[str, ...]
    dropped: tuple[Installed, ...]
    kept: tuple[Installed, ...] = ()
    routine: tuple[str, ...] = ()  # what became of the procedure workerhost_enqueue


    def report(self, file: str) -> list[str]:
        """One line per trigger, for a person."""
        lines = [f"dropped {t.name} (no longer in {file})" if t.owner == self.owner else
                 f"dropped {t.name} ({t.made_by()}; --prune)" for t in self.dropped]
        lines += [f"created {name}" for name in self.created]
        lines += [f"kept {t.name}: not in {file}, and its body names no triggers_owner (an "
                  "older workerhost made it, or a client that drops comments); apply the file "
                  "that lists it, or drop it with --prune" for t in self.kept]
        return lines + list(self.routine)


def condition(job: TriggerConfig) -> str | None:
    """The SQL condition an entry's row changes must pass (on_change, then when:); None for
    every row. A column in on_change has changed unless OLD and NEW are equal or both NULL."""
    tests = [f"NOT (OLD.{quote(column)} <=> NEW.{quote(column)})" for column in job.on_change]
    changed = " OR ".join(tests)
    if len(tests) > 1 and job.when is not None:
        changed = f"({changed})"
    parts = ([changed] if changed else []) + ([f"({job.when})"] if job.when is not None else [])
    return " AND ".join(parts) or None


def trigger_name(table: str, event: str) -> str:
    """``workerhost_<table>_<event>``; a long table name is shortened and given a hash."""
    name = f"{TRIGGER_PREFIX}{table}_{event}"
    if len(name) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    keep = MAX_IDENTIFIER - len(TRIGGER_PREFIX) - len(digest) - len(event) - 2
    return f"{TRIGGER_PREFIX}{table[:keep]}_{digest}_{event}"


def quote(identifier: str) -> str:
    """A backtick-quoted identifier (config/load.py has already checked its characters)."""
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
                sources=tuple(i for i, _ in entries), owner=config.triggers_owner,
                lease=config.host.relay.lease)
        for (table, event), entries in ordered
    ]  # fmt: skip


def script(config: Config, dialect: Dialect = "mariadb") -> str:
    """The whole SQL, ready for the ``mariadb``/``mysql`` command-line client."""
    triggers = plan(config)
    if not triggers:
        return f"-- {config.file} has no triggers: section; nothing to create\n"
    out = [
        f"-- Triggers generated by workerhost from {config.file}.",
        f"-- They write to {LEDGER} (sql/workerhost.sql creates it); immediate delivery",
        f"-- also needs the UDF (sql/install.sql): "
        f"{', '.join(f for f, _ in udf.TRIGGER_PROBES[dialect])}.",
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


def installed(conn: Connection) -> dict[str, Installed]:
    """workerhost's triggers in the connection's database, by name."""
    cursor = conn.cursor()
    cursor.execute(
        "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT "
        "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
        "AND TRIGGER_NAME LIKE %s",
        (TRIGGER_PREFIX.replace("_", "\\_") + "%",),
    )
    found = {}
    for name, table, body in cursor.fetchall():
        owner = _OWNER.search(str(body))
        found[str(name)] = Installed(str(name), str(table), owner.group(1) if owner else None)
    cursor.close()
    return found


def apply(config: Config, db: Database, *, prune: bool = False) -> Applied:
    """Create or replace the configured triggers; drop this configuration's triggers that it
    no longer lists (with ``prune``, every workerhost trigger it does not list).

    The host's tables are created first when missing, since every trigger writes to the
    outbox; then, after the triggers, the procedure workerhost_enqueue when it is missing
    (enqueue.py): like a trigger, a stored program that writes the ledger, needing the same
    kind of account and reported the same way when binary logging refuses it. Tables,
    columns and owners are checked before anything changes, so a typo or a conflict with
    another configuration changes nothing.
    """
    triggers = plan(config)
    owner = config.triggers_owner
    db.run(schema.create)

    def work(conn: Connection) -> Applied:
        dialect = server_dialect(conn)
        _check_tables(conn, config, triggers)
        if any(job.delivery == "immediate" for trigger in triggers for job in trigger.jobs):
            _check_udf(conn, db, dialect)
        found = installed(conn)
        if not prune:
            _check_owners(config, triggers, found)
        wanted = {trigger.name for trigger in triggers}
        stale = [found[name] for name in sorted(set(found) - wanted)]
        dropped = [t for t in stale if prune or t.owner == owner]
        cursor = conn.cursor()
        for old in dropped:
            cursor.execute(f"DROP TRIGGER IF EXISTS {quote(old.name)}")
        for trigger in triggers:
            # MySQL lacks CREATE OR REPLACE TRIGGER: rows changed between the two statements
            # send no job. MariaDB replaces the trigger in one statement.
            if dialect == "mysql" and trigger.name in found:  # a DROP of none draws a note
                cursor.execute(trigger.drop_sql())
            cursor.execute(trigger.create_sql(dialect))
        cursor.close()
        routine = install_routine(conn)
        return Applied(owner=owner, created=tuple(t.name for t in triggers),
                       dropped=tuple(dropped),
                       kept=tuple(t for t in stale if t not in dropped and t.owner is None),
                       routine=tuple(routine.report()))

    return _run(db, work, "create the triggers")


def drop(config: Config, db: Database, *, prune: bool = False) -> tuple[str, ...]:
    """Drop this configuration's triggers: those naming its triggers_owner, and those naming
    none that it lists. With ``prune``, every workerhost trigger. Returns their names."""
    wanted = {trigger.name for trigger in plan(config)}

    def work(conn: Connection) -> tuple[str, ...]:
        names = sorted(name for name, trigger in installed(conn).items()
                       if prune or trigger.owner == config.triggers_owner
                       or (trigger.owner is None and name in wanted))  # fmt: skip
        cursor = conn.cursor()
        for name in names:
            cursor.execute(f"DROP TRIGGER IF EXISTS {quote(name)}")
        cursor.close()
        return tuple(names)

    return _run(db, work, "drop the triggers")


def _check_owners(config: Config, triggers: Sequence[Trigger],
                  found: dict[str, Installed]) -> None:  # fmt: skip
    """Refuse to replace another configuration's trigger: its jobs would stop."""
    for trigger in triggers:
        other = found.get(trigger.name)
        if other is not None and other.owner not in (None, config.triggers_owner):
            raise ConfigError(
                f"{trigger.name} exists already, made by triggers_owner {other.owner!r}, not "
                f"{config.triggers_owner!r}: two configurations cannot both fire on "
                f"{trigger.event} of {trigger.table!r}. List these entries in one file, or "
                "drop that trigger with its own file's --drop (or apply this file with --prune)",
                file=config.file, path=f"triggers[{trigger.sources[0]}]",
            )


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
        raise WorkerHostError(
            f"could not {what} in {db.describe()}: {exc.msg}{_privilege_hint(exc, db)}"
        ) from exc


def _privilege_hint(exc: mysql.connector.Error, db: Database) -> str:
    """What to grant or set when the server refused for want of a privilege."""
    user, database = db.param("user"), db.param("database")
    if exc.errno == ER_BINLOG_CREATE_ROUTINE_NEED_SUPER:
        return ("; binary logging is on (MySQL's default), and then creating a trigger needs "
                "SUPER, or the server setting log_bin_trust_function_creators: as an "
                "administrator run SET PERSIST log_bin_trust_function_creators = 1 (MySQL) or "
                "SET GLOBAL log_bin_trust_function_creators = 1 (MariaDB; also put it in the "
                "server's config file), or apply the triggers as an account with SUPER")
    if exc.errno in (ER_TABLEACCESS_DENIED_ERROR, ER_SPECIFIC_ACCESS_DENIED_ERROR):
        return (f"; the account needs the TRIGGER privilege on the tables: as an administrator "
                f"run GRANT TRIGGER ON `{database}`.* TO '{user}'@'<its host>'")
    return ""


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
            read = [("columns", column) for column in job.columns]
            read += [("on_change", column) for column in job.on_change]
            read += [("when", column) for _, column in row_references(job.when or "")]
            for key, column in read:
                # MySQL and MariaDB compare column names without regard to case.
                if column.lower() not in (c.lower() for c in columns[trigger.table]):
                    raise ConfigError(
                        f"table {trigger.table!r} has no column {column!r}; it has "
                        f"{', '.join(columns[trigger.table])}",
                        file=config.file, path=f"triggers[{source}].{key}",
                    )


def _check_udf(conn: Connection, db: Database, dialect: Dialect) -> None:
    """A trigger calling a missing function would make every INSERT on its table fail."""
    missing = udf.missing_trigger_udf(conn, dialect)
    if missing is not None:
        raise WorkerHostError(
            f"{udf.missing_detail(conn, missing)}; delivery: immediate calls it "
            f"({db.describe()}), or use delivery: outbox")
