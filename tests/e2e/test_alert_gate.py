"""Incident-gated access against a real Alertmanager (Debian's 0.25, installed by hack/monitoring.sh):
a request under a gated policy is issued while a matching alert fires, revoked IncidentResolved after
the grace once it resolves; with Alertmanager down nothing is auto-approved or revoked, and a human
approval still works.

The module runs its own operator (same ports, TLS and cluster as the session one, plus
--alertmanager-url), stopping the session operator meanwhile and starting it again afterwards."""

from __future__ import annotations

import re
import time

import pytest
from alertmanager import Alertmanager
from harness import Operator, wait_for

from .scenario import approve, condition, event_reasons, policy, request, token_secret, unique, wait_phase
from .security_helpers import audit_records
from .test_monitoring import monitoring_bin

POLL = "1s"  # the operator's --alertmanager-poll-interval in this module
GRACE = 3  # seconds: the policies' resolveGrace


@pytest.fixture(scope="module")
def gated(cluster, operator, e2e_dir, ports, operator_tls, apiserver_client_cert):
    """(alertmanager, operator with --alertmanager-url)."""
    bin_dir = monitoring_bin()
    if not (bin_dir / "alertmanager").is_file():
        pytest.skip(f"no alertmanager binary in {bin_dir} (hack/monitoring.sh install)")
    am = Alertmanager(e2e_dir / f"alertmanager-{unique('am')}", bin_dir)
    am.start()
    operator.stop()
    op = Operator.on_ports(
        cluster,
        operator.workdir,  # the same audit file: one writer's copy of the chain, no gap for `audit verify`
        ports,
        operator_tls,
        extra_args=[
            "--client-ca-file",
            apiserver_client_cert.ca_file,
            "--alertmanager-url",
            am.url,
            "--alertmanager-poll-interval",
            POLL,
        ],
    )
    try:
        op.start()
        yield am, op
    finally:
        op.stop()
        am.stop()
        operator.start()


def gated_policy(name: str, labels: dict, **spec) -> dict:
    auto = {"whenAlertFiring": {"matchers": labels}, "revokeOnResolve": True, "resolveGrace": f"{GRACE}s"}
    return policy(name, autoApprove=auto, **spec)


def metric(op: Operator, name: str, labels: str = "") -> float | None:
    pattern = re.compile(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", re.M)
    found = pattern.search(op.metrics_text() or "")
    return float(found.group(1)) if found else None


def queries_ok(op: Operator) -> float:
    return metric(op, "breakglass_alertmanager_queries_total", '{result="ok"}') or 0.0


def test_a_firing_alert_approves_a_gated_request_and_its_resolution_revokes_it(cluster, gated):
    am, op = gated
    ns = cluster.new_namespace("incident")
    pol, alertname = unique("gated"), unique("PostgresDown")
    labels = {"alertname": alertname, "namespace": ns}
    cluster.apply(gated_policy(pol, labels))

    # Nothing firing yet: Pending, and the condition says why.
    cluster.apply(request("db", ns, pol), user="alice", verb="create")
    wait_for(
        lambda: (
            (condition(cluster.get("breakglassrequest", "db", ns), "AlertGate") or {}).get("reason") == "AlertNotFiring"
        ),
        20,
        "AlertGate AlertNotFiring",
    )
    # An alert that matches only partly (another namespace) approves nothing: two more answers, still Pending.
    am.post({"alertname": alertname, "namespace": "elsewhere"}, ends_in=600)
    seen = queries_ok(op)
    wait_for(lambda: queries_ok(op) >= seen + 2, 20, "two more Alertmanager answers")
    assert cluster.get("breakglassrequest", "db", ns)["status"]["phase"] == "Pending"

    fired = time.monotonic()
    am.post(labels, ends_in=600)
    obj = wait_phase(cluster, "db", ns, "Active", timeout=30)
    to_active = time.monotonic() - fired
    approved = condition(obj, "Approved")
    assert approved["status"] == "True" and approved["reason"] == "AlertFiring", approved
    alert = obj["status"]["approval"]["alert"]
    assert obj["status"]["approval"]["reason"] == "AlertFiring"
    assert alert["labels"] == labels and alert["fingerprint"] and alert["startsAt"]
    assert condition(obj, "AlertGate")["status"] == "True"
    assert "approvals" not in obj["status"]  # no human approved it
    assert token_secret(cluster, "db", ns) is not None
    issued = [
        r for r in audit_records(op) if r.get("event") == "issued" and r["request"]["uid"] == obj["metadata"]["uid"]
    ]
    assert len(issued) == 1 and issued[0]["alert"]["fingerprint"] == alert["fingerprint"], issued
    assert issued[0]["approval"] == "AlertFiring"
    wait_for(lambda: "Approved" in event_reasons(cluster, ns, "db"), 10, "an Approved event")

    resolved = time.monotonic()
    am.post(labels, ends_in=0)
    obj = wait_phase(cluster, "db", ns, "Revoked", timeout=GRACE + 30)
    to_revoked = time.monotonic() - resolved
    revoked = condition(obj, "Revoked")
    assert revoked["reason"] == "IncidentResolved", revoked
    assert to_revoked >= GRACE, f"revoked {to_revoked:.2f}s after the resolve, before the {GRACE}s grace"
    assert token_secret(cluster, "db", ns) is None
    print(f"\nalert firing -> Active: {to_active:.2f}s; resolved -> Revoked: {to_revoked:.2f}s (grace {GRACE}s)")


def test_with_alertmanager_down_nothing_is_auto_approved_or_revoked_and_humans_still_approve(cluster, gated):
    am, op = gated
    ns = cluster.new_namespace("am-down")
    pol, alertname = unique("gated-down"), unique("DiskFull")
    labels = {"alertname": alertname, "namespace": ns}
    cluster.apply(gated_policy(pol, labels))
    am.post(labels, ends_in=600)
    cluster.apply(request("live", ns, pol), user="alice", verb="create")
    wait_phase(cluster, "live", ns, "Active", timeout=30)

    am.stop()
    errors = metric(op, "breakglass_alertmanager_queries_total", '{result="error"}') or 0.0
    wait_for(
        lambda: (metric(op, "breakglass_alertmanager_queries_total", '{result="error"}') or 0) >= errors + 3,
        30,
        "three failed Alertmanager queries",
    )
    assert metric(op, "breakglass_alertmanager_up") == 0
    # An error is not a resolution: the alert-approved grant stays (well past its grace).
    assert cluster.get("breakglassrequest", "live", ns)["status"]["phase"] == "Active"

    cluster.apply(request("waits", ns, pol), user="dave", verb="create")

    def unreachable():
        cond = condition(cluster.get("breakglassrequest", "waits", ns), "AlertGate") or {}
        return cond if cond.get("reason") == "AlertmanagerUnreachable" else None

    cond = wait_for(unreachable, 20, "AlertGate AlertmanagerUnreachable")
    assert cond["status"] == "False" and "a human approval still works" in cond["message"]
    assert cluster.get("breakglassrequest", "waits", ns)["status"]["phase"] == "Pending"
    approve(cluster, "bob", "waits", ns)
    obj = wait_phase(cluster, "waits", ns, "Active")
    assert condition(obj, "Approved")["reason"] == "Approved"
    assert "approval" not in obj["status"]
    assert cluster.get("breakglassrequest", "live", ns)["status"]["phase"] == "Active"
