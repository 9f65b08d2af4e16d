"""The console's pages, as a Flask application (actions.py adds the actions' views).

Every request passes `_before` first: static files and the login page aside, a visitor
without a login is refused (a browser is sent to the login page, a script gets 401). The
console takes four methods: GET, HEAD and OPTIONS, which change nothing (an action's GET is
its confirmation page, a view of its own), and POST, the only one an action answers to, which
must carry a CSRF token (Flask-WTF's, checked in `_before` before any view runs); any other
method is refused with 405 before it reaches a view. Actions are admin-only and logged with
the user (actions.py). api.py serves what the pages show as JSON, behind the same logins.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from flask import (
    Flask,
    Response,
    abort,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as AnyResponse

from workerhost.config.converters import Server
from workerhost.config.settings import Config
from workerhost.console import (
    actions,
    api,
    auth,
    charts,
    deadlines,
    figures,
    logouts,
    processes,
    query,
    sampling,
)
from workerhost.console.proxies import TrustedProxies
from workerhost.console.throttle import LoginThrottle
from workerhost.model.ledger_state import STATES
from workerhost.observe import logs
from workerhost.store import logout_table
from workerhost.store.db import RUN_ERRORS, Database

log = logging.getLogger("workerhost.console")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # methods no view changes anything for
OPEN = frozenset({"login", "static"})  # endpoints that need no login
REFRESH_SECONDS = 3  # how often the overview's figures are fetched again
SECURITY_HEADERS = {
    # No inline script or style: console.js and console.css are the page's only code.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
HSTS = "max-age=31536000"  # a year of HTTPS only, sent when the request came over TLS
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")  # Host: names of loopback, without users


class _Sessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, the cookie Secure whenever the request came over TLS
    (to the console, or to a trusted proxy: proxies.py), so it never travels in the clear."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def create_app(config: Config, listen: Server) -> Flask:
    app = Flask("workerhost.console")
    app.session_interface = _Sessions()
    app.wsgi_app = TrustedProxies(app.wsgi_app,  # type: ignore[method-assign]
                                  config.host.console.trusted_proxies)
    app.config.update(
        # host.console.secret_key(_file): sessions outlive a restart, and every console
        # process with the same key (behind one balancer) accepts them. Without it, a fresh
        # key per process: a restart of the console logs everyone out.
        SECRET_KEY=config.host.console.secret_key or os.urandom(32),
        # One name per port: cookies are per host, not per port, and two consoles on one
        # host with one name would each take the other's cookie for a bad one (a logout).
        SESSION_COOKIE_NAME=f"workerhost_console_{listen.port}",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the login's session
        # Checked in _before for every method that is not safe, not only for the methods
        # Flask-WTF lists (which left HEAD out, and HEAD reached the actions).
        WTF_CSRF_CHECK_DEFAULT=False,
    )
    csrf = CSRFProtect(app)
    users = config.host.console.users
    throttle = LoginThrottle()
    revoked = auth.Revoked()
    # Logouts of every console on the database (another behind the same balancer takes the
    # same cookies): read now, then followed from a thread of their own.
    logouts.LogoutFollower(config, revoked).start()
    # Without users, any page of any site whose DNS name is made to point at 127.0.0.1 (DNS
    # rebinding) would be same-origin with the console: answer only to its own names.
    hosts = {*(f"{name}:{listen.port}" for name in LOOPBACK_NAMES),
             *config.host.console.allowed_hosts}
    sampler = sampling.Sampler(config)
    sampler.start()  # the charts' history is read from the start, whoever looks
    secrets = figures.secret_spellings(config)  # what pages mask, and searches never see
    local = threading.local()  # a database connection per server thread

    def database() -> Database:
        db: Database | None = getattr(local, "db", None)
        if db is None:
            db = local.db = Database(deadlines.database_params(config))
        return db

    @contextmanager
    def reading() -> Iterator[Database]:
        db = database()
        try:
            yield db
        except RUN_ERRORS as exc:
            db.reset()
            abort(503, description="the database did not answer: "
                  + logs.mask(str(exc), config.database.password))

    @app.before_request
    def _before() -> AnyResponse | None:
        if not users and request.host.lower() not in hosts:
            abort(421, description=f"this console answers to {', '.join(sorted(hosts))} "
                  "only (host.console.allowed_hosts)")
        if request.method not in SAFE_METHODS and request.method != "POST":
            abort(405)
        if request.endpoint not in OPEN:
            visitor = auth.identify(users, throttle, revoked)
            if visitor is None:
                return auth.refuse()
            g.visitor = visitor
        if request.method == "POST":
            csrf.protect()
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if request.is_secure:
            response.headers["Strict-Transport-Security"] = HSTS
        return response

    @app.template_filter("in_zone")
    def _in_zone(moment: datetime, zone: str) -> str:
        """A moment as the schedule's time zone reads it, to the second."""
        return moment.astimezone(ZoneInfo(zone)).isoformat(sep=" ", timespec="seconds")

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {"visitor": g.get("visitor"), "refresh": REFRESH_SECONDS,
                "logins": bool(users), "now": time.time}

    # -- logging in ----------------------------------------------------------------------
    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if not users:
            return redirect(url_for("overview"))
        failed = False
        if request.method == "POST":
            user = auth.log_in_as(users, throttle, request.form.get("user", ""),
                                  request.form.get("password", ""))
            if user is not None:
                auth.log_in(user)
                log.info("console: %s logged in from %s", user.name, request.remote_addr)
                return redirect(auth.safe_next(request.args.get("next")))
            log.warning("console: a failed login as %r from %s",
                        request.form.get("user", "")[:64], request.remote_addr)
            failed = True
        return render_template("login.html", failed=failed), 401 if failed else 200

    @app.post("/logout")
    def logout() -> Any:
        ended = auth.log_out(revoked)
        if ended is not None:
            sid, until = ended
            try:
                database().run(lambda conn: logout_table.add_logout(conn, sid, until,
                                                                    time.time()),
                               deadline=time.monotonic() + deadlines.PAGE_DEADLINE)
            except RUN_ERRORS as exc:
                database().reset()
                log.warning("console: a logout is kept by this console process alone (a "
                            "restart forgets it): %s",
                            logs.mask(str(exc), config.database.password))
        return redirect(url_for("login"))

    @app.get("/csrf-token")
    def csrf_token() -> Any:
        """For scripts: the token their POSTs need, bound to the session cookie it sets."""
        return jsonify(csrf_token=generate_csrf())

    # -- looking -------------------------------------------------------------------------
    def _span() -> str:
        span = request.args.get("span") or "hour"
        if span not in charts.SPANS:
            abort(400, description=f"span is one of {', '.join(charts.SPANS)}")
        return span

    @app.get("/")
    def overview() -> str:
        span = _span()
        with reading() as db:
            return render_template("overview.html", o=figures.overview(config, db, sampler),
                                   span=span, charts=sampler.history.charts(span))

    @app.get("/live")
    def live() -> str:
        """The overview's figures alone, fetched again every few seconds by console.js."""
        span = _span()
        with reading() as db:
            return render_template("_live.html", o=figures.overview(config, db, sampler),
                                   span=span, charts=sampler.history.charts(span))

    @app.get("/dead-letters")
    def dead_letters() -> str:
        function, search = query.filter_of()
        before = request.args.get("before", type=int)
        with reading() as db:
            page = figures.dead_letter_page(db, function, search, before, secrets)
            functions = figures.functions(config, db)
        return render_template("dead_letters.html", page=page, function=function,
                               search=search, before=before, functions=functions)

    @app.get("/dead-letters/<int:ident>")
    def dead_letter(ident: int) -> str:
        with reading() as db:
            letter = figures.dead_letter(db, ident)
        if letter is None:
            abort(404, description=f"no dead letter with id {ident} (retried or purged?)")
        return render_template("dead_letter.html", letter=letter,
                               payload=figures.pretty_payload(letter.payload))

    @app.get("/ledger")
    def ledger() -> str:
        state, after, function, search, newest = query.ledger_filter()
        with reading() as db:
            lines, following = figures.ledger_page(db, state, after, function, search,
                                                   secrets, newest)
            functions = figures.functions(config, db)
        return render_template("ledger.html", lines=lines, following=following, state=state,
                               after=after, states=STATES,
                               scan=figures.LEDGER_SCAN, function=function, search=search,
                               functions=functions, order="newest" if newest else None)

    @app.get("/ledger/<int:ident>")
    def ledger_row(ident: int) -> str:
        with reading() as db:
            row = figures.ledger_row(db, ident, secrets)
        if row is None:
            abort(404, description=f"no ledger row with id {ident} (its job is done, or it "
                  "went to the dead letters)")
        return render_template("ledger_row.html", row=row,
                               payload=figures.pretty_payload(row.line.payload.encode()))

    @app.get("/schedules")
    def schedules() -> str:
        if not config.schedules:
            return render_template("schedules.html", s=None)
        with reading() as db:
            return render_template("schedules.html", s=figures.schedules(config, db))

    @app.get("/schedules/live")
    def schedules_live() -> str:
        """The schedules' table alone, fetched again every few seconds by console.js."""
        if not config.schedules:
            abort(404, description="the file has no schedules: section")
        with reading() as db:
            return render_template("_schedules.html", s=figures.schedules(config, db))

    @app.get("/handlers")
    def handlers() -> str:
        return render_template("handlers.html", handlers=config.handlers.values(),
                               loaded=_as_loaded(config))

    @app.get("/workers")
    def workers() -> str:
        with reading() as db:
            found = processes.read(config, db, secrets)
        return render_template("workers.html", p=found, servers=figures.workers(config))

    @app.get("/workers/live")
    def workers_live() -> str:
        """The worker processes alone, fetched again every few seconds by console.js."""
        with reading() as db:
            return render_template("_workers.html", p=processes.read(config, db, secrets))

    actions.register(app, config, reading, secrets)
    app.register_blueprint(api.blueprint(config, reading, sampler, secrets))

    # -- errors --------------------------------------------------------------------------
    @app.errorhandler(CSRFError)
    def _csrf(error: CSRFError) -> Any:
        log.warning("console: a %s to %s refused: %s", request.method, actions.field(request.path),
                    error.description)
        if request.endpoint == "login":  # a login page left open across a restart
            return render_template("login.html", failed=False, stale=True), 400
        return render_template("error.html", code=400, message=error.description), 400

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Any:
        if error.code == 403:
            log.warning("console: %s refused: %s %s", getattr(g.get("visitor"), "name", "?"),
                        request.method, actions.field(request.path))
        elif error.code == 429:
            log.warning("console: a login from %s refused: %s", request.remote_addr,
                        error.description)
        # The error's own headers, but the page's type: Retry-After of a 429, Allow of a 405.
        headers = {name: value for name, value in error.get_headers()
                   if name.lower() != "content-type"}
        if request.path.startswith(api.PREFIX + "/"):
            return jsonify(error=error.description, code=error.code), error.code or 500, headers
        return render_template("error.html", code=error.code,
                               message=error.description), error.code or 500, headers

    return app


def _as_loaded(config: Config) -> str:
    """The configuration as YAML, with every secret as *** and callables left out."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            found = {}
            for item in dataclasses.fields(value):
                inner = getattr(value, item.name)
                if item.name in ("password", "secret_key"):
                    found[item.name] = logs.MASK if inner else ""
                elif not callable(inner) or dataclasses.is_dataclass(inner):
                    found[item.name] = plain(inner)
            return found
        if isinstance(value, dict) or hasattr(value, "items"):
            return {str(key): plain(inner) for key, inner in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(inner) for inner in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return str(value)

    text = yaml.safe_dump(plain(config), sort_keys=False, allow_unicode=True)
    secrets = [config.database.password, config.host.console.secret_key,
               *(u.password for u in config.host.console.users.values())]
    return logs.mask(text, *secrets)
