"""scheduler.py: what a look at a schedule fires, that two hosts never fire a slot twice, a
standby that takes over from a killed leader, and catch_up after downtime."""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import RunningHost, host_config, scalar, wait_until

from workerhost.config.load import parse_config
from workerhost.config.settings import Config, ScheduleConfig
from workerhost.host.scheduler import CATCH_UP_LIMIT, Scheduler, job_of, lock_name, plan
from workerhost.model.timetable import UTC, Timetable
from workerhost.sandbox.stack import Sandbox
from workerhost.store import schema

SECOND = timedelta(seconds=1)
T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
# One row per run of a scheduled job: an sql: handler with nothing idempotent about it.
TICKS = ("CREATE TABLE ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY, schedule VARCHAR(64), "
         "slot VARCHAR(40), event_id CHAR(36), label VARCHAR(20))")
RECORD_TICK = ("INSERT INTO ticks (schedule, slot, event_id, label) "
               "VALUES (%(schedule)s, %(slot)s, %(event_id)s, %(label)s)")


# -- plan: what one look decides ------------------------------------------------------------


def test_slots_due_while_leading_fire_however_late() -> None:
    decided = plan(Timetable(every=1), "none", T0, T0 + 3.5 * SECOND, lead_since=T0)
    assert decided.fire == (T0 + SECOND, T0 + 2 * SECOND, T0 + 3 * SECOND)
    assert (decided.missed, decided.cursor) == ((), T0 + 3 * SECOND)


@pytest.mark.parametrize(("catch_up", "fired"), [
    ("latest", [5, 6, 7]),  # the newest missed slot (5), then those due since the lead (6, 7)
    ("all", [1, 2, 3, 4, 5, 6, 7]),
    ("none", [6, 7]),
])  # fmt: skip
def test_catch_up_decides_the_missed_slots(catch_up: Any, fired: list[int]) -> None:
    decided = plan(Timetable(every=1), catch_up, T0, T0 + 7.2 * SECOND,
                   lead_since=T0 + 5.5 * SECOND)
    assert decided.fire == tuple(T0 + n * SECOND for n in fired)
    assert decided.missed == tuple(T0 + n * SECOND for n in range(1, 6))
    assert decided.cursor == T0 + 7 * SECOND  # the skipped ones never fire later either


def test_nothing_due_changes_nothing() -> None:
    decided = plan(Timetable(every=60), "all", T0, T0 + 59 * SECOND, lead_since=T0)
    assert (decided.fire, decided.missed, decided.cursor) == ((), (), T0)


def test_catch_up_all_fires_at_most_the_newest_limit() -> None:
    now = T0 + (CATCH_UP_LIMIT + 500) * SECOND
    decided = plan(Timetable(every=1), "all", T0, now, lead_since=now)
    assert decided.overflow
    assert len(decided.fire) == CATCH_UP_LIMIT
    assert (decided.fire[0], decided.fire[-1]) == (now - (CATCH_UP_LIMIT - 1) * SECOND, now)


def test_a_slots_job_names_its_schedule_and_slot() -> None:
    schedule = ScheduleConfig(name="nightly", function="report", cron="0 3 * * *",
                              timezone="Europe/Paris", payload={"kind": "daily"})
    function, payload, unique = job_of(schedule, datetime(2026, 11, 27, 2, tzinfo=UTC))
    body = json.loads(payload)
    assert (function, unique) == ("report", "schedule:nightly:20261127T020000Z")
    assert {k: v for k, v in body.items() if k != "event_id"} == {
        "kind": "daily", "schedule": "nightly", "slot": "2026-11-27T03:00:00+01:00"}
    # The same slot has the same event id on every host; another slot another one.
    assert body["event_id"] == json.loads(job_of(schedule, datetime(2026, 11, 27, 2,
                                                                    tzinfo=UTC))[1])["event_id"]
    assert body["event_id"] != json.loads(job_of(schedule, datetime(2026, 11, 28, 2,
                                                                    tzinfo=UTC))[1])["event_id"]
    # The longest name leaves room for a 12-digit ledger id in gearmand's 64 bytes.
    longest = ScheduleConfig(name="n" * 24, function="f", every=1)
    assert len(f"L{10**12 - 1}:{job_of(longest, T0)[2]}") == 64


def test_lock_names_fit_the_servers_limit() -> None:
    assert lock_name("shop", "nightly") == "workerhost:shop:nightly"
    long = lock_name("d" * 64, "n" * 24)
    assert len(long) <= 64 and long != lock_name("d" * 63, "n" * 24)


# -- against the database: the row decides --------------------------------------------------


class AlwaysLeads:
    """Locks that say this host leads every schedule: two of them, and both hosts lead."""

    def __init__(self, names: list[str]) -> None:
        self.names = set(names)

    def held(self) -> set[str]:
        return set(self.names)

    def close(self) -> None:
        pass


def sandbox_config(sandbox: Sandbox, database: str, **sections: Any) -> Config:
    return parse_config(host_config(sandbox, database, {"tick": {"sql": "DO 1"}}, **sections),
                        file="test.yaml", env={"SANDBOX_DB_PASSWORD": sandbox.password})


