"""What happens to jobs and processes, as events that the host's processes emit.

The worker, the supervisor, the relay and the scheduler say what happened (`emit(JobsFinished(
...))`) and nothing else; whoever wants to know subscribes: metrics.py's counters while
`collecting()` runs, logs.py's lines about jobs that failed or were refused. So counting and
logging are added or changed in one place each, as dramatiq's middleware and supervisor's
events do it, instead of calls woven through every path a job can take.

Listeners run in the emitting process and thread, in the order they subscribed; a forked child
keeps its parent's. An event with no listener costs one call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workerhost.model.job import Job, Outcome


@dataclass(frozen=True, slots=True)
class JobsStarted:
    """A handler begins to run `count` jobs of `function` in this process, together (a batch
    of sql: jobs sent as one query)."""

    function: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class JobsEnded:
    """The handler run begun by the last JobsStarted is over, however it ended."""

    function: str


@dataclass(frozen=True, slots=True)
class JobsFinished:
    """`count` jobs of `function` reached `outcome`, committed: once each. `job` and `error`
    are given for one job that failed or was refused (what a log line names); `ran` is False
    for one that ended without its handler running (refused, or dead-lettered at once)."""

    function: str
    outcome: Outcome
    count: int = 1
    job: Job | None = None
    error: str | None = None
    ran: bool = True


@dataclass(frozen=True, slots=True)
class JobLost:
    """The supervisor's count of a job whose process ended under it (timeout, crashed)."""

    handler: str
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class WorkerRestarted:
    """A child process was restarted after an unexpected exit."""

    handler: str


@dataclass(frozen=True, slots=True)
class ProcessGone:
    """A child process exited: its live figures go with it (its counts stay)."""

    pid: int


@dataclass(frozen=True, slots=True)
class ScheduleLooked:
    """One look at a schedule, once its transaction committed."""

    schedule: str
    fired: int
    missed: int
    skipped: int


@dataclass(frozen=True, slots=True)
class UnservedShipped:
    """The relay shipped `rows` rows of `function` again that waited unserved_after or more."""

    function: str
    rows: int


Event = (JobsStarted | JobsEnded | JobsFinished | JobLost | WorkerRestarted | ProcessGone
         | ScheduleLooked | UnservedShipped)
Listener = Callable[[Event], None]

_listeners: list[Listener] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call `listener` with every event from now on; returns what unsubscribes it."""
    _listeners.append(listener)

    def unsubscribe() -> None:
        if listener in _listeners:
            _listeners.remove(listener)

    return unsubscribe


def emit(event: Event) -> None:
    for listener in tuple(_listeners):
        listener(event)
