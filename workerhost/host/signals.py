"""Stop and reload requests of `workerhost run`, recorded from its first moment.

A module of its own with nothing but the standard library's signal module, so that the command
line can install it before it imports anything heavy, reads the configuration, or waits for a
slow database: a SIGTERM or SIGHUP then is kept for the supervisor's loop, not fatal.
"""

from __future__ import annotations

import signal


class Signals:
    """How many stop signals (SIGTERM, SIGINT) came, and whether a reload (SIGHUP) waits."""

    def __init__(self) -> None:
        self.stops = 0
        self.reload = False

    def install(self) -> Signals:
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        signal.signal(signal.SIGHUP, self.on_reload)
        return self

    def on_stop(self, signum: int, _frame: object) -> None:
        self.stops += 1

    def on_reload(self, signum: int, _frame: object) -> None:
        self.reload = True
