"""Builders for test manifests and lifecycle waits."""

from __future__ import annotations

import uuid
from typing import Any

from harness import Cluster, wait_for

API = "breakglass.dev/v1alpha1"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def policy(name: str, **spec: Any) -> dict:
    base = {
        "requesters": {"groups": ["sre"]},
        "approvers": {"groups": ["sre-leads"]},
        "requiredApprovals": 1,
        "allowedNamespaces": ["*"],
        "allowedClusterRoles": ["view", "edit"],
        "allowedScopes": ["db:*"],
        "maxDuration": "1h",
    }
    base.update(spec)
    return {"apiVersion": API, "kind": "BreakGlassPolicy", "metadata": {"name": name}, "spec": base}


def request(name: str, namespace: str, policy_name: str, **spec: Any) -> dict:
    base = {
        "policy": policy_name,
        "reason": "database primary is down, investigating",
        "namespaces": [namespace],
        "clusterRoles": ["view"],
        "duration": "10m",
    }
    base.update(spec)
    return {
        "apiVersion": API,
        "kind": "BreakGlassRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def approval(request_name: str, namespace: str, decision: str = "Approve", **spec: Any) -> dict:
    return {
        "apiVersion": API,
        "kind": "BreakGlassApproval",
        "metadata": {"generateName": f"{request_name}-", "namespace": namespace},
        "spec": {"request": request_name, "decision": decision, **spec},
    }


def approve(cluster: Cluster, user: str, request_name: str, namespace: str, decision: str = "Approve") -> None:
    cluster.kubectl(
        "create", "-f", "-", user=user, input=__import__("yaml").safe_dump(approval(request_name, namespace, decision))
    )


def wait_phase(cluster: Cluster, name: str, namespace: str, phase: str, timeout: float = 20) -> dict:
    def reached():
        obj = cluster.get("breakglassrequest", name, namespace)
        return obj if obj and (obj.get("status") or {}).get("phase") == phase else None

    return wait_for(reached, timeout, f"request {namespace}/{name} to be {phase}")


def condition(obj: dict, type_: str) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def event_reasons(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return [e["reason"] for e in cluster.events(namespace, name)]


TOKEN_NAMESPACE = "breakglass-system"  # the operator's namespace: token Secrets live there by default


def token_secret_ref(cluster: Cluster, name: str, namespace: str) -> tuple[str, str]:
    """Where the request's token Secret is (or was): status.secretRef, else named by the request uid."""
    obj = cluster.get("breakglassrequest", name, namespace)
    ref = ((obj or {}).get("status") or {}).get("secretRef")
    if ref:
        return ref["namespace"], ref["name"]
    return TOKEN_NAMESPACE, f"breakglass-token-{obj['metadata']['uid']}"


def token_secret(cluster: Cluster, name: str, namespace: str, user: str = "admin") -> dict | None:
    ns, secret = token_secret_ref(cluster, name, namespace)
    return cluster.get("secret", secret, ns, user=user)
