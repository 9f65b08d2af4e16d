"""What a handler receives: one Gearman job, its payload and its attempt number.

A job fired by a trigger names its ledger row (tables.OUTBOX) in its Gearman unique:
``L<id>:<unique>``, where <unique> is the trigger's event id (or, for a row written otherwise,
its unique_key or ``workerhost-outbox-<id>``). The worker takes the payload from that row,
never from gearmand, and deletes the row in the transaction that commits the job's effect.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any

from workerhost.errors import JobError


class Outcome(str, enum.Enum):
    """How a job ended, in the worker's log, the failure records and the metrics alike."""

    COMPLETE = "complete"  # the handler's effect committed; gearmand heard WORK_COMPLETE
    RETRY = "retry"  # it failed; a later attempt is scheduled
    DEAD = "dead"  # it failed for the last time: a dead letter
    TIMEOUT = "timeout"  # it ran past its timeout; its worker was killed
    CRASHED = "crashed"  # its worker process died while running it
    OVER_MEMORY = "over_memory"  # its worker passed the handler's max_memory and was killed
    DONE_BEFORE = "done_before"  # its ledger row was gone: done already, or rolled back
    REFUSED = "refused"  # nothing proved where it came from: a dead letter, never run

    def __str__(self) -> str:  # the value, as a metric label or in a log line
        return self.value


_LEDGER_UNIQUE = re.compile(r"L([0-9]{1,20}):(.*)", re.DOTALL)


def ledger_unique(ident: int, unique: str) -> str:
    """The Gearman unique of ledger row `ident`, whose own unique is `unique`."""
    return f"L{ident}:{unique}"


def parse_unique(unique: str) -> tuple[int | None, str]:
    """(ledger row id or None, the job's own unique) of a Gearman unique."""
    match = _LEDGER_UNIQUE.fullmatch(unique)
    if match is None:
        return None, unique
    return int(match.group(1)), match.group(2)


@dataclass
class Job:
    """A job as a handler sees it. `payload` is the raw bytes; `json()` decodes them once."""

    function: str
    payload: bytes
    unique: str
    handle: str
    attempt: int = 1
    ledger: int | None = None  # the ledger row that proves where the job came from
    _decoded: Any = field(default=None, init=False, repr=False)
    _is_decoded: bool = field(default=False, init=False, repr=False)

    @property
    def key(self) -> bytes:
        """Identity across retries and redeliveries: function and unique (or the handle)."""
        return f"{self.function}\0{self.unique or self.handle}".encode()[:520]

    def use_payload(self, payload: bytes) -> None:
        """Run with `payload` (the ledger row's) instead of the one gearmand handed out."""
        if payload != self.payload:
            self.payload, self._decoded, self._is_decoded = payload, None, False

    def json(self) -> Any:
        """The payload decoded as JSON; a JobError (not retried) when it is not JSON."""
        if not self._is_decoded:
            try:
                self._decoded = json.loads(self.payload)
            except (ValueError, RecursionError) as exc:
                # RecursionError: nested deeper than the decoder goes, which no retry changes.
                what = exc if isinstance(exc, ValueError) else "nested too deeply to decode"
                raise JobError(f"payload is not JSON ({what}): {self.payload[:80]!r}") from exc
            self._is_decoded = True
        return self._decoded

    def describe(self) -> str:
        return f"{self.function} handle={self.handle} unique={self.unique!r} attempt={self.attempt}"
