"""Drill schedules: an interval (`6h`, `10s`) or a 5-field cron expression (minute granularity, UTC)."""

from __future__ import annotations

import datetime as dt

from .durations import DurationError, parse_duration

_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))  # minute hour day-of-month month day-of-week


class ScheduleError(ValueError):
    pass


def _field(text: str, lo: int, hi: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"bad step in {text!r}")
            step = int(step_text)
        if part == "*":
            start, end = lo, hi
        elif "-" in part:
            a, b = part.split("-", 1)
            if not (a.isdigit() and b.isdigit()):
                raise ScheduleError(f"bad range in {text!r}")
            start, end = int(a), int(b)
        elif part.isdigit():
            start = end = int(part)
        else:
            raise ScheduleError(f"bad cron field {text!r}")
        if start < lo or end > hi or start > end:
            raise ScheduleError(f"cron field {text!r} out of range {lo}-{hi}")
        values.update(range(start, end + 1, step))
    return values


def parse_cron(expr: str) -> list[set[int]]:
    parts = expr.split()
    if len(parts) != 5:
        raise ScheduleError(f"{expr!r}: a cron expression has 5 fields (minute hour day month weekday)")
    fields = [_field(p, lo, hi) for p, (lo, hi) in zip(parts, _RANGES, strict=True)]
    fields[4] = {d % 7 for d in fields[4]}
    return fields


def next_run(schedule: str, last: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    """When the next run is due (may be <= now, meaning: run now)."""
    try:
        interval = parse_duration(schedule)
    except DurationError:
        interval = None
    if interval is not None:
        return now if last is None else last + interval
    minute, hour, dom, month, dow = parse_cron(schedule)
    t = (last or now).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    for _ in range(366 * 24 * 60):
        cron_dow = (t.weekday() + 1) % 7  # cron: 0 = Sunday
        if t.minute in minute and t.hour in hour and t.day in dom and t.month in month and cron_dow in dow:
            return t
        t += dt.timedelta(minutes=1)
    raise ScheduleError(f"{schedule!r} never fires")


def validate(schedule: str) -> str | None:
    try:
        next_run(schedule, None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        return None
    except (ScheduleError, DurationError) as exc:
        return str(exc)
