"""Shared pieces of the benchmark: timing, job loading, processes, figures."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gearman
import yaml

from workerhost.sandbox.stack import Sandbox

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
POLL = 0.01  # seconds between two looks at gearmand's queue


@dataclass
class Figure:
    """One line of the table: our figure, its baseline, and the spread of the runs."""

    name: str
    unit: str
    runs: list[float]
    baseline_name: str = ""
    baseline_runs: list[float] = field(default_factory=list)
    target: str = ""
    higher_is_better: bool = True

    @property
    def value(self) -> float:
        return statistics.median(self.runs)

    @property
    def baseline(self) -> float | None:
        return statistics.median(self.baseline_runs) if self.baseline_runs else None

    @property
    def ratio(self) -> float | None:
        base = self.baseline
        return self.value / base if base else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "unit": self.unit, "median": self.value, "runs": self.runs,
            "baseline": self.baseline_name or None, "baseline_median": self.baseline,
            "baseline_runs": self.baseline_runs, "ratio": self.ratio, "target": self.target,
        }


def spread(values: list[float]) -> str:
    return f"{min(values):.4g}..{max(values):.4g}" if len(values) > 1 else "-"


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def load_jobs(sandbox: Sandbox, function: str, payloads: list[bytes], chunk: int = 2000) -> None:
    """Queue background jobs, pipelined (no worker needs to run)."""
    client = gearman.GearmanClient([sandbox.gearman_server])
    for start in range(0, len(payloads), chunk):
        client.submit_multiple_jobs(
            [{"task": function, "data": p} for p in payloads[start:start + chunk]],
            background=True, wait_until_complete=False, poll_timeout=60,
        )
    client.shutdown()


_admin: dict[int, socket.socket] = {}


def queued(sandbox: Sandbox, function: str) -> tuple[int, int]:
    """(queued, running) of one function."""
    total, running, _workers = function_status(sandbox, function)
    return total, running


def function_status(sandbox: Sandbox, function: str) -> tuple[int, int, int]:
    """(queued, running, connected workers) of one function, over one admin connection kept
    open: polling with a connection per call would leave thousands of sockets in TIME_WAIT."""
    port = sandbox.gearman_port
    sock = _admin.get(port)
    if sock is None:
        sock = _admin[port] = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"status\n")
    buffer = b""
    while not (buffer == b".\n" or buffer.endswith(b"\n.\n")):
        chunk = sock.recv(65536)
        if not chunk:
            del _admin[port]
            raise RuntimeError("gearmand closed the admin connection")
        buffer += chunk
    for line in buffer.decode().splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and fields[0] == function:
            return int(fields[1]), int(fields[2]), int(fields[3])
    return 0, 0, 0


def wait_drained(sandbox: Sandbox, function: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while sum(queued(sandbox, function)) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{function} did not drain in {timeout}s")
        time.sleep(0.01)


def drain_rate(sandbox: Sandbox, function: str, total: int, workers: int = 1,
               timeout: float = 300) -> float:
    """Jobs per second from the moment `workers` connections serve the function until
    gearmand's queue is empty.

    Worker processes start one after the other; timing from the first job taken would count
    the start of the later ones against the steady rate.
    """
    # Polls are POLL apart: frequent enough for a few per cent of error on runs of seconds,
    # rare enough not to steal the CPU from what is measured.
    deadline = time.monotonic() + timeout
    while (status := function_status(sandbox, function))[2] < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{workers} workers did not connect for {function} in {timeout}s")
        time.sleep(POLL / 5)
    left, first = status[0], time.monotonic()
    if left < total / 2:
        raise RuntimeError(f"{total - left} of {total} {function} jobs ran before the last "
                           "worker connected: queue more jobs")
    while queued(sandbox, function)[0] > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{function} did not drain in {timeout}s")
        time.sleep(POLL)
    return left / (time.monotonic() - first)


@contextmanager
def processes(*argvs: list[str], env: dict[str, str] | None = None) -> Iterator[list[Any]]:
    """Start commands in sessions of their own; kill them (and their children) afterwards."""
    started = [subprocess.Popen(argv, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for argv in argvs]
    try:
        yield started
    finally:
        for proc in started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def bare_worker(sandbox: Sandbox, mode: str, function: str, db: dict[str, Any] | None = None
                ) -> list[str]:
    argv = [sys.executable, str(BENCH / "bare_worker.py"), mode, function, sandbox.gearman_server]
    if db is not None:
        argv.append(json.dumps(db))
    return argv


def host_command(sandbox: Sandbox, workdir: Path, database: str, handlers: dict[str, Any],
                 relay: bool = False) -> tuple[list[str], dict[str, str]]:
    """`workerhost run` with a config for the sandbox; returns argv and environment."""
    # Jobs submitted straight to gearmand have no ledger row: such handlers accept any job.
    config = {
        "gearman": {"servers": [sandbox.gearman_server]},
        "database": {"host": "127.0.0.1", "port": sandbox.mysql_port, "user": sandbox.user,
                     "password": "${BENCH_DB_PASSWORD}", "database": database},
        "host": {"relay": {"enabled": relay}},
        "handlers": {name: {"accept": "any", **handler} for name, handler in handlers.items()},
    }
    path = workdir / f"bench-{abs(hash(json.dumps(handlers, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, BENCH_DB_PASSWORD=sandbox.password,
               PYTHONPATH=os.pathsep.join([str(BENCH), str(ROOT)]))
    return [sys.executable, "-m", "workerhost.cli", "run", "-c", str(path)], env


def repeat(times: int, measure: Callable[[], float]) -> list[float]:
    return [measure() for _ in range(times)]


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def thread_ticks(pid: int) -> dict[int, int]:
    """CPU jiffies (user + system) each thread of pid has used so far."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            # Fields after the ")" that closes the command name; utime and stime are 14, 15.
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])
    return ticks


def busiest_thread_share(before: dict[int, int], after: dict[int, int], seconds: float
                         ) -> float:
    """Per cent of one core that the busiest thread used between two thread_ticks()."""
    used = max((after[t] - before.get(t, 0) for t in after), default=0)
    return 100 * used / os.sysconf("SC_CLK_TCK") / seconds


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