def test_two_leaders_at_once_still_fire_each_slot_once(sandbox: Sandbox, db: Any) -> None:
    """Even when two hosts both believe they lead (a stalled leader whose lock went elsewhere),
    the schedule's row lets one of them fire each slot."""
    config = sandbox_config(sandbox, db.database, schedules=[
        {"name": "tick", "function": "tick", "every": "1s"}])
    clock = {"now": T0.timestamp() + 0.5}
    hosts = [Scheduler(config, locks=AlwaysLeads(["tick"]),
                       wall_clock=lambda: clock["now"], identity=name) for name in "ab"]
    hosts[0].db.run(schema.create)
    try:
        for host in hosts:
            host.step()  # both lead from T0 + 0.5s; the first look makes the schedule's row
        for _ in range(20):
            clock["now"] += 1.0
            barrier = threading.Barrier(2)

            def look(host: Scheduler, barrier: threading.Barrier) -> None:
                barrier.wait()
                host.step()

            threads = [threading.Thread(target=look, args=(host, barrier)) for host in hosts]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        for host in hosts:
            host.db.close()
    cursor = db.cursor()
    cursor.execute("SELECT unique_key, COUNT(*) FROM workerhost_outbox GROUP BY unique_key "
                   "ORDER BY unique_key")
    rows = cursor.fetchall()
    assert [key for key, _ in rows] == [
        f"schedule:tick:{(T0 + n * SECOND):%Y%m%dT%H%M%SZ}" for n in range(1, 21)]
    assert {count for _, count in rows} == {1}
    fired_by = scalar(db, "SELECT fired_by FROM workerhost_schedules WHERE name = 'tick'")
    assert fired_by in ("a", "b")


def test_a_schedule_new_to_the_database_starts_with_its_next_slot(sandbox: Sandbox,
                                                                  db: Any) -> None:
    config = sandbox_config(sandbox, db.database, schedules=[
        {"name": "tick", "function": "tick", "every": "10s", "catch_up": "all"}])
    clock = {"now": T0.timestamp() + 5}
    host = Scheduler(config, locks=AlwaysLeads(["tick"]),
                     wall_clock=lambda: clock["now"], identity="a")
    host.db.run(schema.create)
    try:
        host.step()  # nothing fires for T0: that was before the schedule's time
        assert host.next_slot["tick"] == T0 + 10 * SECOND
        assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 0
        clock["now"] += 5
        host.step()
    finally:
        host.db.close()
    assert scalar(db, "SELECT unique_key FROM workerhost_outbox") == (
        "schedule:tick:20261127T100010Z")


