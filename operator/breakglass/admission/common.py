"""Shared by request and approval admission: identity from the API server, never the client."""

from __future__ import annotations

from typing import Any

from ..domain.policy import Verdict

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
    "startAt",
    "limits",
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
