"""The verbs that run the host or look at it: check, doctor, run, console, triggers,
schedules, status and outbox drain."""

from __future__ import annotations

import argparse
import json
import sys

from workerhost.cli.common import load
from workerhost.errors import ConnectError
from workerhost.exitcodes import (
    RET_CONNECT,
    RET_DOCTOR,
    RET_ERROR,
    RET_OK,
)


def check(args: argparse.Namespace) -> int:
    config = load(args, import_handlers=True)
    print(f"{args.config}: valid; handlers: {', '.join(config.handlers)}")
    if args.connect:
        from workerhost.gearman import admin as gearadmin
        from workerhost.store import schema
        from workerhost.store.db import Database

        for server in config.gearman.servers:
            try:
                version = gearadmin.version(server.host, server.port)
            except OSError as exc:
                raise ConnectError(f"gearmand at {server} does not answer: {exc}") from exc
            print(f"gearmand {server}: reachable (version {version})")
        db = Database(config.database.connect_kwargs())
        db.run(schema.create)
        db.close()
        print(f"{db.describe()}: reachable; the host's tables are in place")
    return RET_OK


def doctor(args: argparse.Namespace) -> int:
    from workerhost.observe import doctor

    config = load(args, import_handlers=True)
    checks = []
    for check in doctor.diagnose(config, str(args.config), probe=args.probe):
        checks.append(check)
        for line in check.lines():
            print(line, flush=True)
    failed = [c for c in checks if c.outcome == "FAIL"]
    print(f"{len(failed)} checks failed, {sum(c.outcome == 'warn' for c in checks)} warnings, "
          f"{sum(c.outcome == 'ok' for c in checks)} ok")
    if any(c.unreachable for c in failed):
        return RET_CONNECT
    return RET_DOCTOR if failed else RET_OK


def run(args: argparse.Namespace) -> int:
    import logging
    import time

    from workerhost.host.supervisor import Supervisor
    from workerhost.observe import logs, metrics
    from workerhost.store import db as db_module
    from workerhost.store import schema
    from workerhost.store.db import Database

    logs.setup(args.log_format, args.log_level)
    config = load(args, import_handlers=True)
    logs.redact(config.database.password)
    db = Database(config.database.connect_kwargs())

    def stopping() -> bool:
        return bool(args.signals.stops)

    try:
        try:  # one attempt first, so that a database that is down is said at once
            db.run(schema.create, deadline=time.monotonic(), give_up=stopping)
        except ConnectError as exc:
            if stopping():
                raise
            logging.getLogger("workerhost.cli").warning(
                "waiting for %s (%s); giving up after %gs", db.describe(), exc.__cause__ or exc,
                db_module.PATIENCE)
            db.run(schema.create, give_up=stopping)
    except ConnectError:
        if args.signals.stops:
            print("workerhost: stopped during start-up, before any worker ran", file=sys.stderr)
            return RET_OK
        raise
    finally:
        db.close()
    with metrics.collecting(config.host.metrics is not None):  # before the first fork
        return Supervisor(config, args.config, signals=args.signals).run()


def console(args: argparse.Namespace) -> int:
    from workerhost import console
    from workerhost.observe import logs

    logs.setup(args.log_format, args.log_level)
    config = load(args)
    console.serve(config, args.listen or config.host.console.listen or console.DEFAULT_LISTEN)
    return RET_OK


def triggers(args: argparse.Namespace) -> int:
    from workerhost.store import triggers
    from workerhost.store.db import Database

    config = load(args)
    if not args.apply and not args.drop:
        print(triggers.drop_script(config) if args.print_drop else
              triggers.script(config, args.dialect), end="")
        return RET_OK
    db = Database(config.database.connect_kwargs())
    try:
        if args.drop:
            dropped = triggers.drop(config, db, prune=args.prune)
            print(f"dropped {', '.join(dropped)}" if dropped
                  else f"no workerhost triggers of {args.config} in {db.describe()}")
        else:
            applied = triggers.apply(config, db, prune=args.prune)
            for line in applied.report(str(args.config)):
                print(line)
            if not applied.created:
                print(f"{args.config} has no triggers: section; nothing created")
    finally:
        db.close()
    return RET_OK


def schedules(args: argparse.Namespace) -> int:
    import time

    from workerhost.observe import status
    from workerhost.store import schedule_table

    config = load(args)
    if not config.schedules:
        print(f"{args.config} has no schedules: section")
        return RET_OK
    db = status.open_database(config.database)
    try:
        # A deadline: without one, a refused connection is retried for ever.
        rows = db.run(schedule_table.schedule_rows,
                      deadline=time.monotonic() + status.STATUS_TIMEOUT)
    finally:
        db.close()
    found = status.schedules(config, rows)
    if args.json:
        print(json.dumps([status.schedule_json(s) for s in found], indent=2))
        return RET_OK
    for line in status.render_schedules(found):
        print(line.rstrip())
    for s in found:
        by = f", fired by {s.fired_by}" if s.fired_by else ""
        print(f"  {s.name}: {s.timetable}, catch_up: {s.catch_up}{by}")
    return RET_OK


def status(args: argparse.Namespace) -> int:
    from workerhost.observe import status

    report = status.gather(load(args))
    if args.json:
        print(json.dumps(status.as_json(report), indent=2))
        # The JSON is for a program; a person running it still sees what failed, once.
        for problem in report.problems():
            print(f"workerhost: {problem}", file=sys.stderr)
    else:  # the tables already say, in place, which server did not answer and why
        print(status.render(report))
    if not report.reachable:
        return RET_CONNECT
    return RET_ERROR if report.problems() else RET_OK


def outbox_drain(args: argparse.Namespace) -> int:
    import time

    import mysql.connector

    from workerhost.host.relay import Relay, SubmitFailed
    from workerhost.observe import progress, status

    config = load(args)
    relay = Relay(config)
    shipped = 0
    # Database calls get a deadline: without one, a refused connection is retried for ever.
    wait = config.database.connect_timeout
    try:
        due = relay.db.run(status.ledger_figures, deadline=time.monotonic() + wait).due
        with progress.Progress("outbox rows shipped", due) as bar:
            while shipped < due:  # rows that fall due meanwhile are the running relays' job
                batch = relay.batch
                try:
                    count = relay.ship_once(due - shipped)
                except SubmitFailed as exc:
                    if relay.batch == batch:
                        raise  # no gearmand reachable, or one too slow for a single row
                    print(f"{exc}; trying again", file=sys.stderr)
                    continue
                if not count:
                    break  # the rest is locked by a running relay, which ships it
                shipped += count
                bar.advance(count)
        left = relay.db.run(status.ledger_figures, deadline=time.monotonic() + wait)
    except (SubmitFailed, mysql.connector.Error) as exc:
        raise ConnectError(f"outbox drain stopped after {shipped} rows: {exc}") from exc
    finally:
        relay.db.close()
        relay.close()
    print(f"{shipped} outbox rows shipped; {left.due} due, {left.delayed} delayed, "
          f"{left.leased} leased until their job's effect commits")
    return RET_OK

