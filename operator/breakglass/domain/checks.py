"""The chain of named checks a request must pass, as cert-manager's policy chains.

Each check returns a `Verdict(ok, reason, message)`; the same chain feeds admission messages,
reconcile-time re-checks (policies change; webhooks can be bypassed) and the `explain` simulator,
so all three always agree.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable

from .durations import DurationError, format_duration, parse_duration
from .limits import limit_problems, loosens
from .policy import (
    _SCOPE_RE,
    RESERVED_SCOPE_PREFIX,
    SCOPE_PATTERN,
    Policy,
    RequestView,
    Verdict,
    _matches_any,
)
from .scheduling import check_start_at

MIN_REASON, MAX_REASON = 10, 1024


def check_requester(req: RequestView, pol: Policy) -> Verdict:
    if pol.may_request(req.requester, req.requester_groups):
        return Verdict(True, "RequesterAllowed", f"{req.requester} may request under policy {pol.name!r}")
    return Verdict(
        False,
        "RequesterNotAllowed",
        f"spec.requester {req.requester!r} (groups {list(req.requester_groups)}) is not in "
        f"policy {pol.name!r} requesters",
    )


def check_reason(req: RequestView, pol: Policy) -> Verdict:
    n = len(req.reason.strip())
    if n < MIN_REASON:
        return Verdict(False, "ReasonTooShort", f"spec.reason must be at least {MIN_REASON} characters (got {n})")
    if len(req.reason) > MAX_REASON:
        return Verdict(False, "ReasonTooLong", f"spec.reason must be at most {MAX_REASON} characters")
    return Verdict(True, "ReasonGiven", "reason given")


def check_duration(req: RequestView, pol: Policy) -> Verdict:
    """Messages name spec.duration (or the policy field at fault) and carry only our own wording."""
    try:
        asked = parse_duration(req.duration) if req.duration else None
    except DurationError as exc:
        return Verdict(False, "InvalidDuration", f"spec.duration: {exc}")
    try:
        asked = asked or parse_duration(pol.default_duration)
        maximum = parse_duration(pol.max_duration)
    except DurationError:
        return Verdict(
            False,
            "PolicyInvalid",
            f"spec.duration cannot be checked: policy {pol.name!r} "
            "defaultDuration or maxDuration is not a valid duration",
        )
    if asked > maximum:
        asked_text = repr(req.duration) if req.duration else f"(policy default {pol.default_duration})"
        return Verdict(
            False,
            "DurationExceedsMax",
            f"spec.duration {asked_text} exceeds policy {pol.name!r} maxDuration {pol.max_duration}",
        )
    return Verdict(True, "DurationAllowed", f"duration {format_duration(asked)} within maxDuration {pol.max_duration}")


def check_namespaces(req: RequestView, pol: Policy) -> Verdict:
    bad = [n for n in req.namespaces if not _matches_any(n, pol.allowed_namespaces)]
    if bad:
        return Verdict(
            False,
            "NamespaceNotAllowed",
            f"spec.namespaces {bad} not allowed by policy {pol.name!r} allowedNamespaces "
            f"{list(pol.allowed_namespaces)}",
        )
    if req.cluster_roles and not req.namespaces:
        return Verdict(False, "NamespacesRequired", "spec.clusterRoles needs at least one entry in spec.namespaces")
    return Verdict(True, "NamespacesAllowed", "namespaces allowed")


def check_cluster_roles(req: RequestView, pol: Policy) -> Verdict:
    bad = [r for r in req.cluster_roles if r not in pol.allowed_cluster_roles]
    if bad:
        return Verdict(
            False,
            "ClusterRoleNotAllowed",
            f"spec.clusterRoles {bad} not allowed by policy {pol.name!r} allowedClusterRoles "
            f"{list(pol.allowed_cluster_roles)}",
        )
    if req.namespaces and not req.cluster_roles:
        return Verdict(False, "ClusterRolesRequired", "spec.namespaces needs at least one entry in spec.clusterRoles")
    return Verdict(True, "ClusterRolesAllowed", "cluster roles allowed")


def check_scopes(req: RequestView, pol: Policy) -> Verdict:
    malformed = [s for s in req.scopes if not isinstance(s, str) or not _SCOPE_RE.fullmatch(s)]
    if malformed:
        return Verdict(
            False,
            "ScopeMalformed",
            f"spec.scopes {malformed} must each match {SCOPE_PATTERN} (one scope per item, no whitespace)",
        )
    reserved = [s for s in req.scopes if s.lower().startswith(RESERVED_SCOPE_PREFIX)]
    if reserved:
        return Verdict(
            False,
            "ScopeNotAllowed",
            f"spec.scopes {reserved}: the {RESERVED_SCOPE_PREFIX!r} prefix is "
            "reserved for Kubernetes grants (use spec.clusterRoles)",
        )
    bad = [s for s in req.scopes if not _matches_any(s, pol.allowed_scopes)]
    if bad:
        return Verdict(
            False,
            "ScopeNotAllowed",
            f"spec.scopes {bad} not allowed by policy {pol.name!r} allowedScopes {list(pol.allowed_scopes)}",
        )
    return Verdict(True, "ScopesAllowed", "scopes allowed")


def check_audiences(req: RequestView, pol: Policy) -> Verdict:
    bad = [a for a in req.audiences if a not in pol.audiences]
    if bad:
        return Verdict(
            False,
            "AudienceNotAllowed",
            f"spec.audiences {bad} not allowed by policy {pol.name!r} audiences {list(pol.audiences)}",
        )
    return Verdict(True, "AudiencesAllowed", "audiences allowed")


def check_ticket(req: RequestView, pol: Policy) -> Verdict:
    if pol.require_ticket and not req.ticket:
        return Verdict(False, "TicketRequired", f"spec.ticket is required by policy {pol.name!r}")
    if req.ticket and pol.ticket_pattern:
        try:
            if not re.fullmatch(pol.ticket_pattern, req.ticket):
                return Verdict(
                    False,
                    "TicketPatternMismatch",
                    f"spec.ticket {req.ticket!r} does not match policy {pol.name!r} "
                    f"ticketPattern {pol.ticket_pattern!r}",
                )
        except re.error:
            return Verdict(False, "PolicyInvalid", f"policy {pol.name!r} ticketPattern is not a valid regex")
    return Verdict(True, "TicketOk", "ticket ok")


def check_emergency(req: RequestView, pol: Policy) -> Verdict:
    if req.emergency and not pol.emergency_allowed:
        return Verdict(
            False,
            "EmergencyNotAllowed",
            f"spec.emergency is true but policy {pol.name!r} does not allow emergency access",
        )
    return Verdict(True, "EmergencyOk", "emergency ok")


def check_grants_something(req: RequestView, pol: Policy) -> Verdict:
    if not (req.cluster_roles or req.scopes):
        return Verdict(False, "NothingRequested", "request at least one of spec.clusterRoles or spec.scopes")
    return Verdict(True, "GrantNonEmpty", "grant is not empty")


def check_limits(req: RequestView, pol: Policy) -> Verdict:
    """spec.limits may only lower the policy's use limits (maxRequests, maxWrites, idleTimeout)."""
    problems = limit_problems(req.limits, "spec.limits") + loosens(req.limits, pol.limits)
    if problems:
        return Verdict(False, "LimitsExceedPolicy", "; ".join(problems))
    return Verdict(True, "LimitsOk", "use limits within the policy's")


REQUEST_CHECKS: tuple[tuple[str, Callable[[RequestView, Policy], Verdict]], ...] = (
    ("requester", check_requester),
    ("reason", check_reason),
    ("duration", check_duration),
    ("namespaces", check_namespaces),
    ("clusterRoles", check_cluster_roles),
    ("scopes", check_scopes),
    ("audiences", check_audiences),
    ("ticket", check_ticket),
    ("emergency", check_emergency),
    ("grant", check_grants_something),
    ("limits", check_limits),
)


def evaluate_request(req: RequestView, pol: Policy, created: dt.datetime | None = None) -> list[Verdict]:
    """Run every check; each verdict carries the rule name it came from. With `created` (admission:
    now; reconcile: the request's creationTimestamp) the scheduled start is judged too (`startAt`)."""
    out = []
    for rule, check in REQUEST_CHECKS:
        v = check(req, pol)
        out.append(Verdict(v.ok, v.reason, v.message, rule))
    if created is not None:
        v = check_start_at(req, pol, created)
        out.append(Verdict(v.ok, v.reason, v.message, "startAt"))
    return out


def first_failure(verdicts: Iterable[Verdict]) -> Verdict | None:
    return next((v for v in verdicts if not v.ok), None)
