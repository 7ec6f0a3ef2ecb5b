"""Admission decisions for requests and approvals. Identity comes only from the API server's userinfo.

Functions here return `Verdict`s or patches; `handlers.py` turns a failed verdict into
`kopf.AdmissionError` (whose message reaches kubectl verbatim).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import api
from .domain.approvals import APPROVE, DENY, REVIEW
from .domain.decisions import exceeds_ceiling, touches_protected
from .domain.policy import Policy, RequestView, Verdict, evaluate_request, first_failure, validate_policy

IMMUTABLE_REQUEST_FIELDS = (
    "policy",
    "reason",
    "ticket",
    "duration",
    "namespaces",
    "clusterRoles",
    "scopes",
    "audiences",
    "emergency",
    "requester",
    "requesterGroups",
)
OK = Verdict(True, "Allowed", "allowed")
MAX_REQUEST_NAME = 50
# Control-plane controllers that delete requests with their namespace or owner, and strip the
# garbage collector's own finalizers (orphan, foregroundDeletion). Only the control plane holds these
# identities; they are still bound by the operator-only rules and spec immutability.
CONTROL_PLANE_USERS = frozenset(
    {
        "system:serviceaccount:kube-system:namespace-controller",
        "system:serviceaccount:kube-system:generic-garbage-collector",
        "system:kube-controller-manager",
    }
)


def _identity(userinfo: dict[str, Any] | None) -> tuple[str, list[str]]:
    userinfo = userinfo or {}
    return userinfo.get("username") or "", list(userinfo.get("groups") or [])


def _stamp_identity(
    spec: dict[str, Any], userinfo: dict[str, Any] | None, user_field: str, groups_field: str, role: str
) -> tuple[Verdict, dict[str, Any]]:
    """Mutating, CREATE: who the caller is comes from the API server, never from the client."""
    user, groups = _identity(userinfo)
    if not user:
        return Verdict(False, "NoIdentity", "the API server sent no user identity", "identity"), {}
    given = spec.get(user_field)
    if given and given != user:
        return Verdict(
            False,
            "IdentityMismatch",
            f"spec.{user_field} {given!r} differs from the authenticated user {user!r}: "
            f"the {role} is set by the API server, leave it empty",
            "identity",
        ), {}
    given_groups = spec.get(groups_field)
    if given_groups and sorted(given_groups) != sorted(groups):
        return Verdict(
            False,
            "IdentityMismatch",
            f"spec.{groups_field} differs from the authenticated user's groups: "
            "it is set by the API server, leave it empty",
            "identity",
        ), {}
    return OK, {user_field: user, groups_field: groups}


def stamp_request_identity(spec: dict[str, Any], userinfo: dict[str, Any] | None) -> tuple[Verdict, dict[str, Any]]:
    return _stamp_identity(spec, userinfo, "requester", "requesterGroups", "requester")


def stamp_approval_identity(spec: dict[str, Any], userinfo: dict[str, Any] | None) -> tuple[Verdict, dict[str, Any]]:
    return _stamp_identity(spec, userinfo, "approver", "approverGroups", "approver")


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


def is_identity_probe(body: dict[str, Any], operation: str, dryrun: bool) -> bool:
    """`kubectl breakglass explain` asks who the caller is with a dry-run create; dry runs persist nothing."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    return bool(dryrun) and operation == "CREATE" and labels.get(api.IDENTITY_PROBE_LABEL) == "true"


@dataclass(frozen=True)
class RequestRules:
    """What request admission needs from the running operator, as plain values and callables."""

    get_policy: Callable[[str], dict[str, Any] | None]
    namespace_exists: Callable[[str], bool]
    admin_groups: tuple[str, ...] = ("system:masters",)
    operator_username: str | None = None  # None (not resolved): nobody is the operator, fail closed
    ceiling: dt.timedelta | None = None
    protected_namespaces: tuple[str, ...] = ()


