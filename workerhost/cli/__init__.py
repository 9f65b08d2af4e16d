"""The `workerhost` command line: each verb maps errors to a documented exit code.

parser.py declares every verb and its options; the verbs live in verbs.py (check, doctor, run,
console, triggers, schedules, status, outbox drain), job_verbs.py (jobs, pause, resume, dead
letters), udf_verbs.py and sandbox_verbs.py. main() maps the error tree to exit codes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from workerhost.cli.common import NoConfigFile, config_path
from workerhost.cli.parser import build_parser
from workerhost.errors import ConfigError, ConnectError, SandboxError, WorkerHostError
from workerhost.exitcodes import (
    RET_CONFIG,
    RET_CONNECT,
    RET_ERROR,
    RET_INTERRUPTED,
    RET_SANDBOX,
    RET_USAGE,
)
from workerhost.host.signals import Signals

EXIT_CODES: dict[type[WorkerHostError], int] = {
    ConfigError: RET_CONFIG,
    ConnectError: RET_CONNECT,
    SandboxError: RET_SANDBOX,
}


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
    from workerhost.store.db import ERRORS, translate

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
