"""Failed logins, counted per client address and per user name, and refused past a limit.

A guesser gets FAILED_PER_CLIENT wrong passwords a minute from one address: past it, every
login from that address is refused with 429 and a Retry-After, the right password too (or the
limit would only slow a guess down). All the guessers together get FAILED_PER_USER a quarter
of an hour at one name: past it, a login as that name is refused from every address that has
failed lately, but not from one that has not, so that a guesser cannot lock the user out
(their own address has no failures, and the right password gets them in), while each of the
guesser's addresses gets one more guess at most. Successful logins count nothing and reset
nothing: a guesser who owns a viewer's login must not wipe their count with it.

The counts are those of the `limits` library (a moving window, held in memory): they belong
to one console process, and a restart starts them afresh.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

# Wrong passwords one client address may send: a person who mistypes never gets near it.
FAILED_PER_CLIENT = "10 per minute"
# Wrong passwords for one user name from anywhere: bounds a guesser with many addresses,
# while a whole office behind one address is not locked out by one forgetful colleague.
FAILED_PER_USER = "30 per 15 minutes"


class LoginThrottle:
    def __init__(self, *, per_client: str = FAILED_PER_CLIENT,
                 per_user: str = FAILED_PER_USER) -> None:  # fmt: skip
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.per_client: RateLimitItem = parse(per_client)
        self.per_user: RateLimitItem = parse(per_user)

    def _keys(self, client: str, user: str) -> list[tuple[RateLimitItem, str, str]]:
        return [(self.per_client, "client", client), (self.per_user, "user", user[:64])]

    def check(self, client: str, user: str) -> None:
        """Refuse (429) a login from `client` while it has too many failures, and as `user`
        while that name has, unless `client` has none."""
        clean = self.limiter.get_window_stats(self.per_client, "client", client).remaining == (
            self.per_client.amount)
        for item, kind, key in self._keys(client, user):
            if kind == "user" and clean:
                continue
            if not self.limiter.test(item, kind, key):
                reset = self.limiter.get_window_stats(item, kind, key).reset_time
                # The library's windows run on the wall clock, which it reads itself.
                wait = max(1, math.ceil(reset - time.time()))
                who = f"from {client}" if kind == "client" else f"as {user[:64]!r}"
                raise TooManyRequests(
                    f"Too many failed logins {who}: try again in {wait} s.", retry_after=wait)

    def failed(self, client: str, user: str) -> None:
        """Count a wrong password from `client` as `user`."""
        for item, kind, key in self._keys(client, user):
            self.limiter.hit(item, kind, key)