def validate_request(
    operation: str,
    body: dict[str, Any],
    old: dict[str, Any] | None,
    userinfo: dict[str, Any] | None,
    rules: RequestRules,
) -> Verdict:
    """Validating admission for CREATE, UPDATE and DELETE of a BreakGlassRequest.

    On DELETE the API server sends no new object: `body` and `old` are both the stored object.
    """
    user, _ = _identity(userinfo)
    is_operator = bool(rules.operator_username) and user == rules.operator_username
    if operation == "CREATE":
        verdict = operator_only_metadata(None, body, is_operator)
        if verdict.ok:
            verdict = validate_request_create(
                body,
                userinfo,
                rules.get_policy,
                rules.ceiling,
                namespace_exists=rules.namespace_exists,
                protected=rules.protected_namespaces,
            )
        return verdict
    stored = old or body
    policy_name = (stored.get("spec") or {}).get("policy") or ""
    policy_body = rules.get_policy(policy_name)
    policy = Policy.from_resource(policy_name, policy_body.get("spec")) if policy_body else None
    new = None if operation == "DELETE" else body
    verdict = authorize_request_change(
        userinfo, stored, new, policy=policy, admin_groups=rules.admin_groups, is_operator=is_operator
    )
    if verdict.ok and new is not None:
        verdict = operator_only_metadata(stored, new, is_operator)
        if verdict.ok:
            verdict = validate_request_update(stored, new)
    return verdict


def validate_request_create(
    body: dict[str, Any],
    userinfo: dict[str, Any] | None,
    get_policy: Callable[[str], dict[str, Any] | None],
    ceiling=None,
    *,
    namespace_exists: Callable[[str], bool],
    protected: tuple[str, ...] = (),
) -> Verdict:
    user, groups = _identity(userinfo)
    spec = body.get("spec") or {}
    # Validation runs after mutation, so requester must now equal the caller.
    if spec.get("requester") != user:
        return Verdict(
            False,
            "IdentityMismatch",
            f"spec.requester {spec.get('requester')!r} differs from the authenticated user {user!r}",
            "identity",
        )
    if spec.get("revoked"):
        return Verdict(False, "RevokedOnCreate", "spec.revoked cannot be true on a new request", "revoked")
    request_name = (body.get("metadata") or {}).get("name") or ""
    if len(request_name) > MAX_REQUEST_NAME:
        return Verdict(
            False,
            "NameTooLong",
            f"metadata.name must be at most {MAX_REQUEST_NAME} characters (it names the token Secret and labels)",
            "name",
        )
    name = spec.get("policy") or ""
    policy_body = get_policy(name)
    if policy_body is None:
        return Verdict(
            False, "PolicyNotFound", f"spec.policy {name!r}: no BreakGlassPolicy of that name exists", "policy"
        )
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
    forbidden = touches_protected(view, protected)
    if forbidden:
        return Verdict(False, "ProtectedNamespace", forbidden, "namespaces")
    # Only after the policy allowed them: no existence oracle for namespaces outside the policy.
    return check_namespaces_exist(view.namespaces, namespace_exists)


def check_namespaces_exist(namespaces, namespace_exists: Callable[[str], bool]) -> Verdict:
    try:
        missing = [n for n in namespaces if not namespace_exists(n)]
    except Exception:  # noqa: BLE001 - fail closed, and never hand exception text to the client
        return Verdict(
            False, "NamespaceLookupFailed", "spec.namespaces could not be checked right now; try again", "namespaces"
        )
    if missing:
        return Verdict(
            False,
            "NamespaceNotFound",
            f"spec.namespaces {missing}: no such namespace; a grant can only target namespaces that exist",
            "namespaces",
        )
    return OK


_SERVER_METADATA = (
    "resourceVersion",
    "generation",
    "managedFields",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
)


