"""The reconciler against an in-memory API server (fake_kube): what one pass does to the request's
status, the grant ledger, the objects in the cluster and the audit log, for a fixed `now`."""

from __future__ import annotations

import base64
import collections
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import jwt as pyjwt
import pytest
from fake_kube import CREATED, OPERATOR_NS, REQUEST, UID, World

from breakglass import api
from breakglass.domain.conditions import get_condition
from breakglass.k8s.builders import grant_rolebinding_name
from breakglass.k8s.client import Conflict

FIN = [api.FINALIZER]
RB_A = ("RoleBinding", "team-a", grant_rolebinding_name(UID, "view"))
RB_B = ("RoleBinding", "team-b", grant_rolebinding_name(UID, "view"))
READER_ROLE = ("Role", OPERATOR_NS, api.reader_role_name(UID))
READER_RB = ("RoleBinding", OPERATOR_NS, api.reader_role_name(UID))
SECRET = ("Secret", OPERATOR_NS, api.token_secret_name(UID))
LEDGER_CM = ("ConfigMap", OPERATOR_NS, api.ledger_name(UID))
ALL_GRANT_OBJECTS = {RB_A, RB_B, READER_ROLE, READER_RB, SECRET}


def audit_summary(records: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in records:
        ev = r["event"]
        if ev == "approval":
            out.append(f"approval:{r['approver']}:{r['decision'] if r['counted'] else 'ignored'}")
        elif ev in ("revoked", "failed", "denied"):
            out.append(f"{ev}:{r['reason']}")
        elif ev == "review":
            out.append(f"review:{r['outcome']}")
        else:
            out.append(ev)
    return out


def kinds(calls, verb: str) -> dict[str, int]:
    """How many objects of each kind a pass created (created=True) or deleted (deleted=True)."""
    return dict(collections.Counter(c.kind for c in calls if c.verb == verb and c.detail is True))


def conditions(status: dict[str, Any] | None) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (status or {}).get("conditions") or []}


# ------------------------------------------------------------------------------------------- given
def issue_earlier(world: World, minutes: float = 1) -> None:
    """An earlier pass issued the grant (one approval from bob)."""
    world.approve("bob")
    world.at(minutes).reconcile()
    assert world.stored_entry()["state"] == "Active"


def interrupted_issue(world: World) -> None:
    """An earlier pass wrote the ledger, then died before creating anything (a transient error)."""
    world.kube.fail("create", "RoleBinding", exc=ConnectionResetError("connection reset"))
    with pytest.raises(ConnectionResetError):
        world.at(1).reconcile()
    assert world.stored_entry()["state"] == "Issuing" and not world.grant_objects()


GIVEN = {None: lambda w: None, "issued": issue_earlier, "interrupted": interrupted_issue}


@dataclass
class Case:
    # given
    spec: dict = field(default_factory=dict)  # the request's spec, from creation
    status: dict | None = None  # a status written before (None: never seen)
    ledger: str | None = None  # key of GIVEN: what earlier passes did
    then: Any = None  # callable(world): what changed since
    policy: dict | None = field(default_factory=dict)  # policy spec changes; None: no policy
    namespaces: tuple = ("team-a", "team-b")  # namespaces that exist
    minutes: float = 2  # now = CREATED + minutes
    # expected
    phase: str | None = None  # None: the request is gone
    ledger_state: str | None = None
    created: dict = field(default_factory=dict)
    deleted: dict = field(default_factory=dict)
    audit: list = field(default_factory=list)
    conds: dict = field(default_factory=dict)  # condition type -> status (exactly these)


def approvals(*args):
    def then(world: World):
        for a in args:
            world.approve(**a) if isinstance(a, dict) else world.approve(a)

    return then


def revoke(world: World):
    world.change_request(revoked=True)


def delete(world: World):
    world.delete_request()


def delete_secret(world: World):
    world.kube.remove(*SECRET)


def delete_with_finalizer(world: World):
    """A pending request carries the finalizer (added before it waits); then it is deleted."""
    with world.kube._lock:
        world.kube.objects[(REQUEST, "team-a", "r1")]["metadata"]["finalizers"] = list(FIN)
    world.delete_request()


def review_by(who, decision="Review"):
    return lambda world: world.approve(who, decision, minutes=2.5)


