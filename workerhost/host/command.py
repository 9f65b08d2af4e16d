"""Running a `command:` handler's program, contained.

The program gets the job's payload on stdin and what it prints is the result (handlers.run).
What it can reach and what it can leave behind are bounded:

- A clean environment: PATH, HOME, LANG and LC_* from the host, the WORKERHOST_* variables,
  and what the handler's `env:` names. Nothing else of the host's (the database password
  given as ${VAR}, say) reaches the program.
- Nothing outlives it. The worker is a child subreaper (prctl PR_SET_CHILD_SUBREAPER): a
  descendant whose parent exits, such as a daemon that double-forked and called setsid, is
  re-parented to the worker instead of to init, so it stays findable in /proc below the
  worker. When the program ends, however it ends, every descendant still alive is killed.
- `max_memory` covers the program and every process it started: while it runs, their resident
  memory is summed every MEMORY_POLL seconds, and past the cap they are all killed and the
  attempt fails.
- The supervisor kills a worker with kill_tree, so a job's timeout and a host stop leave none
  of its programs' descendants alive either.

Processes are found through /proc/PID/task/TID/children (Linux 3.5 and later).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from workerhost.config.converters import positive_duration
from workerhost.config.settings import HandlerConfig
from workerhost.errors import Snooze
from workerhost.model.job import Job

log = logging.getLogger("workerhost.command")

# Share of a handler's timeout a program may run: the worker kills it first, so that the
# failure is the program's (with its stderr), not a dead worker's.
COMMAND_TIMEOUT_SHARE = 0.9
STDERR_KEPT = 64_000  # characters of a failed program's stderr kept with the failure
MEMORY_POLL = 0.1  # seconds between two sums of a program's memory, when max_memory is set
# What a program gets of the host's environment (and every LC_* locale variable), besides
# the handler's env: and the WORKERHOST_* variables.
HOST_VARIABLES = ("PATH", "HOME", "LANG")
REAP_PATIENCE = 2.0  # seconds killed descendants get to die before the worker stops waiting
FREEZE_PASSES = 100  # looks for new descendants while stopping a tree, at most (a fork bomb)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

Kill = Callable[[int, int], None]


# A program that exits with this (EX_TEMPFAIL) asks to run again later; it prints the delay.
EXIT_SNOOZE = 75
SNOOZE_DEFAULT = 60.0  # seconds, when the program printed no delay


def _snooze_seconds(output: bytes) -> float:
    """The delay a snoozing program printed (30, 30s, 2m), else SNOOZE_DEFAULT."""
    try:
        return positive_duration(output.decode("utf-8", "replace").strip() or "x")
    except ValueError:
        return SNOOZE_DEFAULT


class CommandFailed(Exception):
    """A `command:` program exited non-zero, was killed, or ran past its timeout."""

    def __init__(self, message: str, stderr: bytes) -> None:
        super().__init__(message)
        text = stderr.decode("utf-8", "replace")
        self.stderr = text[-STDERR_KEPT:] if text else None


class _Overrun(Exception):
    """The program ran past its time or its memory; the message says which."""


def environment(handler: HandlerConfig, job: Job,
                host: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The program's whole environment: no more of the host's than HOST_VARIABLES and LC_*."""
    env = {name: value for name, value in host.items()
           if name in HOST_VARIABLES or name.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    env.update(handler.env)
    env.update(WORKERHOST_FUNCTION=job.function, WORKERHOST_UNIQUE=job.unique,
               WORKERHOST_HANDLE=job.handle, WORKERHOST_ATTEMPT=str(job.attempt))
    return env


def run(handler: HandlerConfig, job: Job) -> bytes:
    """Run the handler's program with the payload on stdin; its stdout, or CommandFailed."""
    _become_subreaper()
    limit = handler.timeout * COMMAND_TIMEOUT_SHARE
    name = handler.command[0]
    tree = _Tree(before=set(children(os.getpid())))
    program = tree.program = subprocess.Popen(
        handler.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=environment(handler, job), start_new_session=True, preexec_fn=_die_with_parent,
    )
    try:
        out, err = _wait(program, job.payload, limit, handler.max_memory, tree)
    except _Overrun as overrun:
        tree.kill()
        out, err = program.communicate()
        raise CommandFailed(f"{name} {overrun}", err) from None
    except BaseException:
        tree.kill()
        program.wait()
        raise
    left = tree.kill()  # what it left running, a daemon it started, say: the job is over
    if left:
        log.warning("%s left %s running; killed %s", name,
                    f"{left} processes" if left > 1 else "1 process", "them" if left > 1 else "it")
    if program.returncode == EXIT_SNOOZE:
        raise Snooze(_snooze_seconds(out))
    if program.returncode != 0:
        code = program.returncode
        how = (f"was killed by signal {-code}" if code < 0 else f"exited with status {code}")
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no stderr)"]
        raise CommandFailed(f"{name} {how}: {last[0][:500]}", err)
    return out


