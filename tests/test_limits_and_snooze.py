"""Job control on every host: a global concurrency limit held through the database, and a
handler that asks to run again later without spending an attempt."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import captured_runs, scalar, sequence, wait_until, work_on_events

from workerhost.config.load import parse_config
from workerhost.sandbox.stack import Sandbox


def test_two_hosts_never_run_more_jobs_at_once_than_the_limit(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
) -> None:
    config = work_on_events(udf, events.database, "immediate",
                            {"python": "trigger_handlers:count_at_once", "processes": 3,
                             "batch": 1, "limits": {"concurrency": 2}})
    record = Path(tempfile.gettempdir()) / f"workerhost-at-once-{events.database}"
    record.unlink(missing_ok=True)
    try:
        host_factory(config)
        host_factory(config)  # six worker processes in all, on two hosts
        events.cursor().execute(f"INSERT INTO events (id) SELECT seq FROM {sequence(1, 24)}")
        wait_until(lambda: len(captured_runs(events)) == 24, timeout=60, what="24 jobs")
        now, most = (int(part) for part in record.read_text().split())
        assert now == 0
        assert most == 2, f"at most 2 at once, and the limit was reached: {most}"
        assert set(captured_runs(events).values()) == {1}
        assert scalar(events, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0
    finally:
        record.unlink(missing_ok=True)


def test_a_snoozed_job_runs_again_later_without_spending_an_attempt(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
) -> None:
    config = work_on_events(udf, events.database, "immediate",
                            {"python": "trigger_handlers:snooze_first", "retries": {"attempts": 1}})
    host = host_factory(config)
    events.cursor().execute("INSERT INTO events (id) VALUES (1)")
    wait_until(lambda: captured_runs(events) == {1: 1}, what="the job, after its snooze")
    cursor = events.cursor()
    cursor.execute("SELECT attempt FROM captured WHERE row_id = 1")
    assert cursor.fetchone()[0] == 1, "a snooze spends no attempt (attempts: 1 would be dead)"
    cursor.close()
    assert scalar(events, "SELECT COUNT(*) FROM captured WHERE `function` = 'snoozed'") == 1, \
        "the snoozed run's write rolled back"
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0
    assert "snoozed for 0.5s (1 so far)" in host.log()


def test_an_sql_signal_and_a_programs_exit_status_75_ask_for_a_snooze() -> None:
    import pytest
    from mysql.connector import errors

    from workerhost.errors import Snooze
    from workerhost.host import command, runner
    from workerhost.model.job import Job

    assert runner._snoozed(errors.DatabaseError(msg="workerhost snooze 2m", errno=1644)) == 120
    assert runner._snoozed(errors.DatabaseError(msg="out of stock", errno=1644)) is None
    assert runner._snoozed(RuntimeError("workerhost snooze 2m")) is None
    assert runner._snoozed(Snooze(3)) == 3
    handler = parse_config({
        "gearman": {"servers": ["127.0.0.1:4999"]},
        "database": {"user": "u", "database": "d"},
        "handlers": {"f": {"command": ["sh", "-c", "echo 45s; exit 75"]},
                     "g": {"command": ["sh", "-c", "exit 75"]}},
    }, file="test.yaml").handlers
    job = Job(function="f", payload=b"{}", unique="u", handle="H:1")
    with pytest.raises(Snooze) as asked:
        command.run(handler["f"], job)
    assert asked.value.seconds == 45
    with pytest.raises(Snooze) as asked:
        command.run(handler["g"], job)
    assert asked.value.seconds == command.SNOOZE_DEFAULT


def test_two_hosts_keep_a_global_rate_over_a_backlog_longer_than_the_lease(
    udf: Sandbox, events: Any, host_factory: Callable[..., Any],
) -> None:
    """rate: 20/s on two hosts, four worker processes, over a backlog of 11 s with the tests'
    2 s lease: the handler's own timestamps keep the token bucket's promise (in any stretch of
    T seconds, at most its burst plus 20 T jobs), each job runs once, none is dead-lettered,
    and the work never stops for a lease's time. Jobs past the rate wait in the ledger, not in
    their workers, so no lease runs out on them and they do not come back in bursts."""
    events.cursor().execute("CREATE TABLE stamps (id BIGINT PRIMARY KEY, at DATETIME(6))")
    config = work_on_events(udf, events.database, "outbox", {
        "sql": "INSERT INTO stamps (id, at) VALUES (%(id)s, NOW(6))", "processes": 2,
        "batch": 8, "limits": {"rate": "20/s"}})
    assert config["host"]["relay"]["lease"] == "2s"
    host_factory(config)
    host_factory(config)
    events.cursor().execute(f"INSERT INTO events (id) SELECT seq FROM {sequence(1, 224)}")
    # The backlog waits in the ledger, unleased, each row due when its token is.
    wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM workerhost_outbox WHERE ships = 0 "
                                      "AND not_before > NOW(6) + INTERVAL 3 SECOND") > 100,
               timeout=10, what="the backlog booked in the ledger")
    wait_until(lambda: scalar(events, "SELECT COUNT(*) FROM stamps") == 224, timeout=60,
               what="224 jobs at 20/s")
    cursor = events.cursor()
    cursor.execute("SELECT TIMESTAMPDIFF(MICROSECOND, MIN(at) OVER (), at) / 1e6 FROM stamps "
                   "ORDER BY at")
    times = [float(t) for (t,) in cursor.fetchall()]
    cursor.close()
    rate = (len(times) - 1) / times[-1]
    seconds = [sum(1 for t in times if second <= t < second + 1) for second in range(10)]
    # The most jobs any stretch of the run held beyond 20 a second (the bucket allows its burst,
    # 4), and the longest the work stood still.
    over = max(j - i + 1 - 20 * (times[j] - times[i])
               for i in range(len(times)) for j in range(i, len(times)))
    still = max(later - earlier for earlier, later in itertools.pairwise(times))
    print(f"rate {rate:.2f}/s over {times[-1]:.2f}s; per second: {seconds}; "
          f"most beyond the rate {over:.1f}; longest still {still:.2f}s")
    assert times[-1] >= 10, f"{times[-1]:.2f}s"
    assert 17 <= rate <= 21, f"{rate:.2f} jobs a second: {seconds}"
    # A job starts a little after its token was taken, later on a loaded machine: a quarter of a
    # second's worth (5 jobs) is allowed for that. A lease's jobs come back all at once, or a
    # host that ignores the others' tokens, goes far beyond.
    assert over <= 4 + 5, f"{over:.1f} jobs beyond 20 a second: {seconds}"
    # A job held in a worker until its lease (2 s) ran out would stop the work that long.
    assert still < 1.5, f"no job started for {still:.2f}s: {seconds}"
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_outbox") == 0
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_attempts") == 0
    assert scalar(events, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0


def test_a_rate_is_a_number_per_unit_of_time() -> None:
    import pytest

    from workerhost.config import converters

    assert converters.rate("20/s") == 20
    assert converters.rate("600/m") == 10
    assert converters.rate("36 / 1h") == 0.01
    for bad in ("20", "0/s", "20/week", 20, "-1/s", None):
        with pytest.raises(ValueError, match="expected a rate greater than zero like 20/s or "
                                             "600/m"):
            converters.rate(bad)
