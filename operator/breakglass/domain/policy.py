"""The policy and request models as plain data, policy validation, and the effective duration and
audiences of a request. The chain of named checks lives in `checks.py`."""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .alert_gate import Gate, validate_gate
from .durations import DurationError, parse_duration
from .limits import Limits, limit_problems

DEFAULT_AUDIENCES = ("breakglass",)
# A scope is one token of the JWT `scope` claim: no whitespace, so it can never carry a second scope.
SCOPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}$"
_SCOPE_RE = re.compile(SCOPE_PATTERN[1:-1])
RESERVED_SCOPE_PREFIX = "k8s:"
OPERATOR_NAMESPACE, REQUEST_NAMESPACE = "OperatorNamespace", "RequestNamespace"
TOKEN_DELIVERIES = (OPERATOR_NAMESPACE, REQUEST_NAMESPACE)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    message: str
    rule: str = ""


@dataclass(frozen=True)
class Policy:
    name: str
    requester_users: tuple[str, ...] = ()
    requester_groups: tuple[str, ...] = ()
    approver_users: tuple[str, ...] = ()
    approver_groups: tuple[str, ...] = ()
    required_approvals: int = 1
    allow_self_approval: bool = False
    allowed_namespaces: tuple[str, ...] = ()
    allowed_cluster_roles: tuple[str, ...] = ()
    allowed_scopes: tuple[str, ...] = ()
    audiences: tuple[str, ...] = DEFAULT_AUDIENCES
    default_duration: str = "15m"
    max_duration: str = "1h"
    approval_timeout: str = "30m"
    require_ticket: bool = False
    ticket_pattern: str | None = None
    auto_approve_groups: tuple[str, ...] = ()
    emergency_allowed: bool = False
    emergency_review_within: str = "24h"
    token_delivery: str = OPERATOR_NAMESPACE  # where the token Secret goes: TOKEN_DELIVERIES
    max_schedule_ahead: str = "168h"  # how far ahead of its creation a request's spec.startAt may be
    # spec.extension: may an active grant be extended (domain/extensions.py), with how many approvals,
    # up to what total (exp - iat; unset: maxDuration).
    extension_allowed: bool = False
    extension_required_approvals: int = 1
    extension_max_total: str | None = None
    alert_gate: Gate | None = None  # spec.autoApprove.whenAlertFiring (+ revokeOnResolve, resolveGrace)
    limits: Limits = Limits()  # spec.limits: use limits of every grant (domain/usage.py)

    @classmethod
    def from_resource(cls, name: str, spec: dict[str, Any] | None) -> Policy:
        spec = spec or {}
        req, appr = spec.get("requesters") or {}, spec.get("approvers") or {}
        emergency, extension = spec.get("emergency") or {}, spec.get("extension") or {}
        return cls(
            name=name,
            requester_users=tuple(req.get("users") or ()),
            requester_groups=tuple(req.get("groups") or ()),
            approver_users=tuple(appr.get("users") or ()),
            approver_groups=tuple(appr.get("groups") or ()),
            required_approvals=int(spec.get("requiredApprovals", 1)),
            allow_self_approval=bool(spec.get("allowSelfApproval", False)),
            allowed_namespaces=tuple(spec.get("allowedNamespaces") or ()),
            allowed_cluster_roles=tuple(spec.get("allowedClusterRoles") or ()),
            allowed_scopes=tuple(spec.get("allowedScopes") or ()),
            audiences=tuple(spec.get("audiences") or DEFAULT_AUDIENCES),
            default_duration=spec.get("defaultDuration") or "15m",
            max_duration=spec.get("maxDuration") or "1h",
            approval_timeout=spec.get("approvalTimeout") or "30m",
            require_ticket=bool(spec.get("requireTicket", False)),
            ticket_pattern=spec.get("ticketPattern") or None,
            auto_approve_groups=tuple((spec.get("autoApprove") or {}).get("groups") or ()),
            emergency_allowed=bool(emergency.get("allowed", False)),
            emergency_review_within=emergency.get("reviewWithin") or "24h",
            token_delivery=spec.get("tokenDelivery") or OPERATOR_NAMESPACE,
            max_schedule_ahead=spec.get("maxScheduleAhead") or "168h",
            extension_allowed=bool(extension.get("allowed", False)),
            extension_required_approvals=int(extension.get("requiredApprovals", 1)),
            extension_max_total=extension.get("maxTotal") or None,
            alert_gate=Gate.from_spec(spec.get("autoApprove")),
            limits=Limits.from_spec(spec.get("limits")),
        )

    def may_request(self, user: str, groups: Iterable[str]) -> bool:
        return user in self.requester_users or bool(set(groups) & set(self.requester_groups))

    def is_approver(self, user: str, groups: Iterable[str]) -> bool:
        return user in self.approver_users or bool(set(groups) & set(self.approver_groups))

    def auto_approves(self, groups: Iterable[str]) -> bool:
        return bool(set(groups) & set(self.auto_approve_groups))


