"""Approvals: bound to the live request instance (uid), filed only by the policy's approvers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import api
from ..domain.approvals import APPROVE, DENY, REVIEW
from ..domain.policy import Policy, Verdict
from .common import OK, _identity


def stamp_approval_request(
    body: dict[str, Any], get_request: Callable[[str, str], dict[str, Any] | None]
) -> tuple[Verdict, dict[str, Any], list[dict[str, Any]]]:
    """Mutating, CREATE: bind the approval to the live request instance (uid) and make it its owner.

    Returns (verdict, spec fields, metadata.ownerReferences). The uid is read from the API, never
    taken from the client; a client-given different uid is refused.
    """
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    if spec.get("decision") not in (APPROVE, DENY, REVIEW):
        return (
            Verdict(
                False,
                "UnknownDecision",
                f"spec.decision {spec.get('decision')!r} must be one of {APPROVE}, {DENY}, {REVIEW}",
                "decision",
            ),
            {},
            [],
        )
    namespace, request_name = meta.get("namespace") or "", spec.get("request") or ""
    req = get_request(namespace, request_name) if request_name else None
    if req is None:
        return (
            Verdict(
                False,
                "RequestNotFound",
                f"spec.request {request_name!r}: no BreakGlassRequest of that name in namespace {namespace!r}",
                "request",
            ),
            {},
            [],
        )
    uid = (req.get("metadata") or {}).get("uid") or ""
    given = spec.get("requestUID")
    if given and given != uid:
        return (
            Verdict(
                False,
                "RequestUIDMismatch",
                f"spec.requestUID {given!r} is not the uid of BreakGlassRequest "
                f"{namespace}/{request_name} ({uid}): it is set by admission, leave it empty",
                "request",
            ),
            {},
            [],
        )
    owner = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND_REQUEST,
        "name": request_name,
        "uid": uid,
        "blockOwnerDeletion": False,
    }
    others = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != uid]
    return OK, {"requestUID": uid}, others + [owner]


def validate_approval_create(
    body: dict[str, Any],
    userinfo: dict[str, Any] | None,
    get_request: Callable[[str, str], dict[str, Any] | None],
    get_policy: Callable[[str], dict[str, Any] | None],
) -> Verdict:
    user, groups = _identity(userinfo)
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    if spec.get("approver") != user:
        return Verdict(
            False,
            "IdentityMismatch",
            f"spec.approver {spec.get('approver')!r} differs from the authenticated user {user!r}",
            "identity",
        )
    namespace, request_name = meta.get("namespace") or "", spec.get("request") or ""
    req = get_request(namespace, request_name)
    if req is None:
        return Verdict(
            False,
            "RequestNotFound",
            f"spec.request {request_name!r}: no BreakGlassRequest of that name in namespace {namespace!r}",
            "request",
        )
    uid = (req.get("metadata") or {}).get("uid")
    if not spec.get("requestUID") or spec.get("requestUID") != uid:
        return Verdict(
            False,
            "RequestUIDMismatch",
            f"spec.requestUID {spec.get('requestUID')!r} is not the uid of "
            f"the live BreakGlassRequest {namespace}/{request_name} ({uid}); it was replaced, "
            "approve the current one",
            "request",
        )
    req_spec, phase = req.get("spec") or {}, (req.get("status") or {}).get("phase") or api.PENDING
    decision = spec.get("decision")
    policy_body = get_policy(req_spec.get("policy") or "")
    policy = Policy.from_resource(req_spec.get("policy") or "", (policy_body or {}).get("spec"))
    if decision == REVIEW:
        review = (req.get("status") or {}).get("review") or {}
        if not review.get("required"):
            return Verdict(
                False,
                "NoReviewDue",
                f"spec.decision Review: request {request_name!r} has no emergency review to close",
                "decision",
            )
        if user == req_spec.get("requester"):
            return Verdict(
                False,
                "SelfReview",
                f"spec.decision Review: {user} requested this emergency access and cannot review it",
                "self-approval",
            )
    else:
        if phase != api.PENDING:
            return Verdict(
                False,
                "RequestNotPending",
                f"spec.request {request_name!r} is {phase}: approvals are only accepted while Pending",
                "request",
            )
    if user == req_spec.get("requester") and not policy.allow_self_approval:
        return Verdict(
            False,
            "SelfApproval",
            f"spec.approver {user!r} is the requester of {request_name!r} and policy "
            f"{policy.name!r} forbids self-approval",
            "self-approval",
        )
    if policy_body is not None and not policy.is_approver(user, groups):
        # Refused here rather than ignored later: nobody can flood a request with approvals.
        return Verdict(
            False, "NotAnApprover", f"spec.approver {user!r} is not an approver of policy {policy.name!r}", "approver"
        )
    return OK


def validate_approval_update(old: dict[str, Any], new: dict[str, Any]) -> Verdict:
    if (old.get("spec") or {}) != (new.get("spec") or {}):
        return Verdict(
            False, "Immutable", "BreakGlassApproval spec is immutable; create a new approval instead", "immutable"
        )
    return OK
