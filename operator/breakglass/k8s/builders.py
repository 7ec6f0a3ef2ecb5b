"""Pure functions that return Kubernetes manifests as plain dicts."""
from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any

from .. import api
from ..domain.durations import to_rfc3339


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def owner_reference(request: dict[str, Any]) -> dict[str, Any]:
    meta = request["metadata"]
    return {"apiVersion": api.API_VERSION, "kind": api.KIND_REQUEST, "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": False}


def build_token_secret(*, request: dict[str, Any], token: str, jti: str, kid: str,
                       issued_at: dt.datetime, expires_at: dt.datetime,
                       kubeconfig: str | None = None) -> dict[str, Any]:
    meta = request["metadata"]
    data = {"token": _b64(token), "expiresAt": _b64(to_rfc3339(expires_at))}
    if kubeconfig:
        data["kubeconfig"] = _b64(kubeconfig)
    return {
        "apiVersion": "v1", "kind": "Secret", "type": api.TOKEN_SECRET_TYPE,
        "metadata": {
            "name": api.token_secret_name(meta["name"]), "namespace": meta["namespace"],
            "labels": api.managed_labels(meta["name"], meta["namespace"]),
            "annotations": {
                api.EXPIRES_AT_ANNOTATION: to_rfc3339(expires_at),
                api.ISSUED_AT_ANNOTATION: to_rfc3339(issued_at),
                api.TOKEN_ID_ANNOTATION: jti,
                api.KEY_ID_ANNOTATION: kid,
                api.REQUEST_UID_ANNOTATION: meta["uid"],
            },
            "ownerReferences": [owner_reference(request)],
        },
        "data": data,
    }


def build_reader_role(request: dict[str, Any], expires_at: dt.datetime) -> dict[str, Any]:
    """`get` on exactly one Secret, for exactly the requester."""
    meta = request["metadata"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": api.reader_role_name(meta["name"]), "namespace": meta["namespace"],
                     "labels": api.managed_labels(meta["name"], meta["namespace"]),
                     "annotations": {api.EXPIRES_AT_ANNOTATION: to_rfc3339(expires_at)},
                     "ownerReferences": [owner_reference(request)]},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                   "resourceNames": [api.token_secret_name(meta["name"])]}],
    }


def build_reader_rolebinding(request: dict[str, Any], expires_at: dt.datetime) -> dict[str, Any]:
    meta = request["metadata"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": api.reader_role_name(meta["name"]), "namespace": meta["namespace"],
                     "labels": api.managed_labels(meta["name"], meta["namespace"]),
                     "annotations": {api.EXPIRES_AT_ANNOTATION: to_rfc3339(expires_at)},
                     "ownerReferences": [owner_reference(request)]},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": api.reader_role_name(meta["name"])},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": request["spec"]["requester"]}],
    }


def grant_rolebinding_name(request_namespace: str, request_name: str, cluster_role: str) -> str:
    safe_role = re.sub(r"[^a-z0-9-]", "-", cluster_role.lower())
    return f"breakglass-{request_namespace}-{request_name}-{safe_role}"[:253]


def build_grant_rolebindings(request: dict[str, Any], expires_at: dt.datetime) -> list[dict[str, Any]]:
    """One RoleBinding per namespace x ClusterRole, bound to the grant's own username."""
    meta, spec = request["metadata"], request["spec"]
    username = api.grant_username(meta["namespace"], meta["name"])
    out = []
    for ns in spec.get("namespaces") or []:
        for role in spec.get("clusterRoles") or []:
            md: dict[str, Any] = {
                "name": grant_rolebinding_name(meta["namespace"], meta["name"], role), "namespace": ns,
                "labels": api.managed_labels(meta["name"], meta["namespace"]),
                "annotations": {api.EXPIRES_AT_ANNOTATION: to_rfc3339(expires_at)},
            }
            if ns == meta["namespace"]:  # ownerReferences cannot cross namespaces
                md["ownerReferences"] = [owner_reference(request)]
            out.append({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": md,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": username}],
            })
    return out


def build_kubeconfig(*, server: str, ca_data_b64: str | None, user: str, token: str) -> str:
    import yaml
    cluster: dict[str, Any] = {"server": server}
    if ca_data_b64:
        cluster["certificate-authority-data"] = ca_data_b64
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "breakglass", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "breakglass", "context": {"cluster": "breakglass", "user": user}}],
        "current-context": "breakglass",
    }, sort_keys=False)


def build_event(*, involved: dict[str, Any], type_: str, reason: str, message: str,
                now: dt.datetime, component: str = api.MANAGED_BY) -> dict[str, Any]:
    meta = involved["metadata"]
    stamp = to_rfc3339(now)
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace") or "default"},
        "involvedObject": {"apiVersion": involved.get("apiVersion", api.API_VERSION),
                           "kind": involved.get("kind", api.KIND_REQUEST), "name": meta["name"],
                           "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "reason": reason, "message": message[:1024], "type": type_,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        "source": {"component": component}, "reportingComponent": component,
    }
