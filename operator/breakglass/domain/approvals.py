"""Counting approvals: distinct, eligible approvers only; any valid Deny wins.

An approval belongs to one request instance: admission stamps the live request's uid into
spec.requestUID, and only approvals carrying this request's uid, created at or after the request,
are counted. An approval left over from an earlier request of the same name never counts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from .durations import parse_rfc3339
from .policy import Policy

APPROVE, DENY, REVIEW = "Approve", "Deny", "Review"


@dataclass(frozen=True)
class ApprovalView:
    name: str
    approver: str
    approver_groups: tuple[str, ...]
    decision: str
    comment: str = ""
    created: dt.datetime | None = None
    request_uid: str = ""  # spec.requestUID, stamped by admission from the live request
    extension: str = ""  # spec.extension: an answer to a BreakGlassExtension (domain/extensions.py)
    extension_uid: str = ""  # spec.extensionUID, stamped by admission from the live extension

    @classmethod
    def from_resource(cls, body: dict[str, Any]) -> ApprovalView:
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        created = meta.get("creationTimestamp")
        return cls(
            name=meta.get("name", ""),
            approver=spec.get("approver") or "",
            approver_groups=tuple(spec.get("approverGroups") or ()),
            decision=spec.get("decision") or "",
            comment=spec.get("comment") or "",
            created=parse_rfc3339(created) if isinstance(created, str) else created,
            request_uid=spec.get("requestUID") or "",
            extension=spec.get("extension") or "",
            extension_uid=spec.get("extensionUID") or "",
        )


@dataclass
class Tally:
    approved_by: list[str] = field(default_factory=list)
    denied_by: list[str] = field(default_factory=list)
    reviewed_by: list[str] = field(default_factory=list)
    # (approval name, approver, why) for approvals that do not count.
    ignored: list[tuple[str, str, str]] = field(default_factory=list)
    counted: list[ApprovalView] = field(default_factory=list)


def belongs_to(approval: ApprovalView, *, request_uid: str, request_created: dt.datetime) -> tuple[bool, str]:
    """(ok, why-not): is this approval for this very request instance?"""
    if not approval.request_uid:
        return False, "approval carries no spec.requestUID (not stamped by admission), so it is for no request"
    if approval.request_uid != request_uid:
        return False, (
            f"approval is for another request instance (uid {approval.request_uid}), not this one (uid {request_uid})"
        )
    if approval.created is None or approval.created < request_created:
        return False, "approval was created before this request"
    return True, ""


def eligibility(
    approval: ApprovalView, *, requester: str, policy: Policy, deadline: dt.datetime | None
) -> tuple[bool, str]:
    """(ok, why-not) for one approval against the request's policy."""
    if not approval.approver:
        return False, "approval has no verified approver identity"
    if not policy.is_approver(approval.approver, approval.approver_groups):
        return False, (
            f"{approval.approver} is not an approver of policy {policy.name!r} "
            f"(approvers: users {list(policy.approver_users)}, groups {list(policy.approver_groups)})"
        )
    if approval.approver == requester and not policy.allow_self_approval:
        return False, f"{approval.approver} requested this access and policy {policy.name!r} forbids self-approval"
    if approval.decision == REVIEW and approval.approver == requester:
        return False, "the requester cannot review their own emergency access"
    if (
        deadline is not None
        and approval.decision != REVIEW
        and approval.created is not None
        and approval.created > deadline
    ):
        return False, f"{approval.decision} by {approval.approver} arrived after the approval timeout"
    return True, ""


def tally_approvals(
    approvals: list[ApprovalView],
    *,
    requester: str,
    policy: Policy,
    deadline: dt.datetime | None,
    request_uid: str,
    request_created: dt.datetime,
) -> Tally:
    """Count approvals for the request instance `request_uid` created at `request_created`."""
    tally = Tally()
    for a in sorted(approvals, key=lambda a: (a.created or dt.datetime.min.replace(tzinfo=dt.UTC), a.name)):
        if a.extension or a.extension_uid:
            continue  # an answer to an extension, never to the request itself (domain/extensions.py)
        ok, why = belongs_to(a, request_uid=request_uid, request_created=request_created)
        if ok:
            ok, why = eligibility(a, requester=requester, policy=policy, deadline=deadline)
        if not ok:
            tally.ignored.append((a.name, a.approver, why))
            continue
        bucket = {APPROVE: tally.approved_by, DENY: tally.denied_by, REVIEW: tally.reviewed_by}.get(a.decision)
        if bucket is None:
            tally.ignored.append((a.name, a.approver, f"unknown decision {a.decision!r}"))
            continue
        if a.approver not in bucket:
            bucket.append(a.approver)
            tally.counted.append(a)
    return tally
