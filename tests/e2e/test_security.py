"""The operator's security promises, attacked with only the chart's requester/approver rights.

Attackers are the e2e users (alice, dave: requesters in group sre; bob, carol: approvers in
sre-leads; mallory: contractors, neither). Where the attack needs it, an attacker is also `admin` of
their own namespace, bound by the real admin. `admin` (system:masters) otherwise only sets the
stage (policies, namespaces, bystander objects) and never does the attacker's part.

One invariant per section; the section header names it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
import uuid

import jwt as pyjwt
import yaml
from harness import ROOT, wait_for

from .scenario import approval, approve, policy, request, unique, wait_phase
from .security_helpers import (
    OPERATOR_NS,
    TOKEN_SECRET_TYPE,
    admission_refused,
    audit_records,
    authenticate,
    bindings_for_user,
    create,
    delete_and_wait_gone,
    housekeeping_passes,
    ledger_cm,
    ledger_entries_for,
    ledger_entry,
    make_namespace_admin,
    patch,
    plugin,
    rbac_forbidden,
    refused,
    review_body,
    sign,
    signing_key,
    token_of,
    token_review,
    token_secret,
    webhook_authenticates,
)
from .tokens_helpers import forbidden, unauthorized, with_token

FAR_FUTURE = "2099-01-01T00:00:00Z"
LONG_AGO = "2000-01-01T00:00:00Z"
MANAGED = "app.kubernetes.io/managed-by"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _works(cluster, token, ns) -> bool:
    return with_token(cluster, token, "get", "serviceaccounts", "-n", ns).returncode == 0


def _issue(cluster, ns, pol, name, user="alice", **spec) -> dict:
    create(cluster, request(name, ns, pol, **spec), user)
    return wait_phase(cluster, name, ns, "Active")


def _ignored(cluster, ns, name, uid, approval_name) -> dict:
    """Wait until the operator has tallied request instance `uid` with `approval_name` present and
    reported that approval as ignored; returns the request as it then is."""

    def seen():
        obj = cluster.get("breakglassrequest", name, ns)
        return (
            obj
            if obj
            and obj["metadata"]["uid"] == uid
            and approval_name in ((obj.get("status") or {}).get("ignoredApprovals") or [])
            else None
        )

    obj = wait_for(seen, 30, f"the operator to ignore approval {approval_name} for {ns}/{name} ({uid})")
    wait_for(
        lambda: any(
            e["reason"] == "ApprovalIgnored" and approval_name in e["message"]
            for e in cluster.events(ns, name)
            if e["involvedObject"].get("uid") == uid
        ),
        10,
        f"an ApprovalIgnored Event about {approval_name}",
    )
    return obj


def _lookalike_metadata(name, ns, request_name, request_ns, request_uid, expires_at, kid="") -> dict:
    """Everything the operator puts on its own objects, copied by a tenant."""
    return {
        "name": name,
        "namespace": ns,
        "labels": {
            MANAGED: "breakglass-operator",
            "breakglass.dev/request": request_name,
            "breakglass.dev/request-namespace": request_ns,
        },
        "annotations": {
            "breakglass.dev/expires-at": expires_at,
            "breakglass.dev/issued-at": _now(),
            "breakglass.dev/token-id": str(uuid.uuid4()),
            "breakglass.dev/key-id": kid,
            "breakglass.dev/request-uid": request_uid,
            "breakglass.dev/grant-nonce": uuid.uuid4().hex,
        },
    }


def _decoy_secret(name, ns, request_name, request_ns, request_uid, expires_at, kid="") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": TOKEN_SECRET_TYPE,
        "metadata": _lookalike_metadata(name, ns, request_name, request_ns, request_uid, expires_at, kid),
        "stringData": {"token": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.forged", "expiresAt": expires_at},
    }


def _fingerprint(cluster, kind, name, ns):
    obj = cluster.get(kind, name, ns)
    return obj and (obj["metadata"]["uid"], obj["metadata"]["resourceVersion"])


# =====================================================================================================
# 1. Issued means recorded by the operator, in a place only the operator can write.
# =====================================================================================================
def test_the_ledger_records_each_grant_before_delivery_and_no_requester_or_approver_can_write_it(
    cluster, running_operator
):
    ns = cluster.new_namespace("ledger")
    pol = unique("ledger")
    cluster.apply(policy(pol, requiredApprovals=0))
    req = _issue(cluster, ns, pol, "recorded")
    uid, st = req["metadata"]["uid"], req["status"]
    cm = ledger_cm(cluster, uid)
    assert cm is not None, f"no ledger ConfigMap breakglass-grant-{uid} in {OPERATOR_NS}"
    assert cm["metadata"]["labels"][MANAGED] == "breakglass-operator"
    assert cm["metadata"]["labels"]["breakglass.dev/ledger"] == "grant"
    entry = json.loads(cm["data"]["grant.json"])
    assert entry["request"] == {"namespace": ns, "name": "recorded", "uid": uid}
    assert entry["state"] == "Active" and entry["jti"] == st["tokenId"] and entry["kid"] == st["keyId"]
    assert entry["username"] == st["username"] == f"breakglass:{ns}:recorded:{uid}"
    secret = token_secret(cluster, req)
    assert entry["secret"] == {
        "namespace": secret["metadata"]["namespace"],
        "name": secret["metadata"]["name"],
        "uid": secret["metadata"]["uid"],
    }
    assert {(o["kind"], o["namespace"]) for o in entry["objects"]} >= {("RoleBinding", ns), ("Secret", OPERATOR_NS)}
    # Written before the token was delivered (timestamps have one-second resolution).
    assert cm["metadata"]["creationTimestamp"] <= secret["metadata"]["creationTimestamp"]
    assert len(ledger_entries_for(cluster, ns, "recorded")) == 1

    forged = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"breakglass-grant-{uuid.uuid4()}",
            "namespace": OPERATOR_NS,
            "labels": {MANAGED: "breakglass-operator", "breakglass.dev/ledger": "grant"},
        },
        "data": {"grant.json": json.dumps(dict(entry, jti=str(uuid.uuid4())))},
    }
    name = cm["metadata"]["name"]
    for user in ("alice", "dave", "bob", "carol", "mallory"):
        assert rbac_forbidden(cluster.try_create(forged, user=user)), user
        for body in (
            {"data": {"grant.json": json.dumps(dict(entry, expiresAt=FAR_FUTURE))}},
            {"metadata": {"labels": {"breakglass.dev/ledger": "none"}}},
        ):
            assert rbac_forbidden(patch(cluster, user, "configmap", name, OPERATOR_NS, body)), user
        assert rbac_forbidden(cluster.kubectl("delete", "configmap", name, "-n", OPERATOR_NS, user=user, check=False))
    assert ledger_entry(cluster, uid) == entry


def test_a_tenant_secret_dressed_as_the_token_secret_grants_nothing_and_is_never_touched(cluster, running_operator):
    ns = cluster.new_namespace("tenant")
    make_namespace_admin(cluster, "alice", ns)
    pol = unique("lookalike")
    cluster.apply(policy(pol, requiredApprovals=2))  # two approvals from sre-leads needed
    req = create(cluster, request("lookalike", ns, pol, clusterRoles=["edit"], duration="30m"), "alice")
    uid = req["metadata"]["uid"]
    wait_phase(cluster, "lookalike", ns, "Pending")
    kid = signing_key(cluster).kid
    owner = {
        "apiVersion": "breakglass.dev/v1alpha1",
        "kind": "BreakGlassRequest",
        "name": "lookalike",
        "uid": uid,
        "controller": True,
    }
    decoys = []
    for name in (f"breakglass-token-{uid}", "lookalike-token"):
        body = _decoy_secret(name, ns, "lookalike", ns, uid, FAR_FUTURE, kid)
        body["metadata"]["ownerReferences"] = [owner]
        create(cluster, body, "alice")
        decoys.append(name)
    before = {n: _fingerprint(cluster, "secret", n, ns) for n in decoys}
    username = f"breakglass:{ns}:lookalike:{uid}"

    # One of two approvals: the operator reconciles the request with the decoys in place and must
    # still see nothing issued.
    approve(cluster, "bob", "lookalike", ns)
    obj = wait_for(
        lambda: (lambda o: o if [a["approver"] for a in o["status"].get("approvals") or []] == ["bob"] else None)(
            cluster.get("breakglassrequest", "lookalike", ns)
        ),
        20,
        "bob's approval to be counted",
    )
    assert obj["status"]["phase"] == "Pending", obj["status"]
    assert "secretRef" not in obj["status"] and not obj["status"].get("tokenId")
    assert ledger_entry(cluster, uid) is None
    assert bindings_for_user(cluster, username) == []
    assert plugin(cluster, "alice", "-n", ns, "token", "lookalike").returncode != 0

    approve(cluster, "carol", "lookalike", ns)
    obj = wait_phase(cluster, "lookalike", ns, "Active")
    assert obj["status"]["secretRef"] == {"namespace": OPERATOR_NS, "name": f"breakglass-token-{uid}"}
    real = token_of(cluster, obj, user="alice")
    assert real != "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.forged"
    assert {n: _fingerprint(cluster, "secret", n, ns) for n in decoys} == before

    patch(cluster, "alice", "breakglassrequest", "lookalike", ns, {"spec": {"revoked": True}})
    wait_phase(cluster, "lookalike", ns, "Revoked")
    wait_for(lambda: token_secret(cluster, obj) is None, 10, "the real token Secret to be deleted")
    wait_for(lambda: bindings_for_user(cluster, username) == [], 10, "the grant's RoleBindings to be deleted")
    housekeeping_passes(cluster, running_operator)
    assert {n: _fingerprint(cluster, "secret", n, ns) for n in decoys} == before


def test_secrets_named_after_a_request_in_other_namespaces_outlive_that_request(cluster, running_operator):
    ns, bystander = cluster.new_namespace("named"), cluster.new_namespace("bystander")
    pol = unique("named")
    cluster.apply(policy(pol))
    name = unique("payroll")

    def opaque(n, where):
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": n, "namespace": where},
            "stringData": {"password": "hunter2"},
        }

    created = []
    try:
        for where in ("kube-system", bystander):
            cluster.apply(opaque(f"{name}-token", where), verb="create")
            created.append((f"{name}-token", where))
        req = create(cluster, request(name, ns, pol), "alice")
        uid = req["metadata"]["uid"]
        for where in ("kube-system", bystander):
            cluster.apply(opaque(f"breakglass-token-{uid}", where), verb="create")
            created.append((f"breakglass-token-{uid}", where))
        # In the request's own namespace too, but written by someone else (the real admin).
        cluster.apply(opaque(f"breakglass-token-{uid}", ns), verb="create")
        created.append((f"breakglass-token-{uid}", ns))
        before = {c: _fingerprint(cluster, "secret", *c) for c in created}

        approve(cluster, "bob", name, ns)
        obj = wait_phase(cluster, name, ns, "Active")
        assert obj["status"]["secretRef"]["namespace"] == OPERATOR_NS
        delete_and_wait_gone(cluster, "alice", name, ns)
        assert token_secret(cluster, obj) is None
        housekeeping_passes(cluster, running_operator)
        assert {c: _fingerprint(cluster, "secret", *c) for c in created} == before
    finally:
        for secret_name, where in created:
            cluster.kubectl("delete", "secret", secret_name, "-n", where, "--wait=false", check=False)


def test_tenant_objects_with_the_operators_labels_are_never_swept_and_leave_a_live_grant_alone(
    cluster, running_operator
):
    victim_ns, attacker_ns = cluster.new_namespace("victim"), cluster.new_namespace("attacker")
    make_namespace_admin(cluster, "alice", attacker_ns)
    pol = unique("sweep")
    cluster.apply(policy(pol, requiredApprovals=0))
    victim = _issue(cluster, victim_ns, pol, "victim", user="dave")
    vuid, vuser = victim["metadata"]["uid"], victim["status"]["username"]
    vtoken = token_of(cluster, victim, user="dave")
    assert _works(cluster, vtoken, victim_ns)
    vbindings = {
        (b["metadata"]["namespace"], b["metadata"]["name"], b["metadata"]["uid"])
        for b in bindings_for_user(cluster, vuser)
    }
    assert vbindings

    # alice, admin of her own namespace only, plants expired-looking copies of the operator's objects
    # that name dave's grant (its request, uid, nonce-looking annotation, username).
    kid = victim["status"]["keyId"]
    decoys = [("secret", name) for name in (f"breakglass-token-{vuid}", "victim-token", "decoy-token")]
    for _, name in decoys:
        create(cluster, _decoy_secret(name, attacker_ns, "victim", victim_ns, vuid, LONG_AGO, kid), "alice")
    for name in (f"breakglass-{vuid}-view-decoy", f"breakglass-token-reader-{vuid}"):
        create(
            cluster,
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": _lookalike_metadata(name, attacker_ns, "victim", victim_ns, vuid, LONG_AGO, kid),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": vuser}],
            },
            "alice",
        )
        decoys.append(("rolebinding", name))
    before = {d: _fingerprint(cluster, d[0], d[1], attacker_ns) for d in decoys}

    housekeeping_passes(cluster, running_operator)
    assert {d: _fingerprint(cluster, d[0], d[1], attacker_ns) for d in decoys} == before
    assert cluster.get("breakglassrequest", "victim", victim_ns)["status"]["phase"] == "Active"
    assert {
        (b["metadata"]["namespace"], b["metadata"]["name"], b["metadata"]["uid"])
        for b in bindings_for_user(cluster, vuser)
        if b["metadata"]["namespace"] != attacker_ns
    } == vbindings
    assert ledger_entry(cluster, vuid)["state"] == "Active"
    assert token_secret(cluster, victim) is not None
    assert _works(cluster, vtoken, victim_ns)


# =====================================================================================================
# 2. Approvals belong to one request instance.
# =====================================================================================================
def test_an_approval_never_outlives_its_request_even_when_a_same_named_request_replaces_it(cluster, running_operator):
    ns = cluster.new_namespace("replay")
    pol = unique("replay")
    cluster.apply(policy(pol, allowedClusterRoles=["view", "edit"], maxDuration="1h"))

    # dave's modest request, approved by bob; the approval is bound to that instance.
    dave_req = create(cluster, request("db", ns, pol, clusterRoles=["view"], duration="5m"), "dave")
    dave_uid = dave_req["metadata"]["uid"]
    wait_phase(cluster, "db", ns, "Pending")
    by_bob = create(cluster, approval("db", ns), "bob")
    assert by_bob["spec"]["requestUID"] == dave_uid
    assert [(o["kind"], o["name"], o["uid"]) for o in by_bob["metadata"]["ownerReferences"]] == [
        ("BreakGlassRequest", "db", dave_uid)
    ]
    wait_phase(cluster, "db", ns, "Active")
    # Orphaning keeps the approval around (as GC lag or a careless delete would).
    delete_and_wait_gone(cluster, "dave", "db", ns, "--cascade=orphan")
    assert cluster.get("breakglassapproval", by_bob["metadata"]["name"], ns) is not None

    # alice files the same name asking for far more: bob's approval of dave's request must not count.
    alice_req = create(cluster, request("db", ns, pol, clusterRoles=["edit"], duration="50m"), "alice")
    alice_uid = alice_req["metadata"]["uid"]
    obj = _ignored(cluster, ns, "db", alice_uid, by_bob["metadata"]["name"])
    assert obj["status"]["phase"] == "Pending" and not obj["status"].get("approvals"), obj["status"]
    assert ledger_entry(cluster, alice_uid) is None
    assert bindings_for_user(cluster, f"breakglass:{ns}:db:{alice_uid}") == []

    # A client cannot point an approval at the old instance either.
    stale = cluster.try_create(approval("db", ns, requestUID=dave_uid), user="carol")
    assert admission_refused(stale) and "requestUID" in stale.stderr

    # Her own approval does not survive a delete + re-file either.
    by_carol = create(cluster, approval("db", ns), "carol")
    assert by_carol["spec"]["requestUID"] == alice_uid
    wait_phase(cluster, "db", ns, "Active")
    delete_and_wait_gone(cluster, "alice", "db", ns, "--cascade=orphan")
    again = create(cluster, request("db", ns, pol, clusterRoles=["edit"], duration="55m"), "alice")
    again_uid = again["metadata"]["uid"]
    _ignored(cluster, ns, "db", again_uid, by_bob["metadata"]["name"])
    obj = _ignored(cluster, ns, "db", again_uid, by_carol["metadata"]["name"])
    assert obj["status"]["phase"] == "Pending" and not obj["status"].get("approvals"), obj["status"]
    assert ledger_entry(cluster, again_uid) is None

    # Every decision is its own audit record: counted for the instance it was filed for, ignored after.
    def approval_records():
        return [r for r in audit_records(running_operator) if r.get("event") == "approval"]

    wait_for(
        lambda: any(
            r["request"]["uid"] == again_uid
            and r.get("counted") is False
            and r.get("approval") == by_carol["metadata"]["name"]
            for r in approval_records()
        ),
        10,
        "an audit record of carol's ignored approval",
    )
    records = approval_records()
    assert any(
        r["request"]["uid"] == dave_uid and r.get("counted") is True and r.get("approver") == "bob" for r in records
    )
    assert any(
        r["request"]["uid"] == alice_uid
        and r.get("counted") is False
        and r.get("approval") == by_bob["metadata"]["name"]
        for r in records
    )

    # A fresh approval for the live instance still works.
    approve(cluster, "bob", "db", ns)
    assert wait_phase(cluster, "db", ns, "Active")["metadata"]["uid"] == again_uid


def test_a_deny_or_a_review_never_replays_onto_a_new_request_of_the_same_name(cluster, running_operator):
    ns = cluster.new_namespace("replay2")
    pol = unique("replay2")
    cluster.apply(policy(pol, emergency={"allowed": True, "reviewWithin": "1h"}))

    create(cluster, request("change", ns, pol), "alice")
    wait_phase(cluster, "change", ns, "Pending")
    deny = create(cluster, approval("change", ns, "Deny"), "bob")
    wait_phase(cluster, "change", ns, "Denied")
    delete_and_wait_gone(cluster, "alice", "change", ns, "--cascade=orphan")
    assert cluster.get("breakglassapproval", deny["metadata"]["name"], ns) is not None
    new_uid = create(cluster, request("change", ns, pol), "alice")["metadata"]["uid"]
    obj = _ignored(cluster, ns, "change", new_uid, deny["metadata"]["name"])
    assert obj["status"]["phase"] == "Pending", obj["status"]
    approve(cluster, "carol", "change", ns)
    wait_phase(cluster, "change", ns, "Active")

    first = _issue(cluster, ns, pol, "fire", emergency=True)
    assert first["status"]["review"]["required"] is True
    review = create(cluster, approval("fire", ns, "Review"), "carol")
    wait_for(
        lambda: cluster.get("breakglassrequest", "fire", ns)["status"]["review"].get("reviewer") == "carol",
        10,
        "carol's review to close the first emergency grant",
    )
    delete_and_wait_gone(cluster, "alice", "fire", ns, "--cascade=orphan")
    assert cluster.get("breakglassapproval", review["metadata"]["name"], ns) is not None
    second = _issue(cluster, ns, pol, "fire", emergency=True)
    status = _ignored(cluster, ns, "fire", second["metadata"]["uid"], review["metadata"]["name"])["status"]
    assert status["phase"] == "Active" and status["review"]["required"] is True
    assert not status["review"].get("reviewer") and not status["review"].get("reviewedAt"), status["review"]


# =====================================================================================================
# 3. A grant identity is never reused; TokenReview authenticates only live ledger grants.
# =====================================================================================================
def test_a_revoked_or_expired_token_never_authenticates_for_a_new_request_of_the_same_name(
    cluster, running_operator, apiserver_client_cert
):
    ns = ("reuse-" + uuid.uuid4().hex * 2)[:63]  # the longest namespace and request names there are
    cluster.kubectl("create", "namespace", ns)
    name = ("same-name-" + uuid.uuid4().hex * 2)[:50]
    pol = unique("reuse")
    cluster.apply(policy(pol, requiredApprovals=0))
    op, cert = running_operator, apiserver_client_cert

    first = _issue(cluster, ns, pol, name, duration="8s")
    t1, user1 = token_of(cluster, first, user="alice"), first["status"]["username"]
    assert user1 == f"breakglass:{ns}:{name}:{first['metadata']['uid']}"
    for rb in bindings_for_user(cluster, user1):
        assert first["metadata"]["uid"] in rb["metadata"]["name"] and len(rb["metadata"]["name"]) <= 253
    assert _works(cluster, t1, ns)
    wait_phase(cluster, name, ns, "Expired", timeout=20)
    wait_for(
        lambda: unauthorized(with_token(cluster, t1, "get", "serviceaccounts", "-n", ns)),
        15,
        "the expired token to get 401",
        interval=0.25,
    )
    delete_and_wait_gone(cluster, "alice", name, ns)

    second = _issue(cluster, ns, pol, name)
    t2, user2 = token_of(cluster, second, user="alice"), second["status"]["username"]
    assert user2 != user1 and second["metadata"]["uid"] in user2
    assert _works(cluster, t2, ns)
    assert not webhook_authenticates(op, cert, t1)
    assert token_review(cluster, t1).get("authenticated") is not True
    assert unauthorized(with_token(cluster, t1, "auth", "can-i", "get", "serviceaccounts", "-n", ns))

    patch(cluster, "alice", "breakglassrequest", name, ns, {"spec": {"revoked": True}})
    wait_phase(cluster, name, ns, "Revoked")
    wait_for(lambda: not webhook_authenticates(op, cert, t2), 5, "the webhook to drop the revoked jti")
    wait_for(
        lambda: unauthorized(with_token(cluster, t2, "get", "serviceaccounts", "-n", ns)),
        15,
        "the revoked token to get 401",
        interval=0.25,
    )
    delete_and_wait_gone(cluster, "alice", name, ns)

    third = _issue(cluster, ns, pol, name)
    t3, user3 = token_of(cluster, third, user="alice"), third["status"]["username"]
    assert len({user1, user2, user3}) == 3
    assert _works(cluster, t3, ns)
    assert token_review(cluster, t3)["user"]["username"] == user3
    assert with_token(cluster, t3, "auth", "can-i", "get", "serviceaccounts", "-n", ns).stdout.strip() == "yes"
    for old in (t1, t2):
        assert not webhook_authenticates(op, cert, old)
        assert token_review(cluster, old).get("authenticated") is not True
        assert unauthorized(with_token(cluster, old, "auth", "can-i", "get", "serviceaccounts", "-n", ns))
        assert unauthorized(with_token(cluster, old, "get", "serviceaccounts", "-n", ns))

    # A token the operator's own key signs, with a jti the ledger never issued, is not a grant.
    claims = dict(pyjwt.decode(t3, options={"verify_signature": False}), jti=str(uuid.uuid4()))
    unlisted = sign(cluster, claims)
    assert not webhook_authenticates(op, cert, unlisted)
    assert unauthorized(with_token(cluster, unlisted, "get", "serviceaccounts", "-n", ns))


# =====================================================================================================
# 4. Revocation always completes; only the operator removes its finalizer.
# =====================================================================================================
def test_a_requester_cannot_strip_the_finalizer_and_deleting_a_request_always_revokes(
    cluster, running_operator, apiserver_client_cert
):
    ns, other = cluster.new_namespace("fin"), cluster.new_namespace("fin-other")
    pol = unique("fin")
    cluster.apply(policy(pol, requiredApprovals=0))
    req = _issue(cluster, ns, pol, "doomed", namespaces=[ns, other])
    uid, jti, username = req["metadata"]["uid"], req["status"]["tokenId"], req["status"]["username"]
    token = token_of(cluster, req, user="alice")
    assert _works(cluster, token, other)
    assert {b["metadata"]["namespace"] for b in bindings_for_user(cluster, username)} >= {ns, other}
    fins = req["metadata"]["finalizers"]
    assert "breakglass.dev/revoke-on-delete" in fins
    index = fins.index("breakglass.dev/revoke-on-delete")

    for user in ("alice", "bob"):
        for body, kind in (
            ({"metadata": {"finalizers": None}}, "merge"),
            ({"metadata": {"finalizers": []}}, "merge"),
            ([{"op": "remove", "path": f"/metadata/finalizers/{index}"}], "json"),
        ):
            out = patch(cluster, user, "breakglassrequest", "doomed", ns, body, kind)
            assert admission_refused(out), (user, body, out.stderr)
            if user == "alice":  # her own request: refused for the finalizer alone, and told so
                assert "finalizer" in out.stderr, out.stderr
    assert "breakglass.dev/revoke-on-delete" in cluster.get("breakglassrequest", "doomed", ns)["metadata"]["finalizers"]

    # Delete right away: the operator revokes before the request goes.
    delete_and_wait_gone(cluster, "alice", "doomed", ns)
    assert not webhook_authenticates(running_operator, apiserver_client_cert, token)
    assert bindings_for_user(cluster, username) == []
    assert token_secret(cluster, req) is None
    entry = ledger_entry(cluster, uid)
    assert entry is None or entry["state"] == "Revoked", entry
    records = [
        r
        for r in audit_records(running_operator)
        if r.get("event") == "revoked" and (r.get("request") or {}).get("uid") == uid
    ]
    assert records and records[-1]["reason"] == "RequestDeleted" and records[-1].get("jti") == jti, records
    wait_for(
        lambda: unauthorized(with_token(cluster, token, "get", "serviceaccounts", "-n", other)),
        15,
        "the deleted request's token to get 401",
        interval=0.25,
    )


def test_a_deletion_held_by_another_finalizer_revokes_at_once_and_is_audited_once(
    cluster, running_operator, apiserver_client_cert
):
    ns = cluster.new_namespace("held")
    pol = unique("held")
    cluster.apply(policy(pol, requiredApprovals=0))
    req = _issue(cluster, ns, pol, "lingering")
    uid, username = req["metadata"]["uid"], req["status"]["username"]
    token = token_of(cluster, req, user="alice")
    # The requester may add a finalizer of her own (as GC orphaning or any controller would):
    # the request then lingers after the delete.
    fins = req["metadata"]["finalizers"] + ["example.com/hold"]
    assert (
        patch(cluster, "alice", "breakglassrequest", "lingering", ns, {"metadata": {"finalizers": fins}}).returncode
        == 0
    )
    cluster.kubectl("delete", "breakglassrequest", "lingering", "-n", ns, "--wait=false", user="alice")
    try:
        wait_for(
            lambda: cluster.get("breakglassrequest", "lingering", ns)["metadata"]["finalizers"] == ["example.com/hold"],
            10,
            "the operator to revoke and drop its finalizer",
        )
        assert not webhook_authenticates(running_operator, apiserver_client_cert, token)
        assert bindings_for_user(cluster, username) == []
        housekeeping_passes(cluster, running_operator)  # each pass resyncs requests being deleted
        revoked = [
            r
            for r in audit_records(running_operator)
            if r.get("event") == "revoked" and (r.get("request") or {}).get("uid") == uid
        ]
        assert len(revoked) == 1 and revoked[0]["reason"] == "RequestDeleted", (
            f"one revocation, {len(revoked)} audit records: {[(r['seq'], r['time']) for r in revoked]}"
        )
    finally:
        patch(cluster, "alice", "breakglassrequest", "lingering", ns, {"metadata": {"finalizers": None}})
    wait_for(lambda: cluster.get("breakglassrequest", "lingering", ns) is None, 10, "the request to go")


# =====================================================================================================
# 5. Only the owner acts on a request; only the operator sets the drill label.
# =====================================================================================================
def test_only_the_requester_changes_a_request_and_an_approver_may_only_revoke_it(cluster, running_operator):
    ns = cluster.new_namespace("owner")
    pol = unique("owner")
    cluster.apply(policy(pol, requiredApprovals=0))
    _issue(cluster, ns, pol, "alices")

    for user in ("dave", "mallory"):
        attempts = [
            patch(cluster, user, "breakglassrequest", "alices", ns, {"spec": {"revoked": True}}),
            cluster.kubectl("delete", "breakglassrequest", "alices", "-n", ns, "--wait=false", user=user, check=False),
            cluster.kubectl("label", "breakglassrequest", "alices", "-n", ns, "owner=" + user, user=user, check=False),
            cluster.kubectl("annotate", "breakglassrequest", "alices", "-n", ns, "note=mine", user=user, check=False),
        ]
        for out in attempts:
            assert admission_refused(out), (user, out.stderr)
            assert "alice" in out.stderr, f"the refusal should name who may: {out.stderr}"
    revoke_via_plugin = plugin(cluster, "dave", "-n", ns, "revoke", "alices")
    assert revoke_via_plugin.returncode != 0

    for out in (
        cluster.kubectl("delete", "breakglassrequest", "alices", "-n", ns, "--wait=false", user="bob", check=False),
        cluster.kubectl("label", "breakglassrequest", "alices", "-n", ns, "owner=bob", user="bob", check=False),
        patch(
            cluster,
            "bob",
            "breakglassrequest",
            "alices",
            ns,
            {"spec": {"revoked": True}, "metadata": {"annotations": {"note": "and more"}}},
        ),
    ):
        assert admission_refused(out), out.stderr
    obj = cluster.get("breakglassrequest", "alices", ns)
    assert obj["status"]["phase"] == "Active" and not obj["spec"].get("revoked")
    assert "owner" not in (obj["metadata"].get("labels") or {})

    assert patch(cluster, "bob", "breakglassrequest", "alices", ns, {"spec": {"revoked": True}}).returncode == 0
    wait_phase(cluster, "alices", ns, "Revoked")
    delete_and_wait_gone(cluster, "alice", "alices", ns)


def test_no_requester_or_approver_can_set_the_drill_label(cluster, running_operator):
    ns = cluster.new_namespace("drill")
    pol = unique("drill")
    cluster.apply(policy(pol, requiredApprovals=0))
    labelled = request("hidden", ns, pol)
    labelled["metadata"]["labels"] = {"breakglass.dev/drill": "true"}
    out = cluster.try_create(labelled, user="alice")
    assert admission_refused(out) and "breakglass.dev/drill" in out.stderr, out.stderr
    assert cluster.get("breakglassrequest", "hidden", ns) is None

    _issue(cluster, ns, pol, "real")
    for user in ("alice", "dave", "bob"):
        for value in ("true", "false"):
            out = cluster.kubectl(
                "label", "breakglassrequest", "real", "-n", ns, f"breakglass.dev/drill={value}", user=user, check=False
            )
            assert admission_refused(out), (user, out.stderr)
            if user == "alice":  # her own request: refused for the drill label alone, and told so
                assert "breakglass.dev/drill" in out.stderr, out.stderr
    assert "breakglass.dev/drill" not in (cluster.get("breakglassrequest", "real", ns)["metadata"].get("labels") or {})
    # Still counted as a real grant.
    wait_for(
        lambda: f'breakglass_grants_active{{policy="{pol}"}} 1.0' in (running_operator.metrics_text() or ""),
        90,
        "the grant to be counted as active (gauges follow the full pass, about every 30 s)",
    )


# =====================================================================================================
# 6. Tokens are delivered where only the requester can read them.
# =====================================================================================================
def test_a_grant_with_edit_on_the_request_namespace_cannot_read_another_requesters_token(cluster, running_operator):
    ns = cluster.new_namespace("shared")
    pol = unique("shared")
    cluster.apply(policy(pol, requiredApprovals=0, allowedClusterRoles=["view", "edit"]))
    daves = _issue(cluster, ns, pol, "daves-edit", user="dave", clusterRoles=["edit"])
    dave_token = token_of(cluster, daves, user="dave")
    alices = _issue(cluster, ns, pol, "alices-view")
    uid = alices["metadata"]["uid"]
    ref = alices["status"]["secretRef"]
    assert ref == {"namespace": OPERATOR_NS, "name": f"breakglass-token-{uid}"}

    secret = token_secret(cluster, alices, user="alice")
    assert secret["type"] == TOKEN_SECRET_TYPE and {"token", "expiresAt", "kubeconfig"} <= set(secret["data"])
    alice_token = base64.b64decode(secret["data"]["token"]).decode()
    role = cluster.get("role", f"breakglass-token-reader-{uid}", OPERATOR_NS)
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": [ref["name"]]}
    ]
    binding = cluster.get("rolebinding", f"breakglass-token-reader-{uid}", OPERATOR_NS)
    assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("User", "alice")]

    # dave's grant can edit the namespace alice filed in, Secrets included: none of them is hers.
    listed = with_token(cluster, dave_token, "get", "secrets", "-n", ns, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)["items"]
    assert all(s.get("type") != TOKEN_SECRET_TYPE for s in items)
    assert alice_token not in listed.stdout
    assert forbidden(with_token(cluster, dave_token, "get", "secret", ref["name"], "-n", OPERATOR_NS))
    assert forbidden(with_token(cluster, dave_token, "get", "secrets", "-n", OPERATOR_NS))
    for user in ("dave", "bob", "mallory"):
        assert rbac_forbidden(
            cluster.kubectl("get", "secret", ref["name"], "-n", OPERATOR_NS, user=user, check=False)
        ), user
        assert plugin(cluster, user, "-n", ns, "token", "alices-view").returncode != 0

    shown = plugin(cluster, "alice", "-n", ns, "token", "alices-view")
    assert shown.returncode == 0 and shown.stdout.strip() == alice_token, shown.stderr


def test_no_policy_glob_can_grant_the_operators_own_namespace(cluster, running_operator):
    """A grant there could read the signing keys and every token and forge the ledger: refused at
    admission with a message naming spec.namespaces, whatever `allowedNamespaces: ["*"]` says."""
    ns = cluster.new_namespace("protect")
    pol = unique("protect")
    cluster.apply(policy(pol, requiredApprovals=0, allowedNamespaces=["*"]))
    refused = cluster.try_create(
        request("keys", ns, pol, namespaces=[OPERATOR_NS], clusterRoles=["view"]), user="alice"
    )
    assert refused.returncode != 0 and "spec.namespaces" in refused.stderr and OPERATOR_NS in refused.stderr
    assert cluster.get("breakglassrequest", "keys", ns) is None


def test_request_namespace_delivery_puts_the_token_next_to_the_workload_readable_only_by_the_requester(
    cluster, running_operator
):
    """Opt-in delivery (spec.tokenDelivery: RequestNamespace): the Secret and its reader Role live in the
    request's namespace; dave (no Secret rights there) cannot read it; revocation deletes it."""
    ns = cluster.new_namespace("deliver")
    pol = unique("deliver")
    cluster.apply(policy(pol, requiredApprovals=0, tokenDelivery="RequestNamespace"))
    req = _issue(cluster, ns, pol, "mounted")
    uid = req["metadata"]["uid"]
    assert req["status"]["secretRef"] == {"namespace": ns, "name": f"breakglass-token-{uid}"}
    assert cluster.get("secret", f"breakglass-token-{uid}", ns, user="alice") is not None
    denied = cluster.kubectl("get", "secret", f"breakglass-token-{uid}", "-n", ns, user="dave", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    cluster.kubectl(
        "patch", "bgr", "mounted", "-n", ns, "--type=merge", "-p", '{"spec":{"revoked":true}}', user="alice"
    )
    wait_phase(cluster, "mounted", ns, "Revoked")
    wait_for(lambda: cluster.get("secret", f"breakglass-token-{uid}", ns) is None, 10, "the delivered Secret to go")


# =====================================================================================================
# 7. Issuing is all or nothing.
# =====================================================================================================
def test_a_request_for_a_namespace_that_does_not_exist_is_refused_and_nothing_is_issued(cluster, running_operator):
    ns = cluster.new_namespace("ghost")
    pol = unique("ghost")
    cluster.apply(policy(pol, requiredApprovals=0))
    missing = f"no-such-{uuid.uuid4().hex[:8]}"
    name = unique("ghost")
    out = cluster.try_create(request(name, ns, pol, namespaces=[ns, missing]), user="alice")
    assert admission_refused(out) and "spec.namespaces" in out.stderr and missing in out.stderr, out.stderr
    assert cluster.get("breakglassrequest", name, ns) is None
    assert ledger_entries_for(cluster, ns, name) == []


def test_a_namespace_vanishing_before_issue_fails_the_request_and_leaves_no_token(cluster, running_operator):
    ns, doomed = cluster.new_namespace("half"), cluster.new_namespace("vanishing")
    pol = unique("half")
    cluster.apply(policy(pol))
    req = create(cluster, request("halfway", ns, pol, namespaces=[ns, doomed]), "alice")
    uid = req["metadata"]["uid"]
    username = f"breakglass:{ns}:halfway:{uid}"
    wait_phase(cluster, "halfway", ns, "Pending")
    cluster.kubectl("delete", "namespace", doomed, "--wait=false")
    wait_for(lambda: cluster.get("namespace", doomed) is None, 60, f"namespace {doomed} to be gone")

    approve(cluster, "bob", "halfway", ns)
    obj = wait_phase(cluster, "halfway", ns, "Failed", timeout=30)
    st = obj["status"]
    assert "secretRef" not in st
    assert any(c.get("status") in ("True", "False") and c.get("message") for c in st.get("conditions") or [])
    assert cluster.get("secret", f"breakglass-token-{uid}", OPERATOR_NS) is None
    assert bindings_for_user(cluster, username) == []
    assert cluster.get("rolebinding", f"breakglass-token-reader-{uid}", OPERATOR_NS) is None
    entries = ledger_entries_for(cluster, ns, "halfway")
    assert len(entries) <= 1 and all(e["state"] == "Failed" for e in entries), entries
    wait_for(
        lambda: any(
            e["type"] == "Warning"
            for e in [e for e in cluster.events(ns, "halfway") if e["involvedObject"].get("uid") == uid]
        ),
        10,
        "a Warning Event on the failed request",
    )
    assert any(
        r.get("event") == "failed" and (r.get("request") or {}).get("uid") == uid
        for r in audit_records(running_operator)
    )

    # Never a second token from the same approval: more approvals and housekeeping change nothing.
    cluster.try_create(approval("halfway", ns), user="carol")
    housekeeping_passes(cluster, running_operator)
    obj = cluster.get("breakglassrequest", "halfway", ns)
    assert obj["status"]["phase"] == "Failed" and "secretRef" not in obj["status"]
    assert cluster.get("secret", f"breakglass-token-{uid}", OPERATOR_NS) is None
    assert bindings_for_user(cluster, username) == []
    assert len(ledger_entries_for(cluster, ns, "halfway")) <= 1


# =====================================================================================================
# 8. Least privilege for the operator; key retention pinned only by ledger entries.
# =====================================================================================================
RBAC_GROUP = "rbac.authorization.k8s.io"


def _covers(rule: dict, group: str, resource: str, verb: str) -> bool:
    return (
        (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
        and (resource in rule.get("resources", []) or "*" in rule.get("resources", []))
        and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
    )


def test_the_default_chart_gives_the_operator_no_cluster_wide_secret_or_role_rights_and_users_no_ledger_access():
    sys.path.insert(0, str(ROOT / "hack"))
    import render_chart

    values = yaml.safe_load((ROOT / "charts" / "breakglass-operator" / "values.yaml").read_text())
    release_ns = render_chart.NAMESPACE
    docs = render_chart.manifests({})
    by_kind_name = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]

    def binds_operator(binding):
        return any(
            s["kind"] == "ServiceAccount" and s["name"] == sa and s.get("namespace", release_ns) == release_ns
            for s in binding.get("subjects") or []
        )

    def rules_of(binding):
        ref = binding["roleRef"]
        ns = None if ref["kind"] == "ClusterRole" else binding["metadata"]["namespace"]
        role = by_kind_name.get((ref["kind"], ns, ref["name"]))
        assert role is not None, f"{binding['metadata']['name']} refers to {ref} which the chart does not ship"
        return role.get("rules") or []

    cluster_wide = [r for b in docs if b["kind"] == "ClusterRoleBinding" and binds_operator(b) for r in rules_of(b)]
    namespaced = [
        (b["metadata"]["namespace"], r)
        for b in docs
        if b["kind"] == "RoleBinding" and binds_operator(b)
        for r in rules_of(b)
    ]
    assert cluster_wide, "the operator's ClusterRole was not found"
    verbs = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
    for verb in verbs:
        assert not any(_covers(r, "", "secrets", verb) for r in cluster_wide), f"cluster-wide {verb} on secrets"
    for verb in ("create", "update", "patch", "escalate", "bind"):
        assert not any(_covers(r, RBAC_GROUP, "roles", verb) for r in cluster_wide), f"cluster-wide {verb} on roles"
    for r in cluster_wide + [r for _, r in namespaced]:
        assert "*" not in r.get("verbs", []) and "escalate" not in r.get("verbs", []), r
    grantable = set(values["rbac"]["grantableClusterRoles"])
    for r in cluster_wide + [r for _, r in namespaced]:
        if _covers(r, RBAC_GROUP, "clusterroles", "bind"):
            assert r.get("resourceNames") and set(r["resourceNames"]) <= grantable, r
    # Secrets and Roles only in the operator's own namespace (no request-namespace delivery by default).
    for ns, r in namespaced:
        if any(_covers(r, "", "secrets", v) for v in verbs) or _covers(r, RBAC_GROUP, "roles", "create"):
            assert ns == release_ns, (ns, r)

    # The chart's requester and approver roles reach neither Secrets nor ConfigMaps (the ledger).
    for d in docs:
        if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith(("-requester", "-approver")):
            for r in d.get("rules") or []:
                for resource in ("secrets", "configmaps"):
                    assert not any(_covers(r, "", resource, v) for v in verbs), (d["metadata"]["name"], r)


def test_tenant_objects_naming_a_retired_key_do_not_keep_it_in_the_jwks(cluster, running_operator):
    ns = cluster.new_namespace("pin")
    make_namespace_admin(cluster, "alice", ns)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"))

    def rotate():
        out = subprocess.run(
            [sys.executable, "-m", "breakglass", "keys", "rotate", "--kubeconfig", cluster.kubeconfig()],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr

    def jwks_kids():
        cm = cluster.get("configmap", "breakglass-jwks", OPERATOR_NS)
        return {k["kid"] for k in json.loads(cm["data"]["jwks.json"])["keys"]}

    # A key that never signs a grant: active only between two rotations with no request in between.
    rotate()
    unused = signing_key(cluster).kid
    wait_for(lambda: unused in jwks_kids(), 10, "the new key in the JWKS")
    fake_uid = str(uuid.uuid4())
    create(
        cluster, _decoy_secret(f"breakglass-token-{fake_uid}", ns, "pinning", ns, fake_uid, FAR_FUTURE, unused), "alice"
    )
    create(
        cluster,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _lookalike_metadata(
                f"breakglass-{fake_uid}-view-pin", ns, "pinning", ns, fake_uid, FAR_FUTURE, unused
            ),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "nobody"}],
        },
        "alice",
    )
    fake_entry = {
        "request": {"namespace": ns, "name": "pinning", "uid": fake_uid},
        "state": "Active",
        "jti": str(uuid.uuid4()),
        "kid": unused,
        "expiresAt": FAR_FUTURE,
        "issuedAt": _now(),
    }
    create(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"breakglass-grant-{fake_uid}",
                "namespace": ns,
                "labels": {MANAGED: "breakglass-operator", "breakglass.dev/ledger": "grant"},
            },
            "data": {"grant.json": json.dumps(fake_entry)},
        },
        "alice",
    )
    rotate()
    assert signing_key(cluster).kid != unused
    wait_for(lambda: unused not in jwks_kids(), 120, "the retired, unused key to leave the JWKS", interval=1)
    assert cluster.get("secret", f"breakglass-token-{fake_uid}", ns) is not None
    assert cluster.get("configmap", f"breakglass-grant-{fake_uid}", ns) is not None


