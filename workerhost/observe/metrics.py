"""Prometheus metrics and the health check of `workerhost run` (``host.metrics``).

Counters live where the work happens: worker processes count their jobs, the supervisor its
restarts. Those are separate processes, so prometheus_client runs in multiprocess mode: each
process writes its values to files in a directory private to this run (made by `collecting()`
before the first fork), and every scrape adds up the files of all processes, living and dead,
so the counts of a recycled worker are not lost. Queue figures (gearmand, the ledger, dead
letters) are not counted anywhere: each scrape reads them from their source (status.py).

The HTTP server runs in a child process of its own, supervised like the relay, rather
than in a thread of the supervisor: the supervisor forks workers all the time, and a fork taken
while a server thread holds a lock (logging's, the database driver's) gives the new worker a
lock that nobody will ever release.

Every function below is a no-op when metrics are off, so callers never check.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from workerhost.exitcodes import EXIT_START_FAILED
from workerhost.model.job import Outcome
from workerhost.observe import events, status
from workerhost.observe.health import SCRAPE_TIMEOUT, check_health, is_child_of

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric

    from workerhost.config.settings import Config

log = logging.getLogger("workerhost.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"  # where prometheus_client's multiprocess mode keeps its files
DIRECTORY_PREFIX = "workerhost-metrics-"  # then the supervisor's pid: stale ones can be found
SERVER = "(metrics)"  # the name under which the supervisor runs the HTTP server child
POLL_INTERVAL = 0.5  # how often the server looks at its stop flag
# Job durations: from a few milliseconds up to the 300s a long handler timeout allows.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0)  # fmt: skip
# Outcomes of a job, the `outcome` label of workerhost_jobs_total. Workers count the first
# three once the outcome is committed; the supervisor counts the last two, for jobs whose
# process ended under them (each such job is also retried or dead-lettered later).
OUTCOMES = tuple(outcome.value for outcome in Outcome)


@dataclass(frozen=True)
class _Metrics:
    jobs: Counter
    retries: Counter
    dead_letters: Counter
    duration: Histogram
    in_flight: Gauge
    restarts: Counter
    slots_fired: Counter
    slots_missed: Counter
    slots_skipped: Counter
    unserved: Counter


_metrics: _Metrics | None = None  # set by collecting(); inherited by every forked child
# When the handler run in progress in this process began: a process runs one at a time.
_started: float | None = None
_starting = 0  # jobs begun together at _started


@contextmanager
def collecting(enabled: bool = True) -> Iterator[None]:
    """Count in multiprocess mode for the processes forked inside this block.

    Must be entered in the supervisor before it forks: the children inherit the directory
    and the metric objects. The directory is fresh for each run (stale files of an earlier
    run would add its counts to ours) and removed at the end.
    """
    global _metrics
    if not enabled:
        yield
        return
    previous = os.environ.get(ENV)
    owner = os.getpid()
    _remove_stale_directories()
    directory = tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{owner}-")
    os.environ[ENV] = directory
    from prometheus_client import Counter, Gauge, Histogram, values

    # prometheus_client picks its value class once, when first imported; pick it again now
    # that the directory is set, in case something imported it earlier.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    # registry=None: in multiprocess mode the values live in the files, and a scrape reads
    # them through MultiProcessCollector; a registration would also forbid a second run.
    _metrics = _Metrics(
        jobs=Counter("workerhost_jobs", "Jobs finished, by function and outcome",
                     ["function", "outcome"], registry=None),
        retries=Counter("workerhost_job_retries", "Failed attempts scheduled for a retry",
                        ["function"], registry=None),
        dead_letters=Counter("workerhost_dead_letters", "Jobs written to the dead letters",
                             ["function"], registry=None),
        duration=Histogram("workerhost_job_duration_seconds", "Time one run of a handler "
                           "took (a batch rolled back runs its jobs again)", ["function"],
                           buckets=DURATION_BUCKETS, registry=None),
        in_flight=Gauge("workerhost_jobs_in_flight", "Jobs running now", ["function"],
                        multiprocess_mode="livesum", registry=None),
        restarts=Counter("workerhost_worker_restarts", "Child processes restarted after an "
                         "unexpected exit", ["handler"], registry=None),
        slots_fired=Counter("workerhost_schedule_slots_fired", "Slots of the schedule whose "
                            "job this host wrote to the ledger", ["schedule"], registry=None),
        slots_missed=Counter("workerhost_schedule_slots_missed", "Slots of the schedule that "
                             "came due while no host led it, found by this host (fired late "
                             "or skipped, as catch_up says)", ["schedule"], registry=None),
        slots_skipped=Counter("workerhost_schedule_slots_skipped", "Missed slots of the "
                              "schedule that did not fire (catch_up: latest or none, or more "
                              "than the catch-up limit)", ["schedule"], registry=None),
        unserved=Counter("workerhost_ledger_unserved_ships", "Ledger rows the relay shipped "
                         "again at host.relay.unserved_after or older: no worker completed "
                         "them", ["function"], registry=None),
    )  # fmt: skip
    unsubscribe = events.subscribe(on_event)
    try:
        yield
    finally:
        if os.getpid() == owner:  # not in a forked child: the directory is not its to remove
            unsubscribe()
            _metrics = None
            if previous is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = previous
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
            shutil.rmtree(directory, ignore_errors=True)


def _remove_stale_directories() -> None:
    """Remove the directories of earlier runs whose supervisor was killed (SIGKILL, OOM)."""
    for path in Path(tempfile.gettempdir()).glob(f"{DIRECTORY_PREFIX}*-*"):
        pid = path.name[len(DIRECTORY_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # another user's process, alive: its directory


def _job_started(function: str, count: int = 1) -> None:
    """A handler begins to run `count` jobs of `function` in this process, together (a batch
    of sql: jobs sent as one query)."""
    global _started, _starting
    if _metrics is not None:
        _metrics.in_flight.labels(function).inc(count)
        _started, _starting = time.monotonic(), count


def _job_ended(function: str) -> None:
    """The handler run begun by job_started is over, however it ended (call it in `finally`);
    jobs run together each count an equal share of the time they took."""
    global _started
    if _metrics is not None and _started is not None:
        share = (time.monotonic() - _started) / _starting
        for _ in range(_starting):
            _metrics.duration.labels(function).observe(share)
        _metrics.in_flight.labels(function).dec(_starting)
        _started = None


def _job_finished(function: str, outcome: str, count: int = 1) -> None:
    """`count` jobs of `function` reached `outcome` (complete, retry, dead): once each."""
    if _metrics is None or count <= 0:
        return
    _metrics.jobs.labels(function, outcome).inc(count)
    if outcome == Outcome.RETRY:
        _metrics.retries.labels(function).inc(count)
    elif outcome == Outcome.DEAD:
        _metrics.dead_letters.labels(function).inc(count)


def _job_lost(function: str, outcome: str) -> None:
    """The supervisor's count of a job whose process ended under it (timeout, crashed)."""
    if _metrics is not None:
        _metrics.jobs.labels(function, outcome).inc()


