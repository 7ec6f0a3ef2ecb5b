"""Extensions of an active grant: filed only by the grant's requester, answered only by the policy's
approvers other than the requester, each bound to the live request (and extension) uid."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from .. import api
from ..domain.approvals import APPROVE, DENY
from ..domain.durations import parse_rfc3339
from ..domain.extensions import ExtensionView, check_extension, check_reason
from ..domain.policy import Policy, Verdict
from .common import OK, _identity

Getter = Callable[[str, str], dict[str, Any] | None]


def _owner(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": kind, "name": name, "uid": uid, "blockOwnerDeletion": False}


def _live_request(namespace: str, name: str, get_request: Getter) -> tuple[Verdict, dict[str, Any]]:
    req = get_request(namespace, name) if name else None
    if req is None:
        return Verdict(
            False,
            "RequestNotFound",
            f"spec.request {name!r}: no BreakGlassRequest of that name in namespace {namespace!r}",
            "request",
        ), {}
    return OK, req


def stamp_extension(body: dict[str, Any], get_request: Getter) -> tuple[Verdict, dict[str, Any], list]:
    """Mutating, CREATE: bind the extension to the live request instance (uid) and make it its owner.
    (The requester identity is stamped by `stamp_request_identity`, as for requests.)"""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    verdict, req = _live_request(meta.get("namespace") or "", spec.get("request") or "", get_request)
    if not verdict.ok:
        return verdict, {}, []
    uid = req["metadata"]["uid"]
    if spec.get("requestUID") and spec["requestUID"] != uid:
        return (
            Verdict(False, "RequestUIDMismatch", "spec.requestUID is set by admission, leave it empty", "request"),
            {},
            [],
        )
    others = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != uid]
    return OK, {"requestUID": uid}, others + [_owner(api.KIND_REQUEST, spec["request"], uid)]


def validate_extension_create(
    body: dict[str, Any],
    userinfo: dict[str, Any] | None,
    get_request: Getter,
    get_policy: Callable[[str], dict[str, Any] | None],
    ceiling: dt.timedelta | None,
    now: dt.datetime,
) -> Verdict:
    user, _ = _identity(userinfo)
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    if not user or spec.get("requester") != user:
        return Verdict(
            False,
            "IdentityMismatch",
            f"spec.requester {spec.get('requester')!r} differs from the authenticated user {user!r}",
            "identity",
        )
    verdict = check_reason(spec.get("reason") or "")
    if not verdict.ok:
        return verdict
    namespace = meta.get("namespace") or ""
    verdict, req = _live_request(namespace, spec.get("request") or "", get_request)
    if not verdict.ok:
        return verdict
    req_spec, status = req.get("spec") or {}, req.get("status") or {}
    if status.get("phase") != api.ACTIVE or req_spec.get("revoked") or not status.get("expiresAt"):
        return Verdict(
            False,
            "RequestNotActive",
            f"spec.request {spec['request']!r} is {status.get('phase') or api.PENDING}: only an Active grant "
            "can be extended",
            "request",
        )
    policy_body = get_policy(req_spec.get("policy") or "")
    if policy_body is None:
        return Verdict(False, "PolicyNotFound", f"policy {req_spec.get('policy')!r} does not exist", "policy")
    policy = Policy.from_resource(req_spec["policy"], policy_body.get("spec"))
    ext = ExtensionView.from_resource(dict(body, metadata=dict(meta, uid=meta.get("uid") or "")))
    issued = status.get("issuedAt") or status["expiresAt"]
    return check_extension(
        ext,
        policy=policy,
        requester=req_spec.get("requester") or "",
        request_uid=req["metadata"]["uid"],
        issued_at=parse_rfc3339(issued),
        expires_at=parse_rfc3339(status["expiresAt"]),
        ceiling=ceiling,
        now=now,
    )


def validate_extension_update(old: dict[str, Any], new: dict[str, Any]) -> Verdict:
    if (old.get("spec") or {}) != (new.get("spec") or {}):
        return Verdict(
            False, "Immutable", "BreakGlassExtension spec is immutable; file a new extension instead", "immutable"
        )
    return OK


def stamp_extension_approval(
    body: dict[str, Any], get_request: Getter, get_extension: Getter
) -> tuple[Verdict, dict[str, Any], list]:
    """Mutating, CREATE of an approval naming `spec.extension`: stamp the live request's and the live
    extension's uids (never taken from the client)."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    namespace = meta.get("namespace") or ""
    if spec.get("decision") not in (APPROVE, DENY):
        return Verdict(False, "UnknownDecision", "an extension is answered with Approve or Deny", "decision"), {}, []
    verdict, req = _live_request(namespace, spec.get("request") or "", get_request)
    if not verdict.ok:
        return verdict, {}, []
    ext = get_extension(namespace, spec["extension"])
    if ext is None or (ext.get("spec") or {}).get("request") != spec["request"]:
        return (
            Verdict(
                False,
                "ExtensionNotFound",
                f"spec.extension {spec['extension']!r}: no BreakGlassExtension of that name for request "
                f"{spec['request']!r} in namespace {namespace!r}",
                "request",
            ),
            {},
            [],
        )
    uid, ext_uid = req["metadata"]["uid"], ext["metadata"]["uid"]
    for field, given, real in (
        ("requestUID", spec.get("requestUID"), uid),
        ("extensionUID", spec.get("extensionUID"), ext_uid),
    ):
        if given and given != real:
            return Verdict(False, "UIDMismatch", f"spec.{field} is set by admission, leave it empty", "request"), {}, []
    others = [r for r in meta.get("ownerReferences") or [] if r.get("uid") not in (uid, ext_uid)]
    owners = others + [
        _owner(api.KIND_REQUEST, spec["request"], uid),
        _owner(api.KIND_EXTENSION, spec["extension"], ext_uid),
    ]
    return OK, {"requestUID": uid, "extensionUID": ext_uid}, owners