def validate_policy(policy: Policy) -> list[Verdict]:
    """Problems that make a policy unusable (status Ready=False). Empty list = valid."""
    problems: list[Verdict] = []
    durations: dict[str, dt.timedelta] = {}
    for field_name, value in (
        ("defaultDuration", policy.default_duration),
        ("maxDuration", policy.max_duration),
        ("approvalTimeout", policy.approval_timeout),
        ("emergency.reviewWithin", policy.emergency_review_within),
        ("maxScheduleAhead", policy.max_schedule_ahead),
        *((("extension.maxTotal", policy.extension_max_total),) if policy.extension_max_total else ()),
    ):
        try:
            durations[field_name] = parse_duration(value)
        except DurationError as exc:
            problems.append(Verdict(False, "InvalidDuration", f"spec.{field_name}: {exc}"))
    if (
        "defaultDuration" in durations
        and "maxDuration" in durations
        and durations["maxDuration"] < durations["defaultDuration"]
    ):
        problems.append(
            Verdict(
                False,
                "MaxBelowDefault",
                f"spec.maxDuration {policy.max_duration} is shorter than "
                f"spec.defaultDuration {policy.default_duration}",
            )
        )
    if policy.ticket_pattern:
        try:
            re.compile(policy.ticket_pattern)
        except re.error as exc:
            problems.append(
                Verdict(
                    False,
                    "InvalidTicketPattern",
                    f"spec.ticketPattern {policy.ticket_pattern!r} is not a valid regex: {exc}",
                )
            )
    if policy.required_approvals < 0:
        problems.append(Verdict(False, "InvalidRequiredApprovals", "spec.requiredApprovals must be >= 0"))
    if policy.required_approvals > 0 and not (policy.approver_users or policy.approver_groups):
        # An empty approver set "gates nothing" in some systems; here it can never approve.
        problems.append(
            Verdict(
                False,
                "NoApprovers",
                f"spec.requiredApprovals is {policy.required_approvals} but spec.approvers "
                "is empty: no request could ever be approved",
            )
        )
    if not (policy.requester_users or policy.requester_groups):
        problems.append(Verdict(False, "NoRequesters", "spec.requesters is empty: nobody may request"))
    if policy.token_delivery not in TOKEN_DELIVERIES:
        problems.append(
            Verdict(
                False,
                "InvalidTokenDelivery",
                f"spec.tokenDelivery {policy.token_delivery!r} must be one of {list(TOKEN_DELIVERIES)}",
            )
        )
    if "*" in policy.allowed_cluster_roles:
        problems.append(
            Verdict(False, "WildcardClusterRole", "spec.allowedClusterRoles must name ClusterRoles; '*' is not allowed")
        )
    problems += [Verdict(False, reason, message) for reason, message in validate_gate(policy.alert_gate)]
    problems += [Verdict(False, "InvalidLimits", message) for message in limit_problems(policy.limits, "spec.limits")]
    return problems


def _matches_any(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


@dataclass(frozen=True)
class RequestView:
    """The parts of a BreakGlassRequest the checks need, as plain data."""

    name: str
    namespace: str
    requester: str
    requester_groups: tuple[str, ...]
    reason: str = ""
    ticket: str | None = None
    duration: str | None = None
    namespaces: tuple[str, ...] = ()
    cluster_roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    emergency: bool = False
    revoked: bool = False
    policy: str = ""
    start_at: str | None = None  # spec.startAt as written (RFC 3339); see scheduling.py
    limits: Limits = Limits()  # spec.limits: may only lower the policy's

    @classmethod
    def from_resource(cls, body: dict[str, Any]) -> RequestView:
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            requester=spec.get("requester") or "",
            requester_groups=tuple(spec.get("requesterGroups") or ()),
            reason=spec.get("reason") or "",
            ticket=spec.get("ticket"),
            duration=spec.get("duration"),
            namespaces=tuple(spec.get("namespaces") or ()),
            cluster_roles=tuple(spec.get("clusterRoles") or ()),
            scopes=tuple(spec.get("scopes") or ()),
            audiences=tuple(spec.get("audiences") or ()),
            emergency=bool(spec.get("emergency", False)),
            revoked=bool(spec.get("revoked", False)),
            policy=spec.get("policy") or "",
            start_at=spec.get("startAt"),
            limits=Limits.from_spec(spec.get("limits")),
        )


def effective_duration(request: RequestView, policy: Policy) -> dt.timedelta:
    return parse_duration(request.duration or policy.default_duration)


def effective_audiences(request: RequestView, policy: Policy) -> tuple[str, ...]:
    return request.audiences or policy.audiences
