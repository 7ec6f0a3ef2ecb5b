"""The request's status as a pure function of (old status, outcome, ledger entry, approvals, now),
and the list of changes between two statuses that deserve an Event and an audit record.

The reconciler applies its effects first (ledger, RBAC, delivery), then computes the status here
and writes it once per pass.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .. import api
from .approvals import ApprovalView, Tally
from .conditions import get_condition, set_condition
from .durations import parse_rfc3339, to_rfc3339

SCHEDULED_START = "ScheduledStart"  # condition Issued=False while a Scheduled request waits for spec.startAt


@dataclass(frozen=True)
class Outcome:
    phase: str
    reason: str
    message: str
    # Scheduled: the approval that allowed the grant (condition Approved), besides the wait itself.
    approval_reason: str = ""
    approval_message: str = ""


def _approval_entry(a: ApprovalView) -> dict[str, Any]:
    entry: dict[str, Any] = {"approver": a.approver, "decision": a.decision}
    if a.created:
        entry["time"] = to_rfc3339(a.created)
    if a.comment:
        entry["comment"] = a.comment
    return entry


def _extension_entry(e: dict[str, Any]) -> dict[str, Any]:
    """A decided extension as the request's status shows it (from the ledger)."""
    out = {k: e[k] for k in ("name", "by", "state", "at") if e.get(k)}
    if e.get("state") == "Applied":
        out.update(approvedBy=list(e.get("approvedBy") or []), expiresAt=e.get("expiresAt"))
    else:
        out["message"] = e.get("message", "")
    return out


