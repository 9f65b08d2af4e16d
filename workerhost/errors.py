"""The error tree of the worker host; the CLI maps each leaf to an exit code."""

from __future__ import annotations


class WorkerHostError(Exception):
    """Root of every error the worker host raises on purpose."""


class ConfigError(WorkerHostError):
    """A configuration file is invalid; the message names the file and the key path."""

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None) -> None:
        self.file = file
        self.path = path
        self.reason = message
        where = ": ".join(part for part in (file, path) if part)
        super().__init__(f"{where}: {message}" if where else message)


class SandboxError(WorkerHostError):
    """The local sandbox (gearmand + mariadbd) could not be started, stopped or read."""


class ConnectError(WorkerHostError):
    """gearmand or the database could not be reached."""


class Snooze(Exception):
    """Raised by a handler: run this job again after `seconds`, without spending an attempt.

    Its writes roll back, its ledger row waits out the delay; a job snoozed more than
    MAX_SNOOZES times fails its attempt instead (worker.py). An `sql:` handler snoozes with
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'workerhost snooze 30s', a `command:`
    program by exiting with status 75 (EX_TEMPFAIL) after printing the delay (30s) on stdout.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = seconds


class JobError(WorkerHostError):
    """A job failed for a reason the host can name; by default retrying cannot fix it."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
