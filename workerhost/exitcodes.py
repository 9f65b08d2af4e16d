"""Every exit code of workerhost, in one place: the table in docs/operations.md is this module.

`RET_*` are the codes of the `workerhost` command (every verb; `run` is the supervisor);
`EXIT_*` those of the child processes the supervisor forks (workers, the relay, the
metrics server), which it reads to decide what a child's exit means.
"""

from __future__ import annotations

import signal

# -- the `workerhost` command --------------------------------------------------------------
RET_OK = 0  # success; for `run`, every worker finished its job after a stop signal
RET_ERROR = 1  # any other failure the message explains (a database error quoted, no such id)
RET_USAGE = 2  # bad command line (argparse's own code)
RET_CONFIG = 3  # the configuration file is invalid
RET_CONNECT = 4  # gearmand or the database could not be reached
RET_SANDBOX = 5  # the sandbox could not be started, stopped or read
RET_KILLED = 6  # `run`: a second stop signal killed the workers without waiting for their jobs
RET_DOCTOR = 7  # `doctor`: a check failed (each FAIL line says what fixes it)
RET_INTERRUPTED = 130  # Ctrl-C outside `run` (128 + SIGINT, as a shell reports it)

# -- a child process of `workerhost run` ---------------------------------------------------
EXIT_OK = 0  # stopped on request, or recycled (max_jobs, max_lifetime)
EXIT_CRASHED = 1  # an uncaught exception: Python's own status for one; the traceback is logged
EXIT_START_FAILED = 3  # it could not start its work: the metrics address cannot be listened on
EXIT_DATABASE = 4  # the database stayed unreachable while a job waited; job left to gearmand

# What the supervisor logs for each, after "exit status N".
CHILD_EXITS = {
    EXIT_OK: "stopped",
    EXIT_CRASHED: "an uncaught exception",
    EXIT_START_FAILED: "it could not start",
    EXIT_DATABASE: "the database stayed unreachable",
}


def describe_child_exit(code: int | None) -> str:
    """A child's exit as a log line says it: `exit status 4: the database stayed unreachable`.

    `code` is a multiprocessing exit code: negative for a signal, None while it runs.
    """
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    meaning = CHILD_EXITS.get(code)
    return f"exit status {code}: {meaning}" if meaning else f"exit status {code}"
