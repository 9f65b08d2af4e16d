"""`workerhost udf build | install | uninstall`: the UDF from the package's own copy of its
source, so that a wheel is enough (no checkout, no `make`, no developer setup).

`build` needs a C compiler and the database server's headers, found through `mariadb_config`,
`mysql_config` or pkg-config (the library speaks Gearman itself: no libgearman). `install`
runs on the database server's machine: it puts the library into the server's `@@plugin_dir`
(read from the server), creates the functions (sql/install.sql) and writes gearman_udf.conf
from the YAML file's gearman.servers. Each step is printed as it is taken.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mysql.connector

from workerhost.errors import WorkerHostError
from workerhost.store import grants
from workerhost.udf import installed as udf

Say = Callable[[str], None]

# How the server's headers are found, in this order (a MySQL server puts mysql_config first).
HEADER_TOOLS: tuple[tuple[str, ...], ...] = (
    ("mariadb_config", "--include"),
    ("mysql_config", "--include"),
    ("pkg-config", "--cflags", "mariadb"),
    ("pkg-config", "--cflags", "mysqlclient"),
)
# Where distributions put them when none of the tools is installed.
HEADER_DIRS = ("/usr/include/mariadb", "/usr/include/mysql")
COMPILERS = ("cc", "gcc", "clang")
# udf/Makefile's flags without -Werror: a newer compiler's new warning must not stop a user.
CFLAGS = ("-std=gnu11", "-O2", "-Wall", "-Wextra", "-fPIC", "-fvisibility=hidden", "-pthread",
          "-shared")
# libanl holds getaddrinfo_a before glibc 2.34 and is an empty stub since.
LIBS = ("-lanl", "-pthread")
CONFIG_MODE = 0o644  # mysqld, whatever user it runs as, must read it
# CREATE FUNCTION ... SONAME needs INSERT on the mysql database and DROP FUNCTION needs
# DELETE there: a grant on the database (or global), never one on mysql.func, which both
# MariaDB and MySQL ignore for these statements.
INSTALLER_GRANT = "INSERT, DELETE ON mysql.*"
# A library no plugin_dir holds: creating a function from it fails after the privilege check,
# so its error says whether the account may create functions, and nothing is created.
PROBE_FUNCTION = "workerhost_privilege_probe"
PROBE_LIBRARY = "workerhost-privilege-probe-none.so"
ER_ACCESS_DENIED = {1044, 1045, 1142, 1143, 1227, 1370}  # database, user, table, column, ...


class UdfInstallError(WorkerHostError):
    """The UDF could not be built, installed or removed; the message says which step."""


def _tool_flags(argv: Sequence[str]) -> list[str] | None:
    if shutil.which(argv[0]) is None:
        return None
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return shlex.split(done.stdout)


def find_headers(say: Say, server: str | None = None) -> list[str]:
    """Compiler flags for the server's headers (`server`: mariadb or mysql, when known)."""
    tools = list(HEADER_TOOLS)
    if server == "mysql":  # MySQL 8's UDF types differ: its own headers first
        tools.sort(key=lambda argv: argv[0] != "mysql_config" and "mysqlclient" not in argv)
    for argv in tools:
        flags = _tool_flags(argv)
        if flags is not None:
            say(f"headers: {' '.join(flags)} (from {' '.join(argv)})")
            return flags
    for directory in HEADER_DIRS:
        if (Path(directory) / "mysql.h").is_file():
            say(f"headers: -I{directory} (no mariadb_config, mysql_config or pkg-config entry)")
            return [f"-I{directory}"]
    raise UdfInstallError(
        "no headers of a MariaDB or MySQL server found (tried mariadb_config, mysql_config, "
        f"pkg-config mariadb and mysqlclient, {', '.join(HEADER_DIRS)}): install them, e.g. "
        "apt-get install libmariadb-dev (MariaDB) or libmysqlclient-dev (MySQL)")


