"""How many jobs a worker process holds, from the pace of its last jobs (pace.py)."""

from __future__ import annotations

import time

import pytest

from workerhost.host.pace import FIRST_CLAIM_MAX, FIRST_HOLD, HOLD_TIME, FirstClaim, Pace
from workerhost.store.db import Database


def test_a_process_holds_one_job_until_it_has_timed_one() -> None:
    assert Pace(128).hold() == FIRST_HOLD == 1


def test_fast_jobs_are_held_as_many_as_the_batches_allow() -> None:
    pace = Pace(128)
    pace.record(64, 64 * 20e-6)
    assert pace.hold() == 128


def test_slow_jobs_are_held_one_at_a_time() -> None:
    pace = Pace(128)
    pace.record(1, 2.0)
    assert pace.hold() == 1


def test_a_process_holds_about_hold_time_of_work() -> None:
    pace = Pace(128)
    pace.record(4, 4 * HOLD_TIME / 10)
    assert pace.hold() == 10


def test_the_pace_follows_a_change_within_a_few_batches() -> None:
    pace = Pace(128)
    pace.record(1, 0.05)  # the first job also opened the database connection
    assert pace.hold() == 2
    holds = []
    for _ in range(12):
        pace.record(pace.hold(), pace.hold() * 20e-6)
        holds.append(pace.hold())
    assert holds == sorted(holds)
    assert holds[-1] == 128
    pace.record(1, 1.0)  # one job of a second: holding drops to one at once
    assert pace.hold() == 1


def test_one_slow_batch_does_not_stop_a_fast_pipeline() -> None:
    pace = Pace(128)
    for _ in range(20):
        pace.record(64, 64 * 20e-6)
    pace.record(64, 64 * 1e-3)  # on its own, this pace would hold 100
    assert pace.hold() == 128


def test_a_slow_commit_is_not_counted_per_job() -> None:
    pace = Pace(128)
    for _ in range(30):  # a remote database: 70 ms to commit, about 1 ms a job
        jobs = pace.hold()
        pace.record(jobs, 0.07 + jobs / 1024, committing=0.07)
    assert pace.hold() == 102  # 0.1 s / (1/1024 s)


def test_commits_of_jobs_run_alone_after_a_failure_count_per_job() -> None:
    pace = Pace(128)
    for _ in range(30):
        pace.record(64, 0.07 + 64 / 1024, committing=0.07)
    assert pace.hold() == 102
    # One job failed: the batch rolled back and each job ran and committed alone.
    pace.record(64, 64 * (0.07 + 1 / 1024), committing=0.07)
    assert pace.hold() <= 5


@pytest.mark.parametrize(("connections", "each"), [(1, 128), (2, 64), (3, 42), (200, 1)])
def test_what_a_process_holds_is_shared_by_its_connections(connections: int, each: int) -> None:
    pace = Pace(128)
    pace.record(64, 64 * 20e-6)
    assert pace.per_connection(connections) == each


def test_nothing_recorded_for_no_jobs() -> None:
    pace = Pace(128)
    pace.record(0, 1.0)
    assert pace.per_job is None


def test_the_database_times_its_commits() -> None:
    class SlowCommit:
        autocommit = True

        def commit(self) -> None:
            time.sleep(0.02)

    database = Database({}, connect=SlowCommit)  # type: ignore[arg-type]
    assert database.last_commit_seconds == 0
    assert database.run(lambda conn: "done") == "done"
    assert 0.02 <= database.last_commit_seconds < 0.5


def test_new_jobs_are_claimed_after_the_gathering_of_a_batch_while_their_rows_are_free() -> None:
    first = FirstClaim(0.002)
    for _ in range(20):
        first.record(10, 0)
    assert first.wait == 0.002 and not first.waiting


def test_the_first_claim_waits_longer_while_rows_are_found_held_up_to_a_ceiling() -> None:
    first = FirstClaim(0.002)
    first.record(10, 1)  # one in ten: still fine
    assert first.wait == 0.002
    first.record(10, 5)
    assert first.waiting and first.wait == pytest.approx(0.004)
    waits = []
    for _ in range(6):
        first.record(10, 10)
        waits.append(first.wait)
    assert waits == sorted(waits) and waits[-1] == FIRST_CLAIM_MAX


def test_the_first_claim_wait_comes_back_down_once_rows_are_free_again() -> None:
    first = FirstClaim(0.002)
    for _ in range(6):
        first.record(10, 10)
    shrinking = []
    for _ in range(30):
        first.record(10, 0)
        shrinking.append(first.wait)
    assert shrinking == sorted(shrinking, reverse=True)
    assert shrinking[0] < FIRST_CLAIM_MAX and shrinking[-1] == 0.002 and not first.waiting


def test_a_batch_of_retries_alone_teaches_the_first_claim_nothing() -> None:
    first = FirstClaim(0.002)
    first.record(0, 0)
    assert first.wait == 0.002


def test_a_first_claim_with_no_gathering_still_learns_to_wait() -> None:
    first = FirstClaim(0.0)
    first.record(4, 4)
    assert first.wait > 0 and first.waiting
