"""Durations like `15m`, `1h30m`, `90s` and RFC 3339 timestamps."""

from __future__ import annotations

import datetime as dt
import re

DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
# fullmatch and [0-9]: no trailing newline, no non-ASCII digits.
_DURATION_RE = re.compile(r"(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?")
# Anything longer is refused as "too large": a timestamp plus it always stays representable.
MAX_DURATION = dt.timedelta(days=36500)


class DurationError(ValueError):
    pass


def parse_duration(text: str) -> dt.timedelta:
    """Parse `<n>h<n>m<n>s` (each part optional, at least one present, total > 0)."""
    if not isinstance(text, str) or not text:
        raise DurationError(f"{text!r} is not a duration (use e.g. 15m, 1h30m, 90s)")
    match = _DURATION_RE.fullmatch(text)
    if not match or not any(match.groupdict().values()):
        raise DurationError(f"{_shown(text)} is not a duration (use e.g. 15m, 1h30m, 90s)")
    try:
        parts = {k: int(v or 0) for k, v in match.groupdict().items()}
        value = dt.timedelta(hours=parts["h"], minutes=parts["m"], seconds=parts["s"])
    except (OverflowError, ValueError):  # beyond timedelta (or int-parsing) limits
        value = MAX_DURATION + MAX_DURATION
    if value > MAX_DURATION:
        raise DurationError(f"{_shown(text)} is too large to be a duration (at most 100 years)")
    if value <= dt.timedelta(0):
        raise DurationError(f"{_shown(text)} must be longer than zero")
    return value


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def format_duration(value: dt.timedelta) -> str:
    total = int(value.total_seconds())
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return out or "0s"


def to_rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