# =====================================================================================================
# 9. Inputs.
# =====================================================================================================
SMUGGLED_SCOPES = {
    "a space": ["db:read k8s:kube-system:cluster-admin"],
    "a tab": ["db:read\tk8s:kube-system:cluster-admin"],
    "a newline": ["db:read\nk8s:kube-system:cluster-admin"],
    "a leading blank": [" db:read"],
    "a trailing blank": ["db:read "],
    "the reserved prefix": ["k8s:kube-system:cluster-admin"],
    "the reserved prefix in capitals, second item": ["db:read", "K8S:kube-system:cluster-admin"],
    "the reserved prefix in mixed case": ["k8S:x"],
}


def test_scopes_with_whitespace_or_the_reserved_prefix_are_refused(cluster, running_operator):
    ns = cluster.new_namespace("scope")
    pol = unique("scope")
    cluster.apply(policy(pol, requiredApprovals=0, allowedScopes=["*"]))  # the policy would allow anything
    failures = []
    for case, scopes in SMUGGLED_SCOPES.items():
        name = unique("smuggle")
        out = cluster.try_create(request(name, ns, pol, scopes=scopes), user="alice")
        if not (refused(out) and "spec.scopes" in out.stderr):  # by the CRD schema or by admission
            failures.append(f"{case} {scopes!r}: rc={out.returncode} {out.stderr.strip()}")
        if cluster.get("breakglassrequest", name, ns) is not None:
            failures.append(f"{case}: request {name} exists")
    assert not failures, "\n".join(failures)
    ok = create(cluster, request(unique("fine"), ns, pol, scopes=["db:read", "team/a+b=c@d.e_f-g"]), "alice")
    claims = pyjwt.decode(
        token_of(cluster, wait_phase(cluster, ok["metadata"]["name"], ns, "Active"), "alice"),
        options={"verify_signature": False},
    )
    assert claims["scope"].split() == ["db:read", "team/a+b=c@d.e_f-g", f"k8s:{ns}:view"]


