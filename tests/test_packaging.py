"""The package as a user gets it: an sdist and a wheel built from the checkout, the wheel
installed with pip into a fresh virtualenv outside the checkout, and that installation run
against the sandbox from a directory of its own, with nothing of the checkout on its path.

Slow: the build sets up its own build environments. Nothing reaches a package index
(tests/wheels.py): the build takes setuptools from pip's configured local sources, and pip
installs the dependencies from wheels repacked from the checkout's virtualenv.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, host_config, scalar, sequence, wait_until
from wheels import build, clean_env, install_env, offline_env, ok, repack_dependencies, run

from workerhost import __version__
from workerhost.sandbox.stack import Sandbox
from workerhost.udf import UDF_VERSION

pytestmark = pytest.mark.slow

ROWS = 2000
SDIST_HOLDS = ["README.md", "udf/gearman_udf.c", "udf/Makefile", "sql/install.sql",
               "sql/workerhost.sql", "examples/workerhost.service", "tests/conftest.py",
               "workerhost/sql/workerhost.sql", "docs/deploy.md"]


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build` of the checkout: the sdist, then the wheel built from the sdist (so a
    file the sdist lacks fails the wheel)."""
    if importlib.util.find_spec("build") is None:
        pytest.fail("python -m build is missing: `pip install -e '.[test]'` (make setup) "
                    "installs it")
    out = tmp_path_factory.mktemp("dist")
    built = build(out)
    (out / "build.log").write_text(built.stdout + built.stderr)
    return out


def test_the_build_prints_no_warning(dist: Path) -> None:
    """setuptools' "Package ... is absent from the `packages` configuration" (40 lines each),
    MANIFEST.in's "no previously-included files matching ..." and the like."""
    warnings = [line for line in (dist / "build.log").read_text().splitlines()
                if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)


def test_python_m_build_runs_beside_a_build_directory(tmp_path: Path) -> None:
    """A checkout has a build/ directory of its own (the Docker engine's data, MySQL images);
    with PyPA's build installed, `python -m build` still runs that, not the directory."""
    (tmp_path / "build" / "docker").mkdir(parents=True)
    shown = run([sys.executable, "-m", "build", "--version"], cwd=tmp_path, env=offline_env())
    assert shown.returncode == 0 and shown.stdout.startswith("build "), shown.stderr


@pytest.fixture(scope="session")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv, outside the checkout, with the wheel installed by pip from the
    wheel and its dependencies' wheels alone."""
    venv = tmp_path_factory.mktemp("venv")
    assert not venv.resolve().is_relative_to(ROOT)
    # The interpreter itself, not the checkout's virtualenv that points at it.
    python = Path(sys.executable).resolve()
    ok(run([python, "-m", "venv", venv], cwd=venv, env=clean_env()))
    [wheel] = dist.glob("workerhost-*.whl")
    house = repack_dependencies(wheel, tmp_path_factory.mktemp("wheelhouse"))
    ok(run([venv / "bin" / "python", "-m", "pip", "install", wheel], cwd=venv,
           env=install_env(house)))
    return venv


def test_the_sdist_and_the_wheel_hold_what_they_must(dist: Path) -> None:
    [sdist] = dist.glob("workerhost-*.tar.gz")
    [wheel] = dist.glob("workerhost-*.whl")
    assert sdist.name == f"workerhost-{__version__}.tar.gz"
    top = f"workerhost-{__version__}/"
    with tarfile.open(sdist) as archive:
        members = {m.name.removeprefix(top): m for m in archive.getmembers()}
    for name in SDIST_HOLDS:
        assert name in members and members[name].isfile(), f"the sdist lacks {name}"
    assert not [n for n in members if n.startswith("udf/build") or "__pycache__" in n
                or n.endswith((".pyc", ".pyo", ".so", ".o"))]
    names = zipfile.ZipFile(wheel).namelist()
    assert "workerhost/sql/workerhost.sql" in names and "workerhost/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "udf/", "sql/"))]
    for data in ("workerhost/console/static/console.css", "workerhost/console/templates/base.html",
                 "workerhost/udf/source/gearman_udf.c", "workerhost/sql/install.sql"):
        assert data in names, f"the wheel lacks {data}"
    assert not [n for n in names if "__pycache__" in n]


