"""Pure functions that return Kubernetes manifests as plain dicts.

Every object made for a grant is named by the request uid (never reused) and carries the grant's
nonce, which only the ledger knows: an object with our name but without our nonce is not ours.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from .. import api

RBAC = "rbac.authorization.k8s.io"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _meta(name: str, namespace: str, entry: dict[str, Any]) -> dict[str, Any]:
    req = entry["request"]
    return {
        "name": name,
        "namespace": namespace,
        "labels": api.managed_labels(req["name"], req["namespace"]),
        "annotations": {
            api.EXPIRES_AT_ANNOTATION: entry["expiresAt"],
            api.REQUEST_UID_ANNOTATION: req["uid"],
            api.GRANT_NONCE_ANNOTATION: entry["nonce"],
        },
    }


def grant_rolebinding_name(request_uid: str, cluster_role: str) -> str:
    """Unique per (request uid, ClusterRole), within the 253-character name limit."""
    slug = re.sub(r"[^a-z0-9-]", "-", cluster_role.lower())[:40].strip("-") or "role"
    digest = hashlib.sha256(cluster_role.encode()).hexdigest()[:8]
    return f"breakglass-{request_uid}-{slug}-{digest}"


def planned_objects(entry: dict[str, Any], namespaces, cluster_roles, token_namespace: str) -> list[dict[str, Any]]:
    """Everything an issue will create, recorded in the ledger before the first create."""
    uid = entry["request"]["uid"]
    out = [
        {"kind": "RoleBinding", "namespace": ns, "name": grant_rolebinding_name(uid, role), "uid": ""}
        for ns in namespaces
        for role in cluster_roles
    ]
    out += [
        {"kind": "Role", "namespace": token_namespace, "name": api.reader_role_name(uid), "uid": ""},
        {"kind": "RoleBinding", "namespace": token_namespace, "name": api.reader_role_name(uid), "uid": ""},
        {"kind": "Secret", "namespace": token_namespace, "name": api.token_secret_name(uid), "uid": ""},
    ]
    return out


def build_object(
    ref: dict[str, Any], entry: dict[str, Any], *, token: str | None = None, kubeconfig: str | None = None
) -> dict[str, Any]:
    """The manifest for one planned object of `entry` (Secrets need the token)."""
    meta = _meta(ref["name"], ref["namespace"], entry)
    uid = entry["request"]["uid"]
    if ref["kind"] == "Secret":
        data = {"token": _b64(token or ""), "expiresAt": _b64(entry["expiresAt"])}
        if kubeconfig:
            data["kubeconfig"] = _b64(kubeconfig)
        meta["annotations"].update(
            {
                api.TOKEN_ID_ANNOTATION: entry["jti"],
                api.KEY_ID_ANNOTATION: entry["kid"],
                api.ISSUED_AT_ANNOTATION: entry["issuedAt"],
            }
        )
        return {"apiVersion": "v1", "kind": "Secret", "type": api.TOKEN_SECRET_TYPE, "metadata": meta, "data": data}
    if ref["kind"] == "Role":  # `get` on exactly one Secret, for exactly the requester
        return {
            "apiVersion": f"{RBAC}/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "verbs": ["get"],
                    "resourceNames": [api.token_secret_name(uid)],
                }
            ],
        }
    if ref["name"] == api.reader_role_name(uid):
        return {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": api.reader_role_name(uid)},
            "subjects": [{"apiGroup": RBAC, "kind": "User", "name": entry["requester"]}],
        }
    role = next(r for r in entry["clusterRoles"] if grant_rolebinding_name(uid, r) == ref["name"])
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "RoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": RBAC, "kind": "User", "name": entry["username"]}],
    }


def is_ours(found: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """An object found under our planned name is ours only if it carries our nonce and exactly the
    content we would have written (a tenant may copy the nonce once it sees our object)."""
    ann = (found.get("metadata") or {}).get("annotations") or {}
    if ann.get(api.GRANT_NONCE_ANNOTATION) != wanted["metadata"]["annotations"][api.GRANT_NONCE_ANNOTATION]:
        return False
    keys = {"Secret": ("type",), "Role": ("rules",), "RoleBinding": ("roleRef", "subjects")}[wanted["kind"]]
    return all(_norm(found.get(k)) == _norm(wanted.get(k)) for k in keys)


def _norm(value):
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_norm(v) for v in value]
    return value


def build_kubeconfig(*, server: str, ca_data_b64: str | None, user: str, token: str) -> str:
    import yaml

    cluster: dict[str, Any] = {"server": server}
    if ca_data_b64:
        cluster["certificate-authority-data"] = ca_data_b64
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "breakglass", "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "breakglass", "context": {"cluster": "breakglass", "user": user}}],
            "current-context": "breakglass",
        },
        sort_keys=False,
    )


def build_event(
    *, involved: dict[str, Any], type_: str, reason: str, message: str, now, component: str = api.MANAGED_BY
) -> dict[str, Any]:
    from ..domain.durations import to_rfc3339

    meta = involved["metadata"]
    stamp = to_rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace") or "default"},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", api.API_VERSION),
            "kind": involved.get("kind", api.KIND_REQUEST),
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": component},
        "reportingComponent": component,
    }
