"""What a handler receives: one Gearman job, its payload and its attempt number."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from workerhost.errors import JobError


@dataclass
class Job:
    """A job as a handler sees it. `payload` is the raw bytes; `json()` decodes them once."""

    function: str
    payload: bytes
    unique: str
    handle: str
    attempt: int = 1
    _decoded: Any = field(default=None, init=False, repr=False)
    _is_decoded: bool = field(default=False, init=False, repr=False)

    @property
    def key(self) -> bytes:
        """Identity across retries and redeliveries: function and unique (or the handle)."""
        return f"{self.function}\0{self.unique or self.handle}".encode()[:520]

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
