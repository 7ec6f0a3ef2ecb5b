"""Metrics move, the audit chain verifies and catches tampering, drills run,
overdue reviews are flagged."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from harness import ROOT, wait_for

from .scenario import approve, condition, event_reasons, policy, request, unique, wait_phase


def scrape(op) -> dict[str, float]:
    out = {}
    for line in (op.metrics_text() or "").splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric(samples, name, **labels):
    total = 0.0
    for key, value in samples.items():
        mname, _, rest = key.partition("{")
        if mname != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(got.get(k) == str(v) for k, v in labels.items()):
            total += value
    return total


def plugin(*args):
    return subprocess.run(
        [sys.executable, "-m", "breakglass.plugin.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "operator")),
        timeout=60,
    )


def test_metrics_follow_a_lifecycle_and_gauges_survive_a_restart(cluster, running_operator):
    op = running_operator
    ns = cluster.new_namespace("metrics")
    pol = unique("metrics")
    cluster.apply(policy(pol))
    before = scrape(op)
    cluster.apply(request("counted", ns, pol), user="alice", verb="create")
    wait_phase(cluster, "counted", ns, "Pending")
    approve(cluster, "bob", "counted", ns)
    wait_phase(cluster, "counted", ns, "Active")
    bad = cluster.try_create(request("rejected", ns, pol, duration="5h"), user="alice")
    assert bad.returncode != 0
    wait_for(lambda: metric(scrape(op), "breakglass_grants_active", policy=pol) == 1, 15, "grants_active = 1")
    mid = scrape(op)
    assert metric(mid, "breakglass_requests_total", policy=pol, outcome="issued") == 1
    assert (
        metric(mid, "breakglass_approvals_total", decision="Approve")
        >= metric(before, "breakglass_approvals_total", decision="Approve") + 1
    )
    assert (
        metric(mid, "breakglass_time_to_issue_seconds_count")
        >= metric(before, "breakglass_time_to_issue_seconds_count") + 1
    )
    assert (
        metric(mid, "breakglass_time_to_approval_seconds_count")
        >= metric(before, "breakglass_time_to_approval_seconds_count") + 1
    )
    assert (
        metric(mid, "breakglass_admission_rejections_total", kind="BreakGlassRequest")
        >= metric(before, "breakglass_admission_rejections_total", kind="BreakGlassRequest") + 1
    )
    assert metric(mid, "breakglass_signing_key_age_seconds") > 0
    assert not any("alice" in k or "counted" in k for k in mid), "no user or request names as labels"

    op.stop()
    op.start()
    wait_for(
        lambda: metric(scrape(op), "breakglass_grants_active", policy=pol) == 1,
        15,
        "grants_active rebuilt from the cluster after a restart",
    )
    cluster.kubectl("patch", "bgr", "counted", "-n", ns, "--type=merge", "-p", '{"spec":{"revoked":true}}')
    wait_phase(cluster, "counted", ns, "Revoked")
    wait_for(lambda: metric(scrape(op), "breakglass_grants_active", policy=pol) == 0, 15, "grants_active = 0")
    after = scrape(op)
    assert metric(after, "breakglass_revocations_total", reason="Revoked") >= 1
    assert metric(after, "breakglass_requests_total", policy=pol, outcome="revoked") == 1


def test_the_audit_log_of_a_run_verifies_and_tampering_is_found_at_the_right_record(
    cluster, running_operator, tmp_path
):
    ns = cluster.new_namespace("audit")
    pol = unique("audit")
    cluster.apply(policy(pol, requiredApprovals=0))
    cluster.apply(request("recorded", ns, pol), user="alice", verb="create")
    wait_phase(cluster, "recorded", ns, "Active")
    log_path = running_operator.audit_log
    ok = plugin("audit", "verify", str(log_path))
    assert ok.returncode == 0 and "chain intact" in ok.stdout, ok.stdout + ok.stderr
    lines = log_path.read_text().splitlines()
    assert len(lines) >= 4
    records = [json.loads(x) for x in lines]
    assert any(r["event"] == "issued" and r["request"]["name"] == "recorded" for r in records)
    assert all("token" not in r for r in records)

    edited = list(lines)
    edited[2] = (
        edited[2].replace('"drill":false', '"drill":true', 1)
        if '"drill":false' in edited[2]
        else edited[2][:-2] + ("x" if edited[2][-2] != "x" else "y") + edited[2][-1]
    )
    deleted = lines[:1] + lines[2:]
    swapped = lines[:1] + [lines[2], lines[1]] + lines[3:]
    for name, mutated, line in (("edit", edited, 3), ("delete", deleted, 2), ("swap", swapped, 2)):
        path = tmp_path / f"{name}.log"
        path.write_text("\n".join(mutated) + "\n")
        out = plugin("audit", "verify", str(path))
        assert out.returncode == 1 and f"BROKEN at line {line}" in out.stdout, (name, out.stdout)


def test_a_drill_runs_on_schedule_and_a_deliberate_break_fails_at_the_precise_step(cluster, running_operator):
    ns = cluster.new_namespace("drill")
    pol = unique("drill")
    cluster.apply(policy(pol, requesters={"users": ["admin"], "groups": ["sre"]}, requiredApprovals=0))
    drill = {
        "apiVersion": "breakglass.dev/v1alpha1",
        "kind": "BreakGlassDrill",
        "metadata": {"name": "weekly", "namespace": ns},
        "spec": {
            "schedule": "10s",
            "policy": pol,
            "namespaces": [ns],
            "clusterRoles": ["view"],
            "duration": "2m",
            "verifyWithCluster": True,
        },
    }
    cluster.apply(drill)
    get = lambda: cluster.get("breakglassdrill", "weekly", ns)  # noqa: E731
    first = wait_for(
        lambda: (get().get("status") or {}).get("lastResult") == "Succeeded" and get(),
        60,
        "the first drill run to succeed",
    )
    first_run = first["status"]["lastRun"]
    assert [s["name"] for s in first["status"]["steps"]] == [
        "file",
        "issue",
        "read-secret",
        "verify-jwks",
        "token-review",
        "access-review",
        "revoke",
        "cleanup",
    ]
    second = wait_for(
        lambda: (
            (get()["status"].get("lastRun") != first_run and get()["status"].get("lastResult") == "Succeeded") and get()
        ),
        60,
        "a second successful run",
    )
    assert second["status"]["lastSuccess"] >= first_run
    assert "DrillSucceeded" in event_reasons(cluster, ns, "weekly")
    samples = scrape(running_operator)
    assert metric(samples, "breakglass_drill_runs_total", drill=f"{ns}/weekly", result="success") >= 2
    assert metric(samples, "breakglass_drill_last_success_timestamp_seconds", drill=f"{ns}/weekly") > 0
    assert metric(samples, "breakglass_grants_active", policy=pol) == 0  # drills are not real grants

    # Deliberate break: strip every public key from the published JWKS.
    cm = cluster.get("configmap", "breakglass-jwks", "breakglass-system")
    original = cm["data"]["jwks.json"]
    cluster.kubectl(
        "patch",
        "configmap",
        "breakglass-jwks",
        "-n",
        "breakglass-system",
        "--type=merge",
        "-p",
        json.dumps({"data": {"jwks.json": json.dumps({"keys": []})}}),
    )
    try:
        broken = wait_for(lambda: get()["status"].get("lastResult") == "Failed" and get(), 60, "a failed run")
        assert broken["status"]["failureReason"].startswith("step verify-jwks failed")
        assert "UnknownKid" in broken["status"]["failureReason"]
        assert "DrillFailed" in event_reasons(cluster, ns, "weekly")
        assert (
            metric(scrape(running_operator), "breakglass_drill_runs_total", drill=f"{ns}/weekly", result="failure") >= 1
        )
    finally:
        cluster.kubectl(
            "patch",
            "configmap",
            "breakglass-jwks",
            "-n",
            "breakglass-system",
            "--type=merge",
            "-p",
            json.dumps({"data": {"jwks.json": original}}),
        )
        cluster.kubectl("delete", "breakglassdrill", "weekly", "-n", ns)
    leftovers = [r for r in cluster.list("breakglassrequests", ns)]
    assert all(r["status"]["phase"] in ("Revoked", "Expired") for r in leftovers if r.get("status"))


def test_an_overdue_emergency_review_raises_an_event_and_the_metric(cluster, running_operator):
    ns = cluster.new_namespace("overdue")
    pol = unique("overdue")
    cluster.apply(policy(pol, emergency={"allowed": True, "reviewWithin": "3s"}))
    cluster.apply(request("unreviewed", ns, pol, emergency=True), user="alice", verb="create")
    wait_phase(cluster, "unreviewed", ns, "Active")
    wait_for(lambda: "ReviewOverdue" in event_reasons(cluster, ns, "unreviewed"), 15, "a ReviewOverdue event")
    obj = cluster.get("breakglassrequest", "unreviewed", ns)
    assert condition(obj, "ReviewOverdue")["status"] == "True"
    wait_for(
        lambda: metric(scrape(running_operator), "breakglass_reviews_overdue") >= 1,
        15,
        "breakglass_reviews_overdue >= 1",
    )
    approve(cluster, "carol", "unreviewed", ns, decision="Review")
    wait_for(
        lambda: condition(cluster.get("breakglassrequest", "unreviewed", ns), "ReviewOverdue")["status"] == "False",
        10,
        "the overdue condition to clear once reviewed",
    )
