"""The Gearman UDF as the host finds it in a database server: installed or not, its version,
and the gearmand servers its config file names (read through ``gman_udf_status()``).

A UDF is looked up before stored functions, and calling one needs no privilege. So when a
call of ``gman_ship`` fails with "FUNCTION db.gman_ship does not exist" (an account allowed
to run routines) or "execute command denied ... for routine db.gman_ship" (an account that
is not), the server looked for a stored function of that name: no UDF of that name is
loaded. Both mean the same thing and are reported in the same words.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import mysql.connector

from workerhost.store.db import Connection
from workerhost.udf import UDF_VERSION as UDF_VERSION

# What immediate delivery's triggers call (sql/install.sql). On MariaDB the ledger row's token
# is made by gman_token() and its job shipped by gman_ship_ledger(), the token never passing
# through SQL; on MySQL, where each UDF call of a trigger costs the row more, the token is
# the trigger's local variable and gman_ship() ships the job (store/triggers.py).
SHIP = "gman_ship"
SHIP_LEDGER = "gman_ship_ledger"
TOKEN = "gman_token"
# Per server, a call of each function its triggers call that does nothing, the ship first:
# how the host tells that they are loaded. A NULL function ships nothing, and takes the token
# made beside it, so that none is left pending in the server's thread.
TRIGGER_PROBES = {
    "mariadb": ((SHIP_LEDGER, f"SELECT {SHIP_LEDGER}(NULL, NULL)"),
                (TOKEN, f"SELECT {TOKEN}(), {SHIP_LEDGER}(NULL, NULL)")),
    "mysql": ((SHIP, f"SELECT {SHIP}(NULL, NULL)"),),
}
# Every UDF a trigger calls, on either server and in triggers of earlier versions.
TRIGGER_CALLS = (TOKEN, SHIP_LEDGER, SHIP)
STATUS = "gman_udf_status"
LIBRARY = "gearman_udf.so"
# Where the UDF reads its config unless mysqld's environment says GEARMAN_UDF_CONFIG.
DEFAULT_CONFIG_FILE = "/etc/mysql/gearman_udf.conf"
# The package data: the UDF's source (every file of udf/src; SOURCE_RESOURCE holds its
# GMU_VERSION) and its SQL scripts.
SOURCE_DIR = ("udf", "source")  # a symlink to udf/src in a checkout; its files in a wheel
SOURCE_RESOURCE = (*SOURCE_DIR, "gearman_udf.c")
INSTALL_RESOURCE = ("sql", "install.sql")
UNINSTALL_RESOURCE = ("sql", "uninstall.sql")

ER_SP_DOES_NOT_EXIST = 1305  # "FUNCTION db.gman_ship does not exist"
ER_PROCACCESS_DENIED_ERROR = 1370  # "execute command denied to user ... for routine db.x"
ER_NO_DB_ERROR = 1046  # "No database selected"


def missing_message(function: str) -> str:
    """What every verb says when the UDF is not there."""
    return (f"the UDF {function} is not installed in this server: run `workerhost udf "
            "install`")


def is_missing(exc: BaseException, function: str) -> bool:
    """True when a call of `function` failed because no UDF of that name is loaded."""
    errno = getattr(exc, "errno", None)
    text = str(getattr(exc, "msg", "") or exc).lower()
    # db.gman_ship or 'gman_ship'; with no default database (the installer's connection),
    # "FUNCTION gman_ship does not exist"
    named = (f".{function.lower()}" in text or f"'{function.lower()}'" in text
             or f"function {function.lower()} does not exist" in text)
    # MySQL, on a connection without a default database: a name that is no loaded UDF is
    # looked up as a stored function, and there is no database to look in. Without EXECUTE
    # the server says "execute command denied ... for routine": it too looked for a stored
    # function, so no UDF of that name is loaded.
    return errno == ER_NO_DB_ERROR or (
        errno in (ER_SP_DOES_NOT_EXIST, ER_PROCACCESS_DENIED_ERROR) and named)


def registered(conn: Connection) -> set[str] | None:
    """The UDFs listed in mysql.func, or None when this account may not read it."""
    cursor = conn.cursor()
    try:
        cursor.execute("SELECT name FROM mysql.func")
        return {str(name) for (name,) in cursor.fetchall()}
    except mysql.connector.Error:
        return None
    finally:
        cursor.close()


def trigger_ship(dialect: str) -> str:
    """The UDF that ships an immediate trigger's job on this server ("mariadb", "mysql")."""
    return TRIGGER_PROBES[dialect][0][0]