def find_compiler(say: Say) -> str:
    wanted = os.environ.get("CC")
    for name in ([wanted] if wanted else []) + list(COMPILERS):
        found = shutil.which(name)
        if found:
            say(f"compiler: {found}")
            return found
    raise UdfInstallError("no C compiler found (cc, gcc or clang; or $CC): install one, e.g. "
                          "apt-get install gcc")


def build(output: Path, say: Say, server: str | None = None) -> Path:
    """Compile the package's UDF source (every .c file, with its headers) into `output`."""
    compiler = find_compiler(say)
    headers = find_headers(say, server)
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="workerhost-udf-") as work:
        files = udf.source_files()
        for name, text in files.items():
            (Path(work) / name).write_bytes(text)
        sources = [str(Path(work) / name) for name in sorted(files) if name.endswith(".c")]
        say(f"source: {len(sources)} files of the UDF {udf.UDF_VERSION} from the workerhost "
            "package")
        staging = output.with_name(output.name + ".new")
        argv = [compiler, *CFLAGS, *headers, "-o", str(staging), *sources, *LIBS]
        say("compile: " + shlex.join(argv))
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        staging.unlink(missing_ok=True)
        raise UdfInstallError(f"the compiler failed (exit status {done.returncode}):\n"
                              f"{done.stderr.strip()}")
    os.replace(staging, output)
    say(f"built {output}")
    return output


def connect(params: Mapping[str, Any]) -> Any:
    """A connection (autocommit) for the installer, with no default database; its errors name
    the server.

    With a default database, `DROP FUNCTION IF EXISTS gman_x` of a UDF not loaded falls
    through to a stored function of that database, which needs ALTER ROUTINE there; with
    none, it can only mean the UDF."""
    kwargs = {key: value for key, value in params.items() if key != "database"}
    kwargs["autocommit"] = True
    try:
        return mysql.connector.connect(**kwargs)
    except mysql.connector.Error as exc:
        where = kwargs.get("unix_socket") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        raise UdfInstallError(f"cannot connect to the database server at {where} as "
                              f"{kwargs.get('user')!r}: {exc}") from exc


def _scalar(conn: Any, sql: str) -> Any:
    cursor = conn.cursor()
    cursor.execute(sql)
    (value,) = cursor.fetchone()
    cursor.close()
    return value.decode() if isinstance(value, bytes) else value


def server_flavor(conn: Any) -> str:
    return "mariadb" if "mariadb" in str(_scalar(conn, "SELECT VERSION()")).lower() else "mysql"


def account(conn: Any) -> str:
    """CURRENT_USER() as a GRANT names it: 'user'@'host'."""
    user, _, host = str(_scalar(conn, "SELECT CURRENT_USER()")).rpartition("@")
    return f"'{user}'@'{host}'"


def _denied(conn: Any, statement: str) -> bool:
    """Whether `statement` is refused for want of a privilege (any other error: it is not)."""
    cursor = conn.cursor()
    try:
        cursor.execute(statement)
    except mysql.connector.Error as exc:
        return exc.errno in ER_ACCESS_DENIED
    finally:
        cursor.close()
    return False


# The statements that try each privilege the installer needs, changing nothing.
PRIVILEGE_PROBES = {
    "INSERT": f"CREATE FUNCTION {PROBE_FUNCTION} RETURNS STRING SONAME '{PROBE_LIBRARY}'",
    "DELETE": "DELETE FROM mysql.func WHERE 1 = 0",
}


def check_privileges(conn: Any, needed: Sequence[str] = ("INSERT", "DELETE")) -> None:
    """Refuse, before anything is written, an account that may not create (INSERT) or drop
    (DELETE) the functions; the message names the grant. Tried with statements that change
    nothing, so that grants through roles count as the server counts them."""
    missing = [privilege for privilege in needed if _denied(conn, PRIVILEGE_PROBES[privilege])]
    if missing:
        who = account(conn)
        raise UdfInstallError(
            f"{who} may not create and drop the UDF's functions: it lacks "
            f"{' and '.join(missing)} on the mysql database (CREATE FUNCTION ... SONAME needs "
            f"INSERT there, DROP FUNCTION DELETE; a grant on mysql.func is not enough). As an "
            f"administrator: GRANT {INSTALLER_GRANT} TO {who}; or give --user root")


