"""Failed attempts, delayed retries and dead letters, all in the application's database.

gearmand never retries a failed job, and re-queues the job of a dead worker forever; both caps
are kept here. A failure is counted in `workerhost_attempts` under the job's key (function and
ledger row, or function and unique). While attempts remain, the job goes back through
`workerhost_outbox` with a `not_before` in the future, and the relay ships it when due; after
the last attempt it becomes a row in `workerhost_dead_letters`. Each step is one transaction.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from workerhost.config.settings import RetryPolicy
from workerhost.model.job import Job, Outcome
from workerhost.store import ledger, letters
from workerhost.store.db import Connection

# What fits the columns (TEXT, MEDIUMTEXT) with room for multi-byte characters: a longer error
# would make every write of the failure fail, and the job would never leave the queue.
MAX_ERROR = 16_000
MAX_TRACEBACK = 4_000_000
# What a failure recorded in shortened form keeps: it must fit whatever max_allowed_packet the
# server has (1 MB at the least, on every version of either).
SHORT_PAYLOAD = 65_536
SHORT_ERROR = 4_000


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, as it is stored and logged."""

    error: str
    traceback: str | None = None
    final: bool = False  # retrying cannot help (a bad payload): dead-letter at once

    def __post_init__(self) -> None:
        object.__setattr__(self, "error", _clip(self.error, MAX_ERROR))
        if self.traceback is not None:
            object.__setattr__(self, "traceback", _clip(self.traceback, MAX_TRACEBACK))


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters cut)"


def retry_delay(policy: RetryPolicy, failures: int) -> float:
    """Exponential back-off with full jitter in its upper half: 2^(n-1) * backoff, capped."""
    ceiling = min(policy.backoff * 2 ** max(failures - 1, 0), policy.max_backoff)
    return random.uniform(ceiling / 2, ceiling)


def count_failure(conn: Connection, key: bytes, failure: Failure) -> int:
    """Add one failed attempt for `key`; returns the failures counted so far."""
    return letters.count_failure(conn, key, failure.error, failure.traceback)


def last_failure(conn: Connection, key: bytes) -> Failure | None:
    found = letters.last_failure(conn, key)
    return Failure(*found) if found else None


def handle_failure(conn: Connection, job: Job, policy: RetryPolicy, failure: Failure) -> Outcome:
    """Count the failure, then schedule a retry or write a dead letter. Caller commits.

    A job with a ledger row is retried through that row (due again after the delay); one
    without is written to the ledger, where it gets a ledger row of its own.
    """
    failures = count_failure(conn, job.key, failure)
    if failures >= policy.attempts or failure.final:
        dead_letter(conn, job, failures, failure)
        return Outcome.DEAD
    delay = retry_delay(policy, failures)
    if job.ledger is not None:
        ledger.reschedule(conn, job.ledger, delay)
    else:
        ident = ledger.enqueue(conn, job.function, job.payload, stable_unique(job), delay=delay)
        # From now on a ledger job, whose failures count under its row.
        letters.rekey_failures(conn, job.key, dataclasses.replace(job, ledger=ident).key)
    return Outcome.RETRY


def dead_letter(conn: Connection, job: Job, attempts: int, failure: Failure) -> None:
    """The job's dead letter; its ledger row, if it has one, goes."""
    letters.add_dead_letter(conn, job.key, job.function, job.payload, stable_unique(job),
                           attempts, failure.error, failure.traceback)
    if job.ledger is not None:
        ledger.delete_ledger_rows(conn, [job.ledger])


def dead_letter_short(conn: Connection, job: Job, failure: Failure, refusal: str) -> None:
    """The dead letter of a job whose failure the database refused to record as it is: the
    payload cut to SHORT_PAYLOAD bytes, the error and traceback shortened, and why."""
    payload = job.payload[:SHORT_PAYLOAD]
    cut = len(job.payload) - len(payload)
    note = (f" [recorded in shortened form: the database refused the full record ({refusal})"
            + (f"; payload of {len(job.payload)} bytes cut to its first {SHORT_PAYLOAD}]"
               if cut else "]"))
    attempts = letters.failures_so_far(conn, job.key) + 1
    letters.add_dead_letter(conn, job.key, job.function, payload, stable_unique(job), attempts,
                           _clip(failure.error, SHORT_ERROR) + note,
                           None if failure.traceback is None
                           else _clip(failure.traceback, SHORT_ERROR))
    if job.ledger is not None:
        ledger.delete_ledger_rows(conn, [job.ledger])


def stable_unique(job: Job) -> str:
    """The unique a retry is submitted with, so that it keeps the job's key.

    A job submitted without a unique is known by its handle; the retry carries that handle
    as its unique, so its failures keep adding up under the same key.
    """
    return job.unique or job.handle
