"""gman_sum(function, workload): an aggregate whose jobs run side by side, on both servers.

Each row's job is submitted as the row comes and not waited for; the group's value is the sum
of the integer results, or NULL (with a line in mysqld's error log) when a job fails, a result
is no integer, the group's result_timeout_ms passes or gearmand acknowledges no job for
timeout_ms.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from conftest import host_config, scalar, sequence
from test_udf import (  # udf_config: a fixture, used by name
    DEFAULT_RESULT_TIMEOUT_MS,
    DEFAULT_TIMEOUT_MS,
    MARGIN,
    RESULT_TIMEOUT,
    RESULT_TIMEOUT_MS,
    RawWorker,
    counters,
    serving,
    silent_server,
    stalling,
    udf_status,
)

from workerhost.sandbox.options import MEMORY_QUEUE
from workerhost.sandbox.stack import Sandbox

# A program per job that takes 50 ms and prints twice its integer input, as `command:`
# handlers run them: the payload on stdin, stdout the result ("200\n").
DOUBLE_SLOWLY = ["sh", "-c", 'n=$(cat); sleep 0.05; echo $((n * 2))']
PROCESSES = 8
ROWS = 100
# 100 jobs of 50 ms on 8 processes: 13 rounds, about 0.7 s of sleeping plus what each job
# costs the host (a shell started, a transaction committed) on a busy 2-core machine. One
# after another they would sleep 5 s alone. 2.5 s is half of that: it holds only if jobs run
# side by side, and leaves the host room for its own overhead.
SIDE_BY_SIDE_LIMIT = 2.5
# The least such a group takes: 13 rounds of 50 ms.
SIDE_BY_SIDE_FLOOR = -(-ROWS // PROCESSES) * 0.05


@pytest.fixture
def fn() -> str:
    """A Gearman function name no other test uses."""
    return "sum_test_" + uuid.uuid4().hex[:12]


@pytest.fixture
def numbers(db: Any) -> Any:
    """The database with t(id) holding 1..ROWS."""
    cursor = db.cursor()
    cursor.execute("CREATE TABLE t (id INT PRIMARY KEY)")
    cursor.execute(f"INSERT INTO t SELECT seq FROM {sequence(1, ROWS)}")
    cursor.close()
    return db



def logged_since(sandbox: Sandbox, offset: int) -> str:
    """What mysqld's error log gained after offset bytes."""
    with open(sandbox.mysql_log, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def log_size(sandbox: Sandbox) -> int:
    return sandbox.mysql_log.stat().st_size


# -- with the worker host's command: handlers ------------------------------------------------

def test_a_groups_jobs_run_side_by_side(udf: Sandbox, numbers: Any, fn: str,
                                        host_factory: Callable[..., Any]) -> None:
    host_factory(host_config(udf, numbers.database, {
        fn: {"command": DOUBLE_SLOWLY, "processes": PROCESSES}}))
    # Warm: every worker process has run a job, so the figure is the UDF's, not start-up's.
    assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t WHERE id <= %s", fn,
                  2 * PROCESSES) == PROCESSES * (2 * PROCESSES + 1) * 2
    started = time.monotonic()
    total = scalar(numbers, "SELECT gman_sum(%s, id) FROM t", fn)
    took = time.monotonic() - started
    assert total == ROWS * (ROWS + 1)  # 2 * (1 + ... + 100) = 10100
    assert took < SIDE_BY_SIDE_LIMIT, f"{ROWS} jobs of 50 ms took {took:.2f}s"


def test_a_group_of_100_jobs_of_50_ms_sums_with_the_default_config(
        udf: Sandbox, numbers: Any, fn: str, udf_config: Callable[..., None],
        host_factory: Callable[..., Any]) -> None:
    """timeout_ms bounds connecting and submitting only; a group waits for its answers up to
    result_timeout_ms. The group takes longer than a short timeout_ms, and used to be NULL."""
    udf_config(timeout_ms=None)  # servers= alone: every other setting its default
    status = udf_status(numbers)
    assert (status["timeout_ms"], status["result_timeout_ms"]) == (
        DEFAULT_TIMEOUT_MS, DEFAULT_RESULT_TIMEOUT_MS)
    # accept: any, as for every job that comes straight to gearmand and not through the ledger.
    host_factory(host_config(udf, numbers.database, {
        fn: {"command": DOUBLE_SLOWLY, "processes": PROCESSES, "accept": "any"}}))
    assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t", fn) == ROWS * (ROWS + 1)

    udf_config(timeout_ms=500)  # the setting: shorter than the group takes
    started = time.monotonic()
    assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t", fn) == ROWS * (ROWS + 1)
    took = time.monotonic() - started
    assert took > SIDE_BY_SIDE_FLOOR > 0.5, f"took {took:.2f}s"


