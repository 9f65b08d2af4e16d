"""The overview's charts: a day of per-minute samples, drawn as inline SVG.

The console's Sampler (sampling.py) feeds a History with what it reads anyway: the jobs each
function completed and failed between two readings of the host's metrics, and each count of
the ledger's backlog. The History keeps one slot per minute, a day of them, in a ring: its
size is bounded by MINUTES_KEPT slots of at most MAX_FUNCTIONS functions each, whatever runs.
It lives in the console process, which keeps it in the database too (samples.py): the slots
it changed are written at most once a minute, and read back when the console starts.

Charts are drawn here as geometry (points in a fixed view box) and written out by a template
(_chart.html), so that every name in them is escaped like the rest of the page; no script and
no library draws anything in the browser, and the page's Content-Security-Policy holds.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from workerhost.store.sample_table import LEDGER_ROW, SampleRow

MINUTES_KEPT = 24 * 60  # slots of the ring: a day of minutes
MAX_FUNCTIONS = 40  # functions a slot counts by name; the rest count as OTHERS
OTHERS = "(others)"
SPANS = {"hour": (60, 1), "day": (MINUTES_KEPT, 5)}  # minutes shown, minutes per point
WIDTH, HEIGHT = 600, 150  # the view box; the page scales it to its width
LEFT, RIGHT, TOP, BOTTOM = 46, 8, 8, 20  # margins for the axes' labels
DOTS_UP_TO = 120  # points per line drawn as dots too (the hour's; the day's are too many)
PALETTE = 8  # colour classes s0 .. s7 in console.css, used in turn


@dataclass
class Minute:
    """What the samples of one minute (since the epoch, UTC) said."""

    minute: int
    completed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    backlog: int | None = None  # the ledger's rows at the minute's last count
    oldest: float | None = None  # seconds: the oldest row's age at that count


class History:
    """A day of per-minute slots; fed by the Sampler's thread, read by pages."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.lock = threading.Lock()  # guards `slots`, every Minute in it, and `changed`
        self.slots: deque[Minute] = deque(maxlen=MINUTES_KEPT)
        self.changed: set[int] = set()  # minutes changed since the last take_changed()

    def _slot(self, at: float) -> Minute:
        minute = int(at // 60)
        if not self.slots or self.slots[-1].minute < minute:
            self.slots.append(Minute(minute))
        # A reading never lands in an older minute than the last one (the clock went back):
        # it counts in the newest slot instead.
        self.changed.add(self.slots[-1].minute)
        return self.slots[-1]

    def add_jobs(self, at: float, completed: Mapping[str, int],
                 failed: Mapping[str, int]) -> None:  # fmt: skip
        """Jobs done between the last reading of the host's metrics and this one, at `at`."""
        with self.lock:
            slot = self._slot(at)
            for counts, into in ((completed, slot.completed), (failed, slot.failed)):
                for function, jobs in counts.items():
                    if jobs:
                        _count(into, function, jobs)

    def add_ledger(self, at: float, rows: int, oldest: float | None) -> None:
        with self.lock:
            slot = self._slot(at)
            slot.backlog, slot.oldest = rows, oldest

    def take_changed(self) -> list[SampleRow]:
        """The rows of every slot changed since the last call (still in the ring), whole."""
        with self.lock:
            changed, self.changed = self.changed, set()
            rows: list[SampleRow] = []
            for slot in self.slots:
                if slot.minute not in changed:
                    continue
                for name in sorted({*slot.completed, *slot.failed}):
                    rows.append(SampleRow(slot.minute, name, slot.completed.get(name, 0),
                                          slot.failed.get(name, 0)))
                if slot.backlog is not None:
                    rows.append(SampleRow(slot.minute, LEDGER_ROW, backlog=slot.backlog,
                                          oldest=slot.oldest))
            return rows

    def mark_changed(self, minutes: Iterable[int]) -> None:
        """Minutes whose rows were taken, but not kept: taken again next time."""
        with self.lock:
            self.changed.update(minutes)

    def load(self, rows: Iterable[SampleRow]) -> None:
        """Slots read back from the database, for the minutes of the last day the ring does
        not hold yet (the console's start); their rows count as kept already."""
        first = int(self.wall() // 60) - MINUTES_KEPT + 1
        with self.lock:
            slots = {slot.minute: slot for slot in self.slots}
            loaded: dict[int, Minute] = {}
            for row in rows:
                if row.minute < first or row.minute in slots:
                    continue
                slot = loaded.setdefault(row.minute, Minute(row.minute))
                if row.function == LEDGER_ROW:
                    slot.backlog, slot.oldest = row.backlog, row.oldest
                    continue
                for jobs, into in ((row.completed, slot.completed), (row.failed, slot.failed)):
                    if jobs:
                        _count(into, row.function, jobs)
            self.slots = deque(sorted({**slots, **loaded}.values(),
                                      key=lambda slot: slot.minute), maxlen=MINUTES_KEPT)

    def charts(self, span: str) -> list[Chart]:
        """The four charts of the last hour or day (SPANS): completed and failed jobs per
        minute by function, the ledger's rows and its oldest row's age."""
        minutes, step = SPANS[span]
        now = int(self.wall() // 60)
        first = now - minutes + 1
        with self.lock:
            slots = {slot.minute: slot for slot in self.slots if slot.minute >= first}
            names = sorted({name for slot in slots.values()
                            for name in (*slot.completed, *slot.failed)})
            starts = list(range(first, now + 1, step))

            def per_minute(which: str, name: str) -> list[float | None]:
                """Jobs per minute of each point: the mean over its minutes sampled."""
                values: list[float | None] = []
                for start in starts:
                    seen = [slot for m in range(start, start + step) if (slot := slots.get(m))]
                    values.append(sum(getattr(slot, which).get(name, 0) for slot in seen)
                                  / len(seen) if seen else None)
                return values

            def last(which: str) -> list[float | None]:
                values: list[float | None] = []
                for start in starts:
                    found = [getattr(slot, which) for m in range(start, start + step)
                             if (slot := slots.get(m)) and getattr(slot, which) is not None]
                    values.append(found[-1] if found else None)
                return values

            completed = {name: per_minute("completed", name) for name in names}
            failed = {name: per_minute("failed", name) for name in names}
            backlog, oldest = last("backlog"), last("oldest")
        return [draw("completed", "jobs completed per minute", starts, completed, "jobs/min"),
                draw("failed", "jobs failed per minute", starts, failed, "jobs/min"),
                draw("backlog", "ledger rows", starts, {"rows": backlog}, "rows"),
                draw("oldest", "oldest ledger row's age", starts, {"age": oldest}, "s")]


def _count(into: dict[str, int], function: str, jobs: int) -> None:
    """Add `jobs` to `function`'s count of a slot, or to OTHERS' past MAX_FUNCTIONS names."""
    name = function if function in into or len(into) < MAX_FUNCTIONS else OTHERS
    into[name] = into.get(name, 0) + jobs


@dataclass(frozen=True)
class Line:
    name: str
    colour: int  # its class: s0 .. s7
    segments: tuple[str, ...]  # SVG polyline points, one string per run without gaps
    dots: tuple[tuple[float, float, str], ...]  # x, y and a title ("12:04 UTC: 30")


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    lines: tuple[Line, ...]
    y_ticks: tuple[tuple[float, str], ...]  # y in the view box, label
    x_ticks: tuple[tuple[float, str], ...]
    points: int  # values drawn, over every line: 0 says "no samples yet"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten at or above `value` (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(float(step * power) for step in (1, 2, 5, 10) if step * power >= value)


def label(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def clock(minute: int) -> str:
    return time.strftime("%H:%M", time.gmtime(minute * 60))


def draw(key: str, title: str, starts: Sequence[int],
         series: Mapping[str, Sequence[float | None]], unit: str) -> Chart:  # fmt: skip
    """A line per series over `starts` (minutes since the epoch), gaps where a value is None."""
    top = nice_ceiling(max((v for values in series.values() for v in values if v is not None),
                           default=0.0))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = max(len(starts) - 1, 1)

    def x(index: int) -> float:
        return round(LEFT + inner_w * index / span, 1)

    def y(value: float) -> float:
        return round(TOP + inner_h * (1 - value / top), 1)

    lines, points = [], 0
    for colour, (name, values) in enumerate(sorted(series.items())):
        segments: list[str] = []
        run: list[str] = []
        dots: list[tuple[float, float, str]] = []
        for index, value in enumerate(values):
            if value is None:
                if run:
                    segments.append(" ".join(run))
                run = []
                continue
            points += 1
            run.append(f"{x(index)},{y(value)}")
            if len(values) <= DOTS_UP_TO:
                dots.append((x(index), y(value),
                             f"{name}, {clock(starts[index])} UTC: {label(value)} {unit}"))
        if run:
            segments.append(" ".join(run))
        lines.append(Line(name, colour % PALETTE, tuple(segments), tuple(dots)))
    y_ticks = tuple((y(top * part), label(top * part)) for part in (0.0, 0.5, 1.0))
    every = max(len(starts) // 4, 1)
    x_ticks = tuple((x(index), clock(starts[index])) for index in range(0, len(starts), every))
    return Chart(key, title, tuple(lines), y_ticks, x_ticks, points)
