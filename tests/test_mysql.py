"""What only MySQL has: its defaults met as a new user meets them.

Every test on the sandbox already runs on each MySQL line too (the [mysql-9], [mysql-8.4] and
[mysql-8.0] ids); these run on each MySQL line and mean something on MySQL alone: binary
logging on by default, caching_sha2_password over TCP with a cold authentication cache, the
server's own TLS certificates, and the UDF compiled against MySQL 8's UDF types without a
server at hand.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, SERVERS, RunningHost, host_env, scalar, sequence, server_id, wait_until

from workerhost.sandbox.stack import Sandbox

UDF_MAKEFILE = ROOT / "udf" / "Makefile"
ROWS = 2000
ON_MYSQL = pytest.mark.parametrize(
    "sandbox", [server for server in SERVERS if server.startswith("mysql")], indirect=True,
    ids=server_id)


@ON_MYSQL
def test_each_mysql_line_is_the_server_its_id_names(sandbox: Sandbox) -> None:
    line = sandbox.spec.partition(":")[2]
    assert line, f"{sandbox.spec}: the suite names each MySQL line it runs on"
    version = str(scalar(sandbox.connect(), "SELECT VERSION()"))
    assert version.startswith(f"{line}."), f"{sandbox.spec} runs MySQL {version}"


def test_the_udf_compiles_against_mysql8_headers() -> None:
    assert re.search(r"^check-mysql8:", UDF_MAKEFILE.read_text(), re.MULTILINE)
    if shutil.which("cc") is None or shutil.which("make") is None:
        pytest.fail("no C compiler or make on this machine: run make setup")
    result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT / "udf"),
                             "check-mysql8"], capture_output=True, text=True, timeout=300,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiles against MySQL 8" in result.stdout


def cli(sandbox: Sandbox, config: Path, verb: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`workerhost VERB -c CONFIG ARGS`; ARGS hold the action of verbs that take one."""
    return subprocess.run([sys.executable, "-m", "workerhost.cli", verb, "-c", str(config),
                           *args], capture_output=True, text=True, env=host_env(sandbox),
                          timeout=120, check=False)  # fmt: skip


@pytest.fixture
def app_account(udf: Sandbox, db: Any) -> dict[str, Any]:
    """An ordinary account (no SUPER) with what the host needs on one database, and an
    `items` table; caching_sha2_password, MySQL's default."""
    user, password = "app_" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    cursor = db.cursor()
    cursor.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, a INT NOT NULL DEFAULT 0, "
                   "b INT NOT NULL DEFAULT 0)")
    cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
    cursor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, TRIGGER "
                   f"ON `{db.database}`.* TO '{user}'@'%'")
    yield {"host": "127.0.0.1", "port": udf.mysql_port, "user": user, "password": password,
           "database": db.database}
    cursor.execute(f"DROP USER '{user}'@'%'")


def app_config(udf: Sandbox, account: dict[str, Any], **database: Any) -> dict[str, Any]:
    return {
        "gearman": {"servers": [udf.gearman_server]},
        "database": {**account, **database},
        "host": {"relay": {"interval": "50ms"}},
        "handlers": {
            "mark_a": {"sql": "UPDATE items SET a = a + 1 WHERE id = %(id)s", "processes": 2},
            "mark_b": {"sql": "UPDATE items SET b = b + 1 WHERE id = %(id)s", "processes": 2},
        },
        "triggers": [
            {"table": "items", "events": ["insert"], "function": "mark_a", "columns": ["id"],
             "delivery": "immediate"},
            {"table": "items", "events": ["insert"], "function": "mark_b", "columns": ["id"],
             "delivery": "outbox"},
        ],
    }


@ON_MYSQL
@pytest.mark.slow
def test_an_ordinary_account_over_tcp_runs_the_whole_path_after_flush_privileges(
    udf: Sandbox, db: Any, app_account: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "workerhost.yaml"
    config.write_text(yaml.safe_dump(app_config(udf, app_account)))
    admin = db.cursor()
    admin.execute("SELECT @@GLOBAL.log_bin, @@GLOBAL.log_bin_trust_function_creators")
    assert admin.fetchone() == (1, 0), "MySQL's defaults: binary logging on, no trust"

    # Without SUPER, binary logging refuses the triggers: the message says what to set.
    refused = cli(udf, config, "triggers", "--apply")
    assert refused.returncode != 0
    assert "binary logging is on (MySQL's default)" in refused.stderr
    assert "SET PERSIST log_bin_trust_function_creators = 1" in refused.stderr
    assert "Traceback" not in refused.stderr
    admin.execute("SET GLOBAL log_bin_trust_function_creators = 1")
    try:
        applied = cli(udf, config, "triggers", "--apply")
    finally:
        admin.execute("SET GLOBAL log_bin_trust_function_creators = 0")
    assert applied.returncode == 0, applied.stderr

    # A cold authentication cache: caching_sha2_password's full exchange, over TCP.
    admin.execute("FLUSH PRIVILEGES")
    host = RunningHost(config, tmp_path / "host.log", host_env(udf))
    try:
        host.wait_for_log("worker for", count=4, timeout=60)
        db.cursor().execute(f"INSERT INTO items (id) SELECT seq FROM {sequence(1, ROWS)}")
        wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM items WHERE a = 1 AND b = 1")
                   == ROWS, timeout=120, what=f"{ROWS} rows written back by both deliveries")
        assert scalar(db, "SELECT MAX(a) + MAX(b) FROM items") == 2, "a job ran twice"
        assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 0

        status = cli(udf, config, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "mark_a" in status.stdout and "mark_b" in status.stdout
        letters = cli(udf, config, "dead-letters", "list")
        assert letters.returncode == 0, letters.stderr
        assert letters.stdout.endswith("0 dead letters\n")

        host.signal(signal.SIGTERM)
        assert host.process.wait(60) == 0, host.log()
    finally:
        host.kill()
    assert "Traceback" not in host.log()
    # No statement the host, its triggers or the relay ran here drew a warning (MySQL
    # counts them per statement shape in performance_schema).
    # The test's own administration (deprecated in MySQL 9: the trust setting, FLUSH
    # PRIVILEGES) is left out.
    admin.execute("SELECT DIGEST_TEXT, SUM_WARNINGS FROM performance_schema."
                  "events_statements_summary_by_digest WHERE SCHEMA_NAME = %s AND "
                  "SUM_WARNINGS > 0 AND DIGEST_TEXT NOT LIKE '%%log_bin_trust%%' AND "
                  "DIGEST_TEXT NOT LIKE 'FLUSH PRIVILEGES%%'", (db.database,))
    assert admin.fetchall() == []


@ON_MYSQL
def test_the_tls_keys_verify_the_servers_certificate(
    udf: Sandbox, app_account: dict[str, Any], tmp_path: Path
) -> None:
    ca = udf.datadir / "ca.pem"  # mysqld made its own CA and certificate at initialisation
    config = tmp_path / "workerhost.yaml"
    config.write_text(yaml.safe_dump(app_config(udf, app_account, ssl_ca=str(ca),
                                                 ssl_verify_cert=True)))
    checked = cli(udf, config, "check", "--connect")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # A CA that did not sign the server's certificate: refused, and said so.
    other = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=not the sandbox's CA", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(other)], capture_output=True, check=True)  # fmt: skip
    config.write_text(yaml.safe_dump(app_config(udf, app_account, ssl_ca=str(other),
                                                ssl_verify_cert=True)))
    refused = cli(udf, config, "check", "--connect")
    assert refused.returncode != 0
    assert "cannot connect to database" in refused.stderr
    assert "Traceback" not in refused.stderr
