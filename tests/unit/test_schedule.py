import datetime as dt

import pytest

from breakglass.domain.schedule import ScheduleError, next_run, parse_cron, validate

NOW = dt.datetime(2026, 3, 4, 10, 7, 30, tzinfo=dt.UTC)  # a Wednesday


def test_an_interval_schedule_runs_at_once_then_every_interval():
    assert next_run("6h", None, NOW) == NOW
    assert next_run("10s", NOW, NOW) == NOW + dt.timedelta(seconds=10)


@pytest.mark.parametrize(
    "expr,expected",
    [
        ("*/15 * * * *", dt.datetime(2026, 3, 4, 10, 15, tzinfo=dt.UTC)),
        ("0 3 * * *", dt.datetime(2026, 3, 5, 3, 0, tzinfo=dt.UTC)),
        ("30 9 * * 1-5", dt.datetime(2026, 3, 5, 9, 30, tzinfo=dt.UTC)),
        ("0 0 1 * *", dt.datetime(2026, 4, 1, 0, 0, tzinfo=dt.UTC)),
        ("0 12 * * 0", dt.datetime(2026, 3, 8, 12, 0, tzinfo=dt.UTC)),
    ],
    ids=["every quarter hour", "daily at three", "weekdays at half past nine", "monthly", "sundays at noon"],
)
def test_cron_schedules_fire_at_the_next_matching_minute(expr, expected):
    assert next_run(expr, NOW, NOW) == expected


@pytest.mark.parametrize(
    "expr",
    ["* * * *", "61 * * * *", "*/0 * * * *", "a b c d e", "5-1 * * * *"],
    ids=["four fields", "minute out of range", "zero step", "letters", "reversed range"],
)
def test_bad_schedules_are_reported(expr):
    assert validate(expr) is not None
    with pytest.raises(ScheduleError):
        parse_cron(expr)