ABSURD_DURATIONS = {  # case: (spec.duration, the policy's maxDuration)
    "too large to parse": ("99999999999999999999999999h", "1h"),
    "beyond a century": ("999999999999h", "1h"),
    "huge minutes and seconds (32 characters, the schema's limit)": ("99999999999999999999m9999999999s", "1h"),
    "beyond the policy": ("1000000h", "1h"),
    "beyond the operator ceiling (24h) under a lax policy": ("30h", "48h"),
}


def test_an_absurd_duration_is_refused_with_a_message_naming_spec_duration(cluster, running_operator):
    ns = cluster.new_namespace("dur")
    failures = []
    for case, (duration, policy_max) in ABSURD_DURATIONS.items():
        pol = unique("dur")
        cluster.apply(policy(pol, maxDuration=policy_max))
        name = unique("forever")
        out = cluster.try_create(request(name, ns, pol, duration=duration), user="alice")
        if not (refused(out) and "spec.duration" in out.stderr):  # by the CRD schema or by admission
            failures.append(f"{case} ({duration}): rc={out.returncode} {out.stderr.strip()}")
        leaks = [
            w
            for w in ("Traceback", 'File "', "OverflowError", "ValueError", "Exception", "timedelta")
            if w in out.stderr
        ]
        if leaks:
            failures.append(f"{case} ({duration}): exception text {leaks} in {out.stderr.strip()}")
        if cluster.get("breakglassrequest", name, ns) is not None:
            failures.append(f"{case}: request {name} exists")
    assert not failures, "\n".join(failures)


