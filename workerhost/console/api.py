"""What the console's pages show, as JSON for scripts: GET only, behind the same logins.
Actions (retry, purge, pause, cancel, ...) are the pages' own POSTs, each with its CSRF token.

Each answer is read as its page reads it (figures.py), with the same secrets masked; app.py's
checks run first (a login, the Host allow-list), and its error handler answers a path under
PREFIX with {"error": ..., "code": ...}.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request

from workerhost.config.settings import Config
from workerhost.console import figures, processes, query, sampling
from workerhost.store.db import Database

PREFIX = "/api"


def plain(value: Any) -> Any:
    """`value` as JSON takes it: dataclasses as objects, moments in ISO 8601, bytes as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: plain(getattr(value, item.name))
                for item in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return figures._text(value)
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(key): plain(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(inner) for inner in value]
    return value


def blueprint(config: Config, reading: Callable[[], AbstractContextManager[Database]],
              sampler: sampling.Sampler, secrets: Sequence[str]) -> Blueprint:  # fmt: skip
    api = Blueprint("api", __name__, url_prefix=PREFIX)

    @api.get("/overview")
    def overview() -> Response:
        with reading() as db:
            o = figures.overview(config, db, sampler)
        return jsonify(
            servers=[{"server": s.server, "error": s.error,
                      "functions": {name: {"queued": f.queued, "running": f.running,
                                           "workers": f.workers}
                                    for name, f in s.functions.items()}}
                     for s in o.servers],
            dead_letters=None if o.database_error else plain(o.dead_letters),
            database_error=o.database_error, ledger=plain(o.ledger),
            ledger_error=o.ledger_error,
            rates=None if o.rates is None else {"seconds": o.rates.seconds,
                                                "completed": plain(o.rates.completed),
                                                "failed": plain(o.rates.failed)},
            rates_note=o.rates_note, functions=list(o.functions),
            paused=None if o.database_error else [plain(p) for _, p in sorted(o.paused.items())])

    @api.get("/ledger")
    def ledger() -> Response:
        state, after, function, search, newest = query.ledger_filter()
        with reading() as db:
            lines, following = figures.ledger_page(db, state, after, function, search,
                                                   secrets, newest)
        return jsonify(rows=plain(lines), next=following)

    @api.get("/ledger/<int:ident>")
    def ledger_row(ident: int) -> Response:
        with reading() as db:
            row = figures.ledger_row(db, ident, secrets)
        if row is None:
            abort(404, description=f"no ledger row with id {ident}")
        return jsonify({**plain(row.line), "payload_cut": row.cut,
                        "attempts": plain(row.attempts)})

    @api.get("/dead-letters")
    def dead_letters() -> Response:
        function, search = query.filter_of()
        before = request.args.get("before", type=int)
        with reading() as db:
            page = figures.dead_letter_page(db, function, search, before, secrets)
        return jsonify(letters=plain(page.lines), older=page.older)

    @api.get("/dead-letters/<int:ident>")
    def dead_letter(ident: int) -> Response:
        with reading() as db:
            letter = figures.dead_letter(db, ident)
        if letter is None:
            abort(404, description=f"no dead letter with id {ident}")
        return jsonify(plain(letter))

    @api.get("/workers")
    def workers() -> Response:
        with reading() as db:
            found = processes.read(config, db, secrets)
        return jsonify(processes=plain(found.processes), error=found.error,
                       gone_after=found.gone_after)

    return api
