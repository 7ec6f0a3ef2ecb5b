"""Helpers for the attacker tests: ledger and audit readers, TokenReviews, forged tokens,
and a way to know the operator's housekeeping has run."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from typing import Any

import yaml
from harness import ROOT, Cluster, Operator, wait_for

from breakglass.tokens.jwt_tokens import mint
from breakglass.tokens.keys import Keyring, SigningKey

OPERATOR_NS = "breakglass-system"
TOKEN_SECRET_TYPE = "breakglass.dev/token"
PLUGIN = ROOT / ".venv" / "bin" / "kubectl-breakglass"


# ------------------------------------------------------------------ requests, approvals, Events
def create(cluster: Cluster, manifest: dict, user: str) -> dict:
    """Create as `user` and return the stored object (with its server-set uid and generated name)."""
    out = cluster.kubectl("create", "-f", "-", "-o", "json", user=user, input=yaml.safe_dump(manifest))
    return json.loads(out.stdout)


def delete_and_wait_gone(
    cluster: Cluster, user: str, name: str, namespace: str, *extra: str, timeout: float = 60
) -> None:
    cluster.kubectl("delete", "breakglassrequest", name, "-n", namespace, "--wait=false", *extra, user=user)
    wait_for(
        lambda: cluster.get("breakglassrequest", name, namespace) is None,
        timeout,
        f"request {namespace}/{name} to be gone",
    )


def patch(
    cluster: Cluster, user: str, kind: str, name: str, namespace: str, body: dict | list, kind_of_patch: str = "merge"
):
    return cluster.kubectl(
        "patch", kind, name, "-n", namespace, f"--type={kind_of_patch}", "-p", json.dumps(body), user=user, check=False
    )


def refused(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode != 0 and bool(proc.stderr.strip())


def admission_refused(proc: subprocess.CompletedProcess) -> bool:
    """Refused by the operator's admission webhook (not by RBAC)."""
    return proc.returncode != 0 and "admission webhook" in proc.stderr


def rbac_forbidden(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode != 0 and "forbidden" in proc.stderr.lower() and "admission webhook" not in proc.stderr


# ------------------------------------------------------------------ tenants
def make_namespace_admin(cluster: Cluster, user: str, namespace: str) -> None:
    """What some attackers are given: `admin` of their own namespace (bound by the real admin)."""
    cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{user}-is-admin", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }
    )
    wait_for(
        lambda: (
            cluster.kubectl(
                "auth", "can-i", "create", "rolebindings", "-n", namespace, user=user, check=False
            ).stdout.strip()
            == "yes"
        ),
        10,
        f"{user} to be admin of {namespace}",
    )


# ------------------------------------------------------------------ ledger
def ledger_cm(cluster: Cluster, request_uid: str) -> dict | None:
    return cluster.get("configmap", f"breakglass-grant-{request_uid}", OPERATOR_NS)


def ledger_entry(cluster: Cluster, request_uid: str) -> dict | None:
    cm = ledger_cm(cluster, request_uid)
    return json.loads(cm["data"]["grant.json"]) if cm else None


def ledger_entries(cluster: Cluster) -> list[dict]:
    return [
        json.loads(cm["data"]["grant.json"])
        for cm in cluster.list("configmaps", OPERATOR_NS, selector="breakglass.dev/ledger=grant")
        if "grant.json" in (cm.get("data") or {})
    ]


def ledger_entries_for(cluster: Cluster, namespace: str, name: str) -> list[dict]:
    return [
        e
        for e in ledger_entries(cluster)
        if e.get("request", {}).get("namespace") == namespace and e.get("request", {}).get("name") == name
    ]


# ------------------------------------------------------------------ grants and tokens
def token_secret(cluster: Cluster, req: dict, user: str = "admin") -> dict | None:
    ref = req["status"]["secretRef"]
    return cluster.get("secret", ref["name"], ref["namespace"], user=user)


def token_of(cluster: Cluster, req: dict, user: str = "admin") -> str:
    """The token, read as `user` (the requester reads it through the per-request reader Role)."""
    secret = wait_for(lambda: token_secret(cluster, req, user), 5, f"{user} to read the token Secret")
    return base64.b64decode(secret["data"]["token"]).decode()


def bindings_for_user(cluster: Cluster, username: str) -> list[dict]:
    """Every RoleBinding in the cluster that names `username` as a subject."""
    return [
        rb
        for rb in cluster.list("rolebindings")
        if any(s.get("kind") == "User" and s.get("name") == username for s in rb.get("subjects") or [])
    ]


def token_review(cluster: Cluster, token: str) -> dict:
    """Ask the apiserver (every authenticator it has, with its caches) who `token` is."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    out = cluster.kubectl("create", "-o", "json", "-f", "-", input=yaml.safe_dump(body))
    return json.loads(out.stdout).get("status") or {}


def authenticate(operator: Operator, client_cert, body: bytes) -> tuple[int, dict | None]:
    """POST to the operator's /authenticate as kube-apiserver does (its client certificate); no cache."""
    ctx = ssl.create_default_context(cafile=operator.tls_ca)
    ctx.load_cert_chain(client_cert.cert_file, client_cert.key_file)
    req = urllib.request.Request(
        f"{operator.issuer}/authenticate", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            code, raw = r.status, r.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    try:
        return code, json.loads(raw)
    except ValueError:
        return code, None


def review_body(token: str) -> bytes:
    return json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    ).encode()