def _run_script(conn: Any, parts: tuple[str, ...], say: Say, what: str) -> None:
    statements = udf.sql_statements(parts)
    cursor = conn.cursor()
    try:
        for statement in statements:
            try:
                cursor.execute(statement)
            except mysql.connector.Error as exc:
                # MySQL without a default database: DROP FUNCTION IF EXISTS of a name that
                # is no loaded UDF looks for a stored function, and finds no database. The
                # UDF is not there: nothing to drop.
                dropping = statement.upper().startswith("DROP FUNCTION IF EXISTS")
                if not (dropping and exc.errno == udf.ER_NO_DB_ERROR):
                    raise
    except mysql.connector.Error as exc:
        hint = (f"; the account needs GRANT {INSTALLER_GRANT} (or give --user root)"
                if exc.errno in ER_ACCESS_DENIED else "")
        raise UdfInstallError(f"{'/'.join(parts)} failed at `{statement}`: {exc.msg}"
                              f"{hint}") from exc
    finally:
        cursor.close()
    count = sum(not s.upper().startswith("DROP") for s in statements) or len(statements)
    say(f"{what}: {count} ({'/'.join(parts)})")


def plan_config(path: Path, servers: list[str], source: str, force: bool) -> str | None:
    """The text to write to gearman_udf.conf, or None when it names `servers` already.
    Raises when it names others and `force` is not given; nothing is changed yet."""
    try:
        existing = path.read_text()
    except FileNotFoundError:
        return udf.config_text(servers, source)
    except OSError as exc:
        raise UdfInstallError(f"cannot read {path}: {exc}") from exc
    theirs = udf.config_servers(existing)
    if theirs == tuple(servers):
        return None
    if not force:
        raise UdfInstallError(
            f"{path} exists and names other gearmand servers: "
            f"{','.join(theirs) if theirs else 'none (so the defaults, or nothing)'}, where "
            f"{source} lists {','.join(servers)}; give --force to replace it, or edit it")
    return udf.config_text(servers, source)


def write_config(path: Path, text: str | None, servers: list[str], say: Say) -> None:
    if text is None:
        say(f"config: {path} names the same servers already ({','.join(servers)}); kept")
        return
    staging = path.with_name(path.name + ".new")
    try:
        staging.write_text(text)
        staging.chmod(CONFIG_MODE)
        os.replace(staging, path)  # the UDF never sees half a file
    except OSError as exc:
        raise UdfInstallError(f"cannot write {path}: {exc} (run as a user who may write "
                              "there, or name another file with --config-file and point "
                              "mysqld's GEARMAN_UDF_CONFIG at it)") from exc
    say(f"config: wrote {path} (servers={','.join(servers)})")