ISSUE_ALL = {"ConfigMap": 1, "RoleBinding": 3, "Role": 1, "Secret": 1}
DELETE_ALL = {"RoleBinding": 3, "Role": 1, "Secret": 1}

CASES = [
    (
        "a fresh request without approvals waits, audited as requested",
        Case(phase="Pending", audit=["requested"], conds={"Approved": "False"}),
    ),
    (
        "one approval from a policy approver issues the grant: ledger, RBAC, reader Role and Secret",
        Case(
            then=approvals("bob"),
            phase="Active",
            ledger_state="Active",
            created=ISSUE_ALL,
            audit=["requested", "approval:bob:Approve", "issued"],
            conds={"Approved": "True", "Issued": "True"},
        ),
    ),
    (
        "an approval for a different request uid is ignored and audited as not counted",
        Case(
            then=approvals({"approver": "bob", "request_uid": "an-earlier-request-uid"}),
            phase="Pending",
            audit=["requested", "approval:bob:ignored"],
            conds={"Approved": "False"},
        ),
    ),
    (
        "an approval created before the request (same uid) is ignored and audited as not counted",
        Case(
            then=approvals({"approver": "bob", "minutes": -1}),
            phase="Pending",
            audit=["requested", "approval:bob:ignored"],
            conds={"Approved": "False"},
        ),
    ),
    (
        "an approval by someone who is not an approver is ignored and audited as not counted",
        Case(
            then=approvals({"approver": "mallory", "groups": ("contractors",)}),
            phase="Pending",
            audit=["requested", "approval:mallory:ignored"],
            conds={"Approved": "False"},
        ),
    ),
    (
        "a deny by an approver denies, and nothing is created",
        Case(
            then=approvals({"approver": "dave", "decision": "Deny"}),
            phase="Denied",
            audit=["requested", "approval:dave:Deny", "denied:DeniedByApprover"],
            conds={"Approved": "False"},
        ),
    ),
    (
        "a missing policy fails the request",
        Case(policy=None, phase="Failed", audit=["requested", "failed:PolicyNotFound"], conds={"Approved": "Unknown"}),
    ),
    (
        "no approval before the approval timeout denies",
        Case(minutes=31, phase="Denied", audit=["requested", "denied:ApprovalTimeout"], conds={"Approved": "False"}),
    ),
    (
        "emergency access is issued at once and a review is required",
        Case(
            spec={"emergency": True},
            phase="Active",
            ledger_state="Active",
            created=ISSUE_ALL,
            audit=["requested", "issued"],
            conds={"Approved": "True", "Issued": "True"},
        ),
    ),
    (
        "a Review approval on an emergency grant marks it reviewed",
        Case(
            spec={"emergency": True},
            ledger="issued",
            then=review_by("carol"),
            minutes=3,
            phase="Active",
            ledger_state="Active",
            audit=["approval:carol:Review", "review:reviewed"],
            conds={"Approved": "True", "Issued": "True", "ReviewOverdue": "False"},
        ),
    ),
    (
        "an emergency grant nobody reviewed in time is overdue",
        Case(
            spec={"emergency": True},
            ledger="issued",
            minutes=7,
            phase="Active",
            ledger_state="Active",
            audit=["review:overdue"],
            conds={"Approved": "True", "Issued": "True", "ReviewOverdue": "True"},
        ),
    ),
    (
        "a live grant before its exp is left as it is",
        Case(
            ledger="issued",
            minutes=5,
            phase="Active",
            ledger_state="Active",
            conds={"Approved": "True", "Issued": "True"},
        ),
    ),
    (
        "the grant expires at exp: ledger Expired, every object deleted",
        Case(
            ledger="issued",
            minutes=11,
            phase="Expired",
            ledger_state="Expired",
            deleted=DELETE_ALL,
            audit=["expired"],
            conds={"Approved": "True", "Issued": "False", "Expired": "True"},
        ),
    ),
    (
        "spec.revoked revokes a live grant: ledger Revoked, every object deleted",
        Case(
            ledger="issued",
            then=revoke,
            minutes=3,
            phase="Revoked",
            ledger_state="Revoked",
            deleted=DELETE_ALL,
            audit=["revoked:Revoked"],
            conds={"Approved": "True", "Issued": "False", "Revoked": "True"},
        ),
    ),
    (
        "a token Secret deleted before exp revokes the grant",
        Case(
            ledger="issued",
            then=delete_secret,
            minutes=3,
            phase="Revoked",
            ledger_state="Revoked",
            deleted={"RoleBinding": 3, "Role": 1},
            audit=["revoked:SecretDeleted"],
            conds={"Approved": "True", "Issued": "False", "Revoked": "True"},
        ),
    ),
    (
        "deleting the request revokes its grant with reason RequestDeleted and lets the request go",
        Case(
            ledger="issued",
            then=delete,
            minutes=3,
            phase=None,
            ledger_state="Revoked",
            deleted=DELETE_ALL,
            audit=["revoked:RequestDeleted"],
        ),
    ),
    (
        "deleting a pending request is audited as revoked with reason RequestDeleted",
        Case(status={"phase": "Pending"}, then=delete_with_finalizer, phase=None, audit=["revoked:RequestDeleted"]),
    ),
    (
        "an Active status without a ledger entry is revoked as LedgerEntryMissing and no token is issued",
        Case(
            status={"phase": "Active", "tokenId": "lost-jti"},
            then=approvals("bob"),
            phase="Revoked",
            audit=["approval:bob:Approve", "revoked:LedgerEntryMissing"],
            conds={"Revoked": "True"},
        ),
    ),
    (
        "an issue interrupted after the ledger write is resumed from the ledger, not planned again",
        Case(
            spec={"emergency": True},
            ledger="interrupted",
            phase="Active",
            ledger_state="Active",
            created={"RoleBinding": 3, "Role": 1, "Secret": 1},
            audit=["issued"],  # `requested` was recorded by the interrupted pass, before it died
            conds={"Approved": "True", "Issued": "True"},
        ),
    ),
    (
        "a target namespace that does not exist rolls the issue back: Failed, no token delivered",
        Case(
            spec={"namespaces": ["team-a", "team-gone"]},
            then=approvals("bob"),
            phase="Failed",
            ledger_state="Failed",
            created={"ConfigMap": 1, "RoleBinding": 1},
            deleted={"RoleBinding": 1},
            audit=["requested", "approval:bob:Approve", "failed:IssueFailed"],
            conds={"Approved": "True", "Issued": "False"},
        ),
    ),
]


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_one_reconcile_pass(case: Case):
    world = World(namespaces=case.namespaces)
    if case.policy is not None:
        world.policy(**case.policy)
    world.request(status=case.status, **case.spec)
    GIVEN[case.ledger](world)
    if case.then:
        case.then(world)
    world.kube.reset_calls()
    before = len(world.audit_records())

    world.at(case.minutes).reconcile()

    status = world.status()
    calls = world.kube.calls
    entry = world.stored_entry()
    got = {
        "phase": status.get("phase") if status is not None else None,
        "ledger": entry and entry["state"],
        "created": kinds(calls, "create"),
        "deleted": kinds(calls, "delete"),
        "audit": audit_summary(world.audit_records()[before:]),
        "conds": conditions(status),
    }
    want = {
        "phase": case.phase,
        "ledger": case.ledger_state,
        "created": case.created,
        "deleted": case.deleted,
        "audit": case.audit,
        "conds": case.conds if case.phase else {},
    }
    assert got == want
    if entry:  # the operator's view agrees with what is stored
        assert world.ledger.get(UID)["state"] == entry["state"]
    if case.phase in api.TERMINAL_PHASES or case.phase is None:
        assert not world.grant_objects(), "a settled grant leaves nothing behind"
        # ending a grant never removes the revoke-on-delete finalizer (it goes with the deletion)
        removals = [c for c in world.kube.calls if c.verb == "patch" and api.FINALIZER not in (c.detail or [])]
        assert not removals or case.phase is None


