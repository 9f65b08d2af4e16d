"""Requests through a TLS proxy: its scheme and its client's address, believed only from it.

X-Forwarded-Proto and X-Forwarded-For are headers anyone can send, so they count only when
the request comes from an address of `host.console.trusted_proxies`. Then the console knows
the browser spoke HTTPS (its cookie is Secure and it sends HSTS) and whose address a failed
login counts against (not the proxy's, which would put every client in one count).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from workerhost.config.settings import IPNetwork


class TrustedProxies:
    """WSGI middleware that takes the scheme and client from a trusted proxy's headers."""

    def __init__(self, app: Any, networks: Sequence[IPNetwork]) -> None:
        self.app = app
        self.networks = tuple(networks)

    def trusted(self, address: str | None) -> bool:
        try:
            found = ipaddress.ip_address((address or "").strip().strip("[]"))
        except ValueError:
            return False
        return any(found in network for network in self.networks)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if self.networks and self.trusted(environ.get("REMOTE_ADDR")):
            # The proxy nearest to us appends last: its word is the last value.
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
            hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")
                    if hop.strip()]
            # The client is the nearest address no trusted proxy stands for (what is left of
            # it was written by whoever sent the request, and may be anything).
            client = next((hop for hop in reversed(hops) if not self.trusted(hop)),
                          hops[0] if hops else None)
            if client is not None:
                environ["REMOTE_ADDR"] = client
        else:  # nobody downstream is to read them
            for key in [key for key in environ if key.startswith("HTTP_X_FORWARDED_")]:
                del environ[key]
        return self.app(environ, start_response)  # type: ignore[no-any-return]
