"""Scheduled start (`spec.startAt`): named, pure predicates with an injected moment.

A request may name the moment its grant starts. The predicates judge `startAt` against the moment the
request was created (admission: now; reconcile: metadata.creationTimestamp), so admission, the
reconcile-time re-check and `explain` agree. The grant covers [startAt, startAt + duration): the
token is minted at startAt with iat = nbf = startAt and exp = startAt + duration.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

from .durations import DurationError, format_duration, parse_duration, to_rfc3339
from .policy import Policy, RequestView, Verdict

# A client clock a little behind ours is not "in the past".
START_AT_SKEW = dt.timedelta(seconds=30)
DEFAULT_MAX_SCHEDULE_AHEAD = "168h"  # 7 days
# RFC 3339 date-time with an explicit offset (Z or +hh:mm); fractional seconds allowed.
_RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
EXAMPLE = "2026-11-28T22:00:00Z"


class StartAtError(ValueError):
    pass


def parse_start_at(text: object) -> dt.datetime:
    """An RFC 3339 time with an explicit offset, as UTC; StartAtError names what is wrong."""
    if not isinstance(text, str) or not _RFC3339_RE.fullmatch(text):
        shown = repr(text if not isinstance(text, str) or len(text) <= 40 else text[:40] + "...")
        raise StartAtError(f"spec.startAt {shown} is not an RFC 3339 time with an offset (e.g. {EXAMPLE})")
    try:
        return dt.datetime.fromisoformat(text.upper().replace("Z", "+00:00")).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise StartAtError(f"spec.startAt {text!r} is not a valid date and time (e.g. {EXAMPLE})") from None


def scheduled_start(request: RequestView) -> dt.datetime | None:
    """The request's start moment, or None when it starts as soon as it is approved (or is malformed:
    check_start_at denies that first)."""
    if not request.start_at:
        return None
    try:
        return parse_start_at(request.start_at)
    except StartAtError:
        return None


# ---------------------------------------------------------------- the named predicates
def start_at_is_well_formed(req: RequestView, pol: Policy, created: dt.datetime) -> Verdict:
    try:
        parse_start_at(req.start_at)
    except StartAtError as exc:
        return Verdict(False, "StartAtMalformed", str(exc))
    return Verdict(True, "StartAtWellFormed", "startAt is an RFC 3339 time")


def start_at_is_not_in_the_past(req: RequestView, pol: Policy, created: dt.datetime) -> Verdict:
    start = parse_start_at(req.start_at)
    if start < created - START_AT_SKEW:
        return Verdict(
            False,
            "StartAtInThePast",
            f"spec.startAt {req.start_at} is in the past (by {format_duration(created - start)}; "
            f"at most {format_duration(START_AT_SKEW)} of clock skew is tolerated): leave it out to start "
            "as soon as approved",
        )
    return Verdict(True, "StartAtNotPast", "startAt is not in the past")


def start_at_is_within_max_schedule_ahead(req: RequestView, pol: Policy, created: dt.datetime) -> Verdict:
    start = parse_start_at(req.start_at)
    try:
        ahead = parse_duration(pol.max_schedule_ahead)
    except DurationError:
        return Verdict(
            False,
            "PolicyInvalid",
            f"spec.startAt cannot be checked: policy {pol.name!r} maxScheduleAhead is not a valid duration",
        )
    if start > created + ahead:
        return Verdict(
            False,
            "StartAtTooFarAhead",
            f"spec.startAt {req.start_at} is {format_duration(start - created)} ahead, beyond policy "
            f"{pol.name!r} maxScheduleAhead {pol.max_schedule_ahead}",
        )
    return Verdict(True, "StartAtWithinReach", f"startAt within maxScheduleAhead {pol.max_schedule_ahead}")


def start_at_is_not_an_emergency(req: RequestView, pol: Policy, created: dt.datetime) -> Verdict:
    if req.emergency:
        return Verdict(
            False,
            "StartAtWithEmergency",
            "spec.startAt cannot be combined with spec.emergency: emergency access is issued at once",
        )
    return Verdict(True, "NotEmergency", "not an emergency")


SCHEDULE_CHECKS: tuple[tuple[str, Callable[[RequestView, Policy, dt.datetime], Verdict]], ...] = (
    ("well-formed", start_at_is_well_formed),
    ("not-past", start_at_is_not_in_the_past),
    ("within-reach", start_at_is_within_max_schedule_ahead),
    ("not-emergency", start_at_is_not_an_emergency),
)


def check_start_at(req: RequestView, pol: Policy, created: dt.datetime) -> Verdict:
    """The first scheduling rule `req` breaks, judged at `created` (admission: now), or OK."""
    if req.start_at is None:
        return Verdict(True, "StartsWhenApproved", "no spec.startAt: starts as soon as approved")
    for _, predicate in SCHEDULE_CHECKS:
        verdict = predicate(req, pol, created)
        if not verdict.ok:
            return verdict
    return Verdict(
        True,
        "ScheduledStart",
        f"starts at {to_rfc3339(parse_start_at(req.start_at))} (within maxScheduleAhead {pol.max_schedule_ahead})",
    )