# ------------------------------------------------------------------------------------------ approvals
def test_an_approval_left_from_an_earlier_request_of_the_same_name_never_counts_and_says_why():
    world = fresh()
    world.approve("bob", request_uid="uid-of-the-deleted-request", name="old-approval")
    world.at(1).reconcile()
    assert world.status()["phase"] == "Pending" and world.stored_entry() is None
    assert world.status()["ignoredApprovals"] == ["old-approval"] and "approvals" not in world.status()
    record = world.audit_records()[-1]
    assert (record["event"], record["approval"], record["counted"]) == ("approval", "old-approval", False)
    assert "uid-of-the-deleted-request" in record["why"]
    assert world.kube.events() == ["Requested", "ApprovalIgnored"]
    world.at(2).reconcile()
    assert len([r for r in world.audit_records() if r["event"] == "approval"]) == 1, "reported once"


# ------------------------------------------------------------------------------------------ issuing
def fresh(namespaces=("team-a", "team-b"), **request) -> World:
    world = World(namespaces=namespaces)
    world.policy()
    world.request(**request)
    return world


def test_issue_writes_the_ledger_first_then_rolebindings_then_the_reader_role_then_the_secret_then_ledger_active():
    world = fresh()
    world.approve("bob")
    world.at(1).reconcile()

    writes = [(c.verb, c.kind, c.namespace, c.name) for c in world.kube.writes()]
    assert writes == [
        ("patch", REQUEST, "team-a", "r1"),  # the finalizer is in place before anything is granted
        ("create", *LEDGER_CM),
        ("create", *RB_A),
        ("create", *RB_B),
        ("create", *READER_ROLE),
        ("create", *READER_RB),
        ("create", *SECRET),
        ("replace", *LEDGER_CM),
        ("patch_status", REQUEST, "team-a", "r1"),
    ]
    created_ledger = next(c for c in world.kube.calls if c.verb == "create" and c.kind == "ConfigMap")
    assert created_ledger.detail is True
    entry = world.stored_entry()
    assert entry["state"] == "Active" and all(o["uid"] for o in entry["objects"])
    assert {(o["kind"], o["namespace"], o["name"]) for o in entry["objects"]} == ALL_GRANT_OBJECTS
    secret = world.kube.get(*SECRET)
    assert entry["secret"] == {"namespace": OPERATOR_NS, "name": SECRET[2], "uid": secret["metadata"]["uid"]}
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert pyjwt.decode(token, options={"verify_signature": False})["jti"] == entry["jti"]
    status = world.status()
    assert status["secretRef"] == {"namespace": OPERATOR_NS, "name": SECRET[2]}
    assert status["tokenId"] == entry["jti"] and status["username"] == api.grant_username("team-a", "r1", UID)
    assert world.kube.events() == ["Requested", "Approved", "Issued"]