def _malformed_claim_sets(claims: dict) -> dict[str, dict]:
    bg = claims.get("breakglass") or {}
    cases = {
        "exp is a string": dict(claims, exp="tomorrow"),
        "nbf is a list": dict(claims, nbf=[]),
        "iat is an object": dict(claims, iat={"a": 1}),
        "jti is a number": dict(claims, jti=12345),
        "jti is an object": dict(claims, jti={"$ne": ""}),
        "sub is null": dict(claims, sub=None),
        "aud is a number": dict(claims, aud=42),
        "scope is a list": dict(claims, scope=["k8s:kube-system:cluster-admin"]),
        "breakglass is a string": dict(claims, breakglass="kube-system/x"),
        "breakglass.request has no slash": dict(claims, breakglass=dict(bg, request="nothing")),
        "breakglass.request is a number": dict(claims, breakglass=dict(bg, request=7)),
        "breakglass.uid is a list": dict(claims, breakglass=dict(bg, uid=["a"])),
        "k8s_user is a list": dict(claims, k8s_user=["system:admin"]),
        "k8s_groups is a string": dict(claims, k8s_groups="system:masters"),
        "k8s_groups holds numbers": dict(claims, k8s_groups=[1, 2]),
    }
    for key in ("jti", "exp", "breakglass", "k8s_user", "sub"):
        cases[f"{key} is missing"] = {k: v for k, v in claims.items() if k != key}
    return cases


