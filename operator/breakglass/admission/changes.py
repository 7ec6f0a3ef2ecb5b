"""UPDATE and DELETE of a request: who may act on it, and what may change."""

from __future__ import annotations

from typing import Any

from .. import api
from ..domain.policy import Policy, Verdict
from .common import CONTROL_PLANE_USERS, IMMUTABLE_REQUEST_FIELDS, OK, _identity

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