def webhook_authenticates(operator: Operator, client_cert, token: str) -> bool:
    code, answer = authenticate(operator, client_cert, review_body(token))
    return code == 200 and bool(((answer or {}).get("status") or {}).get("authenticated"))


def signing_key(cluster: Cluster) -> SigningKey:
    """The operator's active signing key, as someone who stole the Secret would have it."""
    secret = cluster.get("secret", "breakglass-signing-keys", OPERATOR_NS)
    return Keyring.from_json(base64.b64decode(secret["data"]["keyring.json"]).decode()).active


def sign(cluster: Cluster, claims: dict[str, Any]) -> str:
    return mint(claims, signing_key(cluster))


# ------------------------------------------------------------------ audit
def audit_records(operator: Operator) -> list[dict]:
    try:
        text = operator.audit_log.read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def plugin(cluster: Cluster, user: str, *args: str) -> subprocess.CompletedProcess:
    """`kubectl breakglass` (the console script in .venv) as `user`."""
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig(user))
    env.pop("BREAKGLASS_AUDIT_HMAC_SECRET", None)
    return subprocess.run(
        [str(PLUGIN), "--kubeconfig", cluster.kubeconfig(user), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


# ------------------------------------------------------------------ housekeeping
def _metric_has_policy(operator: Operator, policy_name: str) -> bool:
    text = operator.metrics_text() or ""
    return f'breakglass_grants_active{{policy="{policy_name}"}}' in text


def housekeeping_passes(cluster: Cluster, operator: Operator, passes: int = 2, timeout: float = 90) -> None:
    """Return once `passes` full housekeeping passes (sweep first, then gauges) began after this call.

    Full passes (the ones that list every request: sweep, resync, gauges) are the operator's slow
    safety net, about every 30 s; hence the generous timeout.

    A pass lists the policies after it swept, and the active-grants gauge then shows every policy
    (0 when none is active): a policy created now shows up only after a pass that listed it. The
    second marker is created only after the first shows, so the pass that shows it began — and
    swept — after the first was seen, i.e. after everything the caller did before this call.
    """
    from .scenario import policy, unique

    for _ in range(passes):
        marker = unique("housekeeping-marker")
        cluster.apply(policy(marker, requesters={"users": ["nobody"]}))
        wait_for(
            lambda marker=marker: _metric_has_policy(operator, marker),
            timeout,
            f"a housekeeping pass listing {marker}",
            interval=0.25,
        )
        cluster.kubectl("delete", "breakglasspolicy", marker, "--wait=false", check=False)


# ------------------------------------------------------------------ usage trail (POST /audit)
def metric(operator: Operator, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in (operator.metrics_text() or "").splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def usage_of(cluster: Cluster, name: str, namespace: str) -> dict:
    return ((cluster.get("breakglassrequest", name, namespace) or {}).get("status") or {}).get("usage") or {}


def api_call(
    cluster: Cluster,
    token: str,
    method: str,
    path: str,
    body: dict | None = None,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
    timeout: float = 30,
) -> int:
    """One raw HTTPS request to kube-apiserver with a bearer token (kubectl would add discovery
    requests, and cannot set headers such as Audit-ID or Impersonate-*); returns the status code."""
    ctx = ssl.create_default_context(cafile=cluster.ca_file)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cluster.server + path, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", content_type)
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def user_token(user: str) -> str:
    """The static bearer token of an e2e user (hack/cluster.sh's token file)."""
    return f"{user}-token"


def forged_event_list(username: str, namespace: str, count: int, verb: str = "delete", code: int = 200) -> bytes:
    """An audit.k8s.io/v1 EventList shaped exactly like kube-apiserver's, naming a grant identity."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    items = [
        {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": str(uuid.uuid4()),
            "stage": "ResponseComplete",
            "requestURI": f"/api/v1/namespaces/{namespace}/configmaps/forged-{i}",
            "verb": verb,
            "user": {"username": username, "groups": ["breakglass:grant", "system:authenticated"]},
            "sourceIPs": ["127.0.0.1"],
            "userAgent": "kube-apiserver-admission",
            "objectRef": {"resource": "configmaps", "namespace": namespace, "name": f"forged-{i}", "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": code},
            "requestReceivedTimestamp": now,
            "stageTimestamp": now,
        }
        for i in range(count)
    ]
    return json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items}).encode()


def post_audit(operator: Operator, body: bytes, client_cert=None, port: int | None = None) -> str:
    """POST an EventList to the operator's /audit (TLS, optionally with a client certificate);
    returns `HTTP <code>` or the name of the error that stopped it (a TLS handshake refusal)."""
    if port is None or port == operator.https_port:
        ctx = ssl.create_default_context(cafile=operator.tls_ca)
    else:  # another of the operator's TLS listeners (its admission webhook, with its own CA)
        ctx = ssl._create_unverified_context()  # noqa: S323 — we only ask whether it serves /audit
    if client_cert is not None:
        ctx.load_cert_chain(client_cert.cert_file, client_cert.key_file)
    url = f"https://127.0.0.1:{port or operator.https_port}/audit"
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=15) as r:
            return f"HTTP {r.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ssl.SSLError) as exc:
        return type(exc).__name__ + ": " + str(exc)[:120]


def post_plain(url: str, body: bytes) -> str:
    """POST over plain HTTP (the metrics and health ports, or the HTTPS port spoken to without TLS)."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return f"HTTP {r.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except OSError as exc:
        return type(exc).__name__ + ": " + str(exc)[:120]
