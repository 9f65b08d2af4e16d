"""Logging for the host: readable lines by default, JSON lines with --log-format json.

Whatever the format, a line never shows a secret (`redact()`: the database password, given
by `workerhost run`) nor more than MAX_MESSAGE characters of a message, so that a payload or
a huge error quoted in it stays out of the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workerhost.job import Job

# Fields a log call may attach with `extra=`; they appear in both formats.
JOB_FIELDS = ("function", "handle", "unique", "attempt")
MAX_MESSAGE = 2000  # characters of one message; enough for an error, too few for a payload
MASK = "***"

_secrets: list[str] = []  # strings no log line may contain; set once, before the first fork


def redact(*secrets: str) -> None:
    """Never log these strings: each is replaced by ***. Empty ones are ignored."""
    for secret in secrets:
        if secret and secret not in _secrets:
            _secrets.append(secret)
    _secrets.sort(key=len, reverse=True)  # a longer secret that contains a shorter one first


def scrub(text: str, limit: int | None = MAX_MESSAGE) -> str:
    """`text` without secrets, cut to `limit` characters (after masking, so no prefix leaks)."""
    for secret in _secrets:
        text = text.replace(secret, MASK)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters not logged)"
    return text


def job_fields(job: Job) -> Mapping[str, Any]:
    """The `extra=` of a log call about one job."""
    return {"function": job.function, "handle": job.handle, "unique": job.unique,
            "attempt": job.attempt}


class _Scrub(logging.Filter):
    """Masks secrets and cuts long messages before any formatter sees the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, scrub(value, 256))
        return True


class TextFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return scrub(super().formatException(ei), None)

    def formatStack(self, stack_info: str) -> str:
        return scrub(super().formatStack(stack_info), None)


class JsonFormatter(TextFormatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name in JOB_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Scrub())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(
            "%(asctime)s %(levelname)-7s %(name)s[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The connector logs its authentication plugin at INFO on every connect.
    logging.getLogger("mysql.connector").setLevel(max(logging.WARNING, root.level))
