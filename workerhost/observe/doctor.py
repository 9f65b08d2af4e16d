"""`workerhost doctor`: can this host work on this database? Check by check, with the fix.

Each check gives one line, ok, FAIL or warn, and a FAIL says what to run. In order: the
database and the account's privileges for each verb (`run`: the host's tables;
`triggers --apply`: TRIGGER, and SUPER or log_bin_trust_function_creators when binary logging
is on); the UDF, when a trigger of the file calls it (immediate delivery): loaded, of this
package's version, and sending to gearmand servers of the file's gearman.servers; the file's
triggers, present and as the file would make them now; every gearmand, and the queue and
workers of each function of the file.

Nothing is written. The privileges of `run` are tried with statements that touch no row
(`DELETE ... WHERE 1 = 0` in a transaction rolled back), so they hold whatever granted them
(a role, a wildcard); TRIGGER and SUPER cannot be tried that way and are read from
information_schema's privilege views, which show direct grants only.

`--probe` sends one job along the trigger's path, from the database server through the UDF to
gearmand and a worker, and times it: a foreground job (gman_do) of a function of its own,
which doctor itself serves on every server of gearman.servers, echoing the job's data. No
row is written and no handler runs. A job that reaches no worker fails the probe after
PROBE_DEADLINE, without waiting for the UDF's own result_timeout_ms (30 s by default): the
query is left to end in a daemon thread, and gearmand drops the job with its client.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import mysql.connector

from workerhost.config.settings import Config
from workerhost.gearman import admin as gearadmin
from workerhost.gearman import conn as gearconn
from workerhost.store import grants, schema, triggers
from workerhost.udf import installed as udf

Outcome = Literal["ok", "FAIL", "warn"]
PROBE_FUNCTION = "workerhost_doctor_probe"  # served by doctor --probe alone
PROBE_DEADLINE = 10.0  # seconds a probe's job may take to come back before it fails
ER_ACCESS_DENIED = frozenset({1142, 1143})  # table or column command denied
RUN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    outcome: Outcome
    what: str
    detail: str
    fix: str | None = None
    unreachable: bool = False  # a server did not answer (the verb exits RET_CONNECT)

    def lines(self) -> list[str]:
        out = [f"{self.outcome:5} {self.what}: {self.detail}"]
        if self.fix:
            out.append(f"      fix: {self.fix}")
        return out


def diagnose(config: Config, file: str, *, probe: bool = False) -> Iterator[Check]:
    """Every check, as it is made."""
    params = dict(config.database.connect_kwargs(), autocommit=True)
    where = params.get("unix_socket") or f"{params.get('host')}:{params.get('port')}"
    name = f"database {config.database.database!r} at {where}"
    try:
        conn = mysql.connector.connect(**params)
    except mysql.connector.Error as exc:
        yield Check("FAIL", "database", f"{name} as {config.database.user!r}: {exc}",
                    fix="start the server, or correct database: in the file (host, port, user, "
                        "password)", unreachable=True)
        yield from _gearmand(config)
        return
    try:
        version = str(_scalar(conn, "SELECT VERSION()"))
        yield Check("ok", "database", f"{name} reachable as {config.database.user!r} "
                                      f"({version})")
        account = _account(conn)
        yield from _run_privileges(conn, config, file, account)
        immediate = sorted({t.function for t in config.triggers if t.delivery == "immediate"})
        trigger_rights = True
        if config.triggers:
            apply_checks = list(_apply_privileges(conn, config, account))
            trigger_rights = not any(c.outcome == "FAIL" for c in apply_checks[:1])
            yield from apply_checks
        udf_checks = list(_udf(conn, config, file, immediate))
        udf_ok = all(c.outcome != "FAIL" for c in udf_checks)
        yield from udf_checks
        if config.triggers:
            yield from _triggers(conn, config, file, trigger_rights)
        yield from _gearmand(config)
        if probe:
            yield _probe(config, params, immediate, udf_ok)
    finally:
        conn.close()


def _scalar(conn: Any, sql: str, args: Sequence[Any] = ()) -> Any:
    cursor = conn.cursor()
    cursor.execute(sql, tuple(args))
    row = cursor.fetchone()
    cursor.close()
    value = row[0] if row else None
    return value.decode() if isinstance(value, bytes | bytearray) else value


def _account(conn: Any) -> str:
    """CURRENT_USER() as a GRANT names it: 'user'@'host'."""
    user, _, host = str(_scalar(conn, "SELECT CURRENT_USER()")).rpartition("@")
    return f"'{user}'@'{host}'"


def _grant(privileges: str, on: str, account: str) -> str:
    return f"as an administrator: GRANT {privileges} ON {on} TO {account};"


# -- run -------------------------------------------------------------------------------------
def _run_privileges(conn: Any, config: Config, file: str, account: str) -> Iterator[Check]:
    names = schema.table_names()
    database = config.database.database
    cursor = conn.cursor()
    cursor.execute("SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE "
                   "TABLE_SCHEMA = DATABASE() ORDER BY ORDINAL_POSITION")
    first: dict[str, str] = {}
    for table, column in cursor.fetchall():
        first.setdefault(str(table), str(column))
    missing = [n for n in names if n not in first]
    denied: dict[str, list[str]] = {}
    conn.start_transaction()
    try:
        for table in (n for n in names if n in first):
            column = triggers.quote(first[table])
            tried = {
                "SELECT": f"SELECT 1 FROM {table} LIMIT 0",
                "INSERT": f"INSERT INTO {table} SELECT * FROM {table} WHERE 1 = 0",
                "UPDATE": f"UPDATE {table} SET {column} = {column} WHERE 1 = 0",
                "DELETE": f"DELETE FROM {table} WHERE 1 = 0",
            }
            for privilege, statement in tried.items():
                try:
                    cursor.execute(statement)
                    if cursor.with_rows:
                        cursor.fetchall()
                except mysql.connector.Error as exc:
                    if exc.errno not in ER_ACCESS_DENIED:
                        raise
                    denied.setdefault(table, []).append(privilege)
    finally:
        conn.rollback()
        cursor.close()
    if missing:
        yield Check("FAIL", "tables of run",
                    f"missing in {database!r}: {', '.join(missing)}",
                    fix=f"workerhost check -c {file} --connect (creates them; the account needs "
                        f"CREATE: {_grant('CREATE', f'`{database}`.*', account)})")
    if denied:
        yield Check("FAIL", "privileges of run",
                    "; ".join(f"no {', '.join(p)} on {t}" for t, p in denied.items()),
                    fix=" ".join(_grant(", ".join(RUN_PRIVILEGES), f"`{database}`.`{t}`",
                                        account) for t in denied))
    elif not missing:
        yield Check("ok", "privileges of run",
                    f"{', '.join(RUN_PRIVILEGES)} on the host's {len(names)} tables")


# -- triggers --apply ------------------------------------------------------------------------
def _granted(conn: Any, account: str, privilege: str, tables_: Sequence[str] = ()) -> bool:
    """Whether information_schema shows `privilege` granted to `account` directly: globally,
    on the database, or on every one of `tables_`."""
    database = str(_scalar(conn, "SELECT DATABASE()"))
    cursor = conn.cursor()
    cursor.execute("SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES "
                   "WHERE GRANTEE = %s AND PRIVILEGE_TYPE = %s", (account, privilege))
    (globally,) = cursor.fetchone()
    cursor.execute("SELECT TABLE_SCHEMA FROM information_schema.SCHEMA_PRIVILEGES "
                   "WHERE GRANTEE = %s AND PRIVILEGE_TYPE = %s", (account, privilege))
    schemas = [str(s) for (s,) in cursor.fetchall()]
    cursor.execute("SELECT TABLE_NAME FROM information_schema.TABLE_PRIVILEGES WHERE GRANTEE = "
                   "%s AND PRIVILEGE_TYPE = %s AND TABLE_SCHEMA = DATABASE()",
                   (account, privilege))
    on_tables = {str(t) for (t,) in cursor.fetchall()}
    cursor.close()
    if globally or any(grants.pattern_matches(s, database) for s in schemas):
        return True
    return bool(tables_) and set(tables_) <= on_tables


def _apply_privileges(conn: Any, config: Config, account: str) -> Iterator[Check]:
    database = config.database.database
    tables_ = sorted({t.table for t in config.triggers})
    if _granted(conn, account, "TRIGGER", tables_):
        yield Check("ok", "privileges of triggers --apply", f"TRIGGER on {', '.join(tables_)}")
    else:
        yield Check("FAIL", "privileges of triggers --apply",
                    f"no TRIGGER privilege on {', '.join(tables_)} seen for {account} "
                    "(information_schema shows direct grants only)",
                    fix=_grant("TRIGGER", f"`{database}`.*", account))
    log_bin = int(_scalar(conn, "SELECT @@log_bin") or 0)
    trust = int(_scalar(conn, "SELECT @@log_bin_trust_function_creators") or 0)
    if not log_bin:
        yield Check("ok", "binary logging", "off: creating triggers needs no SUPER")
    elif trust:
        yield Check("ok", "binary logging", "on, with log_bin_trust_function_creators = 1")
    elif _granted(conn, account, "SUPER"):
        yield Check("ok", "binary logging", f"on; {account} has SUPER, which creating "
                                            "triggers then needs")
    else:
        yield Check("FAIL", "binary logging",
                    f"on, log_bin_trust_function_creators = 0 and no SUPER for {account}: "
                    "triggers --apply is refused",
                    fix="as an administrator: SET PERSIST log_bin_trust_function_creators = 1 "
                        "(MySQL), or SET GLOBAL log_bin_trust_function_creators = 1 and the "
                        "same in the server's config file (MariaDB)")


# -- the UDF ---------------------------------------------------------------------------------
def _udf(conn: Any, config: Config, file: str, immediate: Sequence[str]) -> Iterator[Check]:
    if not immediate:
        yield Check("ok", "UDF", f"not needed: no trigger of {file} uses delivery: immediate "
                                 "(outbox delivery goes through the relay of `workerhost run`)")
        return
    install = f"workerhost udf install -c {file} (on the database server's machine)"
    found = udf.status(conn)
    dialect = triggers.server_dialect(conn)
    # With no library at all, the function its triggers ship with is the one named.
    missing = (udf.trigger_ship(dialect) if found is None
               else udf.missing_trigger_udf(conn, dialect))
    if found is None or missing is not None:
        yield Check("FAIL", "UDF", udf.missing_detail(conn, missing or udf.SHIP), fix=install)
        return
    if found.version != udf.UDF_VERSION:
        yield Check("FAIL", "UDF version",
                    f"the server runs gearman_udf {found.version}, this package is made for "
                    f"{udf.UDF_VERSION}", fix=f"{install}; restart the server if it keeps the "
                                              "old library loaded")
    else:
        yield Check("ok", "UDF version", f"{found.version}, as this package expects")
    ours = [str(s) for s in config.gearman.servers]
    conf = f"{found.config} (mysqld's GEARMAN_UDF_CONFIG, or the default)"
    rewrite = (f"workerhost udf install -c {file} --config-file {found.config} --force, or "
               f"write servers={','.join(ours)} into {found.config}")
    if found.config_error:
        yield Check("FAIL", "UDF servers", f"the UDF refuses its config file {conf}: "
                                           f"{found.config_error}; it sends no job",
                    fix=rewrite)
        return
    wrong = {f: found.servers_of(f) for f in immediate
             if not found.servers_of(f) or not set(map(_norm, found.servers_of(f)))
             <= set(map(_norm, ours))}  # fmt: skip
    if wrong:
        theirs = sorted({",".join(s) or "none" for s in wrong.values()})
        yield Check("FAIL", "UDF servers",
                    f"the UDF sends {', '.join(wrong)} to {' / '.join(theirs)} (config file "
                    f"{conf}), but {file} lists gearman.servers {','.join(ours)}: the jobs "
                    "would wait on a gearmand that this host does not serve", fix=rewrite)
    else:
        yield Check("ok", "UDF servers", f"{', '.join(immediate)} go to "
                                         f"{','.join(found.servers_of(immediate[0]))}, of "
                                         f"{file}'s gearman.servers (config file {found.config})")


def _norm(server: str) -> str:
    return server.lower().replace("localhost:", "127.0.0.1:")


# -- triggers --------------------------------------------------------------------------------
def _body(sql: str) -> str:
    """A trigger's body without comments and with whitespace made single, for comparing."""
    text = re.sub(r"/\*.*?\*/|--[^\n]*", " ", sql, flags=re.S)
    return " ".join(text.split())


