"""Extending an active grant: pure rules over plain data and an injected `now`.

A `BreakGlassExtension` asks for `spec.by` more time on one request instance (admission stamps the
requester and the request uid). Approvers answer it with a `BreakGlassApproval` naming the extension
(`spec.extension`, `spec.extensionUID` stamped by admission). An extension is applied when the policy
allows extensions, the grant is still live, the total granted time (exp - iat after the extension)
stays within the policy's `extension.maxTotal` and the operator's `--max-token-lifetime`, and enough
distinct policy approvers other than the requester approved it; any eligible Deny refuses it.
Self-approval of an extension never counts, whatever `allowSelfApproval` says.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from .approvals import APPROVE, DENY, ApprovalView
from .durations import DurationError, format_duration, parse_duration, parse_rfc3339
from .policy import REQUEST_NAMESPACE, Policy, Verdict

APPLY, WAIT, REFUSE = "apply", "wait", "refuse"
APPLIED, REFUSED = "Applied", "Refused"  # what the ledger records per decided extension
MIN_REASON, MAX_REASON = 10, 1024


@dataclass(frozen=True)
class ExtensionView:
    name: str
    uid: str
    request: str
    request_uid: str  # spec.requestUID, stamped by admission from the live request
    requester: str  # spec.requester, stamped by admission from userinfo
    by: str
    reason: str = ""
    created: dt.datetime | None = None

    @classmethod
    def from_resource(cls, body: dict[str, Any]) -> ExtensionView:
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        created = meta.get("creationTimestamp")
        return cls(
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            request=spec.get("request") or "",
            request_uid=spec.get("requestUID") or "",
            requester=spec.get("requester") or "",
            by=spec.get("by") or "",
            reason=spec.get("reason") or "",
            created=parse_rfc3339(created) if isinstance(created, str) else created,
        )


@dataclass(frozen=True)
class ExtensionDecision:
    action: str
    reason: str
    message: str
    approvers: tuple[str, ...] = ()
    expires_at: dt.datetime | None = None  # APPLY: the grant's new exp


@dataclass
class ExtensionTally:
    approved_by: list[str] = field(default_factory=list)
    denied_by: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str, str]] = field(default_factory=list)  # (approval, approver, why)


def max_total(policy: Policy) -> dt.timedelta:
    """`extension.maxTotal`, or the policy's maxDuration when unset."""
    return parse_duration(policy.extension_max_total or policy.max_duration)


def check_extension(
    ext: ExtensionView,
    *,
    policy: Policy,
    requester: str,
    request_uid: str,
    issued_at: dt.datetime,
    expires_at: dt.datetime,
    ceiling: dt.timedelta | None,
    now: dt.datetime,
) -> Verdict:
    """Everything but the approvals, shared by admission and the reconciler. `issued_at`/`expires_at`:
    the live grant's iat and current exp."""
    if ext.request_uid != request_uid:
        return Verdict(
            False,
            "RequestUIDMismatch",
            f"extension {ext.name!r} is for another instance of request {ext.request!r} "
            f"(uid {ext.request_uid or 'none'}), not uid {request_uid}",
            "request",
        )
    if ext.requester != requester:
        return Verdict(
            False,
            "NotRequestOwner",
            f"{ext.requester or 'an unknown user'} may not extend request {ext.request!r}: "
            f"only its requester {requester!r} may",
            "authorization",
        )
    if not policy.extension_allowed:
        return Verdict(
            False, "ExtensionNotAllowed", f"policy {policy.name!r} does not allow extensions (spec.extension.allowed)"
        )
    if policy.token_delivery == REQUEST_NAMESPACE:
        return Verdict(
            False,
            "ExtensionNeedsOperatorDelivery",
            f"policy {policy.name!r} delivers tokens into the request's namespace (tokenDelivery: RequestNamespace), "
            "where the operator may not rewrite Secrets: request again instead of extending",
        )
    try:
        by = parse_duration(ext.by)
    except DurationError as exc:
        return Verdict(False, "InvalidDuration", f"spec.by: {exc}", "duration")
    if now >= expires_at:
        return Verdict(False, "GrantNotActive", f"the grant expired at {expires_at.isoformat()}; request again")
    total = expires_at + by - issued_at
    try:
        limit = max_total(policy)
    except DurationError as exc:
        return Verdict(False, "PolicyInvalid", f"policy {policy.name!r} extension.maxTotal: {exc}")
    if total > limit:
        return Verdict(
            False,
            "ExceedsMaxTotal",
            f"spec.by {ext.by} would make the grant {format_duration(total)} long in total "
            f"(already {format_duration(expires_at - issued_at)}), beyond policy {policy.name!r} "
            f"extension.maxTotal {format_duration(limit)}",
            "duration",
        )
    if ceiling is not None and total > ceiling:
        return Verdict(
            False,
            "ExceedsOperatorCeiling",
            f"spec.by {ext.by} would make the grant {format_duration(total)} long in total, beyond the "
            f"operator's --max-token-lifetime {format_duration(ceiling)}",
            "duration",
        )
    return Verdict(True, "Allowed", "allowed")