def _wait(program: subprocess.Popen[bytes], payload: bytes, limit: float,
          max_memory: int | None, tree: _Tree) -> tuple[bytes, bytes]:
    """communicate(), summing the tree's memory every MEMORY_POLL seconds when it is capped."""
    deadline = time.monotonic() + limit
    given: bytes | None = payload
    while True:
        left = deadline - time.monotonic()
        try:
            # The payload goes once: a retried communicate() carries on where it stopped.
            return program.communicate(
                given, timeout=max(left if max_memory is None else min(left, MEMORY_POLL), 0))
        except subprocess.TimeoutExpired:
            given = None
        if time.monotonic() >= deadline:
            raise _Overrun(f"ran past {limit:g}s and was killed")
        if max_memory is not None:
            used = tree.resident()
            if used > max_memory:
                raise _Overrun(f"and the processes it started grew to {used >> 20} MB, past "
                               f"max_memory ({max_memory >> 20} MB), and were killed")


class _Tree:
    """A program and every process it started, also those re-parented to the worker."""

    def __init__(self, before: set[int]) -> None:
        self.before = before  # the worker's children before the program: none of its own
        self.program: subprocess.Popen[bytes] | None = None

    def orphans(self) -> list[int]:
        """Processes of the tree whose parent exited, re-parented to the worker."""
        program = self.program.pid if self.program is not None else None
        return [pid for pid in children(os.getpid())
                if pid not in self.before and pid != program]

    def pids(self) -> list[int]:
        program = self.program
        # Once reaped, the program's pid may be another process's: its children are ours now.
        roots = [program.pid] if program is not None and program.returncode is None else []
        roots += self.orphans()
        return [pid for root in roots for pid in (root, *descendants(root))]

    def resident(self) -> int:
        return sum(resident_bytes(pid) or 0 for pid in self.pids())

    def kill(self) -> int:
        """Kill every process of the tree; the number killed, the program not counted."""
        killed = _freeze(self.pids, os.kill)
        for pid in killed:
            _send(os.kill, pid, signal.SIGKILL)
        program = self.program.pid if self.program is not None else None
        others = {pid for pid in killed if pid != program}
        _reap(others | set(self.orphans()))  # and those that had exited on their own
        return len(others)


def kill_tree(pid: int, kill: Kill = os.kill) -> None:
    """SIGKILL `pid` and every process below it, which for a worker includes what its
    programs started and left (it is their subreaper). They are stopped first, so that none
    forks or exits while they are looked for; `pid` itself is killed between the two."""
    found = _freeze(lambda: descendants(pid), kill)
    kill(pid, signal.SIGKILL)  # ProcessLookupError: the caller's to handle, as for os.kill
    for descendant in found:
        _send(kill, descendant, signal.SIGKILL)


def children(pid: int) -> list[int]:
    """The children of process `pid` (none once it is gone), zombies included."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:  # a child belongs to the thread that forked it, or that adopted it
        try:
            found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before their children."""
    found: list[int] = []
    seen = {pid}
    todo = [pid]
    while todo:
        for child in children(todo.pop(0)):
            if child not in seen:
                seen.add(child)
                found.append(child)
                todo.append(child)
    return found


def resident_bytes(pid: int) -> int | None:
    """The resident memory of process `pid` (None once it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * PAGE_SIZE


def _alive(pid: int) -> bool:
    """Whether `pid` runs (or is stopped): neither gone nor a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")


def _freeze(find: Callable[[], Iterable[int]], kill: Kill) -> list[int]:
    """SIGSTOP what `find` gives until it gives nothing new; what was stopped."""
    stopped: list[int] = []
    for _ in range(FREEZE_PASSES):
        new = [pid for pid in find() if pid not in stopped and _alive(pid)]
        if not new:
            break
        for pid in new:
            _send(kill, pid, signal.SIGSTOP)
        stopped += new
    return stopped


def _send(kill: Kill, pid: int, signum: int) -> None:
    try:
        kill(pid, signum)
    except ProcessLookupError:
        pass  # gone meanwhile


def _reap(pids: Iterable[int]) -> None:
    """Wait for killed processes that are, or are becoming, the worker's children (it is
    their subreaper), so that none stays a zombie in a long-lived worker."""
    pending = set(pids)
    deadline = time.monotonic() + REAP_PATIENCE
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pending.discard(pid)
            except ChildProcessError:  # not ours yet (its parent is dying), or gone
                if not Path(f"/proc/{pid}").exists():
                    pending.discard(pid)
        if pending:
            time.sleep(0.005)


def _become_subreaper() -> None:
    """Adopt the orphans of this process's descendants (once per process; Linux 3.4)."""
    global _subreaper
    if _subreaper != os.getpid():
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
        _subreaper = os.getpid()


_subreaper = 0  # the pid that made itself a subreaper; a forked child must do it again


def _die_with_parent() -> None:
    """In the program, before exec: SIGKILL when the worker process dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
