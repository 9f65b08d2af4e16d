"""Who is asking, and what they may do: a login session, or HTTP Basic for scripts.

Users and roles come from `host.console.users`. Passwords are compared in constant time (as
digests, so that not even their length shows), and a name that is no user costs the same
time as a wrong password; failed logins are counted, and past a limit refused (throttle.py).
A session names its user and a mark of their password only: the role is read from the
configuration on every request, so a user removed or demoted by a reload loses it at once
(in `workerhost run`, whose console child is restarted with the new file), and a session
of a password since changed is over.

Without users the console listens on loopback only (config.py refuses anything else), and
whoever reaches it may look but not act.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Response, abort, current_app, redirect, request, session, url_for
from werkzeug.wrappers import Response as AnyResponse

from workerhost.config import ConsoleUser
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


_NOBODY = _digest("\0no such user\0")  # compared against when the name is no user's


def check(users: Mapping[str, ConsoleUser], name: str, password: str) -> ConsoleUser | None:
    """The user `name` if `password` is theirs; the same work either way."""
    user = users.get(name)
    expected = _digest(user.password) if user is not None else _NOBODY
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


def identify(users: Mapping[str, ConsoleUser], throttle: LoginThrottle) -> Visitor | None:
    """The visitor of this request, or None when they must log in first."""
    if not users:
        return Visitor(ANONYMOUS, "viewer", "anonymous")
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        user = log_in_as(users, throttle, auth.username or "", auth.password or "")
        return None if user is None else Visitor(user.name, user.role, "basic")
    name = session.get("user")
    since = session.get("since")
    if not isinstance(name, str) or not isinstance(since, (int, float)):
        return None
    user = users.get(name)
    if (user is None or time.time() - since > SESSION_LIFETIME
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
    return Response("a login is needed: HTTP Basic, or the login page\n", 401,
                    {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"',
                     "Content-Type": "text/plain; charset=utf-8"})


def log_in(user: ConsoleUser) -> None:
    session.clear()  # a fresh session (and CSRF token) for the new login
    session["user"] = user.name
    session["since"] = time.time()
    session["pw"] = _password_mark(user)


def safe_next(target: str | None) -> str:
    """Where to go after the login: a path on this console, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("overview")
    return target


def admin_only(visitor: Visitor) -> None:
    if not visitor.may_act:
        abort(403, description=f"{visitor.name} is a {visitor.role}: only an admin may do this")