def _worker_restarted(handler: str) -> None:
    if _metrics is not None:
        _metrics.restarts.labels(handler).inc()


def _schedule_slots(schedule: str, *, fired: int, missed: int, skipped: int) -> None:
    """The scheduler's count of one look at `schedule`, once its transaction committed."""
    if _metrics is None:
        return
    for counter, count in ((_metrics.slots_fired, fired), (_metrics.slots_missed, missed),
                           (_metrics.slots_skipped, skipped)):
        if count > 0:
            counter.labels(schedule).inc(count)


def _unserved_shipped(function: str, rows: int) -> None:
    """The relay shipped `rows` rows of `function` again that waited unserved_after or more."""
    if _metrics is not None and rows > 0:
        _metrics.unserved.labels(function).inc(rows)


def _process_dead(pid: int) -> None:
    """Drop the live gauges of a child that exited (its counters stay: they still count)."""
    directory = os.environ.get(ENV)
    if _metrics is not None and directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


# -- what a scrape reads from the servers --------------------------------------------------


def on_event(event: events.Event) -> None:
    """The metrics' listener, subscribed while collecting(): each event to its counters."""
    match event:
        case events.JobsStarted(function, count):
            _job_started(function, count)
        case events.JobsEnded(function):
            _job_ended(function)
        case events.JobsFinished(function, outcome, count):
            _job_finished(function, outcome, count)
        case events.JobLost(handler, outcome):
            _job_lost(handler, outcome)
        case events.WorkerRestarted(handler):
            _worker_restarted(handler)
        case events.ProcessGone(pid):
            _process_dead(pid)
        case events.ScheduleLooked(schedule, fired, missed, skipped):
            _schedule_slots(schedule, fired=fired, missed=missed, skipped=skipped)
        case events.UnservedShipped(function, rows):
            _unserved_shipped(function, rows)