def test_the_grant_rolebindings_bind_the_uid_named_identity_and_the_reader_role_reads_one_secret_for_the_requester():
    world = fresh()
    world.approve("bob")
    world.at(1).reconcile()
    nonce = world.stored_entry()["nonce"]
    rb = world.kube.get(*RB_B)
    assert rb["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"breakglass:team-a:r1:{UID}"}
    ]
    assert rb["roleRef"]["name"] == "view" and rb["metadata"]["annotations"][api.GRANT_NONCE_ANNOTATION] == nonce
    role = world.kube.get(*READER_ROLE)
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": [SECRET[2]]}
    ]
    assert world.kube.get(*READER_RB)["subjects"][0]["name"] == "alice"


def test_a_crash_right_after_the_secret_create_resumes_with_the_same_jti_and_no_second_secret():
    world = fresh()
    world.approve("bob")
    world.kube.fail("create", "Secret", after=True, exc=ConnectionResetError("operator killed"))
    with pytest.raises(ConnectionResetError):
        world.at(1).reconcile()
    first = world.stored_entry()
    secret_before = world.kube.get(*SECRET)
    assert first["state"] == "Issuing" and secret_before is not None
    assert "phase" not in world.status(), "no status claims a token the ledger has not marked Active"

    world.at(1.5).reconcile()

    entry = world.stored_entry()
    assert entry["state"] == "Active" and entry["jti"] == first["jti"] and entry["nonce"] == first["nonce"]
    secret_creates = [c for c in world.kube.calls if c.verb == "create" and c.kind == "Secret"]
    assert [c.detail for c in secret_creates] == [True, False], "the Secret is adopted, never created twice"
    secret = world.kube.get(*SECRET)
    assert secret["metadata"]["uid"] == secret_before["metadata"]["uid"] == entry["secret"]["uid"]
    assert secret["metadata"]["annotations"][api.TOKEN_ID_ANNOTATION] == first["jti"]
    assert world.status()["phase"] == "Active" and world.status()["tokenId"] == first["jti"]
    assert [r["jti"] for r in world.audit_records() if r["event"] == "issued"] == [first["jti"]]
    assert [c.verb for c in world.kube.calls if c.kind == "ConfigMap" and c.verb == "create"] == ["create"]


