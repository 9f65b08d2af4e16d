"""What a handler receives: one Gearman job, its payload and its attempt number.

A job fired through the ledger names its row (store/schema.LEDGER) in its Gearman unique:
``L<id>:<token>``, where <token> is the row's random token, which no SQL account can read. The
worker runs a job only when the token is the row's, takes the payload and the job's own unique
(the trigger's event id, the row's unique_key, or ``workerhost-outbox-<id>``) from that row,
never from gearmand, and deletes the row in the transaction that commits the job's effect.
Whatever arrives in however many copies, a row's effect commits once: its attempts, back-off
and dead letter are counted per row.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
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
    REFUSED = "refused"  # nothing proved where it came from: recorded, never run
    SNOOZED = "snoozed"  # to run again later (the handler asked, or limits.rate): no attempt

    def __str__(self) -> str:  # the value, as a metric label or in a log line
        return self.value


_LEDGER_UNIQUE = re.compile(r"L([0-9]{1,20}):(.*)", re.DOTALL)
# How a trigger's payload ends on MariaDB, which keeps JSON_OBJECT's key order.
_EVENT_ID_TAIL = re.compile(rb'"event_id": "([0-9a-f-]{36})"}\Z')


def ledger_unique(ident: int, token: str) -> str:
    """The Gearman unique of ledger row `ident`, whose token is `token`."""
    return f"L{ident}:{token}"


def parse_unique(unique: str) -> tuple[int | None, str]:
    """(ledger row id or None, the rest: the proof of a ledger job, else the job's unique)
    of a Gearman unique."""
    match = _LEDGER_UNIQUE.fullmatch(unique)
    if match is None:
        return None, unique
    return int(match.group(1)), match.group(2)


def ledger_key(function: str, ident: int) -> bytes:
    """The key a ledger row's job counts its failed attempts under, whatever its unique."""
    return f"{function}\0L{ident}".encode()[:520]


def row_unique(payload: bytes, ident: int,
               decoded: Callable[[], Any] | None = None) -> str:
    """The unique of a ledger row written without one: its payload's event id, else one made
    of the row's id.

    A trigger with a single entry leaves unique_key NULL: a second UUID() would cost every
    INSERT a local variable, while the event id is already in the payload. `decoded` gives
    the payload decoded, when a job about to run has it (Job.json), so that MySQL's order of
    keys costs no second decode.
    """
    match = _EVENT_ID_TAIL.search(payload, max(0, len(payload) - 64))
    if match:
        return match.group(1).decode()
    if payload.startswith(b"{") and b'"event_id"' in payload:  # MySQL 8 reorders the keys
        try:
            found = decoded() if decoded is not None else json.loads(payload)
        except (ValueError, JobError):
            found = None
        event_id = found.get("event_id") if isinstance(found, dict) else None
        if isinstance(event_id, str) and 0 < len(event_id.encode()) < 64:
            return event_id
    # Anything else (a row written by hand).
    return f"workerhost-outbox-{ident}"


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value (strict JSON has no NaN or Infinity); "
                     "send null or a string instead")


# One decoder for every job: json.loads with any option builds a new one per call.
_STRICT = json.JSONDecoder(parse_constant=_not_json)


def strict_json(text: bytes | str) -> Any:
    """JSON as RFC 8259 has it: Python's decoder also takes NaN, Infinity and -Infinity,
    which would reach an sql: handler's statement as the bare words nan and inf. Bytes are
    decoded as json.loads decodes them (UTF-8, -16 or -32, told from the first bytes)."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    return _STRICT.decode(text)


@dataclass
class Job:
    """A job as a handler sees it. `payload` is the raw bytes; `json()` decodes them once."""

    function: str
    payload: bytes
    unique: str
    handle: str
    attempt: int = 1
    snoozes: int = 0  # how often it asked to run later (errors.Snooze), no attempt spent
    ledger: int | None = None  # the ledger row that proves where the job came from
    proof: str = ""  # the token a ledger job carries, which must be its row's
    unique_sent: str = ""  # the Gearman unique as it arrived
    _decoded: Any = field(default=None, init=False, repr=False)
    _is_decoded: bool = field(default=False, init=False, repr=False)

    @property
    def key(self) -> bytes:
        """Identity across retries and redeliveries: function and ledger row, or else function
        and unique (or the handle)."""
        if self.ledger is not None:
            return ledger_key(self.function, self.ledger)
        return f"{self.function}\0{self.unique or self.handle}".encode()[:520]

    def use_payload(self, payload: bytes) -> None:
        """Run with `payload` (the ledger row's) instead of the one gearmand handed out."""
        if payload != self.payload:
            self.payload, self._decoded, self._is_decoded = payload, None, False

    def json(self) -> Any:
        """The payload decoded as JSON; a JobError (not retried) when it is not JSON."""
        if not self._is_decoded:
            try:
                self._decoded = strict_json(self.payload)
            except (ValueError, RecursionError) as exc:
                # RecursionError: nested deeper than the decoder goes, which no retry changes.
                what = exc if isinstance(exc, ValueError) else "nested too deeply to decode"
                raise JobError(f"payload is not JSON ({what}): {self.payload[:80]!r}") from exc
            self._is_decoded = True
        return self._decoded

    def describe(self) -> str:
        return f"{self.function} handle={self.handle} unique={self.unique!r} attempt={self.attempt}"
