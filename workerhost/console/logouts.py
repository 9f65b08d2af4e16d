"""The sessions logged out on any console of the database, followed into this one's memory.

Each logout is written to `workerhost_logouts` (store/logout_table.py) by the console that
took it, and kept in its own memory (auth.Revoked), which every request checks without a
read. Other consoles with the same secret key (behind one balancer) take the same cookies: so
each console reads the table when it starts, and again every FOLLOW_EVERY seconds, from a
thread of its own. A copy of a cookie logged out on one console is refused on every other
within FOLLOW_EVERY seconds; no request ever waits on that read.
"""

from __future__ import annotations

import logging
import threading
import time

from workerhost.config.settings import Config
from workerhost.console import auth, deadlines
from workerhost.observe import logs
from workerhost.store import logout_table
from workerhost.store.db import RUN_ERRORS, Database

log = logging.getLogger("workerhost.console")

# Seconds between two reads of the other consoles' logouts: how long a copy of a cookie
# logged out elsewhere may still be taken here. The read is one indexed SELECT of the few
# sessions logged out in the last 12 hours.
FOLLOW_EVERY = 2.0


class LogoutFollower:
    """Reads the logouts of every console into `revoked`: once at start, then in a thread."""

    def __init__(self, config: Config, revoked: auth.Revoked) -> None:
        self.config = config
        self.revoked = revoked
        self.db = Database(deadlines.database_params(config))
        self.failing = False  # the last read failed (and said so once)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def restore(self) -> bool:
        """The sessions logged out so far; False (said once) when the database did not
        answer: until it does, a copy of such a session's cookie is taken again."""
        try:
            ended = self.db.run(lambda conn: logout_table.logouts(conn, time.time()),
                                deadline=time.monotonic() + deadlines.PAGE_DEADLINE)
        except RUN_ERRORS as exc:
            self.db.reset()
            if not self.failing:
                log.warning("console: the sessions logged out on this or another console are "
                            "not known (a copy of such a session's cookie is taken until the "
                            "database answers): %s",
                            logs.mask(str(exc), self.config.database.password))
            self.failing = True
            return False
        if self.failing:
            log.info("console: the sessions logged out are read again")
        self.failing = False
        self.revoked.load(ended)
        return True

    def start(self) -> None:
        """Read once now, then every FOLLOW_EVERY seconds until close()."""
        self.restore()
        self.thread = threading.Thread(target=self._follow, name="console-logouts",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(deadlines.DB_TIMEOUT * 2)
        self.db.close()

    def _follow(self) -> None:
        while not self.stop.wait(FOLLOW_EVERY):
            self.restore()