def test_authenticate_answers_401_never_500_to_malformed_claims(cluster, running_operator, apiserver_client_cert):
    ns = cluster.new_namespace("claims")
    pol = unique("claims")
    cluster.apply(policy(pol, requiredApprovals=0))
    req = _issue(cluster, ns, pol, "shape")
    good = token_of(cluster, req, "alice")
    code, answer = authenticate(running_operator, apiserver_client_cert, review_body(good))
    assert code == 200 and answer["status"]["authenticated"] is True, (code, answer)
    claims = pyjwt.decode(good, options={"verify_signature": False})
    failures = []
    for case, bad in _malformed_claim_sets(claims).items():
        code, answer = authenticate(running_operator, apiserver_client_cert, review_body(sign(cluster, bad)))
        authenticated = ((answer or {}).get("status") or {}).get("authenticated")
        if code != 401 or authenticated:
            failures.append(f"{case}: HTTP {code}, {answer}")
    assert not failures, "\n".join(failures)
    # Malformed reviews (not claims) are never a 500 or a yes either.
    for body in (
        b"not json",
        b"[]",
        b'{"spec": null}',
        b'{"spec": {"token": 5}}',
        b'{"spec": {"token": ["a"]}}',
        json.dumps({"spec": {"token": "a" * 100000}}).encode(),
    ):
        code, answer = authenticate(running_operator, apiserver_client_cert, body)
        assert code < 500 and not ((answer or {}).get("status") or {}).get("authenticated"), (body[:40], code, answer)
    assert webhook_authenticates(running_operator, apiserver_client_cert, good), "the operator must still answer"