class QueueCollector:
    """Gauges read on each scrape: gearmand per server and function, the ledger, dead letters."""

    def __init__(self, config: Config, *, timeout: float = SCRAPE_TIMEOUT,
                 gearmand: Callable[..., status.ServerStatus] = status.gearmand,
                 database: Callable[[], status.DatabaseStatus] | None = None) -> None:
        self.config = config
        self.timeout = timeout
        self.gearmand = gearmand
        self.database = database or self._database

    def _database(self) -> status.DatabaseStatus:
        # A connection per scrape: nothing to share between the server's threads, and a
        # scrape every few seconds does not need pooling.
        db = status.open_database(self.config.database, timeout=self.timeout)
        try:
            return status.database(db, timeout=self.timeout,
                                   schedules=bool(self.config.schedules),
                                   unserved_after=self.config.host.relay.unserved_after)
        finally:
            db.close()

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("workerhost_gearmand_up", "1 if gearmand answered the scrape",
                               labels=["server"])
        figures = {
            name: GaugeMetricFamily(f"workerhost_gearmand_{name}", text,
                                    labels=["server", "function"])
            for name, text in (("queued", "Jobs gearmand holds for the function (incl. running)"),
                               ("running", "Jobs of the function running now"),
                               ("workers", "Workers registered for the function"))
        }  # fmt: skip
        for server in self.config.gearman.servers:
            answer = self.gearmand(server, timeout=self.timeout)
            up.add_metric([answer.server], 0.0 if answer.error else 1.0)
            for name, f in answer.functions.items():
                for figure, value in (("queued", f.queued), ("running", f.running),
                                      ("workers", f.workers)):
                    figures[figure].add_metric([answer.server, name], value)
        yield up
        yield from figures.values()

        db = self.database()
        yield GaugeMetricFamily("workerhost_database_up", "1 if the database answered the "
                                "scrape", value=1.0 if db.reachable else 0.0)
        if db.error:
            return
        letters = GaugeMetricFamily("workerhost_dead_letter_rows", "Dead letters waiting "
                                    "in the table", labels=["function"])
        for function, count in db.dead_letters.items():
            letters.add_metric([function], count)
        yield letters
        if db.outbox is not None:
            outbox = db.outbox
            yield GaugeMetricFamily("workerhost_outbox_rows", "Rows in the outbox",
                                    value=outbox.rows)
            yield GaugeMetricFamily("workerhost_outbox_due_rows", "Outbox rows due to be "
                                    "shipped now", value=outbox.due)
            yield GaugeMetricFamily("workerhost_outbox_leased_rows", "Outbox rows shipped "
                                    "and waiting for their job's effect", value=outbox.leased)
            yield GaugeMetricFamily("workerhost_outbox_delayed_rows", "Outbox rows of failed "
                                    "attempts waiting for their retry", value=outbox.delayed)
            yield GaugeMetricFamily("workerhost_outbox_oldest_age_seconds", "Age of the "
                                    "oldest ledger row (0 when empty)",
                                    value=outbox.oldest_age or 0.0)
            yield GaugeMetricFamily("workerhost_outbox_overdue_seconds", "How long the "
                                    "longest-waiting due row is past its due time (0 when "
                                    "none)", value=outbox.overdue or 0.0)  # fmt: skip
        yield from self._unserved(db)
        paused = GaugeMetricFamily("workerhost_function_paused", "1 while the function is "
                                   "paused on every host (`workerhost pause`)",
                                   labels=["function"])
        for function in db.paused:
            paused.add_metric([function], 1)
        yield paused
        if self.config.schedules:
            yield from self._schedules(db)

    def _unserved(self, db: status.DatabaseStatus) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        rows = GaugeMetricFamily("workerhost_ledger_unserved_rows", "Ledger rows written "
                                 "host.relay.unserved_after ago or earlier, not yet done",
                                 labels=["function"])
        oldest = GaugeMetricFamily("workerhost_ledger_unserved_oldest_age_seconds", "Age of "
                                   "the function's oldest such row", labels=["function"])
        for function, found in db.unserved.items():
            rows.add_metric([function], found.rows)
            oldest.add_metric([function], found.oldest_age)
        yield rows
        yield oldest

    def _schedules(self, db: status.DatabaseStatus) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        age = GaugeMetricFamily("workerhost_schedule_last_slot_age_seconds", "Seconds since "
                                "the schedule's last slot that fired (none until one has)",
                                labels=["schedule"])
        overdue = GaugeMetricFamily("workerhost_schedule_overdue_seconds", "How long the "
                                    "schedule's next slot is past due: 0 while a host leads "
                                    "it", labels=["schedule"])
        for found in status.schedules(self.config, db.schedules):
            if found.since_last is not None:
                age.add_metric([found.name], found.since_last)
            overdue.add_metric([found.name], found.overdue)
        yield age
        yield overdue


