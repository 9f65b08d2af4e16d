"""Worker-side Gearman connections that hold several jobs at once.

pygearman's worker holds one job at a time and swallows what goes wrong. The worker host keeps
one connection per gearmand server and asks for up to `capacity` jobs on it with pipelined
GRAB_JOBs: gearmand assigns a job per GRAB_JOB and tracks every job a connection holds (all of
them go back to its queue when the connection drops). One write then answers a whole batch and
asks for the next, and one read brings the next jobs in, so both sides pay a few system calls
per batch instead of a few per job. The wire format is pygearman's (`gearman.protocol`); this
module adds the socket handling, the grab/sleep cycle of the worker protocol, and errors that
say what happened.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from gearman import protocol as p

from workerhost.config.converters import Server

# How long a connect may take before the server counts as unreachable for this round.
CONNECT_TIMEOUT = 3.0
RECV_SIZE = 262144
# GRAB_JOBs a connection woken by NOOP sends at once: one job, and one more in case a second
# is queued already, for a NO_JOB at most.
WAKE_GRAB = 2
# How long a connection that left the jobs it was woken for to another process waits before it
# looks again (WorkerConnection.recheck; the worker's sibling_takes says who takes them).
DEFER_RECHECK = 0.01


class GearmanLost(Exception):
    """A connection to gearmand broke; the jobs it held go back to gearmand's queue.

    `timed_out`: gearmand was reachable but did not answer in time (busy, or stalled);
    `answers`: what it answered before (Submitter.submit), to the first jobs sent.
    """

    def __init__(self, message: str, *, timed_out: bool = False,
                 answers: list[bytes | Refused] | None = None) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.answers = answers or []


@dataclass
class Assigned:
    """A job gearmand assigned on one connection (in the connection's `generation`)."""

    conn: WorkerConnection
    generation: int
    handle: bytes
    function: bytes
    unique: bytes
    data: bytes

    @property
    def answerable(self) -> bool:
        """False once the connection that got the job dropped: gearmand re-queued it."""
        return self.conn.connected and self.conn.generation == self.generation


def request(command: int, *args: bytes) -> bytes:
    """One request packet, `args` in the protocol's order: pygearman's wire format, packed
    without its per-call checks (which cost more than the rest of a job's handling)."""
    body = b"\0".join(args)
    return b"%s%s%s%s" % (
        p.MAGIC_REQ_STRING, command.to_bytes(4, "big"), len(body).to_bytes(4, "big"), body)


def take_packets(buffer: bytearray) -> list[tuple[int, bytes]]:
    """The whole packets at the start of `buffer`, as (command, body), removed from it."""
    packets = []
    start = 0
    while len(buffer) - start >= 12:
        end = start + 12 + int.from_bytes(buffer[start + 8:start + 12], "big")
        if len(buffer) < end:
            break
        packets.append((int.from_bytes(buffer[start + 4:start + 8], "big"),
                        bytes(buffer[start + 12:end])))
        start = end
    del buffer[:start]
    return packets


_GRAB = request(p.GEARMAN_COMMAND_GRAB_JOB_UNIQ)


class WorkerConnection:
    """One connection to one gearmand for one function; it holds up to `capacity` jobs.

    `asking` counts GRAB_JOBs not answered yet, `holding` the jobs assigned and not answered.
    GRAB_JOBs go out in rounds: a woken connection asks for WAKE_GRAB jobs, a round answered
    with a job for every GRAB_JOB asks for twice as many (the queue has more), and after each
    batch the worker asks for as many as came in for it. A round that meets an empty queue
    ends the asking: after a NO_JOB has answered the last GRAB_JOB, the connection sleeps
    (PRE_SLEEP) until gearmand wakes it with NOOP. So jobs that trickle in while a batch runs
    wait in gearmand's queue and come in together with the next round, one read for the lot,
    instead of a wake-up, a GRAB_JOB and a read each.
    """

    def __init__(self, server: Server, function: bytes, client_id: bytes,
                 capacity: int = 1) -> None:
        self.server = server
        self.function = function
        self.client_id = client_id
        self.capacity = capacity
        self.sock: socket.socket | None = None
        self.generation = 0
        self.asking = 0
        self.holding = 0
        self.sleeping = False
        self.grabbing = True  # False once the worker stops taking jobs
        # Asked when gearmand wakes the connection: True leaves the new jobs to another
        # process (the worker's sibling_takes); the connection looks again at deferred_until.
        self.defer: Callable[[], bool] | None = None
        self.deferred_until = 0.0
        self._round = 0  # GRAB_JOBs of the current round
        self._dry = False  # a NO_JOB answered one of them
        self._got = 0  # jobs assigned since the last top_up
        self._in = bytearray()
        self._out = bytearray()

    def __repr__(self) -> str:
        state = "sleeping" if self.sleeping else f"asking {self.asking}"
        return f"<gearmand {self.server} holding {self.holding}, {state}>"

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
        self.generation += 1
        self.asking = self.holding = self._round = 0
        self.sleeping = self._dry = False
        self.deferred_until = 0.0
        self._got = 0
        self.send(p.GEARMAN_COMMAND_SET_CLIENT_ID, self.client_id)
        self.send(p.GEARMAN_COMMAND_CAN_DO, self.function)
        self.grab(self.capacity)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.asking = self.holding = 0
        self.sleeping = False
        self.deferred_until = 0.0

    def send(self, command: int, *args: bytes) -> None:
        self._out += request(command, *args)

    def grab(self, count: int = 1) -> None:
        """Ask for up to `count` more jobs, within the room `capacity` leaves."""
        count = min(count, self.capacity - self.holding - self.asking)
        if count <= 0 or not self.grabbing:
            return
        if self.asking == 0:  # a new round
            self._round, self._dry = 0, False
        self._out += _GRAB * count
        self.asking += count
        self._round += count
        self.sleeping = False
        self.deferred_until = 0.0

    def recheck(self) -> None:
        """A connection that left its jobs to another process, DEFER_RECHECK later: it asks
        for jobs again. Those the other process took are gone (NO_JOB, and it sleeps); those
        still queued are its own. Only a GRAB_JOB lets gearmand wake it again: a PRE_SLEEP
        alone would leave it unwoken by the jobs that come next."""
        self.deferred_until = 0.0
        self.grab(WAKE_GRAB)

    def top_up(self) -> None:
        """After a batch: ask for as many jobs as came in for it (WAKE_GRAB at least), asleep
        or not; those that queued up while it ran come in this round, with no NOOP first."""
        self.grab(max(WAKE_GRAB, self._got))
        self._got = 0

    def complete(self, handle: bytes, result: bytes) -> None:
        self.send(p.GEARMAN_COMMAND_WORK_COMPLETE, handle, result)
        self.holding -= 1

    def fail(self, handle: bytes) -> None:
        # WORK_FAIL alone: WORK_EXCEPTION followed by WORK_FAIL confuses gearmand 1.1.
        self.send(p.GEARMAN_COMMAND_WORK_FAIL, handle)
        self.holding -= 1

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

    def drain(self, timeout: float) -> None:
        """Send everything still buffered, waiting up to `timeout` seconds for gearmand."""
        if self.sock is None or not self._out:
            return
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(self._out)
            self.sock.setblocking(False)
        except OSError as exc:
            self.close()
            raise GearmanLost(f"gearmand {self.server} did not take the answers: {exc}") from exc
        self._out.clear()

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
        for command, body in take_packets(self._in):
            job = self._react(command, body)
            if job is not None:
                jobs.append(job)
        return jobs

    def _react(self, command: int, body: bytes) -> Assigned | None:
        if command == p.GEARMAN_COMMAND_JOB_ASSIGN_UNIQ:
            handle, function, unique, data = body.split(b"\0", 3)
            self.asking -= 1
            self.holding += 1
            self._got += 1
            if self.asking == 0 and not self._dry:
                self.grab(2 * self._round)  # every GRAB_JOB found a job: more are queued
            return Assigned(self, self.generation, handle, function, unique, data)
        if command == p.GEARMAN_COMMAND_NO_JOB:
            self.asking -= 1
            self._dry = True
            if self.asking == 0:
                self.send(p.GEARMAN_COMMAND_PRE_SLEEP)
                self.sleeping = True
        elif command == p.GEARMAN_COMMAND_NOOP:
            if self.sleeping:
                self.sleeping = False
                if self.defer is not None and self.defer():
                    # Neither asking nor asleep: gearmand wakes it no more until it asks.
                    self.deferred_until = time.monotonic() + DEFER_RECHECK
                else:
                    self.grab(WAKE_GRAB)
        elif command == p.GEARMAN_COMMAND_ERROR:
            code, _, text = body.partition(b"\0")
            self.close()
            raise GearmanLost(f"gearmand {self.server} answered ERROR {code!r}: {text!r}")
        return None


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


@dataclass(frozen=True)
class Refused:
    """gearmand's answer to a job it would not take (ERROR instead of JOB_CREATED)."""

    reason: str


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

    def submit(self, jobs: list[tuple[str, bytes, bytes, str]]) -> list[bytes | Refused]:
        """Submit (function, unique, payload, priority) jobs; gearmand's answer to each, in
        order: its handle, or why it refused that job (it answers the others all the same).

        Raises GearmanLost unless gearmand answered every one of them, each within the
        timeout of the one before; it holds the answers given before.
        """
        answers: list[bytes | Refused] = []
        try:
            if self.sock is None:
                self.sock = socket.create_connection(
                    (self.server.host, self.server.port), CONNECT_TIMEOUT)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.settimeout(self.timeout)
            self.sock.sendall(b"".join(
                request(PRIORITY_COMMANDS.get(priority, PRIORITY_COMMANDS["normal"]),
                        function.encode(), unique, data)
                for function, unique, data, priority in jobs
            ))
            self._created(len(jobs), answers)
            return answers
        except OSError as exc:
            self.close()
            taken = f" (it answered {len(answers)} of {len(jobs)})" if answers else ""
            raise GearmanLost(f"gearmand {self.server} did not take the jobs: {exc}{taken}",
                              timed_out=isinstance(exc, TimeoutError), answers=answers) from exc

    def _created(self, count: int, handles: list[bytes | Refused]) -> None:
        """Read gearmand's answers into `handles` until it holds `count`."""
        assert self.sock is not None
        buffer = bytearray()
        while len(handles) < count:
            chunk = self.sock.recv(RECV_SIZE)
            if not chunk:
                raise OSError("connection closed")
            buffer += chunk
            for command, body in take_packets(buffer):
                if command == p.GEARMAN_COMMAND_JOB_CREATED:
                    handles.append(body)
                elif command == p.GEARMAN_COMMAND_ERROR:
                    code, _, text = body.partition(b"\0")
                    handles.append(Refused(": ".join(
                        part.decode("utf-8", "replace") for part in (code, text) if part)))