def validate_extension_approval(
    body: dict[str, Any],
    userinfo: dict[str, Any] | None,
    get_request: Getter,
    get_extension: Getter,
    get_policy: Callable[[str], dict[str, Any] | None],
) -> Verdict:
    user, groups = _identity(userinfo)
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    namespace = meta.get("namespace") or ""
    if not user or spec.get("approver") != user:
        return Verdict(
            False,
            "IdentityMismatch",
            f"spec.approver {spec.get('approver')!r} differs from the authenticated user {user!r}",
            "identity",
        )
    verdict, req = _live_request(namespace, spec.get("request") or "", get_request)
    if not verdict.ok:
        return verdict
    ext = get_extension(namespace, spec["extension"]) if spec.get("extension") else None
    if (
        ext is None
        or spec.get("requestUID") != req["metadata"]["uid"]
        or spec.get("extensionUID") != ext["metadata"]["uid"]
        or (ext.get("spec") or {}).get("requestUID") != req["metadata"]["uid"]
    ):
        return Verdict(
            False,
            "UIDMismatch",
            f"spec.extension {spec.get('extension')!r} is not a live extension of the live request "
            f"{namespace}/{spec.get('request')}; approve the current one",
            "request",
        )
    req_spec, phase = req.get("spec") or {}, (req.get("status") or {}).get("phase") or api.PENDING
    if phase != api.ACTIVE:
        return Verdict(
            False,
            "RequestNotActive",
            f"spec.request {spec['request']!r} is {phase}: extensions are answered only while the grant is Active",
            "request",
        )
    if user in (req_spec.get("requester"), (ext.get("spec") or {}).get("requester")):
        return Verdict(
            False,
            "SelfApproval",
            f"spec.approver {user!r} is the requester of {spec['request']!r} and cannot approve or deny its extension",
            "self-approval",
        )
    policy_body = get_policy(req_spec.get("policy") or "")
    policy = Policy.from_resource(req_spec.get("policy") or "", (policy_body or {}).get("spec"))
    if policy_body is None or not policy.is_approver(user, groups):
        return Verdict(
            False, "NotAnApprover", f"spec.approver {user!r} is not an approver of policy {policy.name!r}", "approver"
        )
    return OK
