"""A minimal client for gearmand's text admin protocol (`status`, `version`, `workers`)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

# An admin query is a single short exchange; a server that takes longer is treated as down.
ADMIN_TIMEOUT = 3.0


@dataclass(frozen=True)
class FunctionStatus:
    """One row of gearmand's `status` answer."""

    function: str
    queued: int  # jobs waiting or running, as gearmand counts them
    running: int
    workers: int


def _query(host: str, port: int, command: str, *, multiline: bool, timeout: float) -> list[str]:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(command.encode() + b"\n")
        buffer = b""
        while True:
            if multiline and (buffer == b".\n" or buffer.endswith(b"\n.\n")):
                break
            if not multiline and buffer.endswith(b"\n"):
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
    lines = buffer.decode("utf-8", "replace").splitlines()
    if multiline and lines and lines[-1] == ".":
        lines.pop()
    return lines


def version(host: str, port: int, *, timeout: float = ADMIN_TIMEOUT) -> str:
    """Return gearmand's version string; raises OSError when the server does not answer."""
    lines = _query(host, port, "version", multiline=False, timeout=timeout)
    if not lines or not lines[0].startswith("OK"):
        raise OSError(f"gearmand at {host}:{port} answered 'version' with {lines!r}")
    return lines[0][2:].strip()


def status(host: str, port: int, *, timeout: float = ADMIN_TIMEOUT) -> dict[str, FunctionStatus]:
    """Return gearmand's per-function queue figures, keyed by function name."""
    result: dict[str, FunctionStatus] = {}
    for line in _query(host, port, "status", multiline=True, timeout=timeout):
        fields = line.split("\t")
        if len(fields) != 4:
            continue
        name, queued, running, workers = fields
        result[name] = FunctionStatus(name, int(queued), int(running), int(workers))
    return result


@dataclass(frozen=True)
class Connection:
    """One row of gearmand's `workers` answer: a client connection and what it can do."""

    address: str
    client_id: str  # "-" when the client set none
    functions: tuple[str, ...]  # empty for clients that are not workers


def workers(host: str, port: int, *, timeout: float = ADMIN_TIMEOUT) -> list[Connection]:
    """Return every connection gearmand has, with the functions each registered."""
    result: list[Connection] = []
    for line in _query(host, port, "workers", multiline=True, timeout=timeout):
        head, _, functions = line.partition(" :")  # "FD ADDRESS CLIENT-ID : F1 F2 ..."
        fields = head.split()
        if len(fields) == 3:
            result.append(Connection(fields[1], fields[2], tuple(functions.split())))
    return result