def test_the_slots_fired_missed_and_skipped_are_counted_per_schedule(sandbox: Sandbox,
                                                                     db: Any) -> None:
    """Host a fires three slots; after a gap with no leader host b takes over: catch_up:
    latest fires the newest of the five missed slots and skips four."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    from prometheus_client.parser import text_string_to_metric_families

    from workerhost.observe import metrics

    config = sandbox_config(sandbox, db.database, schedules=[
        {"name": "tick", "function": "tick", "every": "1s", "catch_up": "latest"}])
    clock = {"now": T0.timestamp() + 0.5}
    with metrics.collecting():
        hosts = []
        try:
            for name in "ab":
                hosts.append(Scheduler(config, locks=AlwaysLeads(["tick"]),
                                       wall_clock=lambda: clock["now"], identity=name))
            hosts[0].db.run(schema.create)
            hosts[0].step()  # a leads from T0 + 0.5s
            clock["now"] += 2.7
            hosts[0].step()  # T0 + 3.2s: slots 1, 2, 3
            clock["now"] += 5.3
            hosts[1].step()  # a is gone; b leads from T0 + 8.5s: 4 to 8 were missed
            clock["now"] += 1.0
            hosts[1].step()  # slot 9, on time
        finally:
            for host in hosts:
                host.db.close()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=os.environ[metrics.ENV])
        counted = {sample.name: sample.value
                   for family in text_string_to_metric_families(generate_latest(registry).decode())
                   for sample in family.samples if sample.labels == {"schedule": "tick"}}
    assert counted == {"workerhost_schedule_slots_fired_total": 5,
                       "workerhost_schedule_slots_missed_total": 5,
                       "workerhost_schedule_slots_skipped_total": 4}
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 5


# -- hosts: workerhost run -------------------------------------------------------------------


def tick_config(sandbox: Sandbox, database: str, schedules: list[dict[str, Any]]) -> dict[str, Any]:
    # accept: ledger, the default: a scheduled job runs because its ledger row vouches for it.
    return host_config(sandbox, database, {"tick": {"sql": RECORD_TICK, "accept": "ledger"}},
                       schedules=schedules)


def ticks(db: Any, schedule: str = "tick") -> list[datetime]:
    """The slots the handler ran for `schedule`, in order, one per run."""
    cursor = db.cursor()
    cursor.execute("SELECT slot FROM ticks WHERE schedule = %s ORDER BY slot, id", (schedule,))
    rows = [datetime.fromisoformat(slot) for (slot,) in cursor.fetchall()]
    cursor.close()
    return rows


def in_steps_of_a_second(slots: list[datetime]) -> bool:
    return all(b - a == SECOND for a, b in itertools.pairwise(slots))


def leader_of(db: Any, hosts: list[RunningHost]) -> RunningHost:
    fired_by = scalar(db, "SELECT fired_by FROM workerhost_schedules WHERE name = 'tick'")
    return next(host for host in hosts if fired_by.endswith(f":{host.pid}"))


@pytest.mark.slow
def test_two_hosts_fire_each_slot_once_and_a_standby_takes_over_a_killed_leader(
    sandbox: Sandbox, db: Any, host_factory: Callable[..., RunningHost]
) -> None:
    db.cursor().execute(TICKS)
    config = tick_config(sandbox, db.database, [
        {"name": "tick", "function": "tick", "every": "1s", "payload": {"label": "x"}}])
    hosts = [host_factory(config), host_factory(config)]
    for host in hosts:
        host.wait_for_log("scheduler: ")
    wait_until(lambda: ticks(db), what="the first slot to run")

    # Ten seconds with both hosts up: each slot of them runs once.
    window = datetime.fromtimestamp(time.time(), UTC).replace(microsecond=0) + SECOND
    wanted = [window + n * SECOND for n in range(10)]
    wait_until(lambda: set(wanted) <= set(ticks(db)), timeout=20, what="ten slots")
    assert [slot for slot in ticks(db) if window <= slot < window + 10 * SECOND] == wanted

    # The leader dies with its whole process group; the other host goes on.
    leader = leader_of(db, hosts)
    standby = next(host for host in hosts if host is not leader)
    leader.kill()
    killed = datetime.fromtimestamp(time.time(), UTC)
    started = time.monotonic()
    wait_until(lambda: [s for s in ticks(db) if s > killed], timeout=5,
               what="a slot after the kill to run")
    took_over = time.monotonic() - started
    standby.wait_for_log("scheduler: this host leads schedule tick")
    wait_until(lambda: len([s for s in ticks(db) if s > killed]) >= 3, timeout=10,
               what="three slots after the kill")
    assert standby.stop() == 0

    slots = ticks(db)
    assert len(slots) == len(set(slots)), f"a slot ran twice: {slots}"
    after = [slot for slot in slots if slot > killed]
    assert len(after) >= 3 and in_steps_of_a_second(after)
    assert leader_of(db, hosts) is standby
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_dead_letters") == 0
    print(f"first slot after the kill ran {took_over:.2f}s after it")


def fired_slot(db: Any, name: str) -> datetime:
    """The newest slot of schedule `name` that fired (its job is in the ledger or done)."""
    slot: datetime = scalar(db, "SELECT fired_slot FROM workerhost_schedules WHERE name = %s",
                            name)
    return slot.replace(tzinfo=UTC)


@pytest.mark.slow
def test_catch_up_after_a_stop(sandbox: Sandbox, db: Any,
                               host_factory: Callable[..., RunningHost]) -> None:
    db.cursor().execute(TICKS)
    policies = ("latest", "all", "none")
    config = tick_config(sandbox, db.database, [
        {"name": policy, "function": "tick", "every": "1s", "catch_up": policy,
         "payload": {"label": policy}} for policy in policies])
    first = host_factory(config)
    wait_until(lambda: all(len(ticks(db, policy)) >= 2 for policy in policies),
               what="two slots of each schedule")
    assert first.stop() == 0
    last = {policy: fired_slot(db, policy) for policy in policies}
    time.sleep(5)
    second = host_factory(config)
    wait_until(lambda: all(len([s for s in ticks(db, policy) if s > last[policy]]) >= 3
                           for policy in policies),
               what="three slots of each schedule after the restart")
    assert second.stop() == 0
    after = {}
    for policy in policies:
        slots = ticks(db, policy)
        assert len(set(slots)) == len(slots), f"{policy}: a slot ran twice: {slots}"
        before = [slot for slot in slots if slot <= last[policy]]
        after[policy] = slots[len(before):]
        assert before[-1] == last[policy]
        assert in_steps_of_a_second(before) and in_steps_of_a_second(after[policy])
    # all: every slot of the stop ran, in order, as if there had been none.
    assert after["all"][0] == last["all"] + SECOND
    # latest: one slot of the stop ran (the newest), then the schedule went on; none: not
    # even that one. The three schedules were led from the same moment, so one slot apart.
    assert after["latest"][0] - last["latest"] > 3 * SECOND
    assert after["none"][0] == after["latest"][0] + SECOND
    log = second.log()
    for policy, what in (("latest", "fires the newest of them (1 fired)"),
                         ("all", "fires them in order"), ("none", "skips them (0 fired)")):
        assert re.search(rf"schedule {policy}: \d+ slot\(s\) came due while no host led it "
                         rf".*catch_up: {policy} {re.escape(what)}", log), log
