"""The console's actions: for each, a confirmation page (GET) and the action (POST).

Confirmations and actions are views of their own: HEAD, which Flask answers with the GET
view, must never reach an action. Every action is admin-only, takes a POST with its CSRF token
(app.py's `_before` checks it for every unsafe method), is logged with the user, and answers
with the page it came from and a line saying what it did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from flask import Flask, abort, flash, g, redirect, render_template, request, url_for

from workerhost.config.settings import Config
from workerhost.console import auth, deadlines, figures, query
from workerhost.observe import logs
from workerhost.store import job_control, letters
from workerhost.store.db import RUN_ERRORS, Database

log = logging.getLogger("workerhost.console")
ACTION_BATCH = 500  # dead letters moved or deleted per transaction by an action on a filter


def field(text: str) -> str:
    """`text` for a log line: control characters escaped, so that a newline in a form's
    field cannot start a forged line of its own."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def register(app: Flask, config: Config,
             reading: Callable[[], AbstractContextManager[Database]],
             secrets: Sequence[str]) -> None:
    """Add the actions' views to the console's app (their endpoints keep their names)."""

    @app.get("/dead-letters/<int:ident>/<any(retry, purge):verb>")
    def confirm_one(ident: int, verb: str) -> Any:
        auth.admin_only(g.visitor)
        with reading() as db:
            letter = figures.dead_letter(db, ident)
        if letter is None:
            abort(404, description=f"no dead letter with id {ident} (retried or purged?)")
        return render_template("confirm.html", verb=verb, count=1, letter=letter,
                               function=None, search=None, upto=None, found=None)

    @app.post("/dead-letters/<int:ident>/<any(retry, purge):verb>")
    def one(ident: int, verb: str) -> Any:
        auth.admin_only(g.visitor)
        with reading() as db:
            if verb == "retry":
                done = db.run(lambda conn: letters.requeue_dead_letters(conn, [ident]))
            else:
                done = db.run(lambda conn: letters.purge_dead_letters(conn, [ident], None))
        _report(verb, done, f"dead letter {ident}")
        return redirect(url_for("dead_letters"))

    @app.get("/dead-letters/selected/<any(retry, purge):verb>")
    def confirm_selected(verb: str) -> Any:
        auth.admin_only(g.visitor)
        ids = query.selected(request.args)
        with reading() as db:
            found = db.run(lambda conn: letters.dead_letters_among(conn, ids))
        return render_template("confirm.html", verb=verb, count=len(found), letter=None,
                               ids=found, function=None, search=None, upto=None, found=None)

    @app.post("/dead-letters/selected/<any(retry, purge):verb>")
    def selected(verb: str) -> Any:
        auth.admin_only(g.visitor)
        ids = query.selected(request.form)
        with reading() as db:
            if verb == "retry":
                done = db.run(lambda conn: letters.requeue_dead_letters(conn, ids))
            else:
                done = db.run(lambda conn: letters.purge_dead_letters(conn, ids, None))
        _report(verb, done, "dead letters " + ", ".join(map(str, ids)))
        return redirect(url_for("dead_letters"))

    @app.get("/ledger/<int:ident>/<any(run, bury, cancel):verb>")
    def confirm_ledger(ident: int, verb: str) -> Any:
        auth.admin_only(g.visitor)
        with reading() as db:
            row = figures.ledger_row(db, ident, secrets)
        if row is None:
            abort(404, description=f"no ledger row with id {ident} (its job is done, or it "
                  "went to the dead letters)")
        return render_template("confirm_ledger.html", verb=verb, row=row)

    @app.post("/ledger/<int:ident>/<any(run, bury, cancel):verb>")
    def ledger_action(ident: int, verb: str) -> Any:
        auth.admin_only(g.visitor)
        reason = f"moved to the dead letters by {g.visitor.name} (console)"

        def act(conn: Any) -> str:
            found = job_control.lock_ledger_row(conn, ident)
            if found is None or found[1] == "held":
                return "gone" if found is None else "held"
            function, state = found
            if verb == "run":
                return "done" if job_control.run_ledger_row_now(conn, ident) else state
            if verb == "cancel":
                return "done" if job_control.cancel_ledger_row(conn, ident, function) else "gone"
            return "done" if job_control.ledger_row_to_dead_letters(conn, ident, function,
                                                                     reason) else "gone"

        with reading() as db:
            outcome = db.run(act, deadline=time.monotonic() + deadlines.PAGE_DEADLINE)
        what = {"run": "made due now", "bury": "moved to the dead letters",
                "cancel": "cancelled: its job never runs"}[verb]
        log.info("console: %s (%s) ledger row %d %s: %s", g.visitor.name, g.visitor.via,
                 ident, what, outcome)
        flash({"done": f"ledger row {ident} {what}",
               "gone": f"ledger row {ident} is gone: its job is done, or it went to the dead "
                       "letters",
               "held": f"ledger row {ident} is held by a worker running its job: try again "
                       "when it ends"}.get(outcome, f"ledger row {ident} is {outcome} now, "
                                                    "not delayed: left as it is"))
        if outcome == "done" and verb != "run":
            return redirect(url_for("ledger"))
        return redirect(url_for("ledger_row", ident=ident) if outcome != "gone"
                        else url_for("ledger"))

    @app.get("/functions/<any(pause, resume):verb>")
    def confirm_function(verb: str) -> Any:
        auth.admin_only(g.visitor)
        function = query.function_named(request.args)
        with reading() as db:
            paused = db.run(job_control.paused_functions, deadline=time.monotonic()
                            + deadlines.PAGE_DEADLINE)  # fmt: skip
        since = next((found for found in paused if found[0] == function), None)
        return render_template("confirm_function.html", verb=verb, function=function,
                               since=since)

    @app.post("/functions/<any(pause, resume):verb>")
    def function_action(verb: str) -> Any:
        auth.admin_only(g.visitor)
        function = query.function_named(request.form)
        by = f"{g.visitor.name} (console)"
        # On a connection of its own: pausing sets its session's isolation level, which must
        # not stay on a connection that serves pages and other actions.
        own = Database(deadlines.database_params(config))
        try:
            if verb == "pause":
                moved = own.run(lambda conn: job_control.pause(conn, function, by),
                                deadline=time.monotonic() + deadlines.PAGE_DEADLINE)
                was = True
            else:
                was, moved = own.run(lambda conn: job_control.resume(conn, function),
                                     deadline=time.monotonic() + deadlines.PAGE_DEADLINE)
        except RUN_ERRORS as exc:
            abort(503, description="the database did not answer: "
                  + logs.mask(str(exc), config.database.password))
        finally:
            own.close()
        jobs = "job" if moved == 1 else "jobs"
        said = (f"{function} paused on every host; {moved} waiting {jobs} parked in the ledger "
                "until it is resumed" if verb == "pause" else
                f"{function} resumed; {moved} parked {jobs} due again" if was else
                f"{function} was not paused: nothing to resume")
        log.info("console: %s (%s): %s", g.visitor.name, g.visitor.via, field(said))
        flash(said)
        return redirect(url_for("overview"))

    @app.get("/dead-letters/<any(retry, purge):verb>")
    def confirm_matching(verb: str) -> Any:
        auth.admin_only(g.visitor)
        function, search = query.filter_of()
        with reading() as db:
            found = figures.matching(db, function, search, secrets)
        return render_template("confirm.html", verb=verb, count=found.count, letter=None,
                               function=function, search=search, upto=found.upto,
                               found=found)

    @app.post("/dead-letters/<any(retry, purge):verb>")
    def matching(verb: str) -> Any:
        auth.admin_only(g.visitor)
        function, search = query.filter_of(request.form)
        newest = request.form.get("upto", type=int)
        if newest is None:
            abort(400, description="upto: the newest id the confirmation page showed")
        with reading() as db:
            done = _in_batches(db, verb, function, search, newest, secrets)
        what = ", ".join(part for part in (function and f"function {function}",
                                           search and f"matching {search!r}") if part)
        _report(verb, done, f"dead letters up to id {newest}" + (f" ({what})" if what else ""))
        return redirect(url_for("dead_letters", function=function, q=search))

    def _report(verb: str, done: int, what: str) -> None:
        moved = "queued again" if verb == "retry" else "deleted"
        log.info("console: %s (%s) %s %s: %d %s", g.visitor.name, g.visitor.via,
                 "retried" if verb == "retry" else "purged", field(what), done, moved)
        flash(f"{done} dead letter{'s' if done != 1 else ''} {moved}"
              + ("" if done else ": none matched any more (retried or purged meanwhile?)"))


def _in_batches(db: Database, verb: str, function: str | None, search: str | None,
                upto: int, secrets: Sequence[str]) -> int:
    """Retry or purge every dead letter of a filter up to id `upto`, ACTION_BATCH per
    transaction, so that no lock is held for long and a failure keeps what was done."""
    def batch(conn: Any, after: int) -> tuple[int, int]:
        ids = letters.lock_dead_letters(conn, function, search, after, upto, ACTION_BATCH,
                                       secrets)
        if not ids:  # never an empty list below: requeue and purge take it as "all"
            return 0, after
        if verb == "retry":
            return letters.requeue_dead_letters(conn, ids), ids[-1]
        return letters.purge_dead_letters(conn, ids, None), ids[-1]

    after = done = 0
    while True:
        def next_batch(conn: Any, last: int = after) -> tuple[int, int]:
            return batch(conn, last)

        count, after = db.run(next_batch)
        if not count:
            return done
        done += count