def missing_trigger_udf(conn: Connection, dialect: str) -> str | None:
    """The first UDF that immediate delivery's triggers call on this server ("mariadb",
    "mysql") and that it lacks, or None when all are loaded."""
    cursor = conn.cursor()
    try:
        for function, probe in TRIGGER_PROBES[dialect]:
            try:
                cursor.execute(probe)
                cursor.fetchall()
            except mysql.connector.Error as exc:
                if is_missing(exc, function):
                    return function
                raise
        return None
    finally:
        cursor.close()


def missing_detail(conn: Connection, function: str) -> str:
    """`missing_message`, and what mysql.func adds to it when this account can read it."""
    listed = registered(conn)
    if listed is not None and function in listed:
        # Listed but not loaded: mysqld could not load the library when it started.
        return (f"{missing_message(function)} (mysql.func lists it, but mysqld did not load "
                f"{LIBRARY} from its plugin_dir: see the server's error log)")
    return missing_message(function)


@dataclass(frozen=True)
class Status:
    """What gman_udf_status() reports of the loaded library."""

    version: str
    config: str  # the config file it reads
    config_error: str | None  # why it refused that file (then it has no servers at all)
    servers: tuple[str, ...]  # host:port, as the library prints them
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # servers.FUNCTION=

    def servers_of(self, function: str) -> tuple[str, ...]:
        """Where the library sends `function`'s jobs."""
        return self.routes.get(function, self.servers)


def parse_status(text: str) -> Status:
    data: dict[str, Any] = json.loads(text)
    return Status(
        version=str(data.get("version", "")),
        config=str(data.get("config", "")),
        config_error=data.get("config_error"),
        servers=tuple(str(s) for s in data.get("servers", [])),
        routes={str(k): tuple(str(s) for s in v) for k, v in data.get("routes", {}).items()},
    )


def status(conn: Connection) -> Status | None:
    """The loaded library's status, or None when gman_udf_status is not loaded."""
    cursor = conn.cursor()
    try:
        cursor.execute(f"SELECT {STATUS}()")
        (text,) = cursor.fetchone()
    except mysql.connector.Error as exc:
        if is_missing(exc, STATUS):
            return None
        raise
    finally:
        cursor.close()
    return parse_status(text.decode() if isinstance(text, bytes) else str(text))


def config_text(servers: list[str], source: str) -> str:
    """gearman_udf.conf naming `servers` (from the YAML file `source`)."""
    return (f"# Written by `workerhost udf install` from {source}: the gearmand servers of its\n"
            "# gearman.servers, where the triggers' jobs go (udf/README.md lists the keys).\n"
            f"servers={','.join(servers)}\n")


def config_servers(text: str) -> tuple[str, ...] | None:
    """The servers= list of a gearman_udf.conf's text (None when it has no such line)."""
    for line in text.splitlines():
        key, sep, value = line.split("#", 1)[0].partition("=")
        if sep and key.strip() == "servers":
            return tuple(s.strip() for s in value.split(",") if s.strip())
    return None


def read_resource(parts: tuple[str, ...]) -> bytes:
    """One file of the package data (the UDF's source, its SQL scripts)."""
    return resources.files("workerhost").joinpath(*parts).read_bytes()


def source_files() -> dict[str, bytes]:
    """The UDF's source files (.c and .h) from the package data, by name."""
    folder = resources.files("workerhost").joinpath(*SOURCE_DIR)
    return {item.name: item.read_bytes() for item in folder.iterdir()
            if item.name.endswith((".c", ".h"))}


def sql_statements(parts: tuple[str, ...]) -> list[str]:
    """The statements of install.sql or uninstall.sql, comments removed."""
    text = read_resource(parts).decode()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in body.split(";") if statement.strip()]


def calling_triggers(conn: Connection, functions: tuple[str, ...] = TRIGGER_CALLS
                     ) -> list[str]:
    """`schema.trigger` of every trigger this account can see whose body calls one of
    `functions`."""
    cursor = conn.cursor()
    calls = " OR ".join(["ACTION_STATEMENT LIKE %s"] * len(functions))
    cursor.execute(
        "SELECT TRIGGER_SCHEMA, TRIGGER_NAME FROM information_schema.TRIGGERS "
        f"WHERE {calls} ORDER BY TRIGGER_SCHEMA, TRIGGER_NAME",
        [f"%{function}(%" for function in functions],
    )
    found = [f"{schema}.{name}" for schema, name in cursor.fetchall()]
    cursor.close()
    return found
