"""The converters of the `schedules:` section: a schedule's name, an `every:` interval, a
`cron:` expression (checked here so that a typo fails at load), its time zone and its JSON
payload.
"""

from __future__ import annotations

import math
import re

from workerhost import limits
from workerhost.config.converters import duration, show

# -- schedules ---------------------------------------------------------------------------------
MAX_SCHEDULE_NAME = limits.SCHEDULE_NAME_CHARS
_SCHEDULE_NAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_SCHEDULE_NAME}}}")
_CRON_WORDS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def schedule_name(value: object) -> str:
    """A schedule's name: letters, digits, _ . -, short enough for the job's Gearman unique."""
    if not isinstance(value, str) or not _SCHEDULE_NAME.fullmatch(value):
        raise ValueError(f"expected a name of letters, digits, _, . or - (at most "
                         f"{MAX_SCHEDULE_NAME}), got {show(value)}")
    return value


def interval(value: object) -> int:
    """A duration of whole seconds, at least 1s: slots fall on whole seconds."""
    seconds = duration(value)
    if seconds < 1 or seconds != int(seconds):
        raise ValueError(f"expected a whole number of seconds, at least 1s, like 30s or 5m, "
                         f"got {show(value)}")
    return int(seconds)


def cron_expression(value: object) -> str:
    """Five cron fields (minute hour day-of-month month day-of-week), or @hourly and the like,
    that match some date."""
    from croniter import CroniterBadDateError, CroniterError, croniter

    fields = value.split() if isinstance(value, str) else []
    if len(fields) != 5 and not (len(fields) == 1 and fields[0] in _CRON_WORDS):
        raise ValueError("expected a cron expression of 5 fields (minute hour day-of-month "
                         f"month day-of-week) or one of {', '.join(_CRON_WORDS)}, "
                         f"got {show(value)}")
    assert isinstance(value, str)
    expression = " ".join(fields)
    try:
        matches = croniter(expression)
    except CroniterError as exc:
        # croniter's words, less its echo of the expression: "[61 * * * *] is not acceptable,
        # out of range".
        reason = str(exc).replace(f"[{expression}]", "").strip()
        reason = reason.removeprefix("is not acceptable").lstrip(", ")
        raise ValueError(f"invalid cron expression {show(value)}"
                         + (f": {reason}" if reason else "")) from exc
    try:
        matches.get_next()
    except CroniterBadDateError:
        raise ValueError(f"cron expression {show(value)} matches no date") from None
    return expression


def time_zone(value: object) -> str:
    """A name of the tz database (``Europe/Paris``, ``UTC``)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        if not isinstance(value, str):
            raise ValueError
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {show(value)}: use a name of the tz database "
                         "like 'Europe/Paris' or 'UTC'") from None
    return value


def json_object(value: object) -> dict[str, object]:
    """A mapping whose values JSON can hold as they are (no dates, no binary)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping (a JSON object), got {show(value)}")
    problem = _not_json(value, "")
    if problem:
        raise ValueError(problem)
    return value


def _not_json(value: object, where: str) -> str | None:
    """Why `value` (found at `where`) is not JSON as it is, or None."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where or 'it'} is {value}, which JSON lacks"
    if isinstance(value, list):
        return next((p for i, item in enumerate(value) if (p := _not_json(item, f"{where}[{i}]"))),
                    None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"key {show(key)} of {where or 'it'} is not a string; quote it"
            problem = _not_json(item, f"{where}.{key}" if where else key)
            if problem:
                return problem
        return None
    return (f"{where} is a {type(value).__name__} ({value!s:.40}), which JSON cannot hold; "
            "quote it to keep it as text")
