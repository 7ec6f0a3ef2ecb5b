"""What should happen to a request now: a pure function of plain data and `now`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

from .. import api
from .alert_gate import ALERT_FIRING, Alert, approval_message
from .approvals import Tally
from .checks import evaluate_request, first_failure
from .durations import DurationError, format_duration, parse_duration, to_rfc3339
from .limits import idle_deadline, limit_crossed
from .policy import Policy, RequestView, effective_duration, validate_policy
from .scheduling import scheduled_start

WAIT, ISSUE, DENY, FAIL, EXPIRE, REVOKE, NOTHING = "wait", "issue", "deny", "fail", "expire", "revoke", "nothing"
SCHEDULE = "schedule"  # approved, spec.startAt still ahead: hold the issue until then (phase Scheduled)
ACTIVE, SETTLE = "active", "settle"  # grant live: keep it; grant ended in the ledger: bring status in line
# Ledger states (ledger.py writes them; decisions only read them).
G_ISSUING, G_ACTIVE, G_FAILED, G_REVOKED, G_EXPIRED = "Issuing", "Active", "Failed", "Revoked", "Expired"


@dataclass(frozen=True)
class Grant:
    """What the ledger says about this request uid's token."""

    state: str
    expires_at: dt.datetime
    reason: str = ""


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    message: str
    requeue_at: dt.datetime | None = None
    emergency: bool = False
    approvers: tuple[str, ...] = field(default_factory=tuple)
    # A scheduled grant: the token's iat/nbf (exp = starts_at + duration), on ISSUE and SCHEDULE.
    starts_at: dt.datetime | None = None
    # SCHEDULE: the approval that allowed it (the Approved condition), besides the wait's own reason.
    approval_reason: str = ""
    approval_message: str = ""
    # AlertFiring: the alert that approved it ({fingerprint, labels, startsAt}), into the ledger's approval.
    alert: dict | None = None


def approval_deadline(created: dt.datetime, policy: Policy) -> dt.datetime | None:
    try:
        return created + parse_duration(policy.approval_timeout)
    except DurationError:
        return None


def touches_protected(request: RequestView, protected: tuple[str, ...] | frozenset[str]) -> str | None:
    """The operator's own namespaces (keys, ledger, tokens) are never a grant target, whatever a
    policy's globs say: a grant there could read every token and forge the ledger."""
    hit = sorted(set(request.namespaces) & set(protected))
    if hit:
        return (
            f"spec.namespaces {hit}: the operator's own namespace(s) hold signing keys, the grant ledger and "
            "token Secrets and can never be granted"
        )
    return None


def exceeds_ceiling(request: RequestView, policy: Policy, ceiling: dt.timedelta | None) -> str | None:
    """The operator-wide --max-token-lifetime bounds every grant, whatever a policy says."""
    if ceiling is None:
        return None
    try:
        asked = effective_duration(request, policy)
    except DurationError:
        return None  # reported by check_duration
    if asked > ceiling:
        return (
            f"spec.duration {format_duration(asked)} exceeds the operator's --max-token-lifetime "
            f"{format_duration(ceiling)}"
        )
    return None


def decide_grant(grant: Grant, *, revoked: bool, secret_present: bool, now: dt.datetime) -> Decision:
    """A ledger entry exists for this request uid: only completion, expiry or revocation remain."""
    if grant.state in (G_REVOKED, G_EXPIRED, G_FAILED):
        return Decision(SETTLE, grant.reason or grant.state, f"the grant is {grant.state} in the ledger")
    if now >= grant.expires_at:
        return Decision(EXPIRE, "DurationElapsed", "the granted duration has elapsed")
    if revoked:
        return Decision(REVOKE, "Revoked", "spec.revoked is true")
    if grant.state == G_ISSUING:
        return Decision(ISSUE, "Resume", "completing the issue recorded in the ledger")
    if not secret_present:
        return Decision(REVOKE, "SecretDeleted", "the token Secret was deleted before expiry; the token is revoked")
    return Decision(ACTIVE, "Active", "token is valid", requeue_at=grant.expires_at)


def within_use_limits(decision: Decision, entry: dict | None, now: dt.datetime) -> Decision:
    """An Active grant past its policy's use limits (spec.limits) is revoked; one with an
    idleTimeout is looked at again when it would turn idle."""
    if decision.action != ACTIVE or entry is None:
        return decision
    crossed = limit_crossed(entry, now)
    if crossed:
        return Decision(REVOKE, *crossed)
    deadline = idle_deadline(entry)
    if deadline is not None and (decision.requeue_at is None or deadline < decision.requeue_at):
        return replace(decision, requeue_at=deadline)
    return decision