def install(conn: Any, library: Path, *, servers: list[str], source: str,
            config_file: Path | None, force: bool, say: Say) -> udf.Status:
    """Put `library` into the server's plugin_dir, create the functions, write the config.

    `config_file` None: the file a loaded library reads already, else the UDF's default.
    Everything is checked before anything changes."""
    before = udf.status(conn)
    if config_file is None:
        config_file = Path(before.config if before else udf.DEFAULT_CONFIG_FILE)
    config = plan_config(config_file, servers, source, force)
    plugin_dir = Path(str(_scalar(conn, "SELECT @@plugin_dir")))
    say(f"plugin_dir: {plugin_dir} (the server's @@plugin_dir)")
    if not plugin_dir.is_dir() or not os.access(plugin_dir, os.W_OK):
        raise UdfInstallError(
            f"{plugin_dir} is not a directory this user may write on this machine: run "
            "`workerhost udf install` on the database server's machine, as a user who may "
            "write there (root)")
    check_privileges(conn)
    callers = udf.calling_triggers(conn)
    if before is not None and callers:
        # install.sql drops and creates each function; a trigger firing in between fails.
        say(f"warning: {len(callers)} triggers call the UDF ({', '.join(callers[:5])}); "
            "an INSERT that fires one while its function is re-created fails")
    target = plugin_dir / udf.LIBRARY
    # A new inode via rename: overwriting a library that mysqld has mapped would crash it.
    staging = target.with_name(udf.LIBRARY + ".new")
    shutil.copyfile(library, staging)
    staging.chmod(0o755)
    os.replace(staging, target)
    say(f"copied {library} to {target}")
    write_config(config_file, config, servers, say)
    _run_script(conn, udf.INSTALL_RESOURCE, say, "functions created")
    found = udf.status(conn)
    if found is None:
        raise UdfInstallError(f"the functions were created but {udf.STATUS}() is not there")
    say(f"check: {udf.STATUS}() answers: version {found.version}, config {found.config}, "
        f"servers {','.join(found.servers) or 'none'}")
    if found.version != udf.UDF_VERSION:
        say(f"warning: the server runs version {found.version}, not {udf.UDF_VERSION}: the "
            "old library stays loaded while any of its functions existed; restart the server")
    if Path(found.config) != config_file:
        say(f"warning: the library reads {found.config} (mysqld's GEARMAN_UDF_CONFIG), not "
            f"{config_file}: give --config-file {found.config}")
    return found


def trigger_blind_spot(conn: Any, database: str) -> str | None:
    """What this account cannot see of the triggers in `database`, or None when it sees them
    all. information_schema.TRIGGERS shows an account only the triggers of tables it holds
    TRIGGER on; information_schema's privilege tables show direct grants (not a role's)."""
    who = account(conn)
    cursor = conn.cursor()
    try:
        cursor.execute("SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES "
                       "WHERE GRANTEE = %s AND PRIVILEGE_TYPE = 'TRIGGER'", (who,))
        (globally,) = cursor.fetchone()
        cursor.execute("SELECT TABLE_SCHEMA FROM information_schema.SCHEMA_PRIVILEGES "
                       "WHERE GRANTEE = %s AND PRIVILEGE_TYPE = 'TRIGGER'", (who,))
        schemas = [str(s) for (s,) in cursor.fetchall()]
    finally:
        cursor.close()
    if globally or any(grants.pattern_matches(s, database) for s in schemas):
        return None
    return (f"{who} cannot see the triggers of database {database} (information_schema shows "
            f"an account only the triggers of tables it holds TRIGGER on, and shows no "
            f"TRIGGER on `{database}`.* or *.* granted to {who})")


def uninstall(conn: Any, *, database: str, force: bool, say: Say) -> None:
    """Drop the functions (sql/uninstall.sql); refused while triggers call them, and
    while this account cannot see the triggers of `database` (the YAML file's), where
    `workerhost triggers --apply` puts them: unseen is not absent."""
    callers = udf.calling_triggers(conn)
    blind = None if callers else trigger_blind_spot(conn, database)
    if callers and not force:
        raise UdfInstallError(
            f"{len(callers)} triggers call the UDF ({', '.join(callers)}): without it every "
            "INSERT that fires them fails. Drop them first (`workerhost triggers -c FILE "
            "--drop`), or give --force")
    if blind and not force:
        raise UdfInstallError(
            f"{blind}, so it cannot tell whether triggers there call the UDF (their "
            f"INSERTs would fail without it). As an administrator: GRANT TRIGGER ON "
            f"`{database}`.* TO {account(conn)}; or give --user root, or --force")
    if callers:
        say(f"warning: {len(callers)} triggers call the UDF; their INSERTs fail from now on")
    if blind:
        say(f"warning: {blind}; dropping the functions anyway (--force)")
    check_privileges(conn, ("DELETE",))
    _run_script(conn, udf.UNINSTALL_RESOURCE, say, "functions dropped")
    say(f"{udf.LIBRARY} stays in the plugin_dir; mysqld unloaded it with its last function")
