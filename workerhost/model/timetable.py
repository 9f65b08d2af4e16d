"""When a schedule's slots fall: `every:` intervals counted from the Unix epoch, or `cron:`
expressions read in a time zone.

A slot is an instant, kept as an aware datetime in UTC; slots fall on whole seconds.

`every: N` has a slot at each multiple of N seconds since 1970-01-01 00:00 UTC, so that every
host finds the same slots whenever it started: `every: 1h` is on the hour, `every: 1d` at
00:00 UTC.

`cron:` matches wall-clock times in the schedule's time zone (croniter does the matching, on
naive local times) and turns each into an instant with zoneinfo's first reading (fold=0):
- a local time the spring change skips (02:30 when clocks go from 02:00 to 03:00) reads as if
  the clock had not moved yet, so the slot comes an hour later by the new clock (03:30); when
  that instant is a slot of its own as well (an hourly schedule's 03:00 and the skipped 02:00),
  it is one slot, fired once;
- a local time the autumn change repeats (01:30 when clocks go from 02:00 back to 01:00) is
  its first occurrence only: the slot fires once, and nothing fires in the repeated hour.
Around a change, local order and instant order can differ, so the search around one looks at
the matches within TRANSITION_MARGIN on either side and keeps the earliest (or latest).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import croniter

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# More than the largest step a zone's clock has taken (2h, double summer time): matches this
# far from a change can land on the other side of it.
TRANSITION_MARGIN = timedelta(hours=3)
SECOND = timedelta(seconds=1)


def whole_seconds(moment: datetime) -> datetime:
    """`moment` (aware) in UTC, cut to the second: slots and cursors are whole seconds."""
    return moment.astimezone(UTC).replace(microsecond=0)


class Timetable:
    """The slots of one schedule: `every` seconds, or the `cron` expression in `zone`."""

    def __init__(self, *, every: int | None = None, cron: str | None = None,
                 zone: str = "UTC") -> None:  # fmt: skip
        if (every is None) == (cron is None):
            raise ValueError("a timetable needs exactly one of every and cron")
        self.every = every
        self.cron = cron
        self.zone = ZoneInfo(zone)

    def describe(self) -> str:
        if self.every is not None:
            return f"every {_seconds_text(self.every)}"
        return f"cron {self.cron!r} {self.zone.key}"

    # -- the two questions everything else asks ----------------------------------------------
    def after(self, moment: datetime) -> datetime:
        """The first slot strictly after `moment`."""
        if self.every is not None:
            count = int((moment - EPOCH) // timedelta(seconds=self.every)) + 1
            return EPOCH + timedelta(seconds=count * self.every)
        return self._search(moment, forward=True)

    def at_or_before(self, moment: datetime) -> datetime:
        """The last slot at or before `moment`."""
        if self.every is not None:
            count = int((moment - EPOCH) // timedelta(seconds=self.every))
            return EPOCH + timedelta(seconds=count * self.every)
        return self._search(moment, forward=False)

    def newest(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """Up to `limit` slots in (after, until], newest first."""
        found: list[datetime] = []
        slot = self.at_or_before(until)
        while slot > after and len(found) < limit:
            found.append(slot)
            slot = self.at_or_before(slot - SECOND)
        return found

    # -- cron --------------------------------------------------------------------------------
    def _search(self, moment: datetime, *, forward: bool) -> datetime:
        """The first slot after `moment` (forward) or the last at or before it. Matches are
        visited in local order; near a clock change they may be out of instant order, so the
        search goes on for TRANSITION_MARGIN past the first hit and keeps the best."""
        assert self.cron is not None
        start = self._local(moment)
        if self._change_near(moment):
            start += -TRANSITION_MARGIN if forward else TRANSITION_MARGIN
        if not forward:
            start += SECOND  # croniter's get_prev is strict; `moment` itself may be a slot
        best: datetime | None = None
        stop: datetime | None = None  # the local time past which nothing better can come
        for local in self._matches(start, forward=forward):
            if stop is not None and (local > stop if forward else local < stop):
                break
            instant = local.replace(tzinfo=self.zone).astimezone(UTC)
            wanted = instant > moment if forward else instant <= moment
            if wanted and (best is None or (instant < best if forward else instant > best)):
                best = instant
                margin = TRANSITION_MARGIN if self._change_near(instant) else timedelta(0)
                stop = local + margin if forward else local - margin
        assert best is not None  # _matches raises when the expression stops matching
        return best

    def _matches(self, start: datetime, *, forward: bool) -> Iterator[datetime]:
        """Naive local times the expression matches, from `start` on (exclusive)."""
        assert self.cron is not None
        matches = croniter(self.cron, start)
        while True:
            yield matches.get_next(datetime) if forward else matches.get_prev(datetime)

    def _local(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone).replace(tzinfo=None, fold=0)

    def _change_near(self, moment: datetime) -> bool:
        """Does the zone's offset change within TRANSITION_MARGIN of `moment`?"""
        before = (moment - TRANSITION_MARGIN).astimezone(self.zone).utcoffset()
        return before != (moment + TRANSITION_MARGIN).astimezone(self.zone).utcoffset()


def _seconds_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
