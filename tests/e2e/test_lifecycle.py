"""The request lifecycle against the real control plane."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request

import jwt as pyjwt
from harness import secret_token, wait_for

from .scenario import (
    approval,
    approve,
    condition,
    event_reasons,
    policy,
    request,
    token_secret,
    token_secret_ref,
    unique,
    wait_phase,
)


def _jwks(operator):
    ctx = ssl.create_default_context(cafile=operator.tls_ca)
    with urllib.request.urlopen(f"{operator.issuer}/openid/v1/jwks", context=ctx, timeout=5) as r:
        return json.load(r)


def _revocations(cluster):
    cm = cluster.get("configmap", "breakglass-revocations", "breakglass-system")
    return json.loads((cm or {}).get("data", {}).get("revocations.json", "[]"))


def test_an_approved_request_gets_a_verifiable_token_secret_only_the_requester_can_read(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("one-approval")
    cluster.apply(policy(pol, allowedScopes=["db:*"]))
    cluster.apply(request("outage", ns, pol, scopes=["db:read"], ticket="INC-7"), user="alice", verb="create")
    wait_phase(cluster, "outage", ns, "Pending")
    approved_at = time.monotonic()
    approve(cluster, "bob", "outage", ns)
    secret = wait_for(lambda: token_secret(cluster, "outage", ns), 2, "the token Secret within 2 s", interval=0.05)
    assert time.monotonic() - approved_at < 2.5
    obj = wait_phase(cluster, "outage", ns, "Active")
    st = obj["status"]
    assert st["secretRef"] == {"namespace": "breakglass-system", "name": f"breakglass-token-{obj['metadata']['uid']}"}
    assert st["username"] == f"breakglass:{ns}:outage:{obj['metadata']['uid']}"
    assert st["tokenId"] and st["expiresAt"] and st["keyId"]
    assert condition(obj, "Issued")["status"] == "True" and condition(obj, "Approved")["status"] == "True"
    assert [a["approver"] for a in st["approvals"]] == ["bob"]

    assert secret["type"] == "breakglass.dev/token"
    assert secret["metadata"]["labels"]["breakglass.dev/request"] == "outage"
    assert secret["metadata"]["annotations"]["breakglass.dev/expires-at"] == st["expiresAt"]
    assert secret["metadata"]["annotations"]["breakglass.dev/request-uid"] == obj["metadata"]["uid"]

    token = secret_token(secret)
    header = pyjwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == st["keyId"]
    key = next(k for k in _jwks(running_operator)["keys"] if k["kid"] == header["kid"])
    claims = pyjwt.decode(
        token, pyjwt.PyJWK(key).key, algorithms=["ES256"], audience="breakglass", issuer=running_operator.issuer
    )
    assert claims["sub"] == "alice" and claims["jti"] == st["tokenId"]
    assert claims["exp"] - claims["iat"] == 600 and claims["nbf"] == claims["iat"]
    assert claims["scope"] == f"db:read k8s:{ns}:view"
    assert claims["breakglass"]["request"] == f"{ns}/outage" and claims["breakglass"]["approvers"] == ["bob"]
    assert claims["breakglass"]["uid"] == obj["metadata"]["uid"] and claims["breakglass"]["ticket"] == "INC-7"

    wait_for(
        lambda: {"Requested", "Approved", "Issued"} <= set(event_reasons(cluster, ns, "outage")),
        5,
        "Requested, Approved and Issued events",
    )
    assert all(token not in e["message"] for e in cluster.events(ns, "outage"))
    assert token not in running_operator.log_path.read_text()
    assert token not in running_operator.audit_log.read_text()

    assert token_secret(cluster, "outage", ns, user="alice") is not None
    denied = cluster.kubectl(
        "get", "secret", st["secretRef"]["name"], "-n", "breakglass-system", user="dave", check=False
    )
    assert denied.returncode != 0 and "forbidden" in denied.stderr


def test_self_approval_forged_approvers_and_outsiders_are_rejected(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("no-self")
    cluster.apply(policy(pol, approvers={"groups": ["sre-leads"], "users": ["alice"]}))
    cluster.apply(request("mine", ns, pol), user="alice", verb="create")
    wait_phase(cluster, "mine", ns, "Pending")

    own = cluster.try_create(approval("mine", ns), user="alice")
    assert own.returncode != 0 and "forbids self-approval" in own.stderr

    forged = cluster.try_create(approval("mine", ns, approver="bob"), user="carol")
    assert forged.returncode != 0 and "spec.approver 'bob' differs from the authenticated user 'carol'" in forged.stderr

    outsider = cluster.try_create(approval("mine", ns), user="mallory")
    assert outsider.returncode != 0 and "'mallory' is not an approver of policy" in outsider.stderr
    assert cluster.get("breakglassrequest", "mine", ns)["status"]["phase"] == "Pending"
    assert token_secret(cluster, "mine", ns) is None


def test_two_required_approvals_need_two_people_and_a_deny_wins(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("two")
    cluster.apply(policy(pol, requiredApprovals=2))
    cluster.apply(request("needs-two", ns, pol), user="alice", verb="create")
    wait_phase(cluster, "needs-two", ns, "Pending")
    approve(cluster, "bob", "needs-two", ns)
    wait_for(
        lambda: len(cluster.get("breakglassrequest", "needs-two", ns)["status"].get("approvals", [])) == 1,
        5,
        "one approval recorded",
    )
    assert cluster.get("breakglassrequest", "needs-two", ns)["status"]["phase"] == "Pending"
    assert "1/2" in condition(cluster.get("breakglassrequest", "needs-two", ns), "Approved")["message"]
    approve(cluster, "carol", "needs-two", ns)
    wait_phase(cluster, "needs-two", ns, "Active")

    cluster.apply(request("denied", ns, pol), user="dave", verb="create")
    wait_phase(cluster, "denied", ns, "Pending")
    approve(cluster, "bob", "denied", ns, decision="Deny")
    obj = wait_phase(cluster, "denied", ns, "Denied")
    assert condition(obj, "Approved")["reason"] == "DeniedByApprover"
    assert token_secret(cluster, "denied", ns) is None
    wait_for(lambda: "Denied" in event_reasons(cluster, ns, "denied"), 5, "a Denied event")


def test_a_short_grant_expires_on_time_and_its_secret_is_deleted(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("short")
    cluster.apply(policy(pol, requiredApprovals=0))
    cluster.apply(request("brief", ns, pol, duration="10s"), user="alice", verb="create")
    obj = wait_phase(cluster, "brief", ns, "Active")
    exp = pyjwt.decode(secret_token(token_secret(cluster, "brief", ns)), options={"verify_signature": False})["exp"]
    wait_for(lambda: token_secret(cluster, "brief", ns) is None, 15, "the Secret to be deleted", interval=0.05)
    lag = time.time() - exp
    assert lag < 1.0, f"Secret deleted {lag:.2f}s after exp"
    obj = wait_phase(cluster, "brief", ns, "Expired", timeout=5)
    assert condition(obj, "Expired")["status"] == "True" and "secretRef" not in obj["status"]
    wait_for(lambda: "Expired" in event_reasons(cluster, ns, "brief"), 5, "an Expired event")
    assert cluster.list("rolebindings", ns, selector="breakglass.dev/request=brief") == []


def test_a_grant_that_expires_while_the_operator_is_down_is_cleaned_up_at_start(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("downtime")
    cluster.apply(policy(pol, requiredApprovals=0))
    cluster.apply(request("missed", ns, pol, duration="5s"), user="alice", verb="create")
    wait_phase(cluster, "missed", ns, "Active")
    running_operator.stop()
    exp = pyjwt.decode(secret_token(token_secret(cluster, "missed", ns)), options={"verify_signature": False})["exp"]
    wait_for(lambda: time.time() > exp + 1, 15, "the expiry moment to pass")
    assert token_secret(cluster, "missed", ns) is not None  # nobody cleaned up while down
    started = time.monotonic()
    running_operator.start(wait=False)
    wait_for(lambda: token_secret(cluster, "missed", ns) is None, 5, "the start-up sweep", interval=0.05)
    assert time.monotonic() - started < 5
    wait_phase(cluster, "missed", ns, "Expired")
    running_operator.wait_ready()


def test_revoking_deletes_the_secret_at_once_and_lists_the_jti(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("revoke")
    cluster.apply(policy(pol, requiredApprovals=0))
    cluster.apply(request("oops", ns, pol), user="alice", verb="create")
    obj = wait_phase(cluster, "oops", ns, "Active")
    jti = obj["status"]["tokenId"]
    started = time.monotonic()
    cluster.kubectl(
        "patch", "breakglassrequest", "oops", "-n", ns, "--type=merge", "-p", '{"spec":{"revoked":true}}', user="alice"
    )
    wait_for(lambda: token_secret(cluster, "oops", ns) is None, 1.5, "the Secret to go", interval=0.05)
    assert time.monotonic() - started < 1.5
    obj = wait_phase(cluster, "oops", ns, "Revoked")
    assert condition(obj, "Revoked")["status"] == "True"
    wait_for(lambda: jti in {e["jti"] for e in _revocations(cluster)}, 5, "the jti on the revocation list")
    unrevoke = cluster.kubectl(
        "patch",
        "breakglassrequest",
        "oops",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec":{"revoked":false}}',
        user="alice",
        check=False,
    )
    assert unrevoke.returncode != 0 and "revocation is final" in unrevoke.stderr


def test_deleting_an_active_request_revokes_its_token(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("delete")
    cluster.apply(policy(pol, requiredApprovals=0))
    cluster.apply(request("gone", ns, pol), user="alice", verb="create")
    jti = wait_phase(cluster, "gone", ns, "Active")["status"]["tokenId"]
    ref_ns, ref_name = token_secret_ref(cluster, "gone", ns)
    cluster.kubectl("delete", "breakglassrequest", "gone", "-n", ns, "--wait=false")
    wait_for(lambda: cluster.get("breakglassrequest", "gone", ns) is None, 10, "the request to be deleted")
    assert cluster.get("secret", ref_name, ref_ns) is None
    assert jti in {e["jti"] for e in _revocations(cluster)}


def test_an_emergency_request_is_issued_at_once_and_a_review_closes_it(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("emergency")
    cluster.apply(policy(pol, emergency={"allowed": True, "reviewWithin": "1h"}))
    cluster.apply(request("fire", ns, pol, emergency=True), user="alice", verb="create")
    obj = wait_phase(cluster, "fire", ns, "Active")
    review = obj["status"]["review"]
    assert review["required"] is True and review["dueAt"] > obj["status"]["issuedAt"]
    assert condition(obj, "Approved")["reason"] == "EmergencyAccess"
    wait_for(lambda: "ReviewRequired" in event_reasons(cluster, ns, "fire"), 5, "a ReviewRequired event")
    self_review = cluster.try_create(approval("fire", ns, "Review"), user="alice")
    assert self_review.returncode != 0
    approve(cluster, "carol", "fire", ns, decision="Review")
    reviewed = wait_for(
        lambda: cluster.get("breakglassrequest", "fire", ns)["status"]["review"].get("reviewer") == "carol",
        5,
        "the review to close",
    )
    assert reviewed
    assert cluster.get("breakglassrequest", "fire", ns)["status"]["review"]["reviewedAt"]
    wait_for(lambda: "Reviewed" in event_reasons(cluster, ns, "fire"), 5, "a Reviewed event")


def test_pending_past_the_approval_timeout_is_denied(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("timeout")
    cluster.apply(policy(pol, approvalTimeout="3s"))
    cluster.apply(request("slow", ns, pol), user="alice", verb="create")
    obj = wait_phase(cluster, "slow", ns, "Denied", timeout=10)
    assert condition(obj, "Approved")["reason"] == "ApprovalTimeout"
    late = cluster.try_create(approval("slow", ns), user="bob")
    assert late.returncode != 0 and "only accepted while Pending" in late.stderr
