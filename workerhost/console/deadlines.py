"""How long the console waits for its database: every connection's settings and every page's
deadline, so that a hung database gives an error page within seconds instead of holding a
server thread.
"""

from __future__ import annotations

from workerhost.config.settings import Config

PAGE_DEADLINE = 2.0  # seconds a page's database work may retry through transient errors
# Seconds one database call of the console may take (to connect, to send, to read an
# answer): a hung database gives an error page after it, instead of holding a server thread
# for good (four such pages held every thread, and then even the login page hung).
DB_TIMEOUT = 3


def database_params(config: Config) -> dict[str, object]:
    """Connection settings of every database connection of the console: DB_TIMEOUT on
    each call."""
    params = config.database.connect_kwargs()
    params["connection_timeout"] = min(int(str(params["connection_timeout"])), DB_TIMEOUT)
    params["read_timeout"] = params["write_timeout"] = DB_TIMEOUT
    return params
