"""A grant's use limits (policy and request `spec.limits`): how they combine, what is invalid, and
whether the grant's use — as the ledger holds it (domain/usage.py) — ends it now. Pure, `now` injected."""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from .durations import DurationError, parse_duration, parse_rfc3339

USE_LIMIT_REACHED, IDLE_TIMEOUT = "UseLimitReached", "IdleTimeout"


class Limits(NamedTuple):
    max_requests: int | None = None
    max_writes: int | None = None
    idle_timeout: str | None = None  # a duration ("20s", "15m")

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Limits:
        spec = spec if isinstance(spec, dict) else {}
        return cls(spec.get("maxRequests"), spec.get("maxWrites"), spec.get("idleTimeout") or None)

    def as_dict(self) -> dict[str, Any]:
        pairs = (("maxRequests", self.max_requests), ("maxWrites", self.max_writes), ("idleTimeout", self.idle_timeout))
        return {k: v for k, v in pairs if v is not None}


def effective_limits(policy: Limits, request: Limits) -> Limits:
    """The tighter of each limit (a request may only lower its policy's limits)."""

    def low(a, b):
        return b if a is None else a if b is None else min(a, b)

    idle = policy.idle_timeout
    if request.idle_timeout:
        try:
            if idle is None or parse_duration(request.idle_timeout) < parse_duration(idle):
                idle = request.idle_timeout
        except DurationError:
            idle = idle or request.idle_timeout  # reported by limit_problems; never looser
    return Limits(low(policy.max_requests, request.max_requests), low(policy.max_writes, request.max_writes), idle)


def limit_problems(limits: Limits, field: str) -> list[str]:
    """What makes limits unusable, as `field.x: why` messages (empty: fine)."""
    problems = []
    for key, value in (("maxRequests", limits.max_requests), ("maxWrites", limits.max_writes)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{field}.{key}: must be a whole number of at least 1, not {value!r}")
    if limits.idle_timeout is not None:
        try:
            if parse_duration(limits.idle_timeout) < dt.timedelta(seconds=10):
                problems.append(f"{field}.idleTimeout: {limits.idle_timeout} is shorter than the minimum 10s")
        except DurationError as exc:
            problems.append(f"{field}.idleTimeout: {exc}")
    return problems


def loosens(request: Limits, policy: Limits) -> list[str]:
    """Request limits above their policy's (a request may only lower them)."""
    out = []
    for key, asked, cap in (
        ("maxRequests", request.max_requests, policy.max_requests),
        ("maxWrites", request.max_writes, policy.max_writes),
    ):
        if asked is not None and cap is not None and asked > cap:
            out.append(f"spec.limits.{key} {asked} exceeds the policy's {cap} (a request may only lower it)")
    if request.idle_timeout and policy.idle_timeout:
        try:
            if parse_duration(request.idle_timeout) > parse_duration(policy.idle_timeout):
                out.append(
                    f"spec.limits.idleTimeout {request.idle_timeout} exceeds the policy's "
                    f"{policy.idle_timeout} (a request may only lower it)"
                )
        except DurationError:
            pass  # limit_problems names it
    return out


def idle_deadline(entry: dict[str, Any]) -> dt.datetime | None:
    """When an unused grant is revoked for idleness: its idleTimeout after its last use (or after
    it became active, when never used)."""
    idle = (entry.get("limits") or {}).get("idleTimeout")
    since = max((entry.get("usage") or {}).get("lastUsedAt") or "", entry.get("activatedAt") or "")
    if not idle or not since:
        return None
    try:
        return parse_rfc3339(since) + parse_duration(idle)
    except (DurationError, ValueError):
        return parse_rfc3339(since)  # unreadable idleTimeout: fail closed (idle at once)


def limit_crossed(entry: dict[str, Any], now: dt.datetime) -> tuple[str, str] | None:
    """(reason, message) when the grant's use limits end it now, else None."""
    limits, usage = entry.get("limits") or {}, entry.get("usage") or {}
    for key, used_key, noun in (("maxRequests", "requests", "API requests"), ("maxWrites", "writes", "writes")):
        cap = limits.get(key)
        if cap is not None and int(usage.get(used_key, 0)) >= cap:
            return (
                USE_LIMIT_REACHED,
                f"{noun} {usage.get(used_key, 0)} reached the limit {key} {cap}; access is revoked",
            )
    deadline = idle_deadline(entry)
    if deadline is not None and now >= deadline:
        last = usage.get("lastUsedAt")
        since = f"last used at {last}" if last else f"never used since {entry.get('activatedAt')}"
        return IDLE_TIMEOUT, f"not used for idleTimeout {limits.get('idleTimeout')} ({since}); access is revoked"
    return None
