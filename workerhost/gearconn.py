"""Worker-side Gearman connections that can hold several jobs per process.

pygearman's worker holds one job at a time and swallows what goes wrong. The worker host
instead opens several connections per gearmand server (each one is a worker to gearmand and
holds at most one job), multiplexes them with select(), and answers a whole batch of jobs after
one database commit. The wire format is pygearman's (`gearman.protocol`); this module adds the
socket handling, the grab/sleep cycle of the worker protocol, and errors that say what happened.
"""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass

from gearman import protocol as p

from workerhost.config import Server

# How long a connect may take before the server counts as unreachable for this round.
CONNECT_TIMEOUT = 3.0
RECV_SIZE = 65536


class GearmanLost(Exception):
    """A connection to gearmand broke; a job it held goes back to gearmand's queue."""


@dataclass
class Assigned:
    """A job gearmand assigned on one connection."""

    conn: WorkerConnection
    handle: bytes
    function: bytes
    unique: bytes
    data: bytes


class WorkerConnection:
    """One connection to one gearmand for one function; it holds at most one job."""

    IDLE, GRABBING, SLEEPING, HOLDING = "idle", "grabbing", "sleeping", "holding"

    def __init__(self, server: Server, function: bytes, client_id: bytes) -> None:
        self.server = server
        self.function = function
        self.client_id = client_id
        self.sock: socket.socket | None = None
        self.state = self.IDLE
        self._in = bytearray()
        self._out = bytearray()

    def __repr__(self) -> str:
        return f"<gearmand {self.server} {self.state}>"

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def connect(self) -> None:
        try:
            sock = socket.create_connection((self.server.host, self.server.port), CONNECT_TIMEOUT)
        except OSError as exc:
            raise GearmanLost(f"cannot connect to gearmand {self.server}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock, self._in, self._out = sock, bytearray(), bytearray()
        self.send(p.GEARMAN_COMMAND_SET_CLIENT_ID, {"client_id": self.client_id})
        self.send(p.GEARMAN_COMMAND_CAN_DO, {"task": self.function})
        self.grab()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.state = self.IDLE

    def send(self, command: int, args: dict[str, bytes]) -> None:
        self._out += p.pack_binary_command(command, args)

    def grab(self) -> None:
        self.send(p.GEARMAN_COMMAND_GRAB_JOB_UNIQ, {})
        self.state = self.GRABBING

    def complete(self, handle: bytes, result: bytes) -> None:
        self.send(p.GEARMAN_COMMAND_WORK_COMPLETE, {"job_handle": handle, "data": result})
        self.state = self.IDLE

    def fail(self, handle: bytes) -> None:
        # WORK_FAIL alone: WORK_EXCEPTION followed by WORK_FAIL confuses gearmand 1.1.
        self.send(p.GEARMAN_COMMAND_WORK_FAIL, {"job_handle": handle})
        self.state = self.IDLE

    def wants_write(self) -> bool:
        return bool(self._out)

    def flush(self) -> None:
        if self.sock is None or not self._out:
            return
        try:
            sent = self.sock.send(self._out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.close()
            raise GearmanLost(f"gearmand {self.server} went away: {exc}") from exc
        del self._out[:sent]

    def read(self) -> list[Assigned]:
        """Read what gearmand sent; react to the protocol; return the jobs it assigned."""
        assert self.sock is not None
        try:
            chunk = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return []
        except OSError as exc:
            self.close()
            raise GearmanLost(f"gearmand {self.server} went away: {exc}") from exc
        if not chunk:
            self.close()
            raise GearmanLost(f"gearmand {self.server} closed the connection")
        self._in += chunk
        jobs = []
        while True:
            # pygearman's parser wants a buffer with tobytes(): a memoryview over a copy.
            frame = memoryview(bytes(self._in[: 12 + _length(self._in)]))
            command, args, size = p.parse_binary_command(frame)
            if not size:
                break
            del self._in[:size]
            job = self._react(command, args)
            if job is not None:
                jobs.append(job)
        return jobs

    def _react(self, command: int, args: dict[str, bytes]) -> Assigned | None:
        if command == p.GEARMAN_COMMAND_NOOP:
            if self.state == self.SLEEPING:
                self.grab()
        elif command == p.GEARMAN_COMMAND_NO_JOB:
            self.send(p.GEARMAN_COMMAND_PRE_SLEEP, {})
            self.state = self.SLEEPING
        elif command == p.GEARMAN_COMMAND_JOB_ASSIGN_UNIQ:
            self.state = self.HOLDING
            return Assigned(self, args["job_handle"], args["task"], args["unique"], args["data"])
        elif command == p.GEARMAN_COMMAND_ERROR:
            self.close()
            raise GearmanLost(
                f"gearmand {self.server} answered ERROR {args['error_code']!r}: "
                f"{args['error_text']!r}"
            )
        return None


def _length(buffer: bytearray) -> int:
    """The payload length announced by the header at the start of `buffer` (0 if incomplete)."""
    if len(buffer) < 12:
        return 0
    return int.from_bytes(buffer[8:12], "big")


def wait(conns: list[WorkerConnection], timeout: float) -> list[WorkerConnection]:
    """Flush what can be written, then wait until a connection has something to read."""
    live = [c for c in conns if c.connected]
    if not live:
        return []
    writers = [c for c in live if c.wants_write()]
    readable, writable, _ = select.select(live, writers, [], timeout)
    for conn in writable:
        conn.flush()
    return readable


PRIORITY_COMMANDS = {
    "normal": p.GEARMAN_COMMAND_SUBMIT_JOB_BG,
    "high": p.GEARMAN_COMMAND_SUBMIT_JOB_HIGH_BG,
    "low": p.GEARMAN_COMMAND_SUBMIT_JOB_LOW_BG,
}


class Submitter:
    """A client connection that submits background jobs pipelined: all requests of a batch go
    out in one write, then the JOB_CREATED answers are read, one per job, in order."""

    def __init__(self, server: Server, timeout: float) -> None:
        self.server = server
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def submit(self, jobs: list[tuple[str, bytes, bytes, str]]) -> list[bytes]:
        """Submit (function, unique, payload, priority) jobs; their handles, in order.

        Raises GearmanLost unless gearmand accepted every one of them within the timeout.
        """
        try:
            if self.sock is None:
                self.sock = socket.create_connection(
                    (self.server.host, self.server.port), CONNECT_TIMEOUT)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.settimeout(self.timeout)
            request = b"".join(
                _frame(p.MAGIC_REQ_STRING, PRIORITY_COMMANDS.get(priority, PRIORITY_COMMANDS[
                    "normal"]), function.encode(), unique, data)
                for function, unique, data, priority in jobs
            )
            self.sock.sendall(request)
            return self._created(len(jobs))
        except OSError as exc:
            self.close()
            raise GearmanLost(f"gearmand {self.server} did not take the jobs: {exc}") from exc

    def _created(self, count: int) -> list[bytes]:
        assert self.sock is not None
        handles: list[bytes] = []
        buffer = bytearray()
        while len(handles) < count:
            chunk = self.sock.recv(RECV_SIZE)
            if not chunk:
                raise OSError("connection closed")
            buffer += chunk
            while len(buffer) >= 12:
                size = 12 + _length(buffer)
                if len(buffer) < size:
                    break
                command = int.from_bytes(buffer[4:8], "big")
                body = bytes(buffer[12:size])
                del buffer[:size]
                if command == p.GEARMAN_COMMAND_JOB_CREATED:
                    handles.append(body)
                elif command == p.GEARMAN_COMMAND_ERROR:
                    raise OSError(f"gearmand answered ERROR {body!r}")
        return handles


def _frame(magic: bytes, command: int, function: bytes, unique: bytes, data: bytes) -> bytes:
    """One request: pygearman's wire format, packed without its per-call checks."""
    body = b"%s\0%s\0%s" % (function, unique, data)
    return magic + command.to_bytes(4, "big") + len(body).to_bytes(4, "big") + body
