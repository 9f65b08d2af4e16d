"""`workerhost udf build | install | uninstall` against the sandbox's server, from the
package's own copy of the UDF's source."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, UDF_DIR, UDF_SO, host_config, host_env, scalar

from workerhost.exitcodes import RET_ERROR, RET_OK
from workerhost.sandbox.stack import Sandbox
from workerhost.udf import installed as udf_module

INSTALLER_GRANT = "INSERT, DELETE ON mysql.*"  # what docs/udf.md and docs/deploy.md give


def workerhost(sandbox: Sandbox, *args: str | Path,
               **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workerhost.cli", *map(str, args)],
                          env={**host_env(sandbox), **env}, capture_output=True, text=True,
                          timeout=300, check=False)


@dataclass(frozen=True)
class Installer:
    """An account to run `udf install` and `uninstall` as."""

    user: str
    password: str

    @property
    def grantee(self) -> str:
        return f"'{self.user}'@'%'"

    @property
    def args(self) -> tuple[str, ...]:
        return ("--user", self.user, "--password-env", "INSTALLER_PASSWORD")

    @property
    def env(self) -> dict[str, str]:
        return {"INSTALLER_PASSWORD": self.password}


Account = Callable[..., Installer]


@pytest.fixture
def account(sandbox: Sandbox) -> Iterator[Account]:
    """Make an account with the grants given (`{db}` stands for `database`); dropped at
    teardown."""
    made: list[Installer] = []
    admin = sandbox.connect()

    def make(*grants: str, database: str = "") -> Installer:
        installer = Installer(f"inst_{secrets.token_hex(4)}", secrets.token_hex(12))
        cursor = admin.cursor()
        cursor.execute(f"CREATE USER {installer.grantee} IDENTIFIED BY '{installer.password}'")
        made.append(installer)
        for grant in grants:
            cursor.execute(f"GRANT {grant.format(db=database)} TO {installer.grantee}")
        return installer

    yield make
    for installer in made:
        admin.cursor().execute(f"DROP USER IF EXISTS {installer.grantee}")
    admin.close()


def udf_functions(sandbox: Sandbox) -> int:
    conn = sandbox.connect()
    try:
        return int(scalar(conn, "SELECT COUNT(*) FROM mysql.func WHERE dl = 'gearman_udf.so'"))
    finally:
        conn.close()


def test_the_package_carries_the_udf_source_of_the_version_it_expects() -> None:
    source = udf_module.read_resource(udf_module.SOURCE_RESOURCE)
    assert source == (ROOT / "udf" / "gearman_udf.c").read_bytes()
    found = re.search(rb'#define GMU_VERSION "([^"]+)"', source)
    assert found and found.group(1).decode() == udf_module.UDF_VERSION
    statements = udf_module.sql_statements(udf_module.INSTALL_RESOURCE)
    created = [s for s in statements if s.startswith("CREATE")]
    assert any(f"FUNCTION {udf_module.SHIP} " in s for s in created)


@pytest.fixture
def config_file(udf: Sandbox, db: Any, tmp_path: Path) -> Path:
    path = tmp_path / "host.yaml"
    path.write_text(yaml.safe_dump(host_config(udf, db.database, {"f": {"sql": ["DO 1"]}})))
    return path


def built_here(sandbox: Sandbox, tmp_path: Path) -> Path:
    """`workerhost udf build` on this machine, against the headers it has (MariaDB's)."""
    library = tmp_path / "out" / "gearman_udf.so"
    built = workerhost(sandbox, "udf", "build", "-o", library)
    assert built.returncode == RET_OK, built.stdout + built.stderr
    assert "headers: " in built.stdout and "compile: " in built.stdout
    assert f"built {library}" in built.stdout and library.is_file()
    return library


def test_udf_build_then_install_puts_a_working_udf_into_the_server(
    udf: Sandbox, config_file: Path, tmp_path: Path
) -> None:
    if udf.server == "mariadb":
        library = built_here(udf, tmp_path)
    else:
        # MySQL's headers are in its image, not on this machine: `udf install --so` installs
        # the library the `udf` fixture built there (Sandbox.build_udf).
        library = udf.dir / "udf-build" / "gearman_udf.so"
    done = workerhost(udf, "udf", "install", "-c", config_file, "--so", library,
                      "--config-file", udf.udf_config_path)
    assert done.returncode == RET_OK, done.stdout + done.stderr
    assert f"plugin_dir: {udf.plugin_dir}" in done.stdout
    assert f"names the same servers already ({udf.gearman_server})" in done.stdout
    assert "functions created: 13" in done.stdout
    conn = udf.connect()
    try:
        status = json.loads(scalar(conn, "SELECT gman_udf_status()"))
        assert status["version"] == udf_module.UDF_VERSION
        assert status["servers"] == [udf.gearman_server]
    finally:
        conn.close()


def test_udf_install_refuses_a_config_file_naming_other_servers(
    udf: Sandbox, config_file: Path, tmp_path: Path
) -> None:
    other = tmp_path / "gearman_udf.conf"
    other.write_text("servers=10.0.0.9:4730\ntimeout_ms=500\n")
    library = tmp_path / "never-read.so"  # refused before the library is looked at
    done = workerhost(udf, "udf", "install", "-c", config_file, "--so", library,
                      "--config-file", other)
    assert done.returncode == RET_ERROR
    assert "names other gearmand servers: 10.0.0.9:4730" in done.stderr
    assert udf.gearman_server in done.stderr and "--force" in done.stderr
    assert "plugin_dir" not in done.stdout  # nothing done
    assert other.read_text() == "servers=10.0.0.9:4730\ntimeout_ms=500\n"


def test_udf_uninstall_refuses_while_triggers_call_the_udf(
    udf: Sandbox, db: Any, tmp_path: Path
) -> None:
    db.cursor().execute("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
    config = host_config(udf, db.database, {"f": {"sql": ["DO 1"]}},
                         triggers=[{"table": "orders", "events": ["insert"], "function": "f",
                                    "columns": ["id"], "delivery": "immediate"}])
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(config))
    assert workerhost(udf, "triggers", "-c", path, "--apply").returncode == RET_OK
    done = workerhost(udf, "udf", "uninstall", "-c", path)
    assert done.returncode == RET_ERROR
    assert f"{db.database}.workerhost_orders_insert" in done.stderr
    assert "triggers call the UDF" in done.stderr and "--force" in done.stderr
    conn = udf.connect()
    try:
        assert scalar(conn, "SELECT COUNT(*) FROM mysql.func WHERE name = 'gman_ship_ledger'") == 1
    finally:
        conn.close()


@pytest.fixture
def no_udf(udf: Sandbox) -> Iterator[Sandbox]:
    """The sandbox's server without the UDF's functions (a fresh server's state), which are
    created again afterwards for the other tests, whatever the test did."""
    conn = udf.connect()
    try:
        for statement in udf_module.sql_statements(udf_module.UNINSTALL_RESOURCE):
            conn.cursor().execute(statement)
    finally:
        conn.close()
    assert udf_functions(udf) == 0
    try:
        yield udf
    finally:
        if udf_functions(udf) != 13:
            udf.install_udf(UDF_SO if udf.server == "mariadb" else UDF_DIR)


def installed_library(sandbox: Sandbox) -> Path:
    if sandbox.server == "mariadb":
        return UDF_SO
    return sandbox.dir / "udf-build" / "gearman_udf.so"


def test_a_least_privilege_installer_installs_on_a_server_without_the_udf(
    no_udf: Sandbox, config_file: Path, account: Account
) -> None:
    """With the file's database as its default database, DROP FUNCTION IF EXISTS of a UDF
    not loaded is read as dropping a stored function there, which needs ALTER ROUTINE: the
    installer connects with none, so INSERT, DELETE ON mysql.* is all it needs."""
    database = yaml.safe_load(config_file.read_text())["database"]["database"]
    # TRIGGER there for uninstall's look at its triggers; no ALTER ROUTINE
    installer = account(INSTALLER_GRANT, "TRIGGER ON `{db}`.*", database=database)
    done = workerhost(no_udf, "udf", "install", "-c", config_file, *installer.args,
                      "--so", installed_library(no_udf), "--config-file", no_udf.udf_config_path,
                      **installer.env)
    assert done.returncode == RET_OK, done.stdout + done.stderr
    assert "functions created: 13" in done.stdout
    assert f"check: {udf_module.STATUS}() answers: version {udf_module.UDF_VERSION}" \
        in done.stdout
    assert udf_functions(no_udf) == 13
    # and drops them again: no trigger calls the UDF, and it sees every trigger there
    gone = workerhost(no_udf, "udf", "uninstall", "-c", config_file, *installer.args,
                      **installer.env)
    assert gone.returncode == RET_OK, gone.stdout + gone.stderr
    assert "functions dropped: 13" in gone.stdout
    assert udf_functions(no_udf) == 0


@pytest.mark.parametrize("grant", [None, "INSERT, DELETE ON mysql.func"],
                         ids=["no-grant", "table-grant"])
def test_udf_install_checks_the_installers_grants_before_it_writes_anything(
    no_udf: Sandbox, config_file: Path, account: Account, tmp_path: Path, grant: str | None
) -> None:
    """A grant on mysql.func alone is not enough (CREATE FUNCTION checks INSERT on the mysql
    database): refused before the library is copied or the config file written, naming the
    grant that is missing."""
    database = yaml.safe_load(config_file.read_text())["database"]["database"]
    installer = account("TRIGGER ON `{db}`.*", *([grant] if grant else []), database=database)
    library = no_udf.plugin_dir / udf_module.LIBRARY
    inode = library.stat().st_ino
    udf_config = tmp_path / "gearman_udf.conf"
    done = workerhost(no_udf, "udf", "install", "-c", config_file, *installer.args,
                      "--so", installed_library(no_udf), "--config-file", udf_config,
                      **installer.env)
    assert done.returncode == RET_ERROR, done.stdout + done.stderr
    assert f"{installer.grantee} may not create and drop the UDF's functions: it lacks INSERT" \
        in done.stderr
    assert f"GRANT {INSTALLER_GRANT} TO {installer.grantee}" in done.stderr
    assert "ALTER ROUTINE" not in done.stderr
    assert library.stat().st_ino == inode, "the library was replaced"
    assert not udf_config.exists(), "the config file was written"
    assert "copied" not in done.stdout and "config:" not in done.stdout
    assert udf_functions(no_udf) == 0


def shop_with_immediate_trigger(sandbox: Sandbox, db: Any, tmp_path: Path) -> Path:
    """A file whose trigger on orders calls the UDF, applied."""
    db.cursor().execute("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
    config = host_config(sandbox, db.database, {"f": {"sql": ["DO 1"]}},
                         triggers=[{"table": "orders", "events": ["insert"], "function": "f",
                                    "columns": ["id"], "delivery": "immediate"}])
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(config))
    applied = workerhost(sandbox, "triggers", "-c", path, "--apply")
    assert applied.returncode == RET_OK, applied.stdout + applied.stderr
    return path


def test_udf_uninstall_refuses_when_its_account_cannot_see_the_triggers(
    udf: Sandbox, db: Any, tmp_path: Path, account: Account
) -> None:
    """information_schema.TRIGGERS shows an account only the triggers of tables it holds
    TRIGGER on: an installer with mysql.* grants alone sees none, and must not take that
    for none at all."""
    path = shop_with_immediate_trigger(udf, db, tmp_path)
    blind = account(INSTALLER_GRANT, "SELECT ON `{db}`.`orders`", database=db.database)
    done = workerhost(udf, "udf", "uninstall", "-c", path, *blind.args, **blind.env)
    assert done.returncode == RET_ERROR, done.stdout + done.stderr
    assert f"{blind.grantee} cannot see the triggers of database {db.database}" in done.stderr
    assert f"GRANT TRIGGER ON `{db.database}`.* TO {blind.grantee}" in done.stderr
    assert "--force" in done.stderr
    assert udf_functions(udf) == 13

    # With TRIGGER there, the same account sees the trigger and names it.
    seeing = account(INSTALLER_GRANT, "TRIGGER ON `{db}`.*", database=db.database)
    done = workerhost(udf, "udf", "uninstall", "-c", path, *seeing.args, **seeing.env)
    assert done.returncode == RET_ERROR, done.stdout + done.stderr
    assert f"triggers call the UDF ({db.database}.workerhost_orders_insert)" in done.stderr
    assert udf_functions(udf) == 13


@pytest.mark.slow
def test_make_install_udf_installs_the_udf_and_nothing_else(tmp_path_factory: Any) -> None:
    """`make install-udf` on a checkout without the developer setup: it builds and installs
    the library and creates the functions, and creates no virtualenv, installs no package
    (scripts/setup.sh never runs). Its own server: replacing a loaded library is no business
    of the shared sandbox."""
    box = Sandbox(tmp_path_factory.mktemp("make-udf") / "box")
    checkout = tmp_path_factory.mktemp("checkout")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "Makefile", "scripts",
                              "udf", "sql", "workerhost/sql"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)
    box.up()
    try:
        client = f"mariadb --no-defaults --socket={box.unix_socket} -uroot"
        done = subprocess.run(["make", "-C", str(checkout), "install-udf", f"MYSQL={client}"],
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"install-udf: installed into {box.plugin_dir}" in done.stdout
        assert (box.plugin_dir / "gearman_udf.so").is_file()
        status = json.loads(scalar(box.connect(), "SELECT gman_udf_status()"))
        assert status["version"] == udf_module.UDF_VERSION
        assert not (checkout / ".venv").exists()
        assert "setup" not in done.stdout + done.stderr
    finally:
        box.down()
