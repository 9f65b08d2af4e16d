"""Fixtures on top of the sandbox: real gearmand and mariadbd for the whole test session."""

from __future__ import annotations

import atexit
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from workerhost.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
UDF_SO = ROOT / "udf" / "build" / "gearman_udf.so"


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One sandbox per test session, always torn down (atexit covers a hard interrupt)."""
    box = Sandbox(tmp_path_factory.mktemp("sandbox"))
    atexit.register(box.down)
    try:
        box.up()
        yield box
    finally:
        box.down()


@pytest.fixture
def db(sandbox: Sandbox) -> Iterator[Any]:
    """A connection (autocommit on) to a fresh database, dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = sandbox.connect()
    admin.cursor().execute(f"CREATE DATABASE `{name}`")
    conn = sandbox.connect(database=name)
    try:
        yield conn
    finally:
        conn.close()
        if not admin.is_connected():
            admin = sandbox.connect()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


class ExtraGearmand:
    """A gearmand of its own (a gearmand-only sandbox) that a test can stop and start."""

    def __init__(self, directory: Path) -> None:
        self.box = Sandbox(directory)
        self.box.up(servers=("gearmand",))
        self.port = self.box.gearman_port
        self.server = self.box.gearman_server

    def stop(self) -> None:
        self.box.stop_gearmand()

    def start(self) -> None:
        self.box.start_gearmand()


@pytest.fixture
def gearmand_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[], ExtraGearmand]]:
    """Start extra gearmand servers on free ports; all stopped at teardown."""
    started: list[ExtraGearmand] = []

    def start() -> ExtraGearmand:
        server = ExtraGearmand(tmp_path_factory.mktemp("gearmand"))
        started.append(server)
        return server

    yield start
    for server in started:
        server.box.down()
