"""`kubectl breakglass usage NAME`: what a grant's identity did, from the request's status.usage.

The operator writes status.usage (counts from the kube-apiserver audit events of the grant identity,
the grant's effective limits, and the most recent actions, oldest first); this module only reads and
prints it. The views are functions of the request and `now`, so they are tested without a cluster.
`review` prints the same summary with the last few actions before it files the review.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .. import api
from ..domain.durations import DurationError, format_duration, parse_duration, parse_rfc3339, utcnow
from .errors import OK
from .output import emit, print_table

TRAIL_HEADERS = ["SEQ", "TIME", "VERB", "RESOURCE", "NAMESPACE", "NAME", "CODE"]
COUNT_LIMITS = (("maxRequests", "requests"), ("maxWrites", "writes"))
REVIEW_TRAIL = 5  # how many of the most recent actions `review` shows
AUDIT_EVENT = "used"  # the operator's audit log event that records every action


def usage_of(req: dict[str, Any]) -> dict[str, Any]:
    return (req.get("status") or {}).get("usage") or {}


def was_issued(status: dict[str, Any]) -> bool:
    """Did the request ever become Active (a token was issued)?"""
    return status.get("phase") == api.ACTIVE or bool(status.get("issuedAt") or status.get("tokenId"))


def _ago(stamp: str, now: dt.datetime) -> str:
    seconds = max(0, int((now - parse_rfc3339(stamp)).total_seconds()))
    return format_duration(dt.timedelta(seconds=seconds))


def limit_texts(usage: dict[str, Any]) -> list[str]:
    """The count limits with what is left: `maxRequests 5 (1 left)`; none left never goes below 0."""
    limits = usage.get("limits") or {}
    out = []
    for key, counter in COUNT_LIMITS:
        if key in limits:
            left = max(0, int(limits[key]) - int(usage.get(counter) or 0))
            out.append(f"{key} {limits[key]} ({left} left)")
    return out


def idle_text(usage: dict[str, Any], phase: str | None, now: dt.datetime) -> str | None:
    """The idle timeout with the time since the last use (and, while Active, how long until it fires)."""
    timeout = (usage.get("limits") or {}).get("idleTimeout")
    if not timeout:
        return None
    last = usage.get("lastUsedAt")
    if not last:
        return f"idleTimeout {timeout} (not used yet)"
    since = max(0, int((now - parse_rfc3339(last)).total_seconds()))
    text = f"idleTimeout {timeout} ({format_duration(dt.timedelta(seconds=since))} since last use"
    if phase == api.ACTIVE:
        try:
            left = int(parse_duration(timeout).total_seconds()) - since
        except DurationError:
            left = None
        if left is not None:
            text += f", {format_duration(dt.timedelta(seconds=left))} left" if left > 0 else ", due now"
    return text + ")"


def revoked_text(status: dict[str, Any]) -> str | None:
    """Why a Revoked grant was revoked (UseLimitReached, IdleTimeout, or a person's revoke)."""
    if status.get("phase") != api.REVOKED:
        return None
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == api.COND_REVOKED), None)
    if not cond:
        return None
    return f"{cond.get('reason')}: {cond.get('message')}" if cond.get("message") else str(cond.get("reason"))


def summary_lines(req: dict[str, Any], now: dt.datetime) -> list[str]:
    """The usage summary block: counts, first/last use, limits left, idle timeout, why revoked."""
    st, usage = req.get("status") or {}, usage_of(req)
    meta = req.get("metadata") or {}
    phase = st.get("phase", api.PENDING)
    where = "/".join(filter(None, (meta.get("namespace"), meta.get("name"))))
    lines = [f"usage of {where} ({phase})"]
    if not usage.get("requests") and not usage.get("trail"):
        if was_issued(st):
            lines.append("no use recorded yet")
        elif phase in api.TERMINAL_PHASES:
            lines.append(f"no use recorded: the request never became Active (it is {phase})")
        else:
            lines.append(f"no use recorded yet: the request has not become Active (it is {phase})")
    else:
        counts = [usage.get(k, 0) for k in ("requests", "denied", "writes")]
        lines.append("requests:  {}   denied: {}   writes: {}".format(*counts))
        first, last = usage.get("firstUsedAt"), usage.get("lastUsedAt")
        if first or last:
            ago = f" ({_ago(last, now)} ago)" if last else ""
            lines.append(f"used:      first {first or '-'}   last {last or '-'}{ago}")
    limits = limit_texts(usage)
    idle = idle_text(usage, phase, now)
    if limits or idle:
        lines.append("limits:    " + ", ".join(limits + ([idle] if idle else [])))
    elif usage:
        lines.append("limits:    none")
    why = revoked_text(st)
    if why:
        lines.append(f"revoked:   {why}")
    return lines


def resource_text(entry: dict[str, Any]) -> str:
    """`pods`, `pods/log` with a subresource, or the URI of a non-resource request (`/api`)."""
    resource = entry.get("resource") or ""
    if not resource:
        return entry.get("uri") or "-"
    return f"{resource}/{entry['subresource']}" if entry.get("subresource") else resource


def trail_row(entry: dict[str, Any]) -> list[str]:
    return [
        str(entry.get("seq", "-")),
        entry.get("time") or "-",
        entry.get("verb") or "-",
        resource_text(entry),
        entry.get("namespace") or "-",
        entry.get("name") or "-",
        str(entry.get("code", "-")),
    ]


def trail_of(usage: dict[str, Any]) -> list[dict[str, Any]]:
    """The recorded actions, oldest first (by seq when the entries carry one)."""
    trail = list(usage.get("trail") or [])
    return sorted(trail, key=lambda e: e.get("seq", 0)) if all("seq" in e for e in trail) else trail


def print_trail(usage: dict[str, Any], last: int | None = None, more: str = "") -> None:
    """The trail table, oldest first; `last` keeps only that many of the most recent actions.

    Fewer rows than actions (the status keeps the most recent ones only) say where the rest are:
    `more` (a command showing the whole kept trail) when rows were cut here, and the audit log."""
    trail = trail_of(usage)
    if not trail:
        return
    shown = trail[-last:] if last else trail
    total = max(int(usage.get("trailTotal") or 0), len(trail))
    print()
    print_table([trail_row(e) for e in shown], TRAIL_HEADERS)
    if total > len(shown):
        where = f"`{more}` shows the last {len(trail)}; " if more and len(trail) > len(shown) else ""
        print(
            f"showing the last {len(shown)} of {total} actions; {where}the full trail is in the operator's "
            f'audit log (event "{AUDIT_EVENT}")'
        )


def print_usage(req: dict[str, Any], now: dt.datetime) -> None:
    """`usage NAME` as text: the summary, then every action the status keeps."""
    for line in summary_lines(req, now):
        print(line)
    print_trail(usage_of(req))


def print_review_summary(req: dict[str, Any], now: dt.datetime) -> None:
    """What `review` shows before filing: the summary and the most recent actions."""
    for line in summary_lines(req, now):
        print(line)
    meta = req.get("metadata") or {}
    ns = f"-n {meta['namespace']} " if meta.get("namespace") else ""
    print_trail(usage_of(req), last=REVIEW_TRAIL, more=f"kubectl breakglass {ns}usage {meta.get('name', 'NAME')}")


def cmd_usage(args, client) -> int:
    req = client.get_request(args.name)
    emit(args, usage_of(req), lambda: print_usage(req, utcnow()))
    return OK
