"""CREATE of a request and the dispatch of its UPDATE/DELETE checks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import api
from ..domain.checks import evaluate_request, first_failure
from ..domain.decisions import exceeds_ceiling, touches_protected
from ..domain.durations import utcnow
from ..domain.policy import Policy, RequestView, Verdict, validate_policy
from .changes import authorize_request_change, operator_only_metadata, validate_request_update
from .common import MAX_REQUEST_NAME, OK, _identity


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
    clock: Callable[[], dt.datetime] = utcnow  # spec.startAt is judged against this moment


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
                now=rules.clock(),
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
    now: dt.datetime | None = None,
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
    # spec.startAt is judged against now: not in the past, within the policy's maxScheduleAhead.
    failure = first_failure(evaluate_request(view, policy, now or utcnow()))
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
