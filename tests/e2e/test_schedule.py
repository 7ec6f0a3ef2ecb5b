"""Scheduled start (spec.startAt) against the real control plane: approved early, issued at startAt."""

from __future__ import annotations

import datetime as dt
import json
import math
import time

import jwt as pyjwt
from harness import secret_token, wait_for

from .scenario import approve, condition, event_reasons, policy, request, token_secret, unique, wait_phase


def rfc3339(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def start_in(seconds: float) -> int:
    return math.ceil(time.time() + seconds)


def test_an_approved_scheduled_request_waits_then_its_token_appears_at_start_at(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("scheduled")
    cluster.apply(policy(pol))
    start = start_in(8)
    cluster.apply(request("window", ns, pol, startAt=rfc3339(start)), user="alice", verb="create")
    wait_phase(cluster, "window", ns, "Pending")
    approve(cluster, "bob", "window", ns)
    obj = wait_phase(cluster, "window", ns, "Scheduled", timeout=5)
    assert time.time() < start, "the request must reach Scheduled before its start for this test to mean anything"
    assert condition(obj, "Approved")["status"] == "True"
    issued = condition(obj, "Issued")
    assert (issued["status"], issued["reason"]) == ("False", "ScheduledStart") and rfc3339(start) in issued["message"]
    assert token_secret(cluster, "window", ns) is None and not obj["status"].get("tokenId")

    secret = wait_for(lambda: token_secret(cluster, "window", ns), 15, "the token Secret at startAt", interval=0.05)
    lag = time.time() - start
    print(f"start lag (startAt -> Secret visible): {lag:.3f}s")
    assert -0.05 < lag < 2.0, f"Secret appeared {lag:.2f}s after startAt"
    claims = pyjwt.decode(secret_token(secret), options={"verify_signature": False})
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (start, start, start + 600)
    obj = wait_phase(cluster, "window", ns, "Active", timeout=5)
    assert obj["status"]["expiresAt"] == rfc3339(start + 600) and obj["status"]["issuedAt"] == rfc3339(start)
    wait_for(
        lambda: {"Requested", "Approved", "Scheduled", "Issued"} <= set(event_reasons(cluster, ns, "window")),
        5,
        "Requested, Approved, Scheduled and Issued events",
    )


def test_a_scheduled_request_revoked_before_its_start_is_never_issued(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("scheduled-revoke")
    cluster.apply(policy(pol))
    start = start_in(8)
    cluster.apply(request("cancelled", ns, pol, startAt=rfc3339(start)), user="alice", verb="create")
    wait_phase(cluster, "cancelled", ns, "Pending")
    approve(cluster, "bob", "cancelled", ns)
    wait_phase(cluster, "cancelled", ns, "Scheduled", timeout=5)
    cluster.kubectl(
        "patch",
        "breakglassrequest",
        "cancelled",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec":{"revoked":true}}',
        user="alice",
    )
    obj = wait_phase(cluster, "cancelled", ns, "Revoked", timeout=5)
    assert time.time() < start
    assert condition(obj, "Revoked")["status"] == "True" and condition(obj, "Issued")["status"] == "False"
    wait_for(lambda: "Revoked" in event_reasons(cluster, ns, "cancelled"), 5, "a Revoked event")
    wait_for(lambda: time.time() > start + 2, 15, "the cancelled start to pass")
    obj = cluster.get("breakglassrequest", "cancelled", ns)
    assert obj["status"]["phase"] == "Revoked" and not obj["status"].get("tokenId")
    assert token_secret(cluster, "cancelled", ns) is None
    assert "Issued" not in event_reasons(cluster, ns, "cancelled")


def test_admission_rejects_a_start_beyond_max_schedule_ahead_in_the_past_or_malformed(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("schedule-limits")
    cluster.apply(policy(pol, maxScheduleAhead="1h"))
    for start, message in (
        (rfc3339(time.time() + 2 * 3600), f"beyond policy '{pol}' maxScheduleAhead 1h"),
        (rfc3339(time.time() - 600), "is in the past"),
        ("tomorrow morning", "spec.startAt 'tomorrow morning' is not an RFC 3339 time"),
    ):
        refused = cluster.try_create(request(unique("r"), ns, pol, startAt=start), user="alice")
        assert refused.returncode != 0 and "spec.startAt" in refused.stderr and message in refused.stderr, (
            refused.stderr
        )
    cluster.apply(request("ok", ns, pol, startAt=rfc3339(time.time() + 1800)), user="alice", verb="create")
    changed = cluster.kubectl(
        "patch",
        "breakglassrequest",
        "ok",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"startAt": rfc3339(time.time() + 600)}}),
        user="alice",
        check=False,
    )
    assert changed.returncode != 0 and "spec.startAt is immutable" in changed.stderr
