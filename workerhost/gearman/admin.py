"""A minimal client for gearmand's text admin protocol (`status`, `version`, `workers`).

gearmand prints function names as they were submitted or registered, inside lines separated by
tabs, spaces and newlines, so a name holding one of those could forge lines: one such job once
made `status` report a function queued 777 with 0 workers and hid its real line. The UDF refuses
such names; other clients may not. So the parsers take only lines of the documented shape
(names without whitespace or control characters, counts of ASCII digits), leave out a function
or connection listed twice (one of the lines is forged and nothing says which), and log what
they left out.
"""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass

# An admin query is a single short exchange; a server that takes longer is treated as down.
ADMIN_TIMEOUT = 3.0

log = logging.getLogger("workerhost.gearadmin")

_FIELD = r"[^\x00-\x20\x7f]+"  # no whitespace, no control characters
_NAME = re.compile(_FIELD)
_COUNT = re.compile(r"[0-9]+")  # int() would also take '+1', ' 1' or other scripts' digits
# "FD ADDRESS CLIENT-ID :" and " FUNCTION" for each function, as gearmand prints them.
_WORKER = re.compile(rf"([0-9]+) ({_FIELD}) ({_FIELD}) :((?: {_FIELD})*)")


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
    # Split on "\n" only, as gearmand writes: str.splitlines() would also split on the
    # \r, \x1c or \x85 a forged name may hold, and so make lines that gearmand never wrote.
    lines = buffer.decode("utf-8", "replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if multiline and lines and lines[-1] == ".":
        lines.pop()
    return lines


def version(host: str, port: int, *, timeout: float = ADMIN_TIMEOUT) -> str:
    """Return gearmand's version string; raises OSError when the server does not answer."""
    lines = _query(host, port, "version", multiline=False, timeout=timeout)
    if not lines or not lines[0].startswith("OK"):
        raise OSError(f"gearmand at {host}:{port} answered 'version' with {lines!r}")
    return lines[0][2:].strip()


def _status_row(line: str) -> FunctionStatus | None:
    fields = line.split("\t")
    if len(fields) != 4 or not _NAME.fullmatch(fields[0]):
        return None
    if not all(_COUNT.fullmatch(count) for count in fields[1:]):
        return None
    name, queued, running, workers_ = fields
    return FunctionStatus(name, int(queued), int(running), int(workers_))


def _report(host: str, port: int, command: str, skipped: int, twice: set[str]) -> None:
    if skipped:
        log.warning("gearmand at %s:%d: %d '%s' line(s) not of the documented shape left out "
                    "(a name with whitespace or a control character?)",
                    host, port, skipped, command)
    if twice:
        log.warning("gearmand at %s:%d: %s listed twice in '%s' and left out: a name with a "
                    "tab or a newline forged one of the lines", host, port,
                    ", ".join(sorted(repr(name) for name in twice)), command)


def status(host: str, port: int, *, timeout: float = ADMIN_TIMEOUT) -> dict[str, FunctionStatus]:
    """Return gearmand's per-function queue figures, keyed by function name.

    A line that is not `name TAB queued TAB running TAB workers` (see the module docstring) is
    left out, and so is every line of a function listed twice; both are logged.
    """
    result: dict[str, FunctionStatus] = {}
    twice: set[str] = set()
    skipped = 0
    for line in _query(host, port, "status", multiline=True, timeout=timeout):
        row = _status_row(line)
        if row is None:
            skipped += 1
        elif row.function in result or row.function in twice:
            twice.add(row.function)
            result.pop(row.function, None)
        else:
            result[row.function] = row
    _report(host, port, "status", skipped, twice)
    return result


@dataclass(frozen=True)
class Connection:
    """One row of gearmand's `workers` answer: a client connection and what it can do."""

    address: str
    client_id: str  # "-" when the client set none
    functions: tuple[str, ...]  # empty for clients that are not workers


def workers(host: str, port: int, *, timeout: float = ADMIN_TIMEOUT) -> list[Connection]:
    """Return every connection gearmand has, with the functions each registered.

    A line that is not `FD ADDRESS CLIENT-ID : F1 F2 ...` with FD of digits is left out, and so
    is every line of a file descriptor listed twice; both are logged.
    """
    rows: dict[str, Connection] = {}
    twice: set[str] = set()
    skipped = 0
    for line in _query(host, port, "workers", multiline=True, timeout=timeout):
        match = _WORKER.fullmatch(line)
        if match is None:
            skipped += 1
            continue
        fd, address, client_id, functions = match.groups()
        if fd in rows or fd in twice:
            twice.add(fd)
            rows.pop(fd, None)
            continue
        rows[fd] = Connection(address, client_id, tuple(functions.split()))
    _report(host, port, "workers", skipped, {f"fd {fd}" for fd in twice})
    return list(rows.values())