def _client_view(obj: dict[str, Any], *, without_revoked: bool) -> dict[str, Any]:
    """The parts of an object a client controls (status is a subresource, never routed here)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SERVER_METADATA}
    spec = dict(obj.get("spec") or {})
    if without_revoked:
        spec.pop("revoked", None)
    return {"metadata": meta, "spec": spec}


def only_revokes(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True if `new` differs from `old` at most by spec.revoked becoming (or staying) true."""
    if _client_view(old, without_revoked=True) != _client_view(new, without_revoked=True):
        return False
    return bool((new.get("spec") or {}).get("revoked")) or _client_view(old, without_revoked=False) == _client_view(
        new, without_revoked=False
    )


def authorize_request_change(
    userinfo: dict[str, Any] | None,
    old: dict[str, Any],
    new: dict[str, Any] | None,
    *,
    policy: Policy | None,
    admin_groups,
    is_operator: bool,
) -> Verdict:
    """Who may UPDATE (`new` given) or DELETE (`new` None) a request."""
    user, groups = _identity(userinfo)
    requester = (old.get("spec") or {}).get("requester") or ""
    if is_operator or set(groups) & set(admin_groups) or (user and user == requester) or user in CONTROL_PLANE_USERS:
        return OK
    meta = old.get("metadata") or {}
    what = f"BreakGlassRequest {meta.get('namespace')}/{meta.get('name')}"
    policy_name = policy.name if policy else (old.get("spec") or {}).get("policy")
    who = (
        f"only its requester {requester!r}, members of {list(admin_groups)} and, to revoke it (spec.revoked: "
        f"true) and nothing else, approvers of policy {policy_name!r}"
    )
    if policy is not None and user and policy.is_approver(user, groups):
        if new is not None and only_revokes(old, new):
            return OK
        verb = "delete" if new is None else "change anything but spec.revoked: true in"
        return Verdict(
            False,
            "ApproverMayOnlyRevoke",
            f"{user} is an approver of policy {policy_name!r} and may only revoke, not {verb} {what}; {who} may",
            "authorization",
        )
    verb = "delete" if new is None else "change"
    return Verdict(
        False,
        "NotRequestOwner",
        f"{user or 'an unauthenticated caller'} may not {verb} {what}: {who} may",
        "authorization",
    )


def operator_only_metadata(old: dict[str, Any] | None, new: dict[str, Any], is_operator: bool) -> Verdict:
    """The revoke-on-delete finalizer and the drill label belong to the operator alone."""
    if is_operator:
        return OK
    old_meta, new_meta = (old or {}).get("metadata") or {}, new.get("metadata") or {}
    if api.FINALIZER in (old_meta.get("finalizers") or []) and api.FINALIZER not in (new_meta.get("finalizers") or []):
        return Verdict(
            False,
            "FinalizerOperatorOnly",
            f"metadata.finalizers: only the operator may remove "
            f"{api.FINALIZER} (it revokes the grant first); delete the request instead",
            "operator-only",
        )
    old_label = (old_meta.get("labels") or {}).get(api.DRILL_LABEL)
    new_label = (new_meta.get("labels") or {}).get(api.DRILL_LABEL)
    if old_label != new_label:
        return Verdict(
            False,
            "DrillLabelOperatorOnly",
            f"metadata.labels[{api.DRILL_LABEL!r}]: only the operator "
            "sets, changes or removes the drill label (BreakGlassDrill requests)",
            "operator-only",
        )
    return OK


def validate_request_update(old: dict[str, Any], new: dict[str, Any]) -> Verdict:
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    for field in IMMUTABLE_REQUEST_FIELDS:
        if old_spec.get(field) != new_spec.get(field):
            return Verdict(
                False,
                "Immutable",
                f"spec.{field} is immutable after creation (only spec.revoked may change)",
                "immutable",
            )
    unknown = set(new_spec) - set(IMMUTABLE_REQUEST_FIELDS) - {"revoked"}
    if unknown - set(old_spec):
        return Verdict(False, "Immutable", f"spec.{sorted(unknown)[0]} cannot be added after creation", "immutable")
    if old_spec.get("revoked") and not new_spec.get("revoked"):
        return Verdict(
            False, "RevocationFinal", "spec.revoked cannot be set back to false: revocation is final", "revoked"
        )
    return OK


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
