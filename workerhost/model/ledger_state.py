"""A ledger row's state: its name, and the SQL condition on the row's columns that selects it.

A row of the ledger (`workerhost_outbox`) has no state column, so that a trigger writes nothing
but the job: its state follows from `not_before` (when it may ship next) and `ships` (how often
it was shipped since it last became due). Every module that counts, filters or shows states
(the store, `workerhost status` and `jobs`, the console, the metrics) reads them here, so that
a state means the same thing everywhere.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

# A paused function's rows wait here (not_before), so that no claim or relay poll sees them
# until `workerhost resume` makes them due again.
PARKED = "9999-12-31 00:00:00"


class LedgerState(str, Enum):
    DUE = "due"  # may ship now: the relay ships it, or a worker runs the copy it holds
    LEASED = "leased"  # shipped, and its lease runs: it ships again only if the lease ends
    DELAYED = "delayed"  # a retry or a snooze waiting out its delay, or enqueued for later
    PAUSED = "paused"  # its function is paused (parked until resumed)

    @property
    def condition(self) -> str:
        """The SQL condition on a ledger row's columns that holds in this state only."""
        return _CONDITIONS[self]

    @classmethod
    def of(cls, not_before: datetime, due: object, ships: int) -> LedgerState:
        """The state of a row read with `not_before <= NOW(6)` as `due`."""
        if not_before.year == 9999:
            return cls.PAUSED
        if due:
            return cls.DUE
        return cls.LEASED if ships else cls.DELAYED


_CONDITIONS = {
    LedgerState.DUE: "not_before <= NOW(6)",
    LedgerState.LEASED: "not_before > NOW(6) AND ships > 0",
    LedgerState.DELAYED: f"not_before > NOW(6) AND ships = 0 AND not_before < '{PARKED}'",
    LedgerState.PAUSED: f"not_before = '{PARKED}'",
}
STATES = tuple(state.value for state in LedgerState)  # as the CLI and the console offer them
