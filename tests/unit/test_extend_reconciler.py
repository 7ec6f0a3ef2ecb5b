"""Extending an active grant against the in-memory API server (fake_kube): what a pass does to the
ledger, the token Secret, the revocation view, the status and the audit log; and what admission lets
through."""

from __future__ import annotations

import base64
import datetime as dt

import jwt as pyjwt
import pytest
from fake_kube import CREATED, EXTENSION, OPERATOR_NS, UID, World

from breakglass import api
from breakglass.admission import extensions as adm
from breakglass.domain.durations import parse_rfc3339, to_rfc3339

SECRET = ("Secret", OPERATOR_NS, api.token_secret_name(UID))
EXT_UID = "ext-uid-0001"


def world(**extension) -> World:
    w = World()
    w.policy(extension={"allowed": True, "requiredApprovals": 1, "maxTotal": "1h", **extension})
    w.request()
    w.approve("bob")
    w.at(1).reconcile()
    assert w.stored_entry()["state"] == "Active"
    return w


def file_extension(w: World, by="10m", requester="alice", name="x1", uid=EXT_UID, minutes=2.0, request_uid=UID):
    return w.kube.put(
        EXTENSION,
        {
            "apiVersion": api.API_VERSION,
            "metadata": {
                "name": name,
                "namespace": "team-a",
                "uid": uid,
                "creationTimestamp": to_rfc3339(CREATED + dt.timedelta(minutes=minutes)),
            },
            "spec": {
                "request": "r1",
                "requestUID": request_uid,
                "by": by,
                "reason": "migration still running",
                "requester": requester,
                "requesterGroups": ["sre"],
            },
        },
    )


def approve_extension(w: World, approver="carol", decision="Approve", name="x1", uid=EXT_UID, minutes=2.5):
    body = w.approve(approver, decision, minutes=minutes, name=f"{name}-{approver}-{decision.lower()}")
    with w.kube._lock:
        w.kube.objects[(api.KIND_APPROVAL, "team-a", body["metadata"]["name"])]["spec"].update(
            extension=name, extensionUID=uid
        )


def secret_claims(w: World) -> dict:
    token = base64.b64decode(w.kube.get(*SECRET)["data"]["token"]).decode()
    return pyjwt.decode(token, options={"verify_signature": False})


def test_an_approved_extension_puts_a_new_token_with_a_later_exp_into_the_same_secret():
    w = world()
    before, secret_uid = w.stored_entry(), w.kube.get(*SECRET)["metadata"]["uid"]
    file_extension(w)
    approve_extension(w)
    w.at(3).reconcile()
    after = w.stored_entry()
    assert after["jti"] != before["jti"] and after["previousJtis"] == [before["jti"]]
    assert parse_rfc3339(after["expiresAt"]) - parse_rfc3339(before["expiresAt"]) == dt.timedelta(minutes=10)
    assert after["deliveredJti"] == after["jti"]
    claims = secret_claims(w)
    assert claims["jti"] == after["jti"] and claims["exp"] == before["claims"]["exp"] + 600
    assert {k: v for k, v in claims.items() if k not in ("jti", "exp")} == {
        k: v for k, v in before["claims"].items() if k not in ("jti", "exp")
    }
    assert w.kube.get(*SECRET)["metadata"]["uid"] == secret_uid
    # the replaced jti still leads to its grant (its reuse is named), whose current jti is the new one
    assert w.ledger.by_jti(before["jti"])["jti"] == after["jti"] == w.ledger.by_jti(after["jti"])["jti"]
    assert [p["jti"] for p in w.revocations.published] == [before["jti"]]
    status = w.status()
    assert status["phase"] == "Active" and status["tokenId"] == after["jti"]
    assert status["expiresAt"] == after["expiresAt"]
    assert status["extensions"] == [
        {"name": "x1", "by": "10m", "state": "Applied", "at": to_rfc3339(w.now), "approvedBy": ["carol"],
         "expiresAt": after["expiresAt"]}
    ]  # fmt: skip
    extended = [r for r in w.audit_records() if r["event"] == "extended"]
    assert len(extended) == 1 and extended[0]["previousJti"] == before["jti"] and extended[0]["jti"] == after["jti"]
    assert "Extended" in w.kube.events()


def test_a_crash_between_the_ledger_write_and_the_secret_redelivers_the_same_jti_never_a_third():
    w = world()
    old = w.stored_entry()["jti"]
    file_extension(w)
    approve_extension(w)
    w.kube.fail("replace", "Secret", exc=ConnectionResetError("connection reset"))
    with pytest.raises(ConnectionResetError):
        w.at(3).reconcile()
    recorded = w.stored_entry()
    assert recorded["jti"] != old and recorded["deliveredJti"] == old  # recorded, not yet delivered
    assert secret_claims(w)["jti"] == old  # the Secret still has the (now dead) old token
    w.at(4).reconcile()
    again = w.stored_entry()
    assert again["jti"] == recorded["jti"] and again["deliveredJti"] == recorded["jti"]
    assert secret_claims(w)["jti"] == recorded["jti"]
    assert len(again["extensions"]) == 1
    assert len([r for r in w.audit_records() if r["event"] == "extended"]) == 1
    w.at(5).reconcile()
    assert w.stored_entry()["jti"] == recorded["jti"]


def test_the_requesters_own_approval_of_their_extension_does_not_extend():
    w = world()
    jti = w.stored_entry()["jti"]
    file_extension(w)
    approve_extension(w, approver="alice")
    w.at(3).reconcile()
    assert w.stored_entry()["jti"] == jti and not w.stored_entry().get("extensions")