def test_the_approval_that_led_to_a_resumed_issue_is_still_audited_and_shown_in_status():
    """Invariant 10: every counted approval is its own audit record, also when the pass that counted it
    died after the ledger write (the next pass resumes from the ledger)."""
    world = fresh()
    world.approve("bob")
    world.kube.fail("create", "RoleBinding", exc=ConnectionResetError("connection reset"))
    with pytest.raises(ConnectionResetError):
        world.at(1).reconcile()
    world.at(1.5).reconcile()
    assert world.status()["phase"] == "Active"
    assert "approval:bob:Approve" in audit_summary(world.audit_records())
    assert [a["approver"] for a in world.status().get("approvals", [])] == ["bob"]


def test_a_missing_target_namespace_rolls_back_everything_and_marks_the_grant_failed():
    world = fresh(namespaces=("team-a",))  # team-b, a target, does not exist
    world.approve("bob")
    world.at(1).reconcile()

    entry = world.stored_entry()
    assert entry["state"] == "Failed" and entry["reason"] == "IssueFailed" and entry.get("cleaned") is True
    assert "team-b" in entry["message"]
    assert not world.grant_objects(), "nothing the issue created is left"
    assert not [c for c in world.kube.calls if c.kind == "Secret" and c.verb == "create"], "no token delivered"
    status = world.status()
    assert status["phase"] == "Failed" and "tokenId" not in status and "secretRef" not in status
    issued = get_condition(status["conditions"], api.COND_ISSUED)
    assert (issued["status"], issued["reason"]) == ("False", "IssueFailed")
    assert audit_summary(world.audit_records())[-1] == "failed:IssueFailed"
    assert world.kube.events()[-1] == "Failed"
    assert api.FINALIZER in world.kube.get(REQUEST, "team-a", "r1")["metadata"]["finalizers"], "kept until deletion"

    world.kube.reset_calls()
    world.at(2).reconcile()  # and it stays failed: never a second attempt, never a token
    assert not [c for c in world.kube.calls if c.verb == "create"]
    assert world.status()["phase"] == "Failed"


def test_an_object_under_a_planned_name_without_our_nonce_is_name_taken_and_left_untouched():
    world = fresh()
    squatter = world.kube.put(
        "RoleBinding",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": RB_B[2], "namespace": "team-b", "labels": api.managed_labels("r1", "team-a")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}],
        },
    )
    world.approve("bob")
    world.at(1).reconcile()

    assert world.kube.get(*RB_B) == squatter, "the operator never modifies what it did not create"
    assert not [c for c in world.kube.calls if c.verb == "delete" and c.name == RB_B[2] and c.namespace == "team-b"]
    assert world.grant_objects() == {RB_B}
    entry = world.stored_entry()
    assert (entry["state"], entry["reason"]) == ("Failed", "NameTaken")
    assert world.status()["phase"] == "Failed"
    assert audit_summary(world.audit_records())[-1] == "failed:NameTaken"


def test_a_copy_of_our_object_with_our_nonce_but_other_subjects_is_not_adopted():
    """A tenant who read our nonce (e.g. from an object it may see) still cannot make us adopt its binding."""
    world = fresh()
    world.approve("bob")
    world.kube.fail("create", "RoleBinding", name=RB_B[2], exc=ConnectionResetError("reset"))
    with pytest.raises(ConnectionResetError):
        world.at(1).reconcile()
    nonce = world.stored_entry()["nonce"]
    world.kube.put(
        "RoleBinding",
        {
            "metadata": {"name": RB_B[2], "namespace": "team-b", "annotations": {api.GRANT_NONCE_ANNOTATION: nonce}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}],
        },
    )
    world.at(1.5).reconcile()
    assert world.stored_entry()["reason"] == "NameTaken"
    assert world.grant_objects() == {RB_B} and world.kube.get(*RB_B)["subjects"][0]["name"] == "mallory"


def test_a_status_write_that_loses_a_race_is_retried_without_a_second_token():
    world = fresh()
    world.approve("bob")
    world.kube.fail("patch_status", REQUEST, exc=Conflict("request team-a/r1 changed meanwhile"))
    with pytest.raises(Conflict):
        world.at(1).reconcile()
    jti = world.stored_entry()["jti"]
    world.at(1.5).reconcile()
    assert world.status()["phase"] == "Active" and world.status()["tokenId"] == jti
    assert [c.detail for c in world.kube.calls if c.verb == "create"] == [True] * 6, "nothing planned again"
    assert len(world.kube.of_kind("Secret")) == 1


