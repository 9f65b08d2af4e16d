"""The operator console: queues, workers, the ledger and dead letters in a browser.

`workerhost console -c FILE` serves it on its own; `workerhost run` serves it as a supervised
child process (like the metrics server, and for the same reason: the supervisor forks all
the time, and a fork taken while a server thread holds a lock would hand the new worker a
lock nobody releases) when `host.console.listen` is set. Either way it is a Flask
application (app.py) behind waitress, a production WSGI server with a thread pool, reading
what it shows through figures.py and checking visitors through auth.py.

What it keeps in the database, beside what its pages read (figures.py says how those stay
cheap): its charts' samples (`workerhost_samples`, samples.py), a row per minute and
function with jobs that minute, and one for the ledger's counts, for a day: with five
functions about 9,000 rows and 1.5 MB, and at most 42 rows a minute (40 functions by name,
the others together, the ledger) for a day and an hour, about 63,000 rows and 6 MB. Its
sampler writes them in one REPLACE a minute at most (the minutes changed since the last
write: the one that ended and the one under way, each about (functions + 1) rows), adds a
DELETE of the rows older than a day once an hour, and reads them back in one SELECT when the
console starts. And the sessions logged out (`workerhost_logouts`, auth.Revoked): a row per
logout for the 12 hours its session would have lasted, written by the logout (a DELETE of the
rows run out and a REPLACE), read when the console starts and every two seconds after, from a
thread of its own, so that a logout on one console of the database ends the session on all
(logouts.py); checking a session on a request reads nothing.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from workerhost.config.converters import Server, is_loopback
from workerhost.config.settings import DEFAULT_CONSOLE_PORT, Config
from workerhost.errors import WorkerHostError
from workerhost.exitcodes import EXIT_START_FAILED
from workerhost.observe import logs

log = logging.getLogger("workerhost.console")

DEFAULT_LISTEN = Server("127.0.0.1", DEFAULT_CONSOLE_PORT)
THREADS = 4  # requests served at once; a slow one (a bulk retry) does not hold up the rest


class ListenError(WorkerHostError):
    """The console cannot listen where it was asked to."""


class _Stop(SystemExit):
    """SIGTERM or SIGINT: leave the server's loop.

    A SystemExit, because waitress's loop lets only those (and KeyboardInterrupt) through: any
    other exception raised while a connection's handler runs, as a signal's can be, is logged
    and swallowed there, and the console would go on serving after SIGTERM.
    """


def exposure_problem(listen: Server, config: Config) -> str | None:
    """Why the console may not listen at `listen`, or None (config/load.py checks its own key;
    this checks --listen too)."""
    if config.host.console.users or is_loopback(listen.host):
        return None
    return (f"{listen} is reachable from other machines, and no users are configured: "
            "add host.console.users, or listen on 127.0.0.1")


def serve(config: Config, listen: Server) -> None:
    """Serve the console at `listen` until SIGTERM or SIGINT; ListenError if it cannot."""
    from waitress.server import create_server

    from workerhost.console.app import create_app

    problem = exposure_problem(listen, config)
    if problem:
        raise ListenError(problem)
    console = config.host.console
    logs.redact(config.database.password, console.secret_key,
                *(u.password for u in console.users.values()))
    app = create_app(config, listen)
    try:
        # The proxy headers reach the application, which believes them from
        # host.console.trusted_proxies only (proxies.py); waitress's own setting takes one
        # address, not networks.
        server: Any = create_server(app, host=listen.host, port=listen.port, threads=THREADS,
                                    ident="workerhost-console",
                                    clear_untrusted_proxy_headers=False)  # fmt: skip
    except OSError as exc:
        raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc

    def stop(*_: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("console on http://%s/ (%s)", listen,
             (f"{len(console.users)} users; logins " + (
                 "kept across restarts (secret_key)" if console.secret_key else
                 "end when the console stops: set host.console.secret_key_file to keep them"))
             if console.users else "no users: anyone on this machine may look, nobody may act")
    try:
        server.run()
    except _Stop:
        pass
    finally:
        server.close()


def main(config: Config) -> int:
    """Entry point of the console process forked by `workerhost run`."""
    listen = config.host.console.listen
    if listen is None:
        return 0
    try:
        serve(config, listen)
    except ListenError as exc:
        log.error("console: %s", exc)
        return EXIT_START_FAILED
    return 0
