"""Every verb of `workerhost` and its options, with the function that runs it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from workerhost import __version__
from workerhost.cli import job_verbs, sandbox_verbs, udf_verbs, verbs
from workerhost.cli.common import CONFIG_HELP
from workerhost.cli.sandbox_verbs import DEFAULT_SANDBOX_DIR
from workerhost.model.ledger_state import STATES
from workerhost.udf import UDF_VERSION


def _threads(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if not 0 <= count <= 64:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a thread count: give a whole number from 0 to 64")
    return count


def _listen(text: str) -> Any:
    from workerhost.config.converters import listen_address

    try:
        return listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    from workerhost.config.converters import duration

    try:
        return duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from workerhost.sandbox.options import (
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
    parser.add_argument("--version", action="version",
                        version=f"workerhost {__version__} (UDF {UDF_VERSION})")
    parser.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS,
                        help=CONFIG_HELP)
    verb_parsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    sandbox = verb_parsers.add_parser("sandbox",
                                      help="a throwaway local gearmand + MariaDB or MySQL")
    sandbox_actions = sandbox.add_subparsers(dest="sandbox_verb", required=True, metavar="ACTION")

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", type=Path, default=Path(DEFAULT_SANDBOX_DIR),
                       help=f"where the sandbox lives (default {DEFAULT_SANDBOX_DIR})")
        return p

    up = with_dir(sandbox_actions.add_parser(
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
    up.set_defaults(func=sandbox_verbs.sandbox_up)

    down = with_dir(sandbox_actions.add_parser("down", help="stop the sandbox's servers"))
    down.set_defaults(func=sandbox_verbs.sandbox_down)

    status = with_dir(sandbox_actions.add_parser("status", help="say what runs (exit 0 if all)"))
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=sandbox_verbs.sandbox_status)

    install = with_dir(sandbox_actions.add_parser("install-udf", help="install the UDF library"))
    install.add_argument("--so", type=Path, default=Path("udf/build/gearman_udf.so"),
                         help="the library, or the udf/ directory to build it from for the "
                              "sandbox's server")
    install.set_defaults(func=sandbox_verbs.sandbox_install_udf)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # SUPPRESS: a sub-action's parser leaves a -c given before it alone instead of
        # writing its own default over it.
        p.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS,
                       help=CONFIG_HELP)
        p.set_defaults(needs_config=True)
        return p

    check = with_config(verb_parsers.add_parser("check", help="validate a configuration file"))
    check.add_argument("--connect", action="store_true",
                       help="also reach every gearmand and the database")
    check.set_defaults(func=verbs.check)

    doc = with_config(verb_parsers.add_parser(
        "doctor", help="check, check by check, that this host can work on this database"))
    doc.add_argument("--probe", action="store_true",
                     help="also send one job from the database server through the UDF to a "
                          "worker of doctor's own on gearman.servers, and time it (writes no "
                          "row, runs no handler)")
    doc.set_defaults(func=verbs.doctor)

    from workerhost.udf.installed import DEFAULT_CONFIG_FILE

    udf_verb = verb_parsers.add_parser("udf", help="build, install or remove the Gearman UDF")
    udf_actions = udf_verb.add_subparsers(dest="udf_verb", required=True, metavar="ACTION")
    udf_build = udf_actions.add_parser(
        "build", help="compile the package's gearman_udf.c against the server's headers")
    udf_build.add_argument("-o", "--output", type=Path, default=Path("gearman_udf.so"),
                           help="where the library goes (default ./gearman_udf.so)")
    udf_build.add_argument("--server", choices=("mariadb", "mysql"),
                           help="whose headers to look for first (default: mariadb_config, "
                                "then mysql_config, then pkg-config)")
    udf_build.set_defaults(func=udf_verbs.udf_build)

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

    udf_install = with_admin(with_config(udf_actions.add_parser(
        "install", help="put the library into @@plugin_dir, create the functions, and write "
                        "gearman_udf.conf from gearman.servers (on the database server)")))
    udf_install.add_argument("--so", type=Path,
                             help="a library built before (udf build); default: build it now")
    udf_install.add_argument("--config-file", type=Path,
                             help="the UDF's config file (default: the one a loaded UDF reads, "
                                  f"else {DEFAULT_CONFIG_FILE}; mysqld's GEARMAN_UDF_CONFIG "
                                  "names another)")
    udf_install.set_defaults(func=udf_verbs.udf_install)
    udf_uninstall = with_admin(with_config(udf_actions.add_parser(
        "uninstall", help="drop the functions (refused while triggers call gman_ship)")))
    udf_uninstall.set_defaults(func=udf_verbs.udf_uninstall)

    run = with_config(verb_parsers.add_parser("run", help="run the worker host"))
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                     default="info")
    run.set_defaults(func=verbs.run)

    dead = with_config(verb_parsers.add_parser("dead-letters",
                                               help="inspect and replay dead letters"))
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
    dead.set_defaults(func=job_verbs.dead_letters, function=None, all=False, ids=[])

    job_verb = with_config(verb_parsers.add_parser(
        "jobs", help="jobs waiting or running (the ledger): list, show, cancel, run now"))
    job_actions = job_verb.add_subparsers(dest="jobs_verb", required=True, metavar="ACTION")
    job_list = with_config(job_actions.add_parser("list", help="the newest jobs of the ledger"))
    job_list.add_argument("--function", help="only this function")
    job_list.add_argument("--state", choices=STATES)
    job_list.add_argument("--search", help="only jobs whose payload holds this text")
    job_list.add_argument("--older-than", type=_duration, metavar="DURATION",
                          help="only jobs written at least this long ago (30s, 10m, 2h, 1d)")
    job_list.add_argument("--limit", type=int, default=50)
    job_show = with_config(job_actions.add_parser("show", help="one job, with its failures"))
    job_show.add_argument("id", type=int)
    job_cancel = with_config(job_actions.add_parser(
        "cancel", help="cancel jobs: they never run, even a copy already in gearmand"))
    job_cancel.add_argument("ids", type=int, nargs="+")
    job_now = with_config(job_actions.add_parser(
        "retry-now", help="run delayed retries now instead of after their back-off"))
    job_now.add_argument("ids", type=int, nargs="+")
    job_verb.set_defaults(func=job_verbs.jobs, function=None, state=None, search=None, limit=50,
                          older_than=None)

    pause = with_config(verb_parsers.add_parser(
        "pause", help="pause a function on every host: its jobs wait in the ledger"))
    pause.add_argument("function")
    pause.set_defaults(func=job_verbs.pause)
    resume = with_config(verb_parsers.add_parser(
        "resume", help="resume a paused function: its parked jobs run, each once"))
    resume.add_argument("function")
    resume.set_defaults(func=job_verbs.resume)

    cons = with_config(verb_parsers.add_parser(
        "console", help="the operator console in the browser: queues, ledger, dead letters"))
    cons.add_argument("--listen", type=_listen, metavar="HOST:PORT",
                      help="where to listen (default: host.console.listen, else "
                           "127.0.0.1:9465); a port alone listens on 127.0.0.1")
    cons.add_argument("--log-format", choices=("text", "json"), default="text")
    cons.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                      default="info")
    cons.set_defaults(func=verbs.console)

    trig = with_config(verb_parsers.add_parser(
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
    trig.set_defaults(func=verbs.triggers)

    stat = with_config(verb_parsers.add_parser(
        "status", help="queues per gearmand and function, dead letters, the ledger's backlog"))
    stat.add_argument("--json", action="store_true", help="machine-readable output")
    stat.set_defaults(func=verbs.status)

    sched = with_config(verb_parsers.add_parser(
        "schedules", help="the schedules: section, with the last and the next slot of each"))
    sched.add_argument("--json", action="store_true", help="machine-readable output")
    sched.set_defaults(func=verbs.schedules)

    outbox = with_config(verb_parsers.add_parser("outbox", help="the jobs waiting in the outbox"))
    outbox_verbs = outbox.add_subparsers(dest="outbox_verb", required=True, metavar="ACTION")
    drain = with_config(outbox_verbs.add_parser("drain", help="ship every due row to gearmand now"))
    drain.set_defaults(func=verbs.outbox_drain)

    return parser
