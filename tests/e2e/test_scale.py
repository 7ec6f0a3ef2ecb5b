"""What scale and restarts cost, observed from outside (small numbers; `make bench --scale` has the
big ones): start-up never waits for a backlog, SIGTERM is quick, and idling lists nothing."""

from __future__ import annotations

import re
import time

import yaml
from harness import wait_for

from .scenario import policy, request, unique

PROBE = {
    "apiVersion": "breakglass.dev/v1alpha1",
    "kind": "BreakGlassApproval",
    "metadata": {"name": "readiness-probe", "namespace": "default"},
    "spec": {"request": "no-such-request-readiness", "decision": "Approve"},
}


def _self_service(cluster) -> str:
    pol = unique("scale")
    cluster.apply(policy(pol, requiredApprovals=0))
    return pol


def _issue(cluster, ns, pol, n, duration) -> list[str]:
    names = [f"g{i:03d}" for i in range(n)]
    cluster.apply([request(name, ns, pol, duration=duration) for name in names], user="alice", verb="create")
    return names


def _phases(cluster, ns) -> list[str]:
    return [(r.get("status") or {}).get("phase") for r in cluster.list("breakglassrequests", ns)]


def _admission_answers(cluster) -> bool:
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(PROBE), check=False)
    return "no BreakGlassRequest of that name" in out.stderr


def _list_calls(cluster) -> dict[str, float]:
    """kube-apiserver's own count of LIST requests per resource (all clients). Version 1.20 counts a
    GET of one custom resource as a namespace-scoped LIST, so for our kinds only cluster-wide LISTs
    (what a relist is) count; for core kinds every LIST does."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and 'verb="LIST"' in line:
            resource = re.search(r'resource="([^"]*)"', line).group(1)
            if resource.startswith("breakglass") and 'scope="cluster"' not in line:
                continue
            out[resource] = out.get(resource, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_sigterm_stops_the_operator_within_three_seconds_while_it_is_issuing(cluster, running_operator):
    ns = cluster.new_namespace("term")
    pol = _self_service(cluster)
    names = _issue(cluster, ns, pol, 30, "10m")
    wait_for(lambda: "Active" in _phases(cluster, ns), 30, "the first grant of the burst")
    started = time.monotonic()
    running_operator.stop()
    took = time.monotonic() - started
    assert took <= 3.0, f"SIGTERM to exit took {took:.1f}s"
    running_operator.start()  # nothing half-issued: every request ends Active after the restart
    wait_for(lambda: _phases(cluster, ns).count("Active") == len(names), 60, "all 30 grants Active after restart")


def test_a_restart_after_50_grants_expired_answers_admission_within_5s_and_cleans_up_within_10s(
    cluster, running_operator
):
    ns = cluster.new_namespace("backlog")
    pol = _self_service(cluster)
    names = _issue(cluster, ns, pol, 50, "15s")
    wait_for(lambda: _phases(cluster, ns).count("Active") == 50, 60, "50 Active grants")
    running_operator.stop()
    secrets = {f"breakglass-token-{r['metadata']['uid']}" for r in cluster.list("breakglassrequests", ns)}
    wait_for(lambda: time.time() > _latest_exp(cluster, ns) + 1, 30, "every grant's exp to pass while down")

    started = time.monotonic()
    running_operator.start(wait=False)
    wait_for(lambda: _admission_answers(cluster), 10, "admission to answer after the restart", interval=0.05)
    answered = time.monotonic() - started
    assert answered <= 5.0, f"admission answered {answered:.1f}s after start"

    def cleaned():
        left = {s["metadata"]["name"] for s in cluster.list("secrets", "breakglass-system")} & secrets
        return _phases(cluster, ns).count("Expired") == len(names) and not left and not cluster.list("rolebindings", ns)

    wait_for(cleaned, 20, "all 50 expired grants cleaned up (Secrets, RoleBindings, status)")
    took = time.monotonic() - started
    assert took <= 10.0, f"cleanup of 50 expired grants took {took:.1f}s after start"
    running_operator.wait_ready()


def _latest_exp(cluster, ns) -> float:
    import datetime as dt

    exps = [
        dt.datetime.fromisoformat(r["status"]["expiresAt"].replace("Z", "+00:00")).timestamp()
        for r in cluster.list("breakglassrequests", ns)
        if (r.get("status") or {}).get("expiresAt")
    ]
    return max(exps)


def test_an_idle_operator_with_live_grants_lists_nothing(cluster, running_operator):
    ns = cluster.new_namespace("idle")
    pol = _self_service(cluster)
    _issue(cluster, ns, pol, 10, "10m")
    wait_for(lambda: _phases(cluster, ns).count("Active") == 10, 30, "10 Active grants")
    running_operator.stop()  # a fresh start: its one-off lists happen now, not in the window below
    running_operator.start()
    wait_for(lambda: "breakglass_leader 1.0" in (running_operator.metrics_text() or ""), 30, "leadership")
    wait_for(lambda: _listed_since(cluster, _list_calls(cluster), 3) == {}, 30, "start-up lists to finish")
    before = _list_calls(cluster)
    listed = _listed_since(cluster, before, 30)
    assert listed == {}, f"LIST calls while idle for 30 s: {listed}"


def _listed_since(cluster, before: dict[str, float], seconds: float) -> dict[str, float]:
    """LIST calls per watched resource during the next `seconds` (an observation window)."""
    time.sleep(seconds)
    after = _list_calls(cluster)
    watched = (
        "secrets",
        "rolebindings",
        "roles",
        "configmaps",
        "breakglassrequests",
        "breakglassapprovals",
        "breakglassdrills",
    )
    return {r: after[r] - before.get(r, 0) for r in watched if after.get(r, 0) - before.get(r, 0) > 0}


def test_a_token_secret_deleted_while_running_or_while_down_revokes_its_grant(cluster, running_operator):
    ns = cluster.new_namespace("secretdel")
    pol = _self_service(cluster)
    _issue(cluster, ns, pol, 2, "10m")
    wait_for(lambda: _phases(cluster, ns).count("Active") == 2, 30, "2 Active grants")
    secret_of = {
        r["metadata"]["name"]: f"breakglass-token-{r['metadata']['uid']}"
        for r in cluster.list("breakglassrequests", ns)
    }

    def revoked(name):
        obj = cluster.get("breakglassrequest", name, ns) or {}
        status = obj.get("status") or {}
        return status.get("phase") == "Revoked" and "SecretDeleted" in str(status.get("conditions"))

    cluster.kubectl("delete", "secret", secret_of["g000"], "-n", "breakglass-system")
    wait_for(lambda: revoked("g000"), 15, "the grant whose Secret was deleted revoked (watch)")
    running_operator.stop()
    cluster.kubectl("delete", "secret", secret_of["g001"], "-n", "breakglass-system")
    running_operator.start()
    wait_for(lambda: revoked("g001"), 30, "the grant whose Secret was deleted while down revoked at restart")