def extension_approval_eligibility(a: ApprovalView, ext: ExtensionView, *, requester: str, policy: Policy) -> str:
    """Why an approval does not count for this extension ('' when it counts)."""
    if a.extension != ext.name or a.extension_uid != ext.uid:
        return f"approval is for another extension ({a.extension or 'none'}), not {ext.name} (uid {ext.uid})"
    if a.request_uid != ext.request_uid:
        return "approval is for another request instance"
    if ext.created is not None and (a.created is None or a.created < ext.created):
        return "approval was created before the extension"
    if not a.approver:
        return "approval has no verified approver identity"
    if a.approver in (requester, ext.requester):
        return f"{a.approver} asked for this access and cannot approve its extension"
    if not policy.is_approver(a.approver, a.approver_groups):
        return f"{a.approver} is not an approver of policy {policy.name!r}"
    if a.decision not in (APPROVE, DENY):
        return f"decision {a.decision!r} does not apply to an extension"
    return ""


def tally_extension(
    approvals: list[ApprovalView], ext: ExtensionView, *, requester: str, policy: Policy
) -> ExtensionTally:
    tally = ExtensionTally()
    for a in sorted(approvals, key=lambda a: (a.created or dt.datetime.min.replace(tzinfo=dt.UTC), a.name)):
        if a.extension != ext.name:
            continue  # another extension's, or the request's own approvals
        why = extension_approval_eligibility(a, ext, requester=requester, policy=policy)
        if why:
            tally.ignored.append((a.name, a.approver, why))
            continue
        bucket = tally.approved_by if a.decision == APPROVE else tally.denied_by
        if a.approver not in bucket:
            bucket.append(a.approver)
    return tally


def judge_extension(
    ext: ExtensionView,
    approvals: list[ApprovalView],
    *,
    policy: Policy,
    requester: str,
    request_uid: str,
    issued_at: dt.datetime,
    expires_at: dt.datetime,
    ceiling: dt.timedelta | None,
    now: dt.datetime,
) -> ExtensionDecision:
    """APPLY (with the new exp), WAIT for approvers, or REFUSE (final) one extension of a live grant."""
    verdict = check_extension(
        ext,
        policy=policy,
        requester=requester,
        request_uid=request_uid,
        issued_at=issued_at,
        expires_at=expires_at,
        ceiling=ceiling,
        now=now,
    )
    if not verdict.ok:
        return ExtensionDecision(REFUSE, verdict.reason, verdict.message)
    tally = tally_extension(approvals, ext, requester=requester, policy=policy)
    if tally.denied_by:
        return ExtensionDecision(REFUSE, "DeniedByApprover", f"extension denied by {', '.join(tally.denied_by)}")
    new_exp = expires_at + parse_duration(ext.by)
    need = policy.extension_required_approvals
    if len(tally.approved_by) >= need:
        who = f"approved by {', '.join(tally.approved_by)}" if tally.approved_by else "no approval required"
        return ExtensionDecision(
            APPLY,
            "Extended",
            f"extended by {ext.by} ({who}); now valid until {new_exp.isoformat()}",
            approvers=tuple(tally.approved_by),
            expires_at=new_exp,
        )
    return ExtensionDecision(
        WAIT,
        "AwaitingApproval",
        f"extension {ext.name}: {len(tally.approved_by)}/{need} approvals from policy {policy.name!r} approvers",
        approvers=tuple(tally.approved_by),
    )


def undecided(
    extensions: list[ExtensionView], decided: set[str], *, request_uid: str, request_created: dt.datetime
) -> list[ExtensionView]:
    """This request instance's extensions the ledger has not decided yet, oldest first."""
    mine = [
        e
        for e in extensions
        if e.uid not in decided and e.request_uid == request_uid and (e.created is None or e.created >= request_created)
    ]
    return sorted(mine, key=lambda e: (e.created or dt.datetime.min.replace(tzinfo=dt.UTC), e.name))


def check_reason(reason: str) -> Verdict:
    if not (MIN_REASON <= len(reason or "") <= MAX_REASON):
        return Verdict(False, "ReasonLength", f"spec.reason must be {MIN_REASON}-{MAX_REASON} characters", "reason")
    return Verdict(True, "Allowed", "allowed")
