"""Admission decisions for requests and approvals. Identity comes only from the API server's userinfo.

Functions here return `Verdict`s or patches; `handlers.py` turns a failed verdict into
`kopf.AdmissionError` (whose message reaches kubectl verbatim).
"""
from __future__ import annotations

from typing import Any, Callable

from . import api
from .domain.approvals import REVIEW
from .domain.decisions import exceeds_ceiling
from .domain.policy import Policy, RequestView, Verdict, evaluate_request, first_failure, validate_policy

IMMUTABLE_REQUEST_FIELDS = ("policy", "reason", "ticket", "duration", "namespaces", "clusterRoles", "scopes",
                            "audiences", "emergency", "requester", "requesterGroups")
OK = Verdict(True, "Allowed", "allowed")
MAX_REQUEST_NAME = 50


def _identity(userinfo: dict[str, Any] | None) -> tuple[str, list[str]]:
    userinfo = userinfo or {}
    return userinfo.get("username") or "", list(userinfo.get("groups") or [])


def _stamp_identity(spec: dict[str, Any], userinfo: dict[str, Any] | None, user_field: str,
                    groups_field: str, role: str) -> tuple[Verdict, dict[str, Any]]:
    """Mutating, CREATE: who the caller is comes from the API server, never from the client."""
    user, groups = _identity(userinfo)
    if not user:
        return Verdict(False, "NoIdentity", "the API server sent no user identity", "identity"), {}
    given = spec.get(user_field)
    if given and given != user:
        return Verdict(False, "IdentityMismatch",
                       f"spec.{user_field} {given!r} differs from the authenticated user {user!r}: "
                       f"the {role} is set by the API server, leave it empty", "identity"), {}
    given_groups = spec.get(groups_field)
    if given_groups and sorted(given_groups) != sorted(groups):
        return Verdict(False, "IdentityMismatch",
                       f"spec.{groups_field} differs from the authenticated user's groups: "
                       "it is set by the API server, leave it empty", "identity"), {}
    return OK, {user_field: user, groups_field: groups}


def stamp_request_identity(spec: dict[str, Any], userinfo: dict[str, Any] | None) -> tuple[Verdict, dict[str, Any]]:
    return _stamp_identity(spec, userinfo, "requester", "requesterGroups", "requester")


def stamp_approval_identity(spec: dict[str, Any], userinfo: dict[str, Any] | None) -> tuple[Verdict, dict[str, Any]]:
    return _stamp_identity(spec, userinfo, "approver", "approverGroups", "approver")