def test_an_extension_beyond_max_total_is_refused_once_and_recorded():
    w = world()
    jti = w.stored_entry()["jti"]
    file_extension(w, by="55m")
    approve_extension(w)
    w.at(3).reconcile()
    w.at(4).reconcile()
    entry = w.stored_entry()
    assert entry["jti"] == jti and [e["state"] for e in entry["extensions"]] == ["Refused"]
    assert w.status()["extensions"][0]["state"] == "Refused"
    assert "extension.maxTotal" in w.status()["extensions"][0]["message"]
    assert w.kube.events().count("ExtensionRefused") == 1
    assert [r["outcome"] for r in w.audit_records() if r["event"] == "extension"] == ["refused"]


def test_two_extensions_add_up_and_the_expiry_requeue_moves():
    w = world()
    file_extension(w)
    approve_extension(w)
    file_extension(w, name="x2", uid="ext-uid-0002", by="5m", minutes=2.2)
    approve_extension(w, name="x2", uid="ext-uid-0002", approver="dave")
    due = w.at(3).reconcile()
    entry = w.stored_entry()
    assert entry["expiresAt"] == to_rfc3339(CREATED + dt.timedelta(minutes=1 + 10 + 10 + 5))
    assert due == parse_rfc3339(entry["expiresAt"]) and len(entry["previousJtis"]) == 2


def test_a_policy_without_extensions_lists_no_extensions():
    w = World()
    w.policy()
    w.request()
    w.approve("bob")
    w.at(1).reconcile()
    w.kube.reset_calls()
    w.at(2).reconcile()
    assert not [c for c in w.kube.calls if c.kind == EXTENSION]


# ---------------------------------------------------------------------------------------- admission
def active_request(requester="alice", phase="Active"):
    return {
        "metadata": {"name": "r1", "namespace": "team-a", "uid": UID},
        "spec": {"policy": "prod", "requester": requester},
        "status": {
            "phase": phase,
            "issuedAt": to_rfc3339(CREATED),
            "expiresAt": to_rfc3339(CREATED + dt.timedelta(minutes=10)),
        },
    }


POLICY = {"spec": {"approvers": {"users": ["bob", "alice"]}, "allowSelfApproval": True,
                   "extension": {"allowed": True, "maxTotal": "30m"}}}  # fmt: skip


def ext_body(user="alice", by="10m", request_uid=UID):
    return {
        "metadata": {"name": "x1", "namespace": "team-a", "uid": EXT_UID},
        "spec": {"request": "r1", "by": by, "reason": "still migrating", "requester": user, "requestUID": request_uid},
    }


EXT_CASES = [
    ("the grant's requester may extend an Active grant", dict(), True, "Allowed"),
    ("someone else may not extend the requester's grant", dict(user="mallory"), False, "NotRequestOwner"),
    ("an extension beyond maxTotal is refused at admission", dict(by="25m"), False, "ExceedsMaxTotal"),
    ("a Pending request cannot be extended", dict(phase="Pending"), False, "RequestNotActive"),
]


@pytest.mark.parametrize("case", [c[1:] for c in EXT_CASES], ids=[c[0] for c in EXT_CASES])
def test_extension_admission(case):
    kw, ok, reason = case
    body = ext_body(user=kw.get("user", "alice"), by=kw.get("by", "10m"))
    req = active_request(phase=kw.get("phase", "Active"))
    verdict = adm.validate_extension_create(
        body,
        {"username": kw.get("user", "alice"), "groups": ["sre"]},
        lambda ns, n: req,
        lambda n: POLICY,
        dt.timedelta(hours=24),
        CREATED + dt.timedelta(minutes=5),
    )
    assert (verdict.ok, verdict.reason) == (ok, reason), verdict.message


def approval_body(user):
    return {
        "metadata": {"name": "a1", "namespace": "team-a"},
        "spec": {"request": "r1", "extension": "x1", "decision": "Approve", "approver": user,
                 "requestUID": UID, "extensionUID": EXT_UID},
    }  # fmt: skip


APPROVAL_CASES = [
    ("a policy approver may approve someone else's extension", "bob", True, "Allowed"),
    ("the requester cannot approve their own extension, even with allowSelfApproval", "alice", False, "SelfApproval"),
    ("a non-approver cannot approve an extension", "mallory", False, "NotAnApprover"),
]


@pytest.mark.parametrize("case", [c[1:] for c in APPROVAL_CASES], ids=[c[0] for c in APPROVAL_CASES])
def test_extension_approval_admission(case):
    user, ok, reason = case
    stored_ext = {**ext_body(), "metadata": {"name": "x1", "namespace": "team-a", "uid": EXT_UID}}
    verdict = adm.validate_extension_approval(
        approval_body(user),
        {"username": user, "groups": []},
        lambda ns, n: active_request(),
        lambda ns, n: stored_ext,
        lambda n: POLICY,
    )
    assert (verdict.ok, verdict.reason) == (ok, reason), verdict.message


def test_extension_stamping_binds_the_approval_to_the_live_request_and_extension_uids():
    stored_ext = {**ext_body(), "metadata": {"name": "x1", "namespace": "team-a", "uid": EXT_UID}}
    body = approval_body("bob")
    body["spec"].pop("requestUID"), body["spec"].pop("extensionUID")
    verdict, fields, owners = adm.stamp_extension_approval(
        body, lambda ns, n: active_request(), lambda ns, n: stored_ext
    )
    assert verdict.ok and fields == {"requestUID": UID, "extensionUID": EXT_UID}
    assert {o["kind"] for o in owners} == {api.KIND_REQUEST, api.KIND_EXTENSION}
    body["spec"]["extensionUID"] = "forged"
    verdict, _, _ = adm.stamp_extension_approval(body, lambda ns, n: active_request(), lambda ns, n: stored_ext)
    assert not verdict.ok