# ----------------------------------------------------------------------------------------- revoking
def test_revoke_deletes_exactly_the_ledgers_objects_and_a_lookalike_with_our_labels_survives():
    world = fresh()
    issue_earlier(world)
    lookalike = world.kube.put(
        "RoleBinding",
        {
            "metadata": {
                "name": f"breakglass-{UID}-edit-00000000",
                "namespace": "team-a",
                "labels": api.managed_labels("r1", "team-a"),
                "annotations": {api.REQUEST_UID_ANNOTATION: UID},
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "someone-else"}],
        },
    )
    other_secret = world.kube.put(
        "Secret",
        {
            "metadata": {
                "name": "breakglass-token-other",
                "namespace": OPERATOR_NS,
                "labels": api.managed_labels("r1", "team-a"),
            },
            "type": api.TOKEN_SECRET_TYPE,
        },
    )
    jti = world.stored_entry()["jti"]
    world.change_request(revoked=True)
    world.kube.reset_calls()

    world.at(3).reconcile()

    deleted = {(c.kind, c.namespace, c.name) for c in world.kube.calls if c.verb == "delete"}
    assert deleted == ALL_GRANT_OBJECTS
    assert world.kube.get("RoleBinding", "team-a", lookalike["metadata"]["name"]) == lookalike
    assert world.kube.get("Secret", OPERATOR_NS, "breakglass-token-other") == other_secret
    entry = world.stored_entry()
    assert (entry["state"], entry["reason"], entry["cleaned"]) == ("Revoked", "Revoked", True)
    assert world.ledger.by_jti(jti)["state"] == "Revoked", "out of the TokenReview allow-list"
    assert [p["jti"] for p in world.revocations.published] == [jti]
    # the ledger is marked before anything is deleted: the token stops authenticating first
    verbs = [(c.verb, c.kind) for c in world.kube.writes()]
    assert verbs.index(("replace", "ConfigMap")) < verbs.index(("delete", "RoleBinding"))


def test_a_ledger_write_failing_during_revoke_still_deletes_the_objects_then_raises():
    world = fresh()
    issue_earlier(world)
    world.change_request(revoked=True)
    world.kube.fail("replace", "ConfigMap", exc=RuntimeError("etcd request timed out"))

    with pytest.raises(RuntimeError, match="etcd"):
        world.at(3).reconcile()

    assert not world.grant_objects(), "RBAC and delivery are gone even though the ledger write failed"
    assert world.stored_entry()["state"] == "Active"
    assert world.status()["phase"] == "Active"
    assert "revoked:Revoked" not in audit_summary(world.audit_records())

    world.at(3.5).reconcile()  # the retry finishes the bookkeeping
    entry = world.stored_entry()
    assert (entry["state"], entry["cleaned"]) == ("Revoked", True)
    assert world.status()["phase"] == "Revoked"
    assert audit_summary(world.audit_records())[-1] == "revoked:Revoked"


def test_a_request_deleted_while_its_grant_is_live_is_revoked_and_audited_with_reason_request_deleted():
    world = fresh()
    issue_earlier(world)
    jti = world.stored_entry()["jti"]
    world.delete_request()
    world.at(3).reconcile()
    assert world.kube.get(REQUEST, "team-a", "r1") is None, "the finalizer is removed once revoked"
    entry = world.stored_entry()
    assert (entry["state"], entry["reason"]) == ("Revoked", "RequestDeleted")
    assert not world.grant_objects()
    last = world.audit_records()[-1]
    assert (last["event"], last["reason"], last["jti"]) == ("revoked", "RequestDeleted", jti)


ACTIVE_STATUS = {
    "phase": "Active",
    "tokenId": "lost",
    "message": "access granted until 2026-01-01T12:11:00Z",
    "secretRef": {"namespace": OPERATOR_NS, "name": SECRET[2]},
    "conditions": [
        {
            "type": "Approved",
            "status": "True",
            "reason": "Approved",
            "message": "approved by bob (1/1)",
            "lastTransitionTime": "2026-01-01T12:01:00Z",
            "observedGeneration": 1,
        },
        {
            "type": "Issued",
            "status": "True",
            "reason": "TokenIssued",
            "message": "token lost valid until later",
            "lastTransitionTime": "2026-01-01T12:01:00Z",
            "observedGeneration": 1,
        },
    ],
}


