"""`workerhost udf build | install | uninstall` against the sandbox's server, from the
package's own copy of the UDF's source."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, host_config, host_env, scalar

from workerhost.exitcodes import RET_ERROR, RET_OK
from workerhost.sandbox.stack import Sandbox
from workerhost.udf import installed as udf_module


def workerhost(sandbox: Sandbox, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workerhost.cli", *map(str, args)],
                          env=host_env(sandbox), capture_output=True, text=True, timeout=300,
                          check=False)


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
    assert "functions created: 11" in done.stdout
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


def test_udf_uninstall_refuses_while_triggers_call_gman_ship(
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
    assert "triggers call gman_ship" in done.stderr and "--force" in done.stderr
    conn = udf.connect()
    try:
        assert scalar(conn, "SELECT COUNT(*) FROM mysql.func WHERE name = 'gman_ship'") == 1
    finally:
        conn.close()