def is_identity_probe(body: dict[str, Any], operation: str, dryrun: bool) -> bool:
    """`kubectl breakglass explain` asks who the caller is with a dry-run create; dry runs persist nothing."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    return bool(dryrun) and operation == "CREATE" and labels.get(api.IDENTITY_PROBE_LABEL) == "true"


def validate_request_create(body: dict[str, Any], userinfo: dict[str, Any] | None,
                            get_policy: Callable[[str], dict[str, Any] | None],
                            ceiling=None) -> Verdict:
    user, groups = _identity(userinfo)
    spec = body.get("spec") or {}
    # Validation runs after mutation, so requester must now equal the caller.
    if spec.get("requester") != user:
        return Verdict(False, "IdentityMismatch",
                       f"spec.requester {spec.get('requester')!r} differs from the authenticated user {user!r}",
                       "identity")
    if spec.get("revoked"):
        return Verdict(False, "RevokedOnCreate", "spec.revoked cannot be true on a new request", "revoked")
    request_name = (body.get("metadata") or {}).get("name") or ""
    if len(request_name) > MAX_REQUEST_NAME:
        return Verdict(False, "NameTooLong", f"metadata.name must be at most {MAX_REQUEST_NAME} characters "
                       "(it names the token Secret and labels)", "name")
    name = spec.get("policy") or ""
    policy_body = get_policy(name)
    if policy_body is None:
        return Verdict(False, "PolicyNotFound", f"spec.policy {name!r}: no BreakGlassPolicy of that name exists",
                       "policy")
    policy = Policy.from_resource(name, policy_body.get("spec"))
    problems = validate_policy(policy)
    if problems:
        return Verdict(False, "PolicyInvalid", f"spec.policy {name!r} is not usable: {problems[0].message}", "policy")
    view = RequestView.from_resource({**body, "spec": {**spec, "requesterGroups": groups}})
    failure = first_failure(evaluate_request(view, policy))
    if failure:
        return failure
    too_long = exceeds_ceiling(view, policy, ceiling)
    if too_long:
        return Verdict(False, "ExceedsOperatorCeiling", too_long, "duration")
    return OK


def validate_request_update(old: dict[str, Any], new: dict[str, Any]) -> Verdict:
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    for field in IMMUTABLE_REQUEST_FIELDS:
        if old_spec.get(field) != new_spec.get(field):
            return Verdict(False, "Immutable", f"spec.{field} is immutable after creation (only spec.revoked may change)",
                           "immutable")
    unknown = set(new_spec) - set(IMMUTABLE_REQUEST_FIELDS) - {"revoked"}
    if unknown - set(old_spec):
        return Verdict(False, "Immutable", f"spec.{sorted(unknown)[0]} cannot be added after creation", "immutable")
    if old_spec.get("revoked") and not new_spec.get("revoked"):
        return Verdict(False, "RevocationFinal", "spec.revoked cannot be set back to false: revocation is final",
                       "revoked")
    return OK


def validate_approval_create(body: dict[str, Any], userinfo: dict[str, Any] | None,
                             get_request: Callable[[str, str], dict[str, Any] | None],
                             get_policy: Callable[[str], dict[str, Any] | None]) -> Verdict:
    user, groups = _identity(userinfo)
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    if spec.get("approver") != user:
        return Verdict(False, "IdentityMismatch",
                       f"spec.approver {spec.get('approver')!r} differs from the authenticated user {user!r}",
                       "identity")
    namespace, request_name = meta.get("namespace") or "", spec.get("request") or ""
    req = get_request(namespace, request_name)
    if req is None:
        return Verdict(False, "RequestNotFound",
                       f"spec.request {request_name!r}: no BreakGlassRequest of that name in namespace {namespace!r}",
                       "request")
    req_spec, phase = req.get("spec") or {}, (req.get("status") or {}).get("phase") or api.PENDING
    decision = spec.get("decision")
    policy_body = get_policy(req_spec.get("policy") or "")
    policy = Policy.from_resource(req_spec.get("policy") or "", (policy_body or {}).get("spec"))
    if decision == REVIEW:
        review = (req.get("status") or {}).get("review") or {}
        if not review.get("required"):
            return Verdict(False, "NoReviewDue", f"spec.decision Review: request {request_name!r} has no emergency "
                                                 "review to close", "decision")
        if user == req_spec.get("requester"):
            return Verdict(False, "SelfReview", f"spec.decision Review: {user} requested this emergency access and "
                                                "cannot review it", "self-approval")
    else:
        if phase != api.PENDING:
            return Verdict(False, "RequestNotPending",
                           f"spec.request {request_name!r} is {phase}: approvals are only accepted while Pending",
                           "request")
    if user == req_spec.get("requester") and not policy.allow_self_approval:
        return Verdict(False, "SelfApproval",
                       f"spec.approver {user!r} is the requester of {request_name!r} and policy "
                       f"{policy.name!r} forbids self-approval", "self-approval")
    return OK


def validate_approval_update(old: dict[str, Any], new: dict[str, Any]) -> Verdict:
    if (old.get("spec") or {}) != (new.get("spec") or {}):
        return Verdict(False, "Immutable", "BreakGlassApproval spec is immutable; create a new approval instead",
                       "immutable")
    return OK
