"""The UDF against MySQL 8: its headers always, and the whole trigger path in a container.

MariaDB is what the sandbox runs; MySQL 8 changed the UDF types (bool for my_bool) and the
default authentication, so it gets its own checks:

- `make -C udf check-mysql8` compiles gearman_udf.c against MySQL 8 headers (real ones when
  installed, stand-ins otherwise). Needs only a C compiler: runs everywhere.
- A MySQL 8.4 container (testcontainers) builds the library inside the image, loads it, and
  runs trigger -> gearmand -> `workerhost run` -> write-back. Needs a Docker engine, and skips
  with the reason when there is none.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mysql.connector
import pytest
import yaml
from conftest import ROOT, RunningHost, wait_until

MYSQL_IMAGE = "mysql:8.4"
UDF_MAKEFILE = ROOT / "udf" / "Makefile"
# Pulling the image and installing a compiler in it takes minutes on a cold cache.
CONTAINER_START_TIMEOUT = 300

# Built on the official image: a compiler and libgearman from EPEL, MySQL 8.4's own headers
# from its community repository when it answers (the stand-ins in udf/compat otherwise), and
# gearmand inside the same container, where the UDF's default 127.0.0.1:4730 finds it.
DOCKERFILE = f"""\
FROM {MYSQL_IMAGE}
RUN microdnf install -y oracle-epel-release-el9 \\
 && microdnf install -y --enablerepo=ol9_codeready_builder gcc make pkgconf-pkg-config \\
        libgearman-devel gearmand \\
 && (microdnf install -y https://repo.mysql.com/mysql84-community-release-el9-1.noarch.rpm \\
     && microdnf install -y mysql-community-devel || echo "no MySQL headers: stand-ins") \\
 && microdnf clean all
COPY udf /src/udf
RUN cd /src/udf && make clean \\
 && make MYSQL_CFLAGS="$(mysql_config --include 2>/dev/null || echo -Icompat/mysql8)" \\
 && cp build/gearman_udf.so "$(mysqld --verbose --help 2>/dev/null \\
        | awk '$1 == "plugin-dir" {{print $2}}')/"
RUN mkdir -p /etc/mysql && echo "servers=127.0.0.1:4730" > /etc/mysql/gearman_udf.conf
COPY start.sh /start.sh
ENTRYPOINT ["/bin/sh", "/start.sh"]
CMD ["mysqld"]
"""
START_SH = """\
gearmand --daemon --listen=0.0.0.0 --port=4730 --log-file=/var/log/gearmand.log
exec docker-entrypoint.sh "$@"
"""
TRIGGER = """CREATE TRIGGER items_submit AFTER INSERT ON items FOR EACH ROW
SET @workerhost_handle = gman_do_background('record', JSON_OBJECT('id', NEW.id))"""


def docker_unavailable() -> str | None:
    """Why no container can run here, or None when a Docker engine answers."""
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=5).ping()
    except Exception as exc:  # docker-py raises a different error for each way of missing
        return f"no Docker engine reachable ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def test_the_udf_compiles_against_mysql8_headers() -> None:
    if not re.search(r"^check-mysql8:", UDF_MAKEFILE.read_text(), re.MULTILINE):
        pytest.skip("udf/Makefile has no check-mysql8 target yet")
    if shutil.which("cc") is None or shutil.which("make") is None:
        pytest.skip("no C compiler or make on this machine (make setup installs them)")
    result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT / "udf"),
                             "check-mysql8"], capture_output=True, text=True, timeout=300,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiles against MySQL 8" in result.stdout


@pytest.fixture(scope="module")
def mysql8(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """MySQL 8.4 with gearman_udf.so loaded and gearmand beside it, in one container."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.image import DockerImage
    from testcontainers.core.waiting_utils import wait_for_logs

    context = tmp_path_factory.mktemp("mysql8-image")
    shutil.copytree(ROOT / "udf", context / "udf", ignore=shutil.ignore_patterns("build"))
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "start.sh").write_text(START_SH)
    password = uuid.uuid4().hex
    with DockerImage(path=context, tag=f"workerhost-mysql8-test:{uuid.uuid4().hex[:8]}") as image:
        container = (DockerContainer(str(image))
                     .with_env("MYSQL_ROOT_PASSWORD", password)
                     .with_env("MYSQL_DATABASE", "app")
                     .with_exposed_ports(3306, 4730))  # fmt: skip
        with container:
            # The entrypoint starts mysqld twice (initialise, then serve); wait for the second.
            wait_for_logs(container, r"ready for connections.*port: 3306",
                          timeout=CONTAINER_START_TIMEOUT)
            host = container.get_container_host_ip()
            yield {
                "host": host, "port": int(container.get_exposed_port(3306)),
                "gearman": f"{host}:{container.get_exposed_port(4730)}",
                "user": "root", "password": password, "database": "app",
            }  # fmt: skip


def connect(server: dict[str, Any]) -> Any:
    return mysql.connector.connect(host=server["host"], port=server["port"],
                                   user=server["user"], password=server["password"],
                                   database=server["database"], autocommit=True)  # fmt: skip


def install(conn: Any) -> None:
    cursor = conn.cursor()
    script = (ROOT / "sql" / "install.sql").read_text()
    body = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    for statement in filter(None, (s.strip() for s in body.split(";"))):
        cursor.execute(statement)
    cursor.execute("CREATE TABLE items (id BIGINT PRIMARY KEY)")
    cursor.execute("CREATE TABLE results (id BIGINT PRIMARY KEY, attempt INT, "
                   "unique_key VARCHAR(255), runs INT NOT NULL DEFAULT 1)")
    cursor.execute(TRIGGER)


@pytest.mark.slow
def test_a_mysql8_trigger_reaches_a_worker_that_writes_back(
    mysql8: dict[str, Any], tmp_path: Path
) -> None:
    conn = connect(mysql8)
    install(conn)
    config = tmp_path / "workerhost.yaml"
    config.write_text(yaml.safe_dump({
        "gearman": {"servers": [mysql8["gearman"]]},
        "database": {key: mysql8[key] for key in ("host", "port", "user", "password",
                                                   "database")},
        "handlers": {"record": {"python": "sample_handlers:record", "processes": 2}},
    }))  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    host = RunningHost(config, tmp_path / "host.log", env)
    try:
        host.wait_for_log("worker for record", count=2, timeout=60)
        cursor = conn.cursor()
        cursor.executemany("INSERT INTO items (id) VALUES (%s)", [(i,) for i in range(1, 51)])

        def written() -> bool:
            cursor.execute("SELECT COUNT(*) FROM results")
            return bool(cursor.fetchone()[0] == 50)

        wait_until(written, timeout=60, what="50 rows written back through MySQL 8.4")
        cursor.execute("SELECT MAX(runs) FROM results")
        assert cursor.fetchone()[0] == 1
        assert host.stop() == 0, host.log()
    finally:
        host.kill()
        conn.close()
