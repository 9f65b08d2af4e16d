"""The console's Sampler: the two figures that need a whole table or a slow answer, read
in a thread of their own so that no page waits for them: the ledger's backlog (counted in id
ranges, so no statement holds the table for long) and the host's job rates (its /metrics
endpoint reads the ledger too on every scrape). It reads every SAMPLE_EVERY seconds while
someone looks and every HISTORY_EVERY seconds otherwise, so that the overview's charts
(charts.py) have no gaps; each reading also goes into their History, which it keeps in the
database (samples.py). Pages show its latest reading with its age.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from workerhost.config.converters import Server
from workerhost.config.settings import Config
from workerhost.console.charts import History
from workerhost.console.deadlines import PAGE_DEADLINE, database_params
from workerhost.console.samples import Keeper
from workerhost.observe import logs
from workerhost.store import ledger_pages
from workerhost.store.db import RUN_ERRORS, Database

LEDGER_CHUNK = 100_000  # ids the Sampler counts per statement (about 0.15 s at a million rows)
SAMPLE_EVERY = 5.0  # seconds between two readings of the Sampler, at least
# ... and at least this many times as long as the last count of the ledger took, so that a
# big ledger is not counted all the time.
SAMPLE_SPACING = 4.0
IDLE_AFTER = 30.0  # seconds after the last page that asked, the Sampler slows down
HISTORY_EVERY = 60.0  # seconds between two readings while nobody looks: a point a minute
RATE_WINDOW = 60.0  # seconds of metrics the rates are measured over
SCRAPE_TIMEOUT = 5.0  # the host's /metrics answer waits for its own database queries
FAILED = ("retry", "dead", "refused")  # outcomes that are a failed attempt, each counted once


@dataclass(frozen=True)
class LedgerCount:
    """The ledger's backlog as the Sampler last counted it."""

    rows: int
    due: int
    leased: int
    delayed: int
    oldest_age: float | None  # seconds since the oldest row was written, at the count
    overdue: float | None  # seconds the longest-waiting due row was past its due time
    counted_at: float  # time.time() when the count ended
    took: float  # seconds the count took


@dataclass(frozen=True)
class Rates:
    """Jobs per minute by function, from two readings of the host's metrics."""

    completed: Mapping[str, float]
    failed: Mapping[str, float]
    seconds: float  # the span the rates are measured over
    completed_jobs: Mapping[str, int]  # the jobs behind the rates, over `seconds`
    failed_jobs: Mapping[str, int]
    # Seconds since the newer of the two readings: figures that stopped being read (the
    # host's metrics, or the console's sampler, stalled) say how old they are.
    age: float = 0.0


def metrics_url(address: Server) -> str:
    """Where this machine reaches the host's metrics (a wildcard listen address is here)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address.host, address.host)
    return f"http://{Server(host, address.port)}/metrics"


def job_counts(text: str) -> dict[tuple[str, str], float]:
    """workerhost_jobs_total by (function, outcome), from a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "workerhost_jobs_total":
                key = (sample.labels.get("function", ""), sample.labels.get("outcome", ""))
                counts[key] = sample.value
    return counts


def rates_between(old: tuple[float, Mapping[tuple[str, str], float]],
                  new: tuple[float, Mapping[tuple[str, str], float]]) -> Rates:
    """Per-minute rates from two readings; a counter that went down (the host restarted)
    counts from zero."""
    seconds = max(new[0] - old[0], 1e-9)
    completed: dict[str, int] = {}
    failed: dict[str, int] = {}
    for (function, outcome), value in new[1].items():
        before = old[1].get((function, outcome), 0.0)
        delta = round(value - before if value >= before else value)
        if outcome == "complete":
            completed[function] = completed.get(function, 0) + delta
        elif outcome in FAILED:
            failed[function] = failed.get(function, 0) + delta
    return Rates({function: n * 60 / seconds for function, n in completed.items()},
                 {function: n * 60 / seconds for function, n in failed.items()},
                 seconds, completed, failed)


