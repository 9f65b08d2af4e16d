"""The sandbox's processes and ports: free loopback ports, whether a pid is still the process
it was, signals that tolerate a process already gone, and the tail of a server's log for an
error message.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import time
from pathlib import Path

from workerhost.errors import SandboxError

HOST = "127.0.0.1"
PORT_WAIT = 5.0  # seconds a port held by a killed server's closing connections may take
LOG_LINES_QUOTED = 15


# Where free_port() looks first: below the kernel's ephemeral range, which every outgoing
# connection draws its local port from. A port picked there can be taken by any client
# between the pick and the server's bind (CI saw mariadbd fail with "Address already in use"
# under parallel tests); one below it only by another listener.
LISTEN_PORTS_FROM = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
PORT_TRIES = 200


def free_port(rng: random.Random | None = None) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range
    when the kernel leaves room below it."""
    rng = rng or random.SystemRandom()
    first = ephemeral_ports()[0]
    if first - LISTEN_PORTS_FROM >= PORT_TRIES:
        for _ in range(PORT_TRIES):
            port = rng.randrange(LISTEN_PORTS_FROM, first)
            if port_is_free(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux's default when it
    cannot be read)."""
    try:
        low, high = EPHEMERAL_RANGE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def check_port(port: int, server: str) -> None:
    """Raise unless `server` could listen on `port` (waiting PORT_WAIT for a killed server's
    closing connections to let go of it first)."""
    # Right after a server was killed, its connections may hold the port for a moment
    # (closing, their peers not yet gone): wait for that before calling it taken.
    deadline = time.monotonic() + PORT_WAIT
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not port_is_free(port):
        raise SandboxError(
            f"port {port} on {HOST} is taken, so {server} cannot listen there; stop what "
            f"uses it (ss -ltnp 'sport = :{port}') or give the sandbox another directory"
        )


def port_is_free(port: int) -> bool:
    """True when a server could listen on `port` (connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def tail(path: Path, lines: int = LOG_LINES_QUOTED) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"    (no log at {path})"
    picked = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in picked) or f"    ({path} is empty)"


def process_exists(pid: int) -> bool:
    """True while `pid` is a process that has not ended (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def process_alive(pid: int, marker: str) -> bool:
    """True when `pid` is a running process whose command line mentions `marker`.

    Guards against pid reuse: a server's pid, once free, may become a thread of the other
    server (mariadbd starts one per connection), whose /proc entry shows the whole process's
    command line, sandbox directory included. A thread is not the process we started.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            if stat.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                reap(pid)
                return False
        with open(f"/proc/{pid}/status", "rb") as status:
            leader = next((line.split()[1] for line in status if line.startswith(b"Tgid:")),
                          b"")
        if leader != str(pid).encode():
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return marker.encode() in cmdline.read()
    except (OSError, IndexError):
        return False


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def send_signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def binary(name: str, package: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SandboxError(f"{name} is not installed; run: make setup (or apt-get install {package})")


def current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