def test_a_failing_job_makes_its_group_null(udf: Sandbox, numbers: Any, fn: str,
                                            host_factory: Callable[..., Any]) -> None:
    fails_on_7 = ["sh", "-c", 'n=$(cat); [ "$n" != 7 ] || exit 3; echo $((n * 2))']
    host_factory(host_config(udf, numbers.database, {
        fn: {"command": fails_on_7, "processes": 4, "retries": {"attempts": 1}}}))
    offset = log_size(udf)
    before = counters(numbers)
    assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t", fn) is None
    assert counters(numbers)["failed"] == before["failed"] + 1
    assert f"gman_sum('{fn}'): " in logged_since(udf, offset)
    assert "the worker failed job" in logged_since(udf, offset)
    # GROUP BY: only the group holding 7 is NULL.
    cursor = numbers.cursor()
    cursor.execute("SELECT id <= 10 AS low, gman_sum(%s, id) FROM t GROUP BY low ORDER BY low",
                   (fn,))
    assert cursor.fetchall() == [(0, 2 * (sum(range(11, ROWS + 1)))), (1, None)]


# -- with a worker of our own ----------------------------------------------------------------

def double(workload: bytes) -> bytes:
    return b"%d\n" % (2 * int(workload))


def test_group_by_sums_each_group(udf: Sandbox, numbers: Any, fn: str) -> None:
    expected = {g: 2 * sum(i for i in range(1, ROWS + 1) if i % 3 == g) for g in range(3)}
    with serving(udf.gearman_port, fn, double) as seen:
        cursor = numbers.cursor()
        cursor.execute("SELECT id % 3 AS g, gman_sum(%s, id) FROM t GROUP BY g ORDER BY g",
                       (fn,))
        assert dict(cursor.fetchall()) == expected
        cursor.close()
    assert len(seen) == ROWS


def test_with_rollup_every_group_is_null_rather_than_wrong(udf: Sandbox, numbers: Any,
                                                          fn: str) -> None:
    """Both servers run WITH ROLLUP's levels through copies of the aggregate that share its
    state, which would mix the levels' rows into wrong sums: NULL instead, and a log line."""
    offset = log_size(udf)
    with serving(udf.gearman_port, fn, double):
        cursor = numbers.cursor()
        cursor.execute("SELECT id % 2 AS g, gman_sum(%s, id) FROM t WHERE id <= 4 "
                       "GROUP BY g WITH ROLLUP", (fn,))
        assert cursor.fetchall() == [(0, None), (1, None), (None, None)]
        cursor.close()
        # The statement after it sums again.
        assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t WHERE id <= 4", fn) == 20
    assert "called for two groups at once (WITH ROLLUP?)" in logged_since(udf, offset)


def test_rows_without_a_function_are_left_out_and_nothing_sums_to_null(
        udf: Sandbox, numbers: Any, fn: str) -> None:
    with serving(udf.gearman_port, fn, double) as seen:
        assert scalar(numbers, "SELECT gman_sum(IF(id <= 3, %s, NULL), id) FROM t", fn) == 12
        assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t WHERE id > 1000", fn) is None
        assert scalar(numbers, "SELECT gman_sum(NULL, id) FROM t") is None
    assert len(seen) == 3


def test_a_result_that_is_no_integer_makes_the_group_null(udf: Sandbox, numbers: Any,
                                                          fn: str) -> None:
    offset = log_size(udf)
    answers = {b"1": b" 5\n", b"2": b"-3", b"3": b"+4", b"4": b"four"}
    with serving(udf.gearman_port, fn, lambda w: answers[w]):
        assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t WHERE id <= 3", fn) == 6
        assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t WHERE id <= 4", fn) is None
    assert "result 'four' is not an integer" in logged_since(udf, offset)