class Sampler:
    """Reads the ledger's backlog and the host's job counters in a thread: often while
    wanted, once a minute otherwise."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic,
                 scrape: Callable[[str], str] | None = None,
                 history: History | None = None) -> None:  # fmt: skip
        self.config = config
        self.clock = clock
        self.scrape = scrape or _scrape
        self.history = history or History()
        self.keeper = Keeper(self.history, clock)
        self.wake = threading.Event()  # set by a page after a quiet spell: read at once
        self.lock = threading.Lock()  # guards every attribute below
        self.ledger: LedgerCount | None = None
        self.ledger_error: str | None = None
        self.readings: deque[tuple[float, dict[tuple[str, str], float]]] = deque()
        self.metrics_error: str | None = None
        self.last_wanted = -IDLE_AFTER
        self.thread: threading.Thread | None = None

    def want(self) -> bool:
        """A page shows the figures: read them often for IDLE_AFTER seconds more. True when
        this started the readings afresh (the first page, or after a quiet spell)."""
        with self.lock:
            quiet = self.clock() - self.last_wanted > IDLE_AFTER
            self.last_wanted = self.clock()
        if quiet:
            self.wake.set()
        return self.start() or quiet

    def start(self) -> bool:
        """Start the readings, unless they run already; True when this started them."""
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return False
            self.thread = threading.Thread(target=self._loop, name="console-sampler",
                                           daemon=True)
            self.thread.start()
            return True

    def wait_first(self, timeout: float) -> None:
        """Give a first reading up to `timeout` to arrive (a small ledger counts at once)."""
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            with self.lock:
                if self.ledger is not None or self.ledger_error is not None:
                    return
            time.sleep(0.01)

    def rates(self) -> tuple[Rates | None, str | None]:
        if self.config.host.metrics is None:
            return None, ("the host serves no metrics (host.metrics is not set): rates are "
                          "left out")
        with self.lock:
            if self.metrics_error:
                return None, self.metrics_error
            if not self.readings:
                return None, "measuring: waiting for the first reading of the host's metrics"
            if len(self.readings) < 2:
                return None, ("measuring: one reading of the host's metrics so far; rates "
                              "show after the next")
            found = rates_between(self.readings[0], self.readings[-1])
            return replace(found, age=self.clock() - self.readings[-1][0]), None

    def _loop(self) -> None:
        db = Database(database_params(self.config))
        try:
            self.keeper.restore(db)
            while True:
                self.wake.clear()
                self._count_ledger(db)
                self._read_metrics()
                self.keeper.keep(db)
                with self.lock:
                    took = self.ledger.took if self.ledger is not None else 0.0
                    watched = self.clock() - self.last_wanted <= IDLE_AFTER
                self.wake.wait(max(SAMPLE_EVERY if watched else HISTORY_EVERY,
                                   SAMPLE_SPACING * took))
        finally:
            db.close()

    def _count_ledger(self, db: Database) -> None:
        started = time.monotonic()
        try:
            count = _count(db, started)
        except RUN_ERRORS as exc:
            db.reset()
            with self.lock:
                self.ledger_error = logs.mask(str(exc), self.config.database.password)
            return
        with self.lock:
            self.ledger, self.ledger_error = count, None
        self.history.add_ledger(count.counted_at, count.rows, count.oldest_age)

    def _read_metrics(self) -> None:
        address = self.config.host.metrics
        with self.lock:
            # Woken by a page just after a reading: a rate over a moment says nothing.
            recent = bool(self.readings) and (
                self.clock() - self.readings[-1][0] < SAMPLE_EVERY / 2)
        if address is None or recent:
            return
        url = metrics_url(address)
        try:
            counts = job_counts(self.scrape(url))
        except (OSError, ValueError) as exc:
            with self.lock:
                self.metrics_error = f"the host's metrics at {url} do not answer: {exc}"
            return
        now = self.clock()
        with self.lock:
            self.metrics_error = None
            if self.readings:
                jobs = rates_between(self.readings[-1], (now, counts))
                self.history.add_jobs(self.history.wall(), jobs.completed_jobs, jobs.failed_jobs)
            self.readings.append((now, counts))
            while len(self.readings) > 2 and now - self.readings[1][0] >= RATE_WINDOW:
                self.readings.popleft()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as answer:
        text: str = answer.read().decode("utf-8", "replace")
    return text


def _count(db: Database, started: float) -> LedgerCount:
    """The ledger's backlog, one LEDGER_CHUNK of ids per statement."""
    deadline = started + PAGE_DEADLINE
    span = db.run(ledger_pages.ledger_ids, deadline=deadline)
    rows = due = leased = delayed = 0
    oldest: datetime | None = None
    earliest_due: datetime | None = None
    now: datetime | None = None
    if span is not None:
        low = span[0] - 1
        while low < span[1]:
            high = min(low + LEDGER_CHUNK, span[1])
            def chunk(conn: Any, a: int = low, b: int = high) -> tuple[Any, ...]:
                return ledger_pages.ledger_figures_between(conn, a, b)

            n, d, ls, dl, first, due_at, now = db.run(chunk, deadline=time.monotonic()
                                                      + PAGE_DEADLINE)
            rows, due, leased, delayed = rows + n, due + int(d), leased + int(ls), delayed + int(dl)
            oldest = first if oldest is None or (first and first < oldest) else oldest
            earliest_due = (due_at if earliest_due is None or (due_at and due_at < earliest_due)
                            else earliest_due)
            low = high

    def age(then: datetime | None) -> float | None:
        return None if then is None or now is None else max(0.0, (now - then).total_seconds())

    return LedgerCount(rows, due, leased, delayed, age(oldest), age(earliest_due), time.time(),
                       time.monotonic() - started)
