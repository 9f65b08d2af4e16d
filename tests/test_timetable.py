"""timetable.py: where slots fall, and what a clock change does to them (as docs/schedules.md
says)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from workerhost.model.timetable import UTC, Timetable

NEW_YORK = "America/New_York"  # 2026: 02:00 -> 03:00 on 8 March, 02:00 -> 01:00 on 1 November


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def walk(timetable: Timetable, start: str, count: int) -> list[str]:
    """The next `count` slots after `start` (UTC), as local times with their offset."""
    slots, moment = [], utc(start)
    for _ in range(count):
        moment = timetable.after(moment)
        slots.append(moment.astimezone(timetable.zone).isoformat())
    return slots


def test_every_counts_from_the_epoch_so_every_host_finds_the_same_slots() -> None:
    hourly = Timetable(every=3600)
    assert hourly.after(utc("2026-11-27T10:20:00")) == utc("2026-11-27T11:00:00")
    assert hourly.at_or_before(utc("2026-11-27T10:20:00")) == utc("2026-11-27T10:00:00")
    assert hourly.at_or_before(utc("2026-11-27T10:00:00")) == utc("2026-11-27T10:00:00")
    assert hourly.after(utc("2026-11-27T10:00:00")) == utc("2026-11-27T11:00:00")
    seven = Timetable(every=7)
    moment = utc("2026-11-27T10:00:00.5")
    slots = seven.newest(moment - timedelta(seconds=20), moment, 10)
    assert [slot.timestamp() % 7 for slot in slots] == [0, 0, 0]
    assert slots == sorted(slots, reverse=True) and slots[0] <= moment


def test_cron_in_utc() -> None:
    every_five = Timetable(cron="*/5 * * * *")
    assert every_five.after(utc("2026-11-27T10:05:00")) == utc("2026-11-27T10:10:00")
    assert every_five.at_or_before(utc("2026-11-27T10:05:00")) == utc("2026-11-27T10:05:00")
    assert every_five.newest(utc("2026-11-27T10:00:00"), utc("2026-11-27T10:12:00"), 10) == [
        utc("2026-11-27T10:10:00"), utc("2026-11-27T10:05:00")]


def test_cron_reads_wall_clock_times_of_its_zone() -> None:
    paris = Timetable(cron="0 3 * * *", zone="Europe/Paris")
    assert paris.after(utc("2026-11-27T12:00:00")) == utc("2026-11-28T02:00:00")  # CET
    assert paris.after(utc("2026-06-27T12:00:00")) == utc("2026-06-28T01:00:00")  # CEST


@pytest.mark.parametrize(("cron", "start", "expected"), [
    # A daily slot in the hour skipped in spring comes an hour later by the new clock.
    ("30 2 * * *", "2026-03-06T12:00:00",
     ["2026-03-07T02:30:00-05:00", "2026-03-08T03:30:00-04:00", "2026-03-09T02:30:00-04:00"]),
    # An hourly schedule: the skipped 02:00 and the 03:00 are the same instant, fired once.
    ("0 * * * *", "2026-03-08T05:30:00",
     ["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T04:00:00-04:00"]),
    # Both slots of the skipped hour fire, at 03:00 and 03:30 new time, in order.
    ("0,30 2 * * *", "2026-03-07T12:00:00",
     ["2026-03-08T03:00:00-04:00", "2026-03-08T03:30:00-04:00", "2026-03-09T02:00:00-04:00"]),
    # A slot in the hour repeated in autumn fires at its first occurrence only.
    ("30 1 * * *", "2026-10-31T12:00:00",
     ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    # An hourly schedule does not fire in the repeated hour: two hours from 01:00 to 02:00.
    ("0 * * * *", "2026-11-01T03:30:00",
     ["2026-11-01T00:00:00-04:00", "2026-11-01T01:00:00-04:00", "2026-11-01T02:00:00-05:00",
      "2026-11-01T03:00:00-05:00"]),
])  # fmt: skip
def test_clock_changes_neither_skip_nor_repeat_a_slot(cron: str, start: str,
                                                      expected: list[str]) -> None:
    assert walk(Timetable(cron=cron, zone=NEW_YORK), start, len(expected)) == expected


def test_looking_back_across_a_clock_change_finds_the_same_slots_as_looking_forward() -> None:
    for cron, start in (("*/30 * * * *", "2026-03-08T04:00:00"),
                        ("*/20 * * * *", "2026-11-01T03:00:00")):
        timetable = Timetable(cron=cron, zone=NEW_YORK)
        forward, moment = [], utc(start)
        for _ in range(12):
            moment = timetable.after(moment)
            forward.append(moment)
        back = timetable.newest(utc(start), forward[-1], 100)
        assert back == forward[::-1]
        assert len(set(forward)) == len(forward)


def test_a_moment_in_the_repeated_hour_is_past_its_first_reading() -> None:
    hourly = Timetable(cron="0 * * * *", zone=NEW_YORK)
    # 06:10Z is 01:10 EST, the second 01:10 of the night: the next slot is 02:00 EST.
    assert hourly.after(utc("2026-11-01T06:10:00")) == utc("2026-11-01T07:00:00")
    assert hourly.at_or_before(utc("2026-11-01T06:10:00")) == utc("2026-11-01T05:00:00")


def test_describe() -> None:
    assert Timetable(every=3600).describe() == "every 1h"
    assert Timetable(every=90).describe() == "every 90s"
    assert Timetable(cron="0 3 * * *", zone="Europe/Paris").describe() == \
        "cron '0 3 * * *' Europe/Paris"