def test_an_active_status_without_a_ledger_entry_never_gets_a_token():
    world = fresh(status=ACTIVE_STATUS, finalizers=FIN)
    world.approve("bob")
    world.at(3).reconcile()
    assert world.stored_entry() is None
    assert not [c for c in world.kube.calls if c.verb == "create"]
    status = world.status()
    revoked = get_condition(status["conditions"], api.COND_REVOKED)
    assert (status["phase"], revoked["status"], revoked["reason"]) == ("Revoked", "True", "LedgerEntryMissing")
    assert "secretRef" not in status
    world.at(4).reconcile()
    assert world.stored_entry() is None and world.status()["phase"] == "Revoked"


# ----------------------------------------------------------------------------------------- emergency
def test_emergency_access_requires_a_review_and_a_review_approval_closes_it():
    world = fresh(emergency=True)
    world.at(1).reconcile()
    status = world.status()
    assert status["phase"] == "Active"
    assert status["review"] == {"required": True, "dueAt": "2026-01-01T12:06:00Z"}
    assert world.at(1).reconciler.reconcile("team-a", "r1") == CREATED + dt.timedelta(minutes=6), (
        "the reconciler comes back when the review is due"
    )
    assert world.kube.events()[-1] == "ReviewRequired"

    world.approve("alice", "Review", minutes=2, groups=("sre",))  # the requester cannot review herself
    world.approve("carol", "Review", minutes=2.5)
    world.at(3).reconcile()
    status = world.status()
    assert status["review"]["reviewer"] == "carol" and status["review"]["reviewedAt"] == "2026-01-01T12:03:00Z"
    summary = audit_summary(world.audit_records())
    assert summary[-3:] == ["approval:carol:Review", "approval:alice:ignored", "review:reviewed"]
    assert world.at(3).reconciler.reconcile("team-a", "r1") == CREATED + dt.timedelta(minutes=11)


def test_revoking_for_a_missing_ledger_entry_does_not_leave_the_issued_condition_true():
    """Every other revocation flips Issued to False; a Revoked request must not keep saying
    `Issued=True: token ... valid until ...` (what `kubectl wait --for=condition=Issued` reads)."""
    world = fresh(status=ACTIVE_STATUS, finalizers=FIN)
    world.at(3).reconcile()
    status = world.status()
    assert status["phase"] == "Revoked"
    assert get_condition(status["conditions"], api.COND_ISSUED)["status"] != "True"


def test_revoking_an_interrupted_issue_deletes_what_it_created_found_by_the_grants_nonce():
    world = fresh()
    world.approve("bob")
    world.kube.fail("create", "Role", exc=ConnectionResetError("reset"))  # both RoleBindings exist by then
    with pytest.raises(ConnectionResetError):
        world.at(1).reconcile()
    assert world.grant_objects() == {RB_A, RB_B}
    assert not any(o["uid"] for o in world.stored_entry()["objects"]), "uids are recorded only at Active"
    world.change_request(revoked=True)

    world.at(2).reconcile()

    assert not world.grant_objects()
    entry = world.stored_entry()
    assert (entry["state"], entry["cleaned"]) == ("Revoked", True)
    assert world.status()["phase"] == "Revoked" and "tokenId" not in world.status()
    assert not [c for c in world.kube.calls if c.kind == "Secret" and c.verb == "create"]


def test_a_request_deleted_while_cleanup_fails_once_is_still_audited_as_revoked_request_deleted():
    """Invariant 4: a grant whose request is gone is revoked with audit `revoked`/RequestDeleted,
    however it went — also when the first cleanup attempt hit a transient API error."""
    world = fresh()
    issue_earlier(world)
    world.delete_request()
    world.kube.fail("delete", "RoleBinding", exc=RuntimeError("apiserver 500"))
    with pytest.raises(Exception):  # noqa: B017 — whatever the fault raised, the pass must not complete
        world.at(3).reconcile()
    world.at(4).reconcile()
    assert world.kube.get(REQUEST, "team-a", "r1") is None and not world.grant_objects()
    assert "revoked:RequestDeleted" in audit_summary(world.audit_records())