def decide(
    *,
    request: RequestView,
    phase: str | None,
    policy: Policy | None,
    tally: Tally | None,
    created: dt.datetime,
    grant: Grant | None,
    now: dt.datetime,
    secret_present: bool = True,
    ceiling: dt.timedelta | None = None,
    protected: tuple[str, ...] = (),
    gate_alert: Alert | None = None,
) -> Decision:
    """Decide the next step from the request, its policy, its approvals and the ledger's grant."""
    if grant is not None:
        return decide_grant(grant, revoked=request.revoked, secret_present=secret_present, now=now)
    if phase in api.TERMINAL_PHASES:
        return Decision(NOTHING, "Terminal", f"request is {phase}")
    if request.revoked:
        if phase == api.SCHEDULED:
            return Decision(
                REVOKE,
                "Revoked",
                f"spec.revoked is true: the scheduled start at {request.start_at} is cancelled; nothing was issued",
            )
        return Decision(REVOKE, "Revoked", "spec.revoked is true")
    # No token yet: approval phase. Re-check everything: the policy may have changed.
    if policy is None:
        return Decision(FAIL, "PolicyNotFound", f"BreakGlassPolicy {request.policy!r} does not exist")
    problems = validate_policy(policy)
    if problems:
        return Decision(FAIL, "PolicyInvalid", f"policy {policy.name!r} is invalid: {problems[0].message}")
    failure = first_failure(evaluate_request(request, policy, created))
    if failure:
        return Decision(DENY, failure.reason, failure.message)
    too_long = exceeds_ceiling(request, policy, ceiling)
    if too_long:
        return Decision(DENY, "ExceedsOperatorCeiling", too_long)
    forbidden = touches_protected(request, protected)
    if forbidden:
        return Decision(DENY, "ProtectedNamespace", forbidden)
    path = approval_path(request, policy, tally)
    deadline = approval_deadline(created, policy)
    timed_out = deadline is not None and now >= deadline
    if path.action == WAIT and gate_alert is not None and not timed_out:
        # a firing alert the policy's gate matches approves, like a person would: only within the
        # approval timeout (a late alert never revives a request nobody approved in time)
        path = Decision(ISSUE, ALERT_FIRING, approval_message(gate_alert, policy.name), alert=gate_alert.as_dict())
    if path.action == ISSUE:
        return start_gate(path, request, policy, now)
    if path.action != WAIT:
        return path
    if timed_out:
        return Decision(
            DENY,
            "ApprovalTimeout",
            f"not approved within policy {policy.name!r} approvalTimeout {policy.approval_timeout}",
        )
    return replace(path, requeue_at=deadline)


def start_gate(path: Decision, request: RequestView, policy: Policy, now: dt.datetime) -> Decision:
    """An issue the approvals allow, held until spec.startAt (the approval timeout is not involved:
    it bounds the approval, not the wait). Past startAt the token still covers only
    [startAt, startAt + duration); once that window is over nothing is issued."""
    start = scheduled_start(request)
    if start is None or path.emergency:
        return path
    if now < start:
        return Decision(
            SCHEDULE,
            "ScheduledStart",
            f"{path.message}; the token is issued at {to_rfc3339(start)} (spec.startAt)",
            requeue_at=start,
            approvers=path.approvers,
            starts_at=start,
            approval_reason=path.reason,
            approval_message=path.message,
        )
    duration = effective_duration(request, policy)
    if now >= start + duration:
        return Decision(
            DENY,
            "ScheduledWindowElapsed",
            f"the scheduled window {to_rfc3339(start)} + {format_duration(duration)} ended before the "
            "request could be issued; nothing was issued",
        )
    return replace(path, starts_at=start)


def approval_path(request: RequestView, policy: Policy, tally: Tally | None = None) -> Decision:
    """How a request that passed every rule gets (or does not get) its grant, clock aside: denied by an
    approver, emergency, no approval needed, auto-approved, approved, or WAIT for approvers. decide()
    adds the approval timeout to WAIT; `kubectl breakglass explain` asks it with no approvals yet."""
    tally = tally or Tally()
    if tally.denied_by:
        return Decision(DENY, "DeniedByApprover", f"denied by {', '.join(tally.denied_by)}")
    if request.emergency and policy.emergency_allowed:
        return Decision(
            ISSUE,
            "EmergencyAccess",
            "emergency access issued without approval; a review is required",
            emergency=True,
            approvers=tuple(tally.approved_by),
        )
    if policy.required_approvals == 0:
        return Decision(ISSUE, "NoApprovalRequired", f"policy {policy.name!r} requires no approval")
    if policy.auto_approves(request.requester_groups):
        return Decision(
            ISSUE, "AutoApproved", f"{request.requester} is in an autoApprove group of policy {policy.name!r}"
        )
    if len(tally.approved_by) >= policy.required_approvals:
        return Decision(
            ISSUE,
            "Approved",
            f"approved by {', '.join(tally.approved_by)} ({len(tally.approved_by)}/{policy.required_approvals})",
            approvers=tuple(tally.approved_by),
        )
    return Decision(
        WAIT,
        "AwaitingApproval",
        f"{len(tally.approved_by)}/{policy.required_approvals} approvals from policy {policy.name!r} approvers",
        approvers=tuple(tally.approved_by),
    )
