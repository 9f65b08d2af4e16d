"""Who is asking, and what they may do: a login session, or HTTP Basic for scripts.

Users and roles come from `host.console.users`. Passwords are compared in constant time (as
digests, so that not even their length shows), and a name that is no user costs the same
time as a wrong password; failed logins are counted, and past a limit refused (throttle.py).
A session names its user and a mark of their password only: the role is read from the
configuration on every request, so a user removed or demoted by a reload loses it at once
(in `workerhost run`, whose console child is restarted with the new file), and a session
of a password since changed is over. A session also carries an id of its own, which a logout
puts on the console's list of ended sessions (Revoked, kept in the database too), so that a
copy of its cookie is refused from then on, across a restart of the console too.

Without users the console listens on loopback only (config/load.py refuses anything else), and
whoever reaches it may look but not act.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Response, abort, current_app, redirect, request, session, url_for
from werkzeug.wrappers import Response as AnyResponse

from workerhost.config.settings import ConsoleUser
from workerhost.console.throttle import LoginThrottle

SESSION_LIFETIME = 12 * 3600  # seconds a login lasts; then the login page again
REALM = "workerhost console"
ANONYMOUS = "(anyone on loopback)"  # who acts when no users are configured: a viewer

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Visitor:
    name: str
    role: str  # "admin" or "viewer"
    via: str  # "session", "basic" or "anonymous"

    @property
    def may_act(self) -> bool:
        return self.role == "admin"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


# Compared against when the name is no user's: the same digest computed, the same
# comparison made, so that an unknown name costs what a known one does.
_NOBODY = secrets.token_hex(16)


def check(users: Mapping[str, ConsoleUser], name: str, password: str) -> ConsoleUser | None:
    """The user `name` if `password` is theirs; the same work either way."""
    user = users.get(name)
    expected = _digest(user.password if user is not None else _NOBODY)
    matches = hmac.compare_digest(expected, _digest(password))
    return user if matches and user is not None else None


def log_in_as(users: Mapping[str, ConsoleUser], throttle: LoginThrottle, name: str,
              password: str) -> ConsoleUser | None:
    """check(), refused with 429 (before the password is compared) while this client or
    this name has too many failed logins, and each failure counted."""
    client = request.remote_addr or "?"
    throttle.check(client, name)
    user = check(users, name, password)
    if user is None:
        throttle.failed(client, name)
    return user


class Revoked:
    """Ids of the sessions logged out, each kept until it would have run out anyway.

    Held in the memory of the console process, behind one lock: a console is one process
    (waitress serves it with a pool of threads; `workerhost run` forks it as one child), so
    every request it answers sees every logout at once, and checking a session costs the
    database nothing. Each logout is also written to the database (`workerhost_logouts`,
    store/logout_table.py: a row until the session would have run out), and `load` takes
    them in (logouts.py): when the console starts, so that a restart with a kept secret_key,
    which makes the old cookies good again, does not make a logged-out one good, and every
    few seconds after, so that a cookie logged out on another console of the same database
    (behind one balancer) is refused here too.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.Lock()  # guards `until`: server threads log out at once
        self.until: dict[str, float] = {}

    def add(self, sid: str, since: float) -> float:
        """Refuse session `sid` from now on; when it would have run out (to keep it till)."""
        now = self.clock()
        with self.lock:
            self.until = {key: end for key, end in self.until.items() if end > now}
            self.until[sid] = since + SESSION_LIFETIME
            return self.until[sid]

    def load(self, ended: Mapping[str, float]) -> None:
        """Sessions logged out before this console started (read from the database)."""
        with self.lock:
            self.until.update(ended)

    def __contains__(self, sid: object) -> bool:
        with self.lock:
            return sid in self.until


def identify(users: Mapping[str, ConsoleUser], throttle: LoginThrottle,
             revoked: Revoked) -> Visitor | None:  # fmt: skip
    """The visitor of this request, or None when they must log in first."""
    if not users:
        return Visitor(ANONYMOUS, "viewer", "anonymous")
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        user = log_in_as(users, throttle, auth.username or "", auth.password or "")
        return None if user is None else Visitor(user.name, user.role, "basic")
    name = session.get("user")
    since = session.get("since")
    sid = session.get("sid")
    if (not isinstance(name, str) or not isinstance(since, (int, float))
            or not isinstance(sid, str)):
        return None
    user = users.get(name)
    if (user is None or sid in revoked or time.time() - since > SESSION_LIFETIME
            or not hmac.compare_digest(str(session.get("pw", "")), _password_mark(user))):
        session.clear()
        return None
    return Visitor(user.name, user.role, "session")


def _password_mark(user: ConsoleUser) -> str:
    """A mark of the user's password in their session, so that a new password ends the
    sessions of the old one (they outlive a restart when the key is kept). Keyed with the
    session key: the cookie is signed, not encrypted, and must not give away a digest of
    the password to guess against."""
    key = current_app.secret_key
    assert isinstance(key, (bytes, str))
    raw = key.encode() if isinstance(key, str) else key
    return hmac.new(raw, _digest(user.password), hashlib.sha256).hexdigest()[:32]


def refuse() -> AnyResponse:
    """What a request without a login gets: a browser the login page, a script a 401."""
    # A browser names text/html in its Accept header; curl and scripts send */* or nothing.
    accepts_html = "text/html" in request.headers.get("Accept", "") and not request.authorization
    if accepts_html and request.method == "GET":
        target = request.full_path if request.query_string else request.path
        return redirect(url_for("login", next=target))
    if accepts_html:  # a form sent after the login ran out: to log in again, not a 400
        return redirect(url_for("login"), 303)
    return Response("a login is needed: HTTP Basic, or the login page\n", 401,
                    {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"',
                     "Content-Type": "text/plain; charset=utf-8"})


def log_in(user: ConsoleUser) -> None:
    session.clear()  # a fresh session (and CSRF token) for the new login
    session["user"] = user.name
    session["since"] = time.time()
    session["pw"] = _password_mark(user)
    session["sid"] = secrets.token_urlsafe(16)


def log_out(revoked: Revoked) -> tuple[str, float] | None:
    """End this session here and now: its cookie, copied or not, is refused from now on.
    The session's id and when it would have run out, for the database; None without one."""
    sid, since = session.get("sid"), session.get("since")
    session.clear()
    if isinstance(sid, str) and isinstance(since, (int, float)):
        return sid, revoked.add(sid, since)
    return None


# A path on this console, in printable ASCII without spaces: a browser drops tabs and line
# breaks from a URL (so /\t/evil.example is //evil.example to it, another site), and reads a
# backslash as a slash.
_SAME_ORIGIN_PATH = re.compile(r"/(?![/\\])[\x21-\x7e]*")


def safe_next(target: str | None) -> str:
    """Where to go after the login: a path on this console, never another site."""
    if not target or "\\" in target or not _SAME_ORIGIN_PATH.fullmatch(target):
        return url_for("overview")
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc:
        return url_for("overview")
    return target


def admin_only(visitor: Visitor) -> None:
    if not visitor.may_act:
        abort(403, description=f"{visitor.name} is a {visitor.role}: only an admin may do this")