def _triggers(conn: Any, config: Config, file: str, can_see: bool) -> Iterator[Check]:
    apply = f"workerhost triggers -c {file} --apply"
    cursor = conn.cursor()
    cursor.execute("SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS "
                   "WHERE TRIGGER_SCHEMA = DATABASE()")
    present = {str(name): str(body) for name, body in cursor.fetchall()}
    cursor.close()
    dialect = triggers.server_dialect(conn)
    for trigger in triggers.plan(config):
        what = f"trigger {trigger.name}"
        body = trigger.create_sql(dialect).split("FOR EACH ROW", 1)[1]
        if trigger.name not in present:
            if can_see:
                yield Check("FAIL", what, f"missing: {trigger.event} on {trigger.table} sends "
                                          "no job", fix=apply)
            else:
                yield Check("warn", what, "not seen: information_schema shows triggers only "
                                          "to an account with TRIGGER on their table")
        elif _body(present[trigger.name]) != _body(body):
            yield Check("FAIL", what, f"differs from what {file} makes now (an older file or "
                                      "workerhost made it)", fix=apply)
        else:
            yield Check("ok", what, f"present and current ({trigger.event} on "
                                    f"{trigger.table})")


# -- gearmand --------------------------------------------------------------------------------
def _functions(config: Config) -> list[str]:
    named = [*config.handlers, *(t.function for t in config.triggers),
             *(s.function for s in config.schedules)]
    return list(dict.fromkeys(named))


