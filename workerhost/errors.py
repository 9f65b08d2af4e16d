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


class JobError(WorkerHostError):
    """A job failed for a reason the host can name; by default retrying cannot fix it."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