def next_status(
    old: dict[str, Any],
    *,
    generation: int | None,
    outcome: Outcome,
    grant: dict[str, Any] | None,
    tally: Tally | None,
    now: dt.datetime,
) -> dict[str, Any]:
    new = {k: v for k, v in old.items() if k not in ("secretRef",)}
    conds = old.get("conditions")

    def cond(type_: str, status, reason: str, message: str):
        nonlocal conds
        conds = set_condition(
            conds, type=type_, status=status, reason=reason, message=message, now=now, observed_generation=generation
        )

    phase, reason, message = outcome.phase, outcome.reason, outcome.message
    approval = (grant or {}).get("approval") or {}
    settled = bool(reason)  # an empty reason: nothing new decided, keep the phase's conditions
    was_scheduled = (get_condition(old.get("conditions"), api.COND_ISSUED) or {}).get("reason") == SCHEDULED_START
    if not settled:
        pass
    elif phase == api.SCHEDULED:
        cond(api.COND_APPROVED, True, outcome.approval_reason or "Approved", outcome.approval_message or message)
        cond(api.COND_ISSUED, False, reason, message)
        new["approvedAt"] = old.get("approvedAt") or to_rfc3339(now)
    elif phase in (api.PENDING, api.DENIED):
        cond(api.COND_APPROVED, False, reason, message)
    elif phase == api.FAILED and grant is None:
        cond(api.COND_APPROVED, "Unknown", reason, message)
    elif phase == api.FAILED:
        cond(api.COND_ISSUED, False, reason, message)
    if grant is not None and approval and settled:
        cond(api.COND_APPROVED, True, approval.get("reason", "Approved"), approval.get("message", ""))
    if grant is not None and approval.get("alert"):  # auto-approved by a firing alert: which one
        new["approval"] = {"reason": approval.get("reason", ""), "alert": approval["alert"]}
    if settled and phase == api.ACTIVE:
        cond(api.COND_ISSUED, True, "TokenIssued", f"token {grant['jti']} valid until {grant['expiresAt']}")
        new["secretRef"] = {"namespace": grant["secret"]["namespace"], "name": grant["secret"]["name"]}
    elif settled and phase == api.EXPIRED:
        if grant is not None:
            cond(api.COND_ISSUED, False, "TokenExpired", "token Secret and RoleBindings deleted at expiry")
        cond(api.COND_EXPIRED, True, "DurationElapsed", message)
    elif settled and phase == api.REVOKED:
        was_issued = (get_condition(old.get("conditions"), api.COND_ISSUED) or {}).get("status") == "True"
        if (grant is not None and grant.get("activatedAt")) or was_issued:
            cond(api.COND_ISSUED, False, "TokenRevoked", "token Secret and RoleBindings deleted on revocation")
        cond(api.COND_REVOKED, True, reason, message)
    if settled and was_scheduled and grant is None and phase not in (api.SCHEDULED, api.ACTIVE):
        # The start that was waited for will not come: say so instead of "issued at startAt".
        said = message if "nothing was issued" in message else f"nothing was issued: {message}"
        cond(api.COND_ISSUED, False, reason, said)

    if grant is not None and grant.get("activatedAt"):
        new.update(
            {
                "approvedAt": old.get("approvedAt") or grant["issuedAt"],
                "issuedAt": grant["issuedAt"],
                "expiresAt": grant["expiresAt"],
                "tokenId": grant["jti"],
                "keyId": grant["kid"],
                "username": grant["username"],
            }
        )
        if grant.get("extensions"):
            new["extensions"] = [_extension_entry(e) for e in grant["extensions"]]
        if approval.get("emergency") and approval.get("reviewDueAt"):
            review = dict(old.get("review") or {})
            review.setdefault("required", True)
            review.setdefault("dueAt", approval["reviewDueAt"])
            new["review"] = review

    if tally is not None:
        if tally.counted:
            new["approvals"] = [_approval_entry(a) for a in tally.counted]
        reported = set(old.get("ignoredApprovals") or [])
        ignored = reported | {name for name, _, _ in tally.ignored}
        if ignored:
            new["ignoredApprovals"] = sorted(ignored)

    review = new.get("review") or {}
    if review.get("required") and not review.get("reviewedAt"):
        if tally is not None and tally.reviewed_by:
            new["review"] = dict(review, reviewer=tally.reviewed_by[0], reviewedAt=to_rfc3339(now))
            cond(api.COND_REVIEW_OVERDUE, False, "Reviewed", f"reviewed by {tally.reviewed_by[0]}")
        elif review.get("dueAt") and parse_rfc3339(review["dueAt"]) <= now:
            cond(api.COND_REVIEW_OVERDUE, True, "ReviewOverdue", f"emergency review was due at {review['dueAt']}")

    new.update(phase=phase, message=message, conditions=conds, observedGeneration=generation)
    return new


def review_due(status: dict[str, Any]) -> dt.datetime | None:
    review = status.get("review") or {}
    if review.get("required") and not review.get("reviewedAt") and review.get("dueAt"):
        return parse_rfc3339(review["dueAt"])
    return None


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What happened between two statuses, in the order Events and audit records are written:
    `requested`, `approval:<approver>:<decision>`, `ignored:<name>`, `phase:<Phase>`, `reviewed`, `overdue`."""
    out = []
    if not old.get("phase"):
        out.append("requested")
    seen = {(a.get("approver"), a.get("decision")) for a in old.get("approvals") or []}
    out += [
        f"approval:{a['approver']}:{a['decision']}"
        for a in new.get("approvals") or []
        if (a.get("approver"), a.get("decision")) not in seen
    ]
    reported = set(old.get("ignoredApprovals") or [])
    out += [f"ignored:{n}" for n in new.get("ignoredApprovals") or [] if n not in reported]
    if new.get("phase") != old.get("phase") and new.get("phase") != api.PENDING:
        out.append(f"phase:{new['phase']}")
    if (new.get("review") or {}).get("reviewedAt") and not (old.get("review") or {}).get("reviewedAt"):
        out.append("reviewed")
    was = get_condition(old.get("conditions"), api.COND_REVIEW_OVERDUE)
    now_ = get_condition(new.get("conditions"), api.COND_REVIEW_OVERDUE)
    if now_ and now_.get("status") == "True" and (not was or was.get("status") != "True"):
        out.append("overdue")
    return out
