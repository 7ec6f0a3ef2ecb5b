import datetime as dt

import pytest

from breakglass.domain.conditions import set_condition
from breakglass.domain.durations import DurationError, format_duration, parse_duration

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "text,seconds",
    [("15m", 900), ("1h30m", 5400), ("90s", 90), ("2h", 7200), ("1h0m5s", 3605)],
    ids=["minutes", "hours and minutes", "seconds", "hours", "all three"],
)
def test_durations_parse_to_the_expected_length(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize(
    "text",
    ["", "0s", "1d", "15", "m", "1.5h", "-5m", "5m1h", None],
    ids=["empty", "zero", "days unsupported", "no unit", "no number", "fraction", "negative", "wrong order", "none"],
)
def test_bad_durations_are_rejected_with_a_message(text):
    with pytest.raises(DurationError):
        parse_duration(text)


def test_durations_format_round_trip():
    assert format_duration(parse_duration("1h30m")) == "1h30m"


def test_last_transition_time_moves_only_when_status_flips():
    first = set_condition(
        [], type="Approved", status=False, reason="AwaitingApproval", message="0/1", now=NOW, observed_generation=1
    )
    later = NOW + dt.timedelta(minutes=5)
    same = set_condition(
        first, type="Approved", status=False, reason="AwaitingApproval", message="0/2", now=later, observed_generation=2
    )
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert same[0]["observedGeneration"] == 2 and same[0]["message"] == "0/2"
    flipped = set_condition(
        same, type="Approved", status=True, reason="Approved", message="ok", now=later, observed_generation=2
    )
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T12:05:00Z"


def test_setting_one_condition_keeps_the_others():
    conds = set_condition([], type="A", status=True, reason="r", message="m", now=NOW, observed_generation=1)
    conds = set_condition(conds, type="B", status=False, reason="r", message="m", now=NOW, observed_generation=1)
    assert [c["type"] for c in conds] == ["A", "B"]