def _gearmand(config: Config) -> Iterator[Check]:
    functions = _functions(config)
    for server in config.gearman.servers:
        what = f"gearmand {server}"
        try:
            version = gearadmin.version(server.host, server.port)
            queues = gearadmin.status(server.host, server.port)
        except OSError as exc:
            yield Check("FAIL", what, f"does not answer: {exc}",
                        fix="start gearmand there, or correct gearman.servers", unreachable=True)
            continue
        yield Check("ok", what, f"reachable (version {version})")
        for function in functions:
            row = queues.get(function)
            queued, running, workers = (row.queued, row.running, row.workers) if row else (0, 0, 0)
            figures = f"{queued} queued, {running} running, {workers} workers"
            if function not in config.handlers:
                yield Check("ok", f"function {function} on {server}",
                            f"{figures} (no handler in this file: another host's)")
            elif workers:
                yield Check("ok", f"function {function} on {server}", figures)
            else:
                yield Check("warn", f"function {function} on {server}",
                            f"{figures}: no worker; start `workerhost run`")


# -- the probe -------------------------------------------------------------------------------
def _probe(config: Config, params: dict[str, Any], immediate: Sequence[str],
           udf_ok: bool) -> Check:
    if not immediate:
        return Check("warn", "probe", "nothing to probe: no trigger of this file calls the UDF")
    if not udf_ok:
        return Check("FAIL", "probe", "not sent: the UDF checks above failed")
    token = secrets.token_hex(8)
    listeners = []
    for server in config.gearman.servers:
        conn = gearconn.WorkerConnection(server, PROBE_FUNCTION.encode(), b"workerhost-doctor")
        try:
            conn.connect()
            conn.drain(gearconn.CONNECT_TIMEOUT)
        except gearconn.GearmanLost:
            continue
        listeners.append(conn)
    database = mysql.connector.connect(**params)
    served: list[str] = []
    answers: list[Any] = []
    # A daemon thread, not a pool: a probe that reached no worker holds its query in the UDF
    # for result_timeout_ms, and doctor must neither wait for it nor be kept from exiting.
    query = threading.Thread(target=lambda: answers.append(_scalar(
        database, f"SELECT gman_do('{PROBE_FUNCTION}', %s)", (token,))), daemon=True)
    try:
        started = time.monotonic()
        query.start()
        deadline = started + PROBE_DEADLINE
        while query.is_alive() and time.monotonic() < deadline:
            for conn in gearconn.wait(listeners, 0.02):
                try:
                    for job in conn.read():
                        conn.complete(job.handle, job.data)  # echo: any probe's job
                        served.append(str(conn.server))
                except gearconn.GearmanLost:
                    pass
        query.join(max(0.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - started
        answer = answers[0] if answers else None
    finally:
        for conn in listeners:
            conn.close()
        if not query.is_alive():
            database.close()  # else the thread still uses it; it goes with the process
    if answer == token:
        return Check("ok", "probe", f"a job from the database server through the UDF reached "
                                    f"a worker on {served[-1] if served else 'a gearmand'} and "
                                    f"came back in {elapsed * 1000:.0f} ms")
    return Check("FAIL", "probe",
                 f"a job through the UDF reached no worker on {file_servers(config)} within "
                 f"{elapsed:.1f} s (gman_do gave {answer!r})",
                 fix="see the UDF servers check above, and the server's error log")


def file_servers(config: Config) -> str:
    return ",".join(str(s) for s in config.gearman.servers)
