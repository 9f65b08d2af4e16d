"""mysqld in a container, for the sandbox: MySQL is not packaged for Debian 12.

The image is `workerhost-mysql:VERSION` (a distribution's MySQL of that line and a compiler,
made by scripts/mysql-image.sh: 9, 8.4 or 8.0), or, when no version is asked for, whatever
WORKERHOST_MYSQL_IMAGE names (`workerhost-mysql:latest`, the newest line, without it). A
container shares the
host's network and process table, and has the sandbox directory mounted at its own path: every
path the sandbox hands mysqld (datadir, socket, plugin_dir, the UDF's config file) means the
same inside and out, and the sandbox watches and stops mysqld by its pid as it does mariadbd.
Containers are started through testcontainers, the same way wherever a Docker engine runs.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workerhost.errors import SandboxError
from workerhost.sandbox.options import MYSQL_REPOSITORY

IMAGE_ENV = "WORKERHOST_MYSQL_IMAGE"
DEFAULT_IMAGE = f"{MYSQL_REPOSITORY}:latest"
HOW_TO_BUILD = "scripts/docker-engine.sh scripts/mysql-image.sh (make setup-mysql does both)"


def image(version: str | None = None) -> str:
    """The image for a MySQL line ("8.0"), or the default one when none is asked for."""
    if version:
        return f"{MYSQL_REPOSITORY}:{version}"
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def _caller() -> str:
    """The container runs as the caller, so that what it writes in the sandbox is theirs."""
    return f"{os.getuid()}:{os.getgid()}"


def _client() -> Any:
    try:
        import docker
    except ImportError as exc:
        raise SandboxError(
            "a MySQL sandbox needs the docker and testcontainers packages: "
            "pip install 'workerhost[sandbox]' (make setup installs them)"
        ) from exc
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        raise SandboxError(
            f"a MySQL sandbox runs mysqld in a container, but no Docker engine answers ({exc}); "
            "start Docker, or run the command under scripts/docker-engine.sh"
        ) from exc
    return client


def _check_image(client: Any, name: str) -> None:
    import docker

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound as exc:
        raise SandboxError(f"no image {name} in the Docker engine; build it: {HOW_TO_BUILD}") \
            from exc


def run_once(argv: Sequence[str], *, image: str, mounts: Sequence[Path],
             workdir: Path | None = None, log: Path) -> None:
    """Run argv to its end in a throwaway container of `image`; its output goes to `log`."""
    import docker

    client = _client()
    name = image
    _check_image(client, name)
    volumes = {str(path): {"bind": str(path), "mode": "rw"} for path in mounts}
    try:
        output = client.containers.run(
            name, list(argv), remove=True, network_mode="host", volumes=volumes,
            working_dir=str(workdir) if workdir else None, entrypoint=[], stdout=True,
            stderr=True, user=_caller(),
        )
        log.write_bytes(output)
    except docker.errors.ContainerError as exc:
        log.write_bytes(exc.stderr or b"")
        raise SandboxError(f"{argv[0]} failed in {name} (exit {exc.exit_status}); "
                           f"its output is in {log}") from exc


def start(argv: Sequence[str], *, image: str, env: Mapping[str, str], mount: Path) -> int:
    """Start argv (a server) in a container of `image`; the host pid of its process."""
    # The sandbox stops its servers itself (by pid); testcontainers' reaper container would
    # come from Docker Hub, which a machine without it must not need.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.core.container import DockerContainer

    client = _client()
    name = image
    _check_image(client, name)
    container = DockerContainer(name, command=shlex.join(argv), env=dict(env),
                                volumes=[(str(mount), str(mount), "rw")], network_mode="host",
                                pid_mode="host", auto_remove=True, entrypoint=[],
                                user=_caller())
    container.start()
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    return int(wrapped.attrs["State"]["Pid"])


def initialize(datadir: Path, *, image: str, mount: Path) -> None:
    """mysqld --initialize-insecure: a data directory whose root has no password (only the
    sandbox's socket reaches it; the sandbox's own user gets a password)."""
    if datadir.is_dir() and not any(datadir.iterdir()):
        datadir.rmdir()  # mysqld initializes only a directory that does not exist
    run_once(["mysqld", "--no-defaults", "--initialize-insecure", f"--datadir={datadir}",
              "--user=root"], image=image, mounts=[mount], log=mount / "mysql" / "install-db.log")
