"""`workerhost doctor` against the sandbox: a correct setup passes; a UDF sending to another
gearmand fails naming both lists; a missing UDF is named in the same words by doctor and by
`triggers --apply`, for a least-privilege account too."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ExtraGearmand, host_config, host_env

from workerhost.exitcodes import RET_DOCTOR, RET_ERROR, RET_OK
from workerhost.sandbox.stack import Sandbox

SQL_DIR = Path(__file__).resolve().parent.parent / "workerhost" / "sql"


def missing(box: Sandbox) -> str:
    """How doctor and triggers --apply name the UDF a server lacks: the one its triggers ship
    with (gman_ship_ledger on MariaDB, gman_ship on MySQL)."""
    ship = "gman_ship" if box.server == "mysql" else "gman_ship_ledger"
    return f"the UDF {ship} is not installed in this server: run `workerhost udf install`"


def workerhost(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workerhost.cli", *args], env=host_env(sandbox),
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def shop(udf: Sandbox, db: Any, tmp_path: Path) -> Callable[..., Path]:
    """A config file with an immediate trigger on `orders`, written with overrides."""
    db.cursor().execute("CREATE TABLE orders (id BIGINT PRIMARY KEY, total INT)")
    database = db.database

    def write(**database_overrides: Any) -> Path:
        config = host_config(
            udf, database, {"total": {"sql": ["UPDATE orders SET total = 1 WHERE id = %(id)s"]}},
            triggers=[{"table": "orders", "events": ["insert"], "function": "total",
                       "columns": ["id"], "delivery": "immediate"}],
        )
        config["database"].update(database_overrides)
        path = tmp_path / f"shop-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def lines(out: str, outcome: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(outcome + " ")]


def test_doctor_passes_on_a_correct_setup_and_its_probe_comes_back(
    shop: Callable[..., Path], udf: Sandbox
) -> None:
    path = shop()
    before = workerhost(udf, "doctor", "-c", str(path))
    assert before.returncode == RET_DOCTOR, before.stdout + before.stderr
    # What fixes each failure is said: the host's tables, the trigger.
    assert f"fix: workerhost check -c {path} --connect" in before.stdout
    assert f"fix: workerhost triggers -c {path} --apply" in before.stdout
    assert workerhost(udf, "check", "-c", str(path), "--connect").returncode == RET_OK
    assert workerhost(udf, "triggers", "-c", str(path), "--apply").returncode == RET_OK

    done = workerhost(udf, "doctor", "-c", str(path), "--probe")
    assert done.returncode == RET_OK, done.stdout + done.stderr
    assert not lines(done.stdout, "FAIL"), done.stdout
    for expected in ("privileges of run", "privileges of triggers --apply", "UDF version",
                     "UDF servers", "trigger workerhost_orders_insert: present and current",
                     f"gearmand {udf.gearman_server}: reachable", "probe: a job from the "
                     f"database server through the UDF reached a worker on {udf.gearman_server}"):
        assert [line for line in lines(done.stdout, "ok") if expected in line], \
            f"no ok line with {expected!r}:\n{done.stdout}"


def test_a_udf_sending_to_another_gearmand_fails_naming_both_lists(
    shop: Callable[..., Path], udf: Sandbox, udf_config: Callable[..., None],
    gearmand_factory: Callable[..., ExtraGearmand],
) -> None:
    path = shop()
    other = gearmand_factory()
    udf_config(servers=other.server)
    done = workerhost(udf, "doctor", "-c", str(path), "--probe")
    assert done.returncode == RET_DOCTOR, done.stdout + done.stderr
    [failed] = [line for line in lines(done.stdout, "FAIL") if "UDF servers" in line]
    assert other.server in failed and udf.gearman_server in failed, failed
    assert str(udf.udf_config_path) in failed
    assert [line for line in lines(done.stdout, "FAIL") if line.startswith("FAIL  probe")]


@pytest.fixture
def no_udf(udf: Sandbox) -> Iterator[Sandbox]:
    """The sandbox's server without the UDF's functions; created again afterwards."""
    udf.run_sql_file(SQL_DIR / "uninstall.sql")
    try:
        yield udf
    finally:
        udf.run_sql_file(SQL_DIR / "install.sql")


@pytest.fixture
def least_privilege(udf: Sandbox, db: Any) -> Iterator[dict[str, str]]:
    """An account with only what the host needs on the test's database (no EXECUTE)."""
    user, password = "lp_" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    admin = udf.connect()
    cursor = admin.cursor()
    cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
    cursor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRIGGER ON `{db.database}`.* "
                   f"TO '{user}'@'%'")
    try:
        yield {"user": user, "password": password}
    finally:
        cursor.execute(f"DROP USER '{user}'@'%'")
        admin.close()


def test_a_missing_udf_is_named_by_doctor_and_triggers_apply_for_any_account(
    shop: Callable[..., Path], udf: Sandbox, least_privilege: dict[str, str],
    no_udf: Sandbox,
) -> None:
    admin_file = shop()
    assert workerhost(udf, "check", "-c", str(admin_file), "--connect").returncode == RET_OK
    for path in (admin_file, shop(**least_privilege)):
        done = workerhost(udf, "doctor", "-c", str(path))
        assert done.returncode == RET_DOCTOR, done.stdout + done.stderr
        [failed] = [line for line in lines(done.stdout, "FAIL") if "UDF" in line]
        assert missing(udf) in failed, done.stdout
        assert f"fix: workerhost udf install -c {path}" in done.stdout

        applied = workerhost(udf, "triggers", "-c", str(path), "--apply")
        assert applied.returncode == RET_ERROR
        assert missing(udf) in applied.stderr, applied.stderr
        assert "denied" not in applied.stderr