class InstalledHost:
    """`workerhost run` of the virtualenv, started in `cwd`, its log in a file."""

    def __init__(self, venv: Path, config: Path, cwd: Path, env: dict[str, str]) -> None:
        self.log_path = cwd / "host.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(venv / "bin" / "workerhost"), "run", "-c", str(config)], cwd=cwd,
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory outside the checkout."""
    assert not tmp_path.resolve().is_relative_to(ROOT)
    return tmp_path


def test_the_installed_package_knows_its_version_and_nothing_of_the_checkout(
    installed: Path, outside: Path
) -> None:
    env = clean_env()
    assert ok(run([installed / "bin" / "workerhost", "--version"], outside, env)) \
        == f"workerhost {__version__} (UDF {UDF_VERSION})\n"
    where = ok(run([installed / "bin" / "python", "-c", (
        "import sys, importlib.resources as r, workerhost\n"
        "print(workerhost.__file__)\n"
        "print(r.files('workerhost').joinpath('sql', 'workerhost.sql').is_file())\n"
        "print(*sys.path, sep='\\n')")], outside, env)).splitlines()
    assert Path(where[0]).is_relative_to(installed), where[0]
    assert where[1] == "True"
    assert not [p for p in where[2:] if p and Path(p).resolve().is_relative_to(ROOT)]


@pytest.fixture
def items(db: Any) -> Any:
    db.cursor().execute("CREATE TABLE items (id BIGINT PRIMARY KEY, "
                        "a INT NOT NULL DEFAULT 0, b INT NOT NULL DEFAULT 0)")
    return db


def shop_config(sandbox: Sandbox, database: str) -> dict[str, Any]:
    """Two sql: handlers, fed by a trigger of each delivery."""
    return host_config(sandbox, database, {
        "mark_a": {"sql": "UPDATE items SET a = a + 1 WHERE id = %(id)s", "processes": 2},
        "mark_b": {"sql": "UPDATE items SET b = b + 1 WHERE id = %(id)s", "processes": 2},
    }, triggers=[
        {"table": "items", "events": ["insert"], "function": "mark_a", "columns": ["id"],
         "delivery": "immediate"},
        {"table": "items", "events": ["insert"], "function": "mark_b", "columns": ["id"],
         "delivery": "outbox"},
    ])


@pytest.fixture
def host_of(installed: Path, outside: Path) -> Iterator[Any]:
    started: list[InstalledHost] = []

    def start(config: Path, env: dict[str, str]) -> InstalledHost:
        host = InstalledHost(installed, config, outside, env)
        started.append(host)
        return host

    yield start
    for host in started:
        host.kill()


def test_the_installed_host_applies_triggers_and_writes_rows_back(
    installed: Path, udf: Sandbox, items: Any, outside: Path, host_of: Any
) -> None:
    config = outside / "workerhost.yaml"
    config.write_text(yaml.safe_dump(shop_config(udf, items.database)))
    env = clean_env(SANDBOX_DB_PASSWORD=udf.password)
    workerhost = installed / "bin" / "workerhost"

    applied = ok(run([workerhost, "triggers", "-c", config, "--apply"], outside, env))
    assert "created workerhost_items_insert" in applied
    host = host_of(config, env)
    wait_until(lambda: host.log().count("worker for") >= 4 or host.process.poll() is not None,
               timeout=60, what="four workers")
    assert host.process.poll() is None, host.log()

    items.cursor().execute(f"INSERT INTO items (id) SELECT seq FROM {sequence(1, ROWS)}")
    wait_until(lambda: scalar(items, "SELECT COUNT(*) FROM items WHERE a = 1 AND b = 1")
               == ROWS, timeout=120, what=f"{ROWS} rows written back by both deliveries")
    assert scalar(items, "SELECT MAX(a) + MAX(b) FROM items") == 2, "a job ran twice"
    assert scalar(items, "SELECT COUNT(*) FROM workerhost_outbox") == 0

    host.process.send_signal(signal.SIGTERM)
    assert host.process.wait(60) == 0, host.log()
    assert "Traceback" not in host.log()
