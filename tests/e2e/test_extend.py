"""Extending an Active grant on a real control plane: a new token with a later exp in the same Secret,
the old token refused by the cluster (TokenReview webhook path), admission limits on who may extend
and approve, and maxTotal."""

from __future__ import annotations

import uuid

import jwt as pyjwt
import pytest
import yaml
from harness import secret_token, wait_for

from breakglass.domain.durations import parse_rfc3339

from .scenario import API, policy, request, token_secret, unique, wait_phase
from .tokens_helpers import unauthorized, with_token


def extension(name: str, namespace: str, request_name: str, by: str) -> dict:
    return {
        "apiVersion": API,
        "kind": "BreakGlassExtension",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"request": request_name, "by": by, "reason": "the migration needs more time"},
    }


def extension_approval(request_name: str, namespace: str, ext: str, decision: str = "Approve") -> dict:
    return {
        "apiVersion": API,
        "kind": "BreakGlassApproval",
        "metadata": {"name": f"{ext}-{uuid.uuid4().hex[:4]}", "namespace": namespace},
        "spec": {"request": request_name, "decision": decision, "extension": ext},
    }


def claims(secret: dict) -> dict:
    return pyjwt.decode(secret_token(secret), options={"verify_signature": False})


@pytest.fixture
def extend_policy(cluster):
    name = unique("ext")
    # requiredApprovals 0 for the grant itself, 1 for each extension; 30m in total at most.
    cluster.apply(
        policy(
            name,
            requiredApprovals=0,
            approvers={"users": ["alice"], "groups": ["sre-leads"]},
            extension={"allowed": True, "requiredApprovals": 1, "maxTotal": "30m"},
        )
    )
    return name


def active_grant(cluster, extend_policy, prefix: str):
    ns = cluster.new_namespace(prefix)
    cluster.apply(request("grant", ns, extend_policy, duration="10m"), user="alice", verb="create")
    wait_phase(cluster, "grant", ns, "Active")
    return ns, token_secret(cluster, "grant", ns)


def test_an_approved_extension_swaps_the_token_in_the_same_secret_and_the_old_one_dies(
    cluster, running_operator, extend_policy
):
    ns, before = active_grant(cluster, extend_policy, "extend")
    old_token, old = secret_token(before), claims(before)
    assert with_token(cluster, old_token, "get", "serviceaccounts", "-n", ns).returncode == 0

    cluster.apply(extension("more", ns, "grant", "10m"), user="alice", verb="create")
    cluster.apply(extension_approval("grant", ns, "more"), user="bob", verb="create")

    def swapped():
        secret = token_secret(cluster, "grant", ns)
        return secret if claims(secret)["jti"] != old["jti"] else None

    after = wait_for(swapped, 20, "the Secret to carry the extended token")
    new_token, new = secret_token(after), claims(after)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # the same Secret
    assert new["exp"] == old["exp"] + 600
    assert {k: v for k, v in new.items() if k not in ("jti", "exp")} == {
        k: v for k, v in old.items() if k not in ("jti", "exp")
    }
    obj = wait_for(
        lambda: (o := cluster.get("breakglassrequest", "grant", ns))["status"].get("extensions") and o,
        20,
        "status.extensions",
    )
    st = obj["status"]
    assert st["phase"] == "Active" and st["tokenId"] == new["jti"]
    assert st["extensions"][0]["state"] == "Applied" and st["extensions"][0]["approvedBy"] == ["bob"]
    assert new["exp"] == int(parse_rfc3339(st["expiresAt"]).timestamp())
    assert with_token(cluster, new_token, "get", "serviceaccounts", "-n", ns).returncode == 0
    # kube-apiserver 1.20 caches successful authentications for 10 s; after that the webhook's answer
    # for the superseded jti (not live in the ledger) is final: 401.
    wait_for(
        lambda: unauthorized(with_token(cluster, old_token, "get", "serviceaccounts", "-n", ns)),
        15,
        "the superseded token to get 401",
        interval=0.25,
    )
    assert with_token(cluster, new_token, "get", "serviceaccounts", "-n", ns).returncode == 0
    wait_for(lambda: "Extended" in [e["reason"] for e in cluster.events(ns, "grant")], 10, "the Extended Event")
    revoked = cluster.get("configmap", "breakglass-revocations", "breakglass-system")
    assert old["jti"] in yaml.safe_dump(revoked["data"])


def test_an_extension_beyond_max_total_is_refused_at_admission(cluster, running_operator, extend_policy):
    ns, _ = active_grant(cluster, extend_policy, "toolong")
    out = cluster.try_create(extension("huge", ns, "grant", "25m"), user="alice")
    assert out.returncode != 0 and "extension.maxTotal 30m" in out.stderr, out.stderr


def test_only_the_requester_extends_and_never_approves_their_own_extension(cluster, running_operator, extend_policy):
    ns, _ = active_grant(cluster, extend_policy, "selfext")
    out = cluster.try_create(extension("theirs", ns, "grant", "5m"), user="bob")
    assert out.returncode != 0 and "only its requester 'alice'" in out.stderr, out.stderr
    cluster.apply(extension("mine", ns, "grant", "5m"), user="alice", verb="create")
    # alice is an approver of this policy and still cannot approve her own extension.
    out = cluster.try_create(extension_approval("grant", ns, "mine"), user="alice")
    assert out.returncode != 0 and "cannot approve or deny its extension" in out.stderr, out.stderr
    # Nor can she pass off an extension approval as a plain approval of another extension's uid.
    forged = extension_approval("grant", ns, "mine")
    forged["spec"]["extensionUID"] = "forged"
    out = cluster.try_create(forged, user="bob")
    assert out.returncode != 0, out.stdout
