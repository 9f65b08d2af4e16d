"""The sandbox against the real gearmand and mariadbd, driven the way a user drives it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import gearman
import pytest
from conftest import ON_FIRST_SERVER

from workerhost.gearman import admin as gearadmin
from workerhost.sandbox import processes
from workerhost.sandbox.options import MEMORY_QUEUE, PERSISTENT_QUEUE
from workerhost.sandbox.stack import Sandbox

CLI = [sys.executable, "-m", "workerhost.cli"]


def workerhost(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=180, check=False
    )


def processes_of(directory: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose command line names `directory`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[-1].split()[0]
        except OSError:
            continue
        if str(directory).encode() in cmdline and state != b"Z":
            found.append(int(entry))
    return found


def test_up_status_down_from_the_cli(tmp_path: Path) -> None:
    box_dir = tmp_path / "box"
    up = workerhost("sandbox", "up", "--dir", box_dir)
    try:
        assert up.returncode == 0, up.stderr
        assert "sandbox up in" in up.stdout
        info = json.loads((box_dir / "sandbox.json").read_text())
        assert info["gearman"]["host"] == "127.0.0.1"
        assert info["mysql"]["unix_socket"].startswith(str(box_dir))
        assert info["plugin_dir"].startswith(str(box_dir))
        assert set(info["pids"]) == {"gearmand", "mariadbd"}

        status = workerhost("sandbox", "status", "--dir", box_dir, "--json")
        assert status.returncode == 0
        assert json.loads(status.stdout)["running"] == {"gearmand": True, "mariadbd": True}

        again = workerhost("sandbox", "up", "--dir", box_dir)
        assert again.returncode == 0
        assert "already runs; nothing changed" in again.stdout
        assert json.loads((box_dir / "sandbox.json").read_text()) == info

        conn = Sandbox(box_dir).connect()
        cursor = conn.cursor()
        cursor.execute("SELECT @@plugin_dir, @@port")
        plugin_dir, port = cursor.fetchone()
        assert plugin_dir.rstrip("/") == info["plugin_dir"]
        assert port == info["mysql"]["port"]
        assert gearadmin.version("127.0.0.1", info["gearman"]["port"])
        conn.close()
    finally:
        down = workerhost("sandbox", "down", "--dir", box_dir)
    assert down.returncode == 0
    assert "stopped gearmand, mariadbd" in down.stdout
    assert processes_of(box_dir) == []
    status = workerhost("sandbox", "status", "--dir", box_dir)
    assert status.returncode == 1
    assert "gearmand  stopped" in status.stdout


def test_two_sandboxes_run_side_by_side(sandbox: Sandbox, tmp_path: Path) -> None:
    other = Sandbox(tmp_path / "other", server=sandbox.spec)
    try:
        other.up()
        assert {other.gearman_port, other.mysql_port}.isdisjoint(
            {sandbox.gearman_port, sandbox.mysql_port}
        )
        for box in (sandbox, other):
            conn = box.connect()
            cursor = conn.cursor()
            cursor.execute("SELECT @@datadir")
            assert cursor.fetchone()[0].startswith(str(box.dir))
            assert gearadmin.version("127.0.0.1", box.gearman_port)
            conn.close()
    finally:
        other.down()
    assert processes_of(other.dir) == []
    assert sandbox.status() == {"gearmand": True, sandbox.database_process: True}


def test_sandboxes_created_at_once_all_start(tmp_path: Path) -> None:
    # mariadb-install-db runs started together clashed on their temporary tables' names in
    # the shared /tmp (CI saw "Unknown table 'mysql.tmp_user_sys'"); each has its own now.
    boxes = [Sandbox(tmp_path / f"box{n}") for n in range(4)]
    try:
        with ThreadPoolExecutor(len(boxes)) as pool:
            list(pool.map(lambda box: box.up(), boxes))
        for box in boxes:
            conn = box.connect()
            cursor = conn.cursor()
            cursor.execute("SELECT @@tmpdir")
            assert cursor.fetchone()[0] == str(box.tmpdir)
            conn.close()
    finally:
        for box in boxes:
            box.down()
    assert all(processes_of(box.dir) == [] for box in boxes)


def test_a_picked_port_is_free_and_below_the_ephemeral_range() -> None:
    # Outgoing connections draw their local ports from the ephemeral range: a port picked
    # there could be taken by any client before the server binds it.
    first, _ = processes.ephemeral_ports()
    assert all(processes.LISTEN_PORTS_FROM <= processes.free_port() < first for _ in range(20))
    with socket.create_server(("127.0.0.1", processes.free_port())) as taken:
        free = processes.free_port()
        picks = iter([taken.getsockname()[1], free])
        rng = mock.Mock(randrange=lambda low, high: next(picks))
        assert processes.free_port(rng) == free


@pytest.mark.parametrize("queue", [PERSISTENT_QUEUE, MEMORY_QUEUE])
def test_a_background_job_survives_a_gearmand_restart_only_with_the_persistent_queue(
    gearmand_factory: Any, queue: str
) -> None:
    server = gearmand_factory(queue)
    function = "persist_" + uuid.uuid4().hex[:8]
    client = gearman.GearmanClient([server.server])
    request = client.submit_job(function, "payload", background=True, wait_until_complete=False)
    assert request.job.handle
    client.shutdown()
    assert server.box.gearman_status()[function].queued == 1

    server.stop()
    server.start()

    kept = server.box.gearman_status().get(function)
    assert (kept.queued if kept else 0) == (1 if queue == PERSISTENT_QUEUE else 0)


@ON_FIRST_SERVER
def test_the_sandbox_keeps_gearmands_queue_in_memory_by_default(sandbox: Sandbox) -> None:
    assert sandbox.info is not None and sandbox.info.gearman["queue"] == MEMORY_QUEUE


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = workerhost("sandbox", "up", "--dir", tmp_path / "box", "--gearman-port", port)
    assert result.returncode == 5
    assert f"port {port} on 127.0.0.1 is taken, so gearmand cannot listen there" in result.stderr
    assert processes_of(tmp_path / "box") == []


def test_a_directory_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = workerhost("sandbox", "up", "--dir", blocker / "box")
    assert result.returncode == 5
    assert f"cannot use {blocker / 'box'} as a sandbox directory" in result.stderr
    assert "pass a writable directory with --dir" in result.stderr


def test_a_corrupt_datadir_quotes_the_server_log(tmp_path: Path) -> None:
    box = Sandbox(tmp_path / "box")
    box.up()
    box.down()
    (box.datadir / "ibdata1").write_bytes(b"\0" * 4096)
    (box.datadir / "aria_log_control").write_bytes(b"garbage")
    result = workerhost("sandbox", "up", "--dir", box.dir)
    assert result.returncode == 5
    assert "mariadbd exited with status 1 during start; the end of" in result.stderr
    assert "[ERROR]" in result.stderr  # the server's own words, quoted
    assert processes_of(box.dir) == []


def test_status_of_an_empty_directory(tmp_path: Path) -> None:
    result = workerhost("sandbox", "status", "--dir", tmp_path)
    assert result.returncode == 1
    assert f"no sandbox in {tmp_path}" in result.stdout


def test_down_is_forceful_after_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workerhost.sandbox import stack as module

    box = Sandbox(tmp_path / "box")
    box.up(servers=("gearmand",))
    pid = box.info.pids["gearmand"] if box.info else 0
    os.kill(pid, 19)  # SIGSTOP: it can no longer act on SIGTERM
    monkeypatch.setattr(module, "STOP_TIMEOUT", 0.5)
    started = time.monotonic()
    assert box.down() == ["gearmand"]
    assert time.monotonic() - started < 10
    assert processes_of(box.dir) == []


def test_gearmand_runs_single_threaded_unless_told_otherwise(tmp_path: Path) -> None:
    def threads_of(box: Sandbox) -> int:
        assert box.info is not None
        return len(os.listdir(f"/proc/{box.info.pids['gearmand']}/task"))

    default, threaded = Sandbox(tmp_path / "default"), Sandbox(tmp_path / "threaded")
    try:
        default.up(servers=("gearmand",))
        threaded.up(servers=("gearmand",), gearman_threads=3)
        # I/O threads come on top of the main thread, and survive a restart.
        assert threads_of(threaded) >= threads_of(default) + 3
        threaded.stop_gearmand()
        Sandbox(tmp_path / "threaded").up(servers=("gearmand",))
        assert threads_of(Sandbox(tmp_path / "threaded")) >= threads_of(default) + 3
    finally:
        default.down()
        Sandbox(tmp_path / "threaded").down()


def test_a_bad_thread_count_is_a_clear_error(tmp_path: Path) -> None:
    result = workerhost("sandbox", "up", "--dir", tmp_path, "--gearman-threads", "-1")
    assert result.returncode == 2
    assert "'-1' is not a thread count: give a whole number from 0 to 64" in result.stderr
    assert not (tmp_path / "sandbox.json").exists()


def test_a_thread_whose_id_was_a_servers_pid_is_not_taken_for_the_server() -> None:
    """A freed server pid may become a thread of the other server, whose /proc entry shows
    the sandbox directory too: stopping that 'server' would have signalled the other one."""
    import os
    import threading

    from workerhost.sandbox.processes import process_alive

    marker = "python"
    ids: list[int] = []
    release = threading.Event()
    thread = threading.Thread(target=lambda: (ids.append(threading.get_native_id()),
                                              release.wait(5)))
    thread.start()
    try:
        while not ids:
            pass
        assert marker.encode() in Path(f"/proc/{ids[0]}/cmdline").read_bytes()
        assert process_alive(os.getpid(), marker) is True
        assert process_alive(ids[0], marker) is False
    finally:
        release.set()
        thread.join()


def test_a_server_still_starting_in_its_container_is_not_taken_for_one_that_ended(
    tmp_path: Path,
) -> None:
    """Docker names a container's pid while the runtime's process there has not yet become
    the server, so its command line does not name the sandbox yet: during start that is a
    server starting, not one that exited (as CI once saw under load); afterwards it is not
    the server any more."""
    import signal
    import subprocess

    box = Sandbox(tmp_path / "box")
    other = subprocess.Popen(["sleep", "30"])  # alive, its command line without the box's dir
    try:
        assert box._ended(other.pid, starting=True) == ""
        assert box._ended(other.pid) == "exited"
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert box._ended(other.pid, starting=True) == "exited"