def test_a_worker_that_never_answers_is_null_within_the_result_timeout(
        udf: Sandbox, numbers: Any, fn: str, udf_config: Callable[..., None]) -> None:
    """result_timeout_ms bounds the group, not each job: 20 unanswered jobs cost one
    result_timeout_ms, which is longer than timeout_ms (the sandbox's 1 s) here."""
    udf_config(result_timeout_ms=RESULT_TIMEOUT_MS)
    offset = log_size(udf)
    before = counters(numbers)
    with stalling(udf.gearman_port, fn, None) as seen:
        started = time.monotonic()
        assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t WHERE id <= 20", fn) is None
        took = time.monotonic() - started
    assert RESULT_TIMEOUT * 0.9 <= took < 3 * RESULT_TIMEOUT, f"took {took:.2f}s"
    assert len(seen) >= 1
    after = counters(numbers)
    assert after["timed_out"] == before["timed_out"] + 1
    assert after["failed"] == before["failed"] + 1
    assert (f"not answered within result_timeout_ms={RESULT_TIMEOUT_MS}, which bounds the "
            "whole group") in logged_since(udf, offset)


def test_a_stalled_server_ends_the_group_at_timeout_ms(udf: Sandbox, numbers: Any, fn: str,
                                                      udf_config: Callable[..., None]) -> None:
    """A server that takes the connection and acknowledges nothing: NULL once timeout_ms has
    passed, however long result_timeout_ms is, and the server is skipped for backoff_ms."""
    offset = log_size(udf)
    with silent_server() as port:
        udf_config(servers=f"127.0.0.1:{port}", timeout_ms=300, result_timeout_ms=20_000,
                   backoff_ms=60_000)
        before = counters(numbers)
        started = time.monotonic()
        assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t WHERE id <= 20", fn) is None
        took = time.monotonic() - started
        assert 0.25 <= took < 0.3 + MARGIN, f"took {took:.2f}s"
        started = time.monotonic()
        assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t WHERE id <= 20", fn) is None
        assert time.monotonic() - started < MARGIN
    after = counters(numbers)
    assert after["timed_out"] == before["timed_out"] + 1
    assert after["skipped_backoff"] > before["skipped_backoff"]
    assert (f"127.0.0.1:{port}: 20 jobs not acknowledged within timeout_ms=300; server skipped "
            "for backoff_ms") in logged_since(udf, offset)


def test_a_failed_groups_jobs_that_no_worker_took_never_run(
        udf: Sandbox, numbers: Any, fn: str, udf_config: Callable[..., None]) -> None:
    """No worker: NULL at the deadline. The group's connection is closed then, and gearmand
    hands none of its jobs to a worker that comes later."""
    udf_config(result_timeout_ms=RESULT_TIMEOUT_MS)
    assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t WHERE id <= 20", fn) is None
    with RawWorker(udf.gearman_port, fn) as worker:
        assert worker.take(1, timeout=2) == []


def test_a_job_function_between_the_rows_gets_its_own_answers(udf: Sandbox, numbers: Any,
                                                              fn: str) -> None:
    """gman_do runs on the same mysqld thread while the group's jobs are out: the group
    works on connections of its own, so neither reads the other's answers."""
    with serving(udf.gearman_port, fn, double), \
            serving(udf.gearman_port, f"{fn}_plus1", lambda w: b"%d" % (int(w) + 1)):
        total = scalar(numbers, "SELECT gman_sum(%s, gman_do(%s, id)) FROM t WHERE id <= 30",
                       fn, f"{fn}_plus1")
    assert total == 2 * sum(i + 1 for i in range(1, 31))


def test_a_function_with_servers_of_its_own(udf: Sandbox, numbers: Any, fn: str,
                                            udf_config: Callable[..., None],
                                            gearmand_factory: Callable[..., Any]) -> None:
    other = gearmand_factory(MEMORY_QUEUE)
    udf_config(**{f"servers.{fn}": other.server})
    assert udf_status(numbers)["routes"] == {fn: [other.server]}
    with serving(other.port, fn, double) as seen:
        assert scalar(numbers, "SELECT gman_sum(%s, id) FROM t WHERE id <= 10", fn) == 110
    assert len(seen) == 10
