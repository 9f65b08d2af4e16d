"""The `workerhost` command line: each verb maps errors to a documented exit code."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workerhost import __version__
from workerhost.errors import ConfigError, ConnectError, SandboxError, WorkerHostError
from workerhost.exitcodes import (
    RET_CONFIG,
    RET_CONNECT,
    RET_DOCTOR,
    RET_ERROR,
    RET_INTERRUPTED,
    RET_OK,
    RET_SANDBOX,
    RET_USAGE,
)
from workerhost.signals import Signals

EXIT_CODES: dict[type[WorkerHostError], int] = {
    ConfigError: RET_CONFIG,
    ConnectError: RET_CONNECT,
    SandboxError: RET_SANDBOX,
}

if TYPE_CHECKING:
    from workerhost.config import Config
    from workerhost.db import Database

DEFAULT_SANDBOX_DIR = ".sandbox"
# Where the configuration is looked for when neither -c nor WORKERHOST_CONFIG names one: the
# file the systemd unit runs with, so that an operator on that machine can leave -c out.
DEFAULT_CONFIG = Path("/etc/workerhost/workerhost.yaml")
CONFIG_ENV = "WORKERHOST_CONFIG"
CONFIG_HELP = (f"the YAML file; default: ${CONFIG_ENV}, else {DEFAULT_CONFIG}; "
               "may stand anywhere on the line")


class NoConfigFile(Exception):
    """Neither -c, nor WORKERHOST_CONFIG, nor the default file: a usage error (exit 2)."""


def config_path(given: Path | None, environ: Mapping[str, str]) -> Path:
    """The file of -c, else of WORKERHOST_CONFIG, else DEFAULT_CONFIG when it exists."""
    if given is not None:
        return given
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    if DEFAULT_CONFIG.exists():
        return DEFAULT_CONFIG
    raise NoConfigFile(f"no configuration file: give -c FILE, set {CONFIG_ENV}=FILE, or "
                       f"write {DEFAULT_CONFIG}")


def _verb(words: Sequence[str]) -> str | None:
    """The first word that is neither an option nor the value of -c/--config."""
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in ("-c", "--config"):
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def plural(count: int, noun: str) -> str:
    """`1 dead letter`, `2 dead letters`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _threads(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if not 0 <= count <= 64:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a thread count: give a whole number from 0 to 64")
    return count


def _sandbox_up(args: argparse.Namespace) -> int:
    from workerhost.sandbox import Sandbox

    box = Sandbox(args.dir, server=args.server)
    started = box.up(gearman_port=args.gearman_port, mysql_port=args.mysql_port,
                     gearman_queue=args.gearman_queue, gearman_threads=args.gearman_threads)
    if args.install_udf:
        box.install_udf(args.install_udf)
    info = box.info
    assert info is not None
    if not started:
        print(f"sandbox in {box.dir} already runs; nothing changed")
    else:
        print(f"sandbox up in {box.dir}")
    print(f"  gearmand  {box.gearman_server}")
    print(f"  {box.database_process:9} 127.0.0.1:{box.mysql_port}  socket {box.unix_socket}")
    print(f"  logs      {box.gearmand_log}  {box.mysql_log}")
    print(f"  user {info.mysql.user}, password in {box.dir / 'sandbox.json'}")
    return RET_OK


def _sandbox_down(args: argparse.Namespace) -> int:
    from workerhost.sandbox import Sandbox

    box = Sandbox(args.dir)
    stopped = box.down()
    print(f"stopped {', '.join(stopped)}" if stopped else f"nothing runs in {box.dir}")
    return RET_OK


def _sandbox_status(args: argparse.Namespace) -> int:
    from workerhost.sandbox import Sandbox

    box = Sandbox(args.dir)
    state = box.status()
    if args.json:
        info = asdict(box.info) if box.info else None
        print(json.dumps({"dir": str(box.dir), "running": state, "info": info}, indent=2))
    elif box.info is None:
        print(f"no sandbox in {box.dir}")
    else:
        for name, running in state.items():
            port = box.gearman_port if name == "gearmand" else box.mysql_port
            pid = box.info.pids.get(name, "-")
            where = f"127.0.0.1:{port}, pid {pid}" if running else f"port {port}"
            print(f"{name:9} {'running' if running else 'stopped':8} {where}")
    # Scripts can ask "is it up?" with the exit status alone.
    return RET_OK if box.info is not None and all(state.values()) else RET_ERROR


def _sandbox_install_udf(args: argparse.Namespace) -> int:
    from workerhost.sandbox import Sandbox

    box = Sandbox(args.dir)
    box.install_udf(args.so)
    print(f"UDF installed into {box.plugin_dir} and its functions created")
    return RET_OK


def _load(args: argparse.Namespace) -> Config:
    from workerhost.config import load_config

    return load_config(args.config)


def _check(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"{args.config}: valid; handlers: {', '.join(config.handlers)}")
    if args.connect:
        from workerhost import gearadmin, tables
        from workerhost.db import Database

        for server in config.gearman.servers:
            try:
                version = gearadmin.version(server.host, server.port)
            except OSError as exc:
                raise ConnectError(f"gearmand at {server} does not answer: {exc}") from exc
            print(f"gearmand {server}: reachable (version {version})")
        db = Database(config.database.connect_kwargs())
        db.run(tables.create)
        db.close()
        print(f"{db.describe()}: reachable; the host's tables are in place")
    return RET_OK


def _doctor(args: argparse.Namespace) -> int:
    from workerhost import doctor

    config = _load(args)
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


def _udf_connection(args: argparse.Namespace, config: Config) -> Any:
    """The installer's connection: the file's database settings, or an administrator's."""
    import os

    from workerhost.udf_install import connect

    params = config.database.connect_kwargs()
    if args.user:
        params["user"] = args.user
        params["password"] = os.environ.get(args.password_env, "") if args.password_env else ""
    if args.socket:
        params.pop("host", None)
        params.pop("port", None)
        params["unix_socket"] = str(args.socket)
    return connect(params)


def _udf_build(args: argparse.Namespace) -> int:
    from workerhost import udf_install

    udf_install.build(args.output, print, args.server)
    return RET_OK


def _udf_install(args: argparse.Namespace) -> int:
    import tempfile

    from workerhost import udf_install

    config = _load(args)
    conn = _udf_connection(args, config)
    try:
        with tempfile.TemporaryDirectory(prefix="workerhost-udf-") as work:
            library = args.so or udf_install.build(Path(work) / "gearman_udf.so", print,
                                                   udf_install.server_flavor(conn))
            udf_install.install(conn, library, servers=[str(s) for s in config.gearman.servers],
                                source=str(args.config), config_file=args.config_file,
                                force=args.force, say=print)
    finally:
        conn.close()
    print(f"UDF installed; next: workerhost doctor -c {args.config}")
    return RET_OK


def _udf_uninstall(args: argparse.Namespace) -> int:
    from workerhost import udf_install

    conn = _udf_connection(args, _load(args))
    try:
        udf_install.uninstall(conn, force=args.force, say=print)
    finally:
        conn.close()
    return RET_OK


def _run(args: argparse.Namespace) -> int:
    import logging
    import time

    from workerhost import db as db_module
    from workerhost import logs, metrics, tables
    from workerhost.db import Database
    from workerhost.supervisor import Supervisor

    logs.setup(args.log_format, args.log_level)
    config = _load(args)
    logs.redact(config.database.password)
    db = Database(config.database.connect_kwargs())

    def stopping() -> bool:
        return bool(args.signals.stops)

    try:
        try:  # one attempt first, so that a database that is down is said at once
            db.run(tables.create, deadline=time.monotonic(), give_up=stopping)
        except ConnectError as exc:
            if stopping():
                raise
            logging.getLogger("workerhost.cli").warning(
                "waiting for %s (%s); giving up after %gs", db.describe(), exc.__cause__ or exc,
                db_module.PATIENCE)
            db.run(tables.create, give_up=stopping)
    except ConnectError:
        if args.signals.stops:
            print("workerhost: stopped during start-up, before any worker ran", file=sys.stderr)
            return RET_OK
        raise
    finally:
        db.close()
    with metrics.collecting(config.host.metrics is not None):  # before the first fork
        return Supervisor(config, args.config, signals=args.signals).run()


def _listen(text: str) -> Any:
    from workerhost.converters import listen_address

    try:
        return listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _console(args: argparse.Namespace) -> int:
    from workerhost import console, logs

    logs.setup(args.log_format, args.log_level)
    config = _load(args)
    console.serve(config, args.listen or config.host.console.listen or console.DEFAULT_LISTEN)
    return RET_OK


def _triggers(args: argparse.Namespace) -> int:
    from workerhost import triggers
    from workerhost.db import Database

    config = _load(args)
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


def _dead_letters(args: argparse.Namespace) -> int:
    from workerhost.db import Database

    db = Database(_load(args).database.connect_kwargs())
    try:
        return _dead_letter_action(args, db)
    finally:
        db.close()


def _dead_letter_action(args: argparse.Namespace, db: Database) -> int:
    from workerhost import deadletters

    action = args.dl_verb
    if action == "list":
        letters = deadletters.list_letters(db, args.function, args.limit)
        print(f"{'ID':>6}  {'FUNCTION':20} {'ATTEMPTS':>8}  {'FAILED AT':26} ERROR")
        for dl in letters:
            print(f"{dl.id:>6}  {dl.function:20} {dl.attempts:>8}  {dl.failed_at!s:26} "
                  f"{dl.error.splitlines()[0][:80] if dl.error else ''}")
        print(plural(len(letters), "dead letter"))
        return RET_OK
    if action == "show":
        letter = deadletters.get(db, args.id)
        if letter is None:
            return _no_such_letters([args.id])
        for name in ("id", "function", "unique", "attempts", "first_failed_at", "failed_at",
                     "error"):
            print(f"{name:16} {getattr(letter, name)}")
        print(f"{'payload':16} {deadletters.payload_text(letter.payload, SHOWN_PAYLOAD)}")
        if letter.traceback:
            print("traceback:\n" + letter.traceback)
        return RET_OK
    if action == "retry" and not args.all and not args.ids:
        print("name dead letter ids, or --all", file=sys.stderr)
        return RET_USAGE
    if action == "purge" and not args.all and not args.ids and not args.function:
        print("name dead letter ids, --function NAME, or --all", file=sys.stderr)
        return RET_USAGE
    # Named ids: those that exist are acted on; the others are named, and the exit is 1.
    missing = [i for i in dict.fromkeys(args.ids) if deadletters.get(db, i) is None]
    found = [i for i in dict.fromkeys(args.ids) if i not in missing]
    if action == "retry":
        if args.all:
            moved = _retry_all(db)
        else:  # never retry(db, []): an empty list would mean every letter
            moved = deadletters.retry(db, found) if found else 0
        print(f"{plural(moved, 'dead letter')} queued again")
    else:
        if args.ids:
            deleted = deadletters.purge(db, found) if found else 0
        else:
            deleted = deadletters.purge(db, None, None if args.all else args.function)
        print(f"{plural(deleted, 'dead letter')} deleted")
    return _no_such_letters(missing) if missing else RET_OK


SHOWN_PAYLOAD = 4096  # bytes of a payload that `dead-letters show` prints

# What `jobs cancel` and `jobs retry-now` say of each id, and whether it counts as done.
_JOB_ANSWERS = {
    "cancelled": ("cancelled", True), "due": ("due now", True),
    "running": ("left alone: a worker runs it now", False),
    "missing": ("no such job (done, cancelled, or never there)", False),
    "not delayed": ("not delayed: due or shipped already", False),
}


def _jobs(args: argparse.Namespace) -> int:
    from workerhost import jobs
    from workerhost.db import Database

    db = Database(_load(args).database.connect_kwargs())
    try:
        if args.jobs_verb == "list":
            found = jobs.list_jobs(db, args.function, args.state, args.search, args.limit)
            print(f"{'ID':>8}  {'FUNCTION':20} {'STATE':8} {'SHIPS':>5}  {'CREATED AT':26} "
                  "PAYLOAD")
            for job in found:
                print(f"{job.id:>8}  {job.function:20} {job.state:8} {job.ships:>5}  "
                      f"{job.created_at!s:26} {job.payload[:60]!r}")
            print(f"{plural(len(found), 'job')} (newest first)")
            return RET_OK
        if args.jobs_verb == "show":
            shown = jobs.show(db, args.id)
            if shown is None:
                print(f"workerhost: no job {args.id} in the ledger (done, cancelled, or never "
                      "there)", file=sys.stderr)
                return RET_ERROR
            for name in ("id", "function", "unique", "priority", "state", "not_before",
                         "created_at", "ships", "size", "failures", "last_error"):
                print(f"{name:12} {getattr(shown, name)}")
            print(f"{'payload':12} {shown.payload}")
            return RET_OK
        act = jobs.cancel if args.jobs_verb == "cancel" else jobs.run_now
        failed = False
        for ident in dict.fromkeys(args.ids):
            said, done = _JOB_ANSWERS[act(db, ident)]
            print(f"job {ident}: {said}")
            failed = failed or not done
        return RET_ERROR if failed else RET_OK
    finally:
        db.close()


def _pause(args: argparse.Namespace) -> int:
    from workerhost import jobs
    from workerhost.db import Database

    db = Database(_load(args).database.connect_kwargs())
    try:
        if args.func is _pause:
            parked = jobs.pause(db, args.function)
            print(f"{args.function} paused on every host; {plural(parked, 'waiting job')} "
                  f"parked in the ledger until `workerhost resume {args.function}`")
            return RET_OK
        was_paused, due = jobs.resume(db, args.function)
        if not was_paused:
            print(f"workerhost: {args.function} was not paused", file=sys.stderr)
        print(f"{args.function} resumed; {plural(due, 'parked job')} due again")
        return RET_OK if was_paused else RET_ERROR
    finally:
        db.close()


def _resume(args: argparse.Namespace) -> int:
    return _pause(args)


def _no_such_letters(ids: list[int]) -> int:
    """The one answer of show, retry and purge to ids that name no dead letter: exit 1."""
    named = ", ".join(str(i) for i in ids)
    print(f"workerhost: error: no dead letter with id {named}" if len(ids) == 1 else
          f"workerhost: error: no dead letters with ids {named}", file=sys.stderr)
    return RET_ERROR


RETRY_BATCH = 100  # dead letters moved back to the outbox per transaction by retry --all


def _retry_all(db: Database) -> int:
    """`dead-letters retry --all` in batches: progress shows, and no lock is held for long."""
    import time

    from workerhost import deadletters, progress, status, tables

    # A deadline: without one, a refused connection is retried for ever.
    deadline = time.monotonic() + status.STATUS_TIMEOUT
    total = sum(db.run(tables.dead_letters_by_function, deadline=deadline).values())
    moved = 0
    with progress.Progress("dead letters queued again", total) as bar:
        while moved < total:  # letters that die meanwhile wait for the next retry --all
            batch = deadletters.list_letters(db, None, min(RETRY_BATCH, total - moved))
            done = deadletters.retry(db, [dl.id for dl in batch]) if batch else 0
            if not done:
                break
            moved += done
            bar.advance(done)
    return moved


def _schedules(args: argparse.Namespace) -> int:
    import time

    from workerhost import status, tables

    config = _load(args)
    if not config.schedules:
        print(f"{args.config} has no schedules: section")
        return RET_OK
    db = status.open_database(config.database)
    try:
        # A deadline: without one, a refused connection is retried for ever.
        rows = db.run(tables.schedule_rows, deadline=time.monotonic() + status.STATUS_TIMEOUT)
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


def _status(args: argparse.Namespace) -> int:
    from workerhost import status

    report = status.gather(_load(args))
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


def _outbox_drain(args: argparse.Namespace) -> int:
    import time

    import mysql.connector

    from workerhost import progress, status
    from workerhost.relay import Relay, SubmitFailed

    config = _load(args)
    relay = Relay(config)
    shipped = 0
    # Database calls get a deadline: without one, a refused connection is retried for ever.
    wait = config.database.connect_timeout
    try:
        due = relay.db.run(status.outbox_figures, deadline=time.monotonic() + wait).due
        with progress.Progress("outbox rows shipped", due) as bar:
            while shipped < due:  # rows that fall due meanwhile are the running relays' job
                count = relay.ship_once(min(config.host.relay.batch, due - shipped))
                if not count:
                    break  # the rest is locked by a running relay, which ships it
                shipped += count
                bar.advance(count)
        left = relay.db.run(status.outbox_figures, deadline=time.monotonic() + wait)
    except (SubmitFailed, mysql.connector.Error) as exc:
        raise ConnectError(f"outbox drain stopped after {shipped} rows: {exc}") from exc
    finally:
        relay.db.close()
        relay.close()
    print(f"{shipped} outbox rows shipped; {left.due} due, {left.delayed} delayed, "
          f"{left.leased} leased until their job's effect commits")
    return RET_OK


def build_parser() -> argparse.ArgumentParser:
    from workerhost.sandbox_options import (
        DEFAULT_DATABASE_SERVER,
        DEFAULT_QUEUE,
        GEARMAN_QUEUES,
        GEARMAN_THREADS,
        SERVER_CHOICES,
    )

    parser = argparse.ArgumentParser(
        prog="workerhost",
        description="Run Gearman jobs fired by MySQL/MariaDB triggers and write results back.",
    )
    parser.add_argument("--version", action="version", version=f"workerhost {__version__}")
    parser.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS,
                        help=CONFIG_HELP)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    sandbox = verbs.add_parser("sandbox", help="a throwaway local gearmand + MariaDB or MySQL")
    sandbox_verbs = sandbox.add_subparsers(dest="sandbox_verb", required=True, metavar="ACTION")

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", type=Path, default=Path(DEFAULT_SANDBOX_DIR),
                       help=f"where the sandbox lives (default {DEFAULT_SANDBOX_DIR})")
        return p

    up = with_dir(sandbox_verbs.add_parser(
        "up", help="start gearmand and a database server under DIR"))
    up.add_argument("--server", choices=SERVER_CHOICES, default=DEFAULT_DATABASE_SERVER,
                    help="mariadb (Debian's mariadbd, the default), or mysql, mysql:9, "
                         "mysql:8.4 or mysql:8.0 (mysqld in a container: needs a Docker engine "
                         "and the image that scripts/mysql-image.sh builds; plain mysql is the "
                         "newest line); an existing sandbox keeps its own")
    up.add_argument("--gearman-port", type=int, help="default: a free port")
    up.add_argument("--mysql-port", type=int, help="default: a free port")
    up.add_argument("--gearman-queue", choices=GEARMAN_QUEUES, default=DEFAULT_QUEUE,
                    help="gearmand's job queue: builtin (memory only, the default: the "
                         "ledger in the database keeps the jobs) or libsqlite3 (persistent, "
                         "ten times slower)")
    up.add_argument("--gearman-threads", type=_threads, default=GEARMAN_THREADS, metavar="N",
                    help=f"gearmand's I/O threads (default {GEARMAN_THREADS}: I/O and queue in "
                         "one thread, the shortest round trip for triggers)")
    up.add_argument("--install-udf", metavar="PATH", type=Path,
                    help="also install the UDF: a built library (udf/build/gearman_udf.so) or "
                         "the udf/ directory, built for the sandbox's server (MySQL: always)")
    up.set_defaults(func=_sandbox_up)

    down = with_dir(sandbox_verbs.add_parser("down", help="stop the sandbox's servers"))
    down.set_defaults(func=_sandbox_down)

    status = with_dir(sandbox_verbs.add_parser("status", help="say what runs (exit 0 if all)"))
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_sandbox_status)

    install = with_dir(sandbox_verbs.add_parser("install-udf", help="install the UDF library"))
    install.add_argument("--so", type=Path, default=Path("udf/build/gearman_udf.so"),
                         help="the library, or the udf/ directory to build it from for the "
                              "sandbox's server")
    install.set_defaults(func=_sandbox_install_udf)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # SUPPRESS: a sub-action's parser leaves a -c given before it alone instead of
        # writing its own default over it.
        p.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS,
                       help=CONFIG_HELP)
        p.set_defaults(needs_config=True)
        return p

    check = with_config(verbs.add_parser("check", help="validate a configuration file"))
    check.add_argument("--connect", action="store_true",
                       help="also reach every gearmand and the database")
    check.set_defaults(func=_check)

    doc = with_config(verbs.add_parser(
        "doctor", help="check, check by check, that this host can work on this database"))
    doc.add_argument("--probe", action="store_true",
                     help="also send one job from the database server through the UDF to a "
                          "worker of doctor's own on gearman.servers, and time it (writes no "
                          "row, runs no handler)")
    doc.set_defaults(func=_doctor)

    from workerhost.udf import DEFAULT_CONFIG_FILE

    udf_verb = verbs.add_parser("udf", help="build, install or remove the Gearman UDF")
    udf_verbs = udf_verb.add_subparsers(dest="udf_verb", required=True, metavar="ACTION")
    udf_build = udf_verbs.add_parser(
        "build", help="compile the package's gearman_udf.c against the server's headers")
    udf_build.add_argument("-o", "--output", type=Path, default=Path("gearman_udf.so"),
                           help="where the library goes (default ./gearman_udf.so)")
    udf_build.add_argument("--server", choices=("mariadb", "mysql"),
                           help="whose headers to look for first (default: mariadb_config, "
                                "then mysql_config, then pkg-config)")
    udf_build.set_defaults(func=_udf_build)

    force_help = {
        "install": "replace a gearman_udf.conf that names other servers",
        "uninstall": "drop the functions even while triggers call gman_ship",
    }

    def with_admin(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--user", help="connect as this account instead of the file's (one "
                                      "that may create functions: root)")
        p.add_argument("--password-env", metavar="VAR",
                       help="with --user: the environment variable holding its password")
        p.add_argument("--socket", type=Path, help="connect through this unix socket")
        p.add_argument("--force", action="store_true", help=force_help[p.prog.split()[-1]])
        return p

    udf_install = with_admin(with_config(udf_verbs.add_parser(
        "install", help="put the library into @@plugin_dir, create the functions, and write "
                        "gearman_udf.conf from gearman.servers (on the database server)")))
    udf_install.add_argument("--so", type=Path,
                             help="a library built before (udf build); default: build it now")
    udf_install.add_argument("--config-file", type=Path,
                             help="the UDF's config file (default: the one a loaded UDF reads, "
                                  f"else {DEFAULT_CONFIG_FILE}; mysqld's GEARMAN_UDF_CONFIG "
                                  "names another)")
    udf_install.set_defaults(func=_udf_install)
    udf_uninstall = with_admin(with_config(udf_verbs.add_parser(
        "uninstall", help="drop the functions (refused while triggers call gman_ship)")))
    udf_uninstall.set_defaults(func=_udf_uninstall)

    run = with_config(verbs.add_parser("run", help="run the worker host"))
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                     default="info")
    run.set_defaults(func=_run)

    dead = with_config(verbs.add_parser("dead-letters", help="inspect and replay dead letters"))
    dead_verbs = dead.add_subparsers(dest="dl_verb", required=True, metavar="ACTION")
    dl_list = with_config(dead_verbs.add_parser("list", help="list dead letters"))
    dl_list.add_argument("--function", help="only this function")
    dl_list.add_argument("--limit", type=int, default=100)
    dl_show = with_config(dead_verbs.add_parser(
        "show", help="one dead letter, with payload and traceback"))
    dl_show.add_argument("id", type=int)
    dl_retry = with_config(dead_verbs.add_parser("retry", help="queue dead letters again"))
    dl_retry.add_argument("ids", type=int, nargs="*")
    dl_retry.add_argument("--all", action="store_true")
    dl_purge = with_config(dead_verbs.add_parser("purge", help="delete dead letters"))
    dl_purge.add_argument("ids", type=int, nargs="*")
    dl_purge.add_argument("--function", help="all of this function")
    dl_purge.add_argument("--all", action="store_true")
    dead.set_defaults(func=_dead_letters, function=None, all=False, ids=[])

    job_verb = with_config(verbs.add_parser(
        "jobs", help="jobs waiting or running (the ledger): list, show, cancel, run now"))
    job_verbs = job_verb.add_subparsers(dest="jobs_verb", required=True, metavar="ACTION")
    job_list = with_config(job_verbs.add_parser("list", help="the newest jobs of the ledger"))
    job_list.add_argument("--function", help="only this function")
    job_list.add_argument("--state", choices=("due", "leased", "delayed", "paused"))
    job_list.add_argument("--search", help="only jobs whose payload holds this text")
    job_list.add_argument("--limit", type=int, default=50)
    job_show = with_config(job_verbs.add_parser("show", help="one job, with its failures"))
    job_show.add_argument("id", type=int)
    job_cancel = with_config(job_verbs.add_parser(
        "cancel", help="cancel jobs: they never run, even a copy already in gearmand"))
    job_cancel.add_argument("ids", type=int, nargs="+")
    job_now = with_config(job_verbs.add_parser(
        "retry-now", help="run delayed retries now instead of after their back-off"))
    job_now.add_argument("ids", type=int, nargs="+")
    job_verb.set_defaults(func=_jobs, function=None, state=None, search=None, limit=50)

    pause = with_config(verbs.add_parser(
        "pause", help="pause a function on every host: its jobs wait in the ledger"))
    pause.add_argument("function")
    pause.set_defaults(func=_pause)
    resume = with_config(verbs.add_parser(
        "resume", help="resume a paused function: its parked jobs run, each once"))
    resume.add_argument("function")
    resume.set_defaults(func=_resume)

    cons = with_config(verbs.add_parser(
        "console", help="the operator console in the browser: queues, ledger, dead letters"))
    cons.add_argument("--listen", type=_listen, metavar="HOST:PORT",
                      help="where to listen (default: host.console.listen, else "
                           "127.0.0.1:9465); a port alone listens on 127.0.0.1")
    cons.add_argument("--log-format", choices=("text", "json"), default="text")
    cons.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                      default="info")
    cons.set_defaults(func=_console)

    trig = with_config(verbs.add_parser(
        "triggers", help="print, apply or drop the triggers of the triggers: section"))
    trig_action = trig.add_mutually_exclusive_group()
    trig_action.add_argument("--apply", action="store_true",
                             help="create or replace them in the configured database")
    trig_action.add_argument("--drop", action="store_true",
                             help="drop this file's triggers in the configured database")
    trig.add_argument("--prune", action="store_true",
                      help="with --apply or --drop: also drop the workerhost triggers other "
                           "files made, and replace theirs that this file lists")
    trig_action.add_argument("--print-drop", action="store_true",
                             help="print the DROP statements instead of the CREATE ones")
    trig.add_argument("--dialect", choices=("mariadb", "mysql"), default="mariadb",
                      help="SQL to print: mariadb uses CREATE OR REPLACE TRIGGER (default)")
    trig.set_defaults(func=_triggers)

    stat = with_config(verbs.add_parser(
        "status", help="queues per gearmand and function, dead letters, outbox backlog"))
    stat.add_argument("--json", action="store_true", help="machine-readable output")
    stat.set_defaults(func=_status)

    sched = with_config(verbs.add_parser(
        "schedules", help="the schedules: section, with the last and the next slot of each"))
    sched.add_argument("--json", action="store_true", help="machine-readable output")
    sched.set_defaults(func=_schedules)

    outbox = with_config(verbs.add_parser("outbox", help="the jobs waiting in the outbox"))
    outbox_verbs = outbox.add_subparsers(dest="outbox_verb", required=True, metavar="ACTION")
    drain = with_config(outbox_verbs.add_parser("drain", help="ship every due row to gearmand now"))
    drain.set_defaults(func=_outbox_drain)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # Before anything else: `run` keeps a SIGTERM or SIGHUP that comes during its start-up.
    signals = Signals().install() if _verb(words) == "run" else None
    args = build_parser().parse_args(words)
    args.signals = signals
    if getattr(args, "needs_config", False):
        import os

        try:
            args.config = config_path(getattr(args, "config", None), os.environ)
        except NoConfigFile as exc:
            print(f"workerhost: error: {exc}", file=sys.stderr)
            return RET_USAGE
    from workerhost.db import ERRORS, translate

    try:
        code: int = args.func(args)
    except WorkerHostError as exc:
        print(f"workerhost: error: {exc}", file=sys.stderr)
        return next((c for t, c in EXIT_CODES.items() if isinstance(exc, t)), RET_ERROR)
    except ERRORS as raised:
        # A missing table, a missing privilege: the server's own words (unreachable is 4).
        error: Any = translate(raised)
        hint = ""
        if error.errno == 1146:  # no such table
            hint = "; `workerhost check -c FILE --connect` creates the host's tables"
        print(f"workerhost: error: the database said: {error}{hint}", file=sys.stderr)
        return RET_ERROR
    except KeyboardInterrupt:
        print("workerhost: interrupted", file=sys.stderr)
        return RET_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