# -- the HTTP server -----------------------------------------------------------------------

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def make_app(config: Config, *, ours: Callable[[int], bool],
             directory: str | None = None) -> App:
    """/metrics (also /) for Prometheus, /healthz for load balancers and systemd."""
    from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess

    registry = CollectorRegistry()
    if directory:
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(QueueCollector(config))
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            healthy, body = check_health(config, ours=ours)
            start_response("200 OK" if healthy else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [json.dumps(body).encode() + b"\n"]
        result: Iterable[bytes] = metrics_app(environ, start_response)
        return result

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape stuck on a dead server must not hold up the exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the host's log


def main(config: Config) -> int:
    """Entry point of the metrics process (forked by the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    address = config.host.metrics
    if address is None:
        return 0
    directory = os.environ.get(ENV)
    if not directory:
        log.warning("metrics: job counters need a restart of the host; serving queue figures")
    app = make_app(config, ours=is_child_of(os.getppid()), directory=directory)
    try:
        server = make_server(address.host, address.port, app, _server_class(address.host),
                             _QuietHandler)
    except OSError as exc:
        log.error("metrics: cannot listen on %s: %s", address, exc.strerror or exc)
        return EXIT_START_FAILED
    server.timeout = POLL_INTERVAL
    log.info("metrics on http://%s/metrics, health on http://%s/healthz", address, address)
    while not stopping:
        server.handle_request()
    server.server_close()
    return 0


def _server_class(host: str) -> type[_Server]:
    """The server class for `host`: IPv4 or IPv6, as the address resolves."""
    try:
        family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    except OSError:
        family = socket.AF_INET  # let bind() say what is wrong with the address

    class Server(_Server):
        address_family = family

    return Server