# =====================================================================================================
# 10. Audit that proves itself.
# =====================================================================================================
def test_the_audit_head_is_published_and_verify_catches_a_truncated_tail_and_a_resealed_rewrite(
    cluster, running_operator, tmp_path
):
    ns = cluster.new_namespace("audit")
    pol = unique("audit")
    cluster.apply(policy(pol, requiredApprovals=0))
    _issue(cluster, ns, pol, "witnessed")
    patch(cluster, "alice", "breakglassrequest", "witnessed", ns, {"spec": {"revoked": True}})
    wait_phase(cluster, "witnessed", ns, "Revoked")

    log = running_operator.audit_log

    def head_matches_file():
        cm = cluster.get("configmap", "breakglass-audit-head", OPERATOR_NS)
        head = json.loads(cm["data"]["head.json"])
        last = json.loads(log.read_text().splitlines()[-1])
        return head if (head["seq"], head["hash"]) == (last["seq"], last["hash"]) else None

    head = wait_for(head_matches_file, 10, "the published head to match the log's last record")
    assert set(head) >= {"seq", "hash", "time"}
    hmac_secret = cluster.get("secret", "breakglass-audit-hmac", OPERATOR_NS)
    assert hmac_secret is not None and hmac_secret["data"].get("hmac")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert all(r.get("hmac") for r in records), "HMAC is on by default"
    # Requesters and approvers cannot move the head.
    for user in ("alice", "bob"):
        assert rbac_forbidden(
            patch(cluster, user, "configmap", "breakglass-audit-head", OPERATOR_NS, {"data": {"head.json": "{}"}})
        )

    intact = plugin(cluster, "admin", "audit", "verify", str(log))
    assert intact.returncode == 0, intact.stdout + intact.stderr

    truncated = tmp_path / "truncated.log"
    lines = log.read_text().splitlines(keepends=True)
    truncated.write_text("".join(lines[:-1]))
    out = plugin(cluster, "admin", "audit", "verify", str(truncated))
    assert out.returncode == 1, out.stdout + out.stderr

    # Re-seal: change one record and recompute every hash after it, without the HMAC key.
    from breakglass.audit import GENESIS, seal

    victim = next(
        i
        for i, r in enumerate(records)
        if r.get("event") == "issued" and (r.get("request") or {}).get("name") == "witnessed"
    )
    resealed, prev = [], GENESIS
    for i, rec in enumerate(records):
        body = {k: v for k, v in rec.items() if k not in ("hash", "hmac", "seq", "prev")}
        if i == victim:
            body["requester"] = "nobody"
        sealed = seal(body, prev, rec["seq"], None)
        resealed.append(json.dumps(sealed, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
        prev = sealed["hash"]
    rewritten = tmp_path / "resealed.log"
    rewritten.write_text("\n".join(resealed) + "\n")
    out = plugin(cluster, "admin", "audit", "verify", str(rewritten))
    assert out.returncode == 1, out.stdout + out.stderr
    # Even without the HMAC key (e.g. someone who may read the head but not the key's Secret).
    out = plugin(cluster, "admin", "audit", "verify", "--hmac-secret-name", "no-such-secret", str(rewritten))
    assert out.returncode == 1, out.stdout + out.stderr


# =====================================================================================================
# 11. No token the operator's key signs names a system: user or group (webhook path here; the OIDC
#     path is tests/e2e/test_tokens_oidc.py).
# =====================================================================================================
def test_a_token_signed_with_system_masters_claims_is_not_cluster_admin_through_the_webhook(
    cluster, running_operator, apiserver_client_cert
):
    ns = cluster.new_namespace("masters")
    pol = unique("masters")
    cluster.apply(policy(pol, requiredApprovals=0))
    req = _issue(cluster, ns, pol, "stolen-key")
    claims = pyjwt.decode(token_of(cluster, req, "alice"), options={"verify_signature": False})
    # Whoever holds the signing key reuses a live jti (on the allow-list) and claims everything.
    forged = sign(
        cluster,
        dict(
            claims,
            k8s_user="system:admin",
            k8s_groups=["system:masters"],
            sub="admin",
            breakglass=dict(claims.get("breakglass") or {}, request="kube-system/root", policy="system:masters"),
        ),
    )
    code, answer = authenticate(running_operator, apiserver_client_cert, review_body(forged))
    user = ((answer or {}).get("status") or {}).get("user") or {}
    if ((answer or {}).get("status") or {}).get("authenticated"):
        assert user["username"].startswith("breakglass:") and "system:admin" != user["username"], user
        assert all(g.startswith("breakglass:") for g in user.get("groups") or []), user
        assert "system:masters" not in (user.get("groups") or []), user
    can_i = with_token(cluster, forged, "auth", "can-i", "get", "secrets", "-n", "kube-system")
    assert can_i.returncode != 0 or can_i.stdout.strip() == "no", (can_i.stdout, can_i.stderr)
    for args in (
        ("get", "secrets", "-n", "kube-system"),
        ("create", "namespace", unique("owned")),
        ("get", "clusterrolebindings"),
    ):
        out = with_token(cluster, forged, *args)
        assert out.returncode != 0 and (unauthorized(out) or forbidden(out)), (args, out.stdout, out.stderr)
        assert 'User "system:admin"' not in out.stderr
