"""Logging for the host: readable lines by default, JSON lines with --log-format json.

Whatever the format, a line never shows a secret (`redact()`: the database password, given
by `workerhost run` and again on every reload) nor more than MAX_MESSAGE characters of a
message, so that a payload or a huge error quoted in it stays out of the log. `mask()` does
the same for what other commands print (dead letters, status).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from workerhost.model.job import Outcome
from workerhost.observe import events

if TYPE_CHECKING:
    from workerhost.model.job import Job

# Fields a log call may attach with `extra=`; they appear in both formats.
JOB_FIELDS = ("function", "handle", "unique", "attempt")
MAX_MESSAGE = 2000  # characters of one message; enough for an error, too few for a payload
MASK = "***"

# Every spelling of every secret, longest first. Set before the first fork, and again on
# each reload before new workers are forked: children inherit it.
_secrets: list[str] = []


def redact(*secrets: str) -> None:
    """Never show these strings: each is replaced by ***, in every log line and wherever
    ``mask()`` is used (dead letters, status). Empty ones are ignored.

    Secrets accumulate: call it again after every reload with the password now configured,
    and the one it replaced stays masked too (workers not yet replaced still connect with
    it, and a password that was once configured is no less secret for being changed).
    """
    for secret in secrets:
        for spelling in _spellings(secret):
            if spelling not in _secrets:
                _secrets.append(spelling)
    _secrets.sort(key=len, reverse=True)  # a longer secret that contains a shorter one first


def _spellings(secret: str) -> list[str]:
    """The secret as written, and as an error may quote it: repr, JSON, an SQL literal."""
    if not secret:
        return []
    sql = secret.replace("\\", "\\\\").replace("'", "\\'")
    return list(dict.fromkeys([secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], sql,
                               secret.replace("'", "''")]))


def mask(text: str, *secrets: str) -> str:
    """``text`` with every secret given to ``redact()``, and each of ``secrets``, as ***."""
    known = _secrets
    if any(secrets):
        extra = (spelling for secret in secrets for spelling in _spellings(secret))
        known = sorted({*known, *extra}, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return text


def scrub(text: str, limit: int | None = MAX_MESSAGE) -> str:
    """`text` without secrets, cut to `limit` characters (after masking, so no prefix leaks)."""
    text = mask(text)
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


# Where the lines about jobs that failed or were refused go: the worker's logger, as always.
_jobs_log = logging.getLogger("workerhost.worker")
_unsubscribe: Any = None


def job_line(event: events.Event) -> None:
    """The logs' listener (setup() subscribes it): a line for each job that failed or was
    refused. A retry is the system working as meant (WARNING); only a dead letter or a refused
    delivery needs a person (ERROR)."""
    if not isinstance(event, events.JobsFinished) or event.job is None:
        return
    if event.outcome == Outcome.REFUSED:
        level, what = logging.ERROR, "refused without running"
    elif not event.ran:
        level, what = logging.ERROR, "dead-lettered without running"
    elif event.outcome == Outcome.DEAD:
        level, what = logging.ERROR, "failed and dead-lettered"
    elif event.outcome == Outcome.RETRY:
        level, what = logging.WARNING, "failed and will be retried"
    else:
        return
    _jobs_log.log(level, "job %s %s: %s", event.job.describe(), what, event.error,
                  extra=job_fields(event.job))


def setup(fmt: str = "text", level: str = "info") -> None:
    global _unsubscribe
    if _unsubscribe is None:  # once per process, however often the format is set
        _unsubscribe = events.subscribe(job_line)
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
