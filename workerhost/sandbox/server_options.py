"""The sandbox database server's command line: what MariaDB and MySQL share, and each one's own."""

from __future__ import annotations

from pathlib import Path

from workerhost.sandbox.processes import HOST


def common(*, datadir: Path, socket: str, port: int, pid_file: Path, log: Path,
           plugin_dir: Path, tmpdir: Path) -> list[str]:
    """Options of mariadbd and mysqld alike: everything under the sandbox, loopback only."""
    return [
        "--no-defaults",
        f"--datadir={datadir}",
        f"--tmpdir={tmpdir}",
        f"--socket={socket}",
        f"--port={port}",
        f"--bind-address={HOST}",
        f"--pid-file={pid_file}",
        f"--log-error={log}",
        f"--plugin-dir={plugin_dir}",
        "--skip-name-resolve",
        "--innodb-buffer-pool-size=128M",
        "--max-connections=400",
        "--max-allowed-packet=64M",
        "--character-set-server=utf8mb4",
    ]


def mysql(files: Path) -> list[str]:
    """mysqld's own, in its container."""
    return [
        # Inside the container mysqld runs as root (or as the caller's uid); --user only
        # tells it that root is meant.
        "--user=root",
        # The X protocol would listen on 33060 of every address: one port for every sandbox,
        # and beyond loopback.
        "--mysqlx=OFF",
        f"--secure-file-priv={files}",
        # Tests make rows with recursive CTEs; MySQL stops them at 1000 by default.
        "--cte-max-recursion-depth=1000000",
    ]


def mariadb(user: str) -> list[str]:
    """mariadbd's own, run directly."""
    return [
        # The sandbox runs as whoever started it; as root mariadbd refuses without this.
        f"--user={user}",
        "--innodb-log-file-size=96M",
        # Tests make rows with recursive CTEs, as on MySQL.
        "--max-recursive-iterations=1000000",
    ]
