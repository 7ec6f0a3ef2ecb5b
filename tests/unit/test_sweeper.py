"""Housekeeping driven by the grant ledger (never by labels in tenant namespaces)."""

from __future__ import annotations

import datetime as dt

import pytest
from fake_kube import REQUEST, UID, World

from breakglass import api
from breakglass.sweeper import RETENTION, Sweeper

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


class Swept:
    """A world with a sweeper whose enqueue is recorded."""

    def __init__(self, world: World):
        self.world, self.enqueued = world, []
        self.sweeper = Sweeper(
            world.kube,
            world.ledger,
            world.grants,
            world.keys,
            world.revocations,
            world.audit,
            lambda ns, name: self.enqueued.append((ns, name)),
            world.clock,
        )

    def sweep(self, minutes: float) -> int:
        self.world.at(minutes)
        return self.sweeper.sweep_ledger(self.world.kube.of_kind(REQUEST))


def issued(**request) -> Swept:
    """A request r1 whose grant was issued at CREATED+1m (expires at +11m)."""
    world = World()
    world.policy()
    world.request(**request)
    world.approve("bob")
    world.at(1).reconcile()
    assert world.stored_entry()["state"] == "Active"
    return Swept(world)


def gone(world: World, name: str = "r1") -> None:
    """The request vanished without the operator seeing its delete (finalizer removed by force)."""
    world.kube.remove(REQUEST, "team-a", name)


# --------------------------------------------------------------------------------- sweep_ledger
def test_a_live_grant_whose_request_is_gone_is_revoked_with_audit_request_deleted():
    s = issued()
    jti = s.world.stored_entry()["jti"]
    gone(s.world)
    assert s.sweep(3) == 1
    entry = s.world.stored_entry()
    assert (entry["state"], entry["reason"], entry["cleaned"]) == ("Revoked", "RequestDeleted", True)
    assert not s.world.grant_objects()
    assert s.world.ledger.by_jti(jti)["state"] == "Revoked", "out of the TokenReview allow-list"
    last = s.world.audit_records()[-1]
    assert (last["event"], last["reason"], last["jti"], last["request"]["uid"]) == (
        "revoked",
        "RequestDeleted",
        jti,
        UID,
    )
    assert [p["jti"] for p in s.world.revocations.published] == [jti]


def test_a_request_recreated_under_the_same_name_does_not_keep_the_old_grant_alive():
    s = issued()
    gone(s.world)
    s.world.request(uid="another-uid")  # same namespace/name, a new instance
    s.sweep(3)
    assert s.world.stored_entry()["state"] == "Revoked"
    assert not s.world.grant_objects()
    assert s.enqueued == []


def test_an_interrupted_issue_whose_request_is_gone_is_revoked_and_what_it_created_deleted():
    world = World()
    world.policy()
    world.request()
    world.approve("bob")
    world.kube.fail("create", "Secret", exc=ConnectionResetError("operator killed"))
    with pytest.raises(ConnectionResetError):
        world.at(1).reconcile()
    assert world.stored_entry()["state"] == "Issuing" and len(world.grant_objects()) == 4
    gone(world)
    Swept(world).sweep(2)
    assert world.stored_entry()["state"] == "Revoked" and not world.grant_objects()


def test_an_ended_grant_whose_cleanup_failed_is_cleaned_up():
    s = issued()
    s.world.change_request(revoked=True)
    s.world.kube.fail("delete", "Secret", exc=RuntimeError("apiserver 500"))
    with pytest.raises(Exception):  # noqa: B017 — whatever the fault raised, the pass must not complete
        s.world.at(3).reconcile()
    entry = s.world.stored_entry()
    assert entry["state"] == "Revoked" and not entry.get("cleaned")
    assert {k for k, _, _ in s.world.grant_objects()} == {"Secret"}
    s.world.kube.reset_calls()

    assert s.sweep(4) == 1

    assert not s.world.grant_objects() and s.world.stored_entry()["cleaned"] is True
    deleted = [(c.kind, c.detail) for c in s.world.kube.calls if c.verb == "delete"]
    assert ("Secret", True) in deleted


def test_a_settled_entry_is_removed_only_after_exp_plus_retention_and_once_the_status_is_terminal():
    s = issued()
    s.world.at(12).reconcile()  # expires at +11m
    assert s.world.status()["phase"] == "Expired" and s.world.stored_entry()["cleaned"] is True
    retention_ends = 11 + RETENTION.total_seconds() / 60
    s.sweep(retention_ends)
    assert s.world.stored_entry() is not None, "kept until exp + retention"
    s.sweep(retention_ends + 1)
    assert s.world.stored_entry() is None and s.world.ledger.get(UID) is None


def test_a_settled_entry_is_kept_while_its_request_status_does_not_show_the_end_yet():
    s = issued()
    s.world.kube.fail("patch_status", REQUEST, exc=RuntimeError("apiserver 500"))
    with pytest.raises(RuntimeError):
        s.world.at(12).reconcile()
    assert s.world.stored_entry()["state"] == "Expired" and s.world.status()["phase"] == "Active"
    s.sweep(40)
    assert s.world.stored_entry() is not None


def test_a_settled_entry_of_a_request_that_is_gone_is_removed_after_retention():
    s = issued()
    s.world.at(12).reconcile()
    gone(s.world)
    s.sweep(11 + RETENTION.total_seconds() / 60 + 1)
    assert s.world.stored_entry() is None


def test_a_live_grant_past_its_exp_is_handed_to_the_reconciler_not_ended_by_the_sweeper():
    s = issued()
    s.world.kube.reset_calls()
    assert s.sweep(11) == 0
    assert s.enqueued == [("team-a", "r1")]
    assert s.world.kube.writes() == [], "the reconciler ends it (status, audit, Events in one place)"
    assert s.world.stored_entry()["state"] == "Active"


def test_a_live_grant_before_its_exp_is_left_alone():
    s = issued()
    s.world.kube.reset_calls()
    assert s.sweep(5) == 0
    assert s.enqueued == [] and s.world.kube.writes() == []


def test_one_entry_failing_does_not_stop_the_others():
    s = issued()
    s.world.request(name="r2", uid="uid-2")
    s.world.approve("bob", request="r2", request_uid="uid-2")
    s.world.at(1).reconcile("r2")
    gone(s.world, "r1")
    gone(s.world, "r2")
    s.world.kube.fail("replace", "ConfigMap", name=api.ledger_name(UID), exc=RuntimeError("etcd timeout"))
    assert s.sweep(3) == 1
    assert s.world.stored_entry("uid-2")["state"] == "Revoked"
    assert s.world.stored_entry(UID)["state"] == "Active"
    s.sweep(4)
    assert s.world.stored_entry(UID)["state"] == "Revoked" and not s.world.grant_objects()


def test_lookalike_objects_with_the_operators_labels_are_never_swept():
    s = issued()
    lookalike = s.world.kube.put(
        "RoleBinding",
        {
            "metadata": {
                "name": "breakglass-tenant-made",
                "namespace": "team-b",
                "labels": api.managed_labels("r9", "team-b"),
                "annotations": {api.EXPIRES_AT_ANNOTATION: "2020-01-01T00:00:00Z"},
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}],
        },
    )
    gone(s.world)
    s.sweep(60)
    s.sweep(120)
    assert s.world.kube.get("RoleBinding", "team-b", "breakglass-tenant-made") == lookalike


def test_an_orphan_whose_first_cleanup_fails_is_still_audited_as_revoked_request_deleted():
    """Invariant 4: however it went, a grant whose request is gone gets audit `revoked`/RequestDeleted."""
    s = issued()
    gone(s.world)
    s.world.kube.fail("delete", "RoleBinding", exc=RuntimeError("apiserver 500"))
    s.sweep(3)
    s.sweep(4)
    assert not s.world.grant_objects()
    assert [(r["event"], r.get("reason")) for r in s.world.audit_records()][-1] == ("revoked", "RequestDeleted")


# ---------------------------------------------------------------------------------- kids_in_use
def test_kids_in_use_come_from_ledger_entries_not_yet_past_their_exp():
    s = issued()
    s.world.request(name="r2", uid="uid-2")
    s.world.approve("bob", request="r2", request_uid="uid-2")
    s.world.at(5).reconcile("r2")  # expires at +15m
    for uid, other in ((UID, "kid-old"), ("uid-2", "kid-new")):
        entry = s.world.ledger.get(uid)
        s.world.ledger.update(entry, kid=other)
    s.world.at(5)
    assert s.sweeper.kids_in_use() == {"kid-old", "kid-new"}
    s.world.at(11.5)  # r1 expired 30s ago: still pinned (clock skew margin)
    assert s.sweeper.kids_in_use() == {"kid-old", "kid-new"}
    s.world.at(13)
    assert s.sweeper.kids_in_use() == {"kid-new"}
    s.world.at(17)
    assert s.sweeper.kids_in_use() == set()


def test_a_tenant_secret_claiming_a_key_id_does_not_pin_it():
    s = issued()
    s.world.kube.put(
        "Secret",
        {
            "metadata": {
                "name": "fake-token",
                "namespace": "team-a",
                "labels": api.managed_labels("r1", "team-a"),
                "annotations": {
                    api.KEY_ID_ANNOTATION: "retired-kid",
                    api.EXPIRES_AT_ANNOTATION: "2099-01-01T00:00:00Z",
                },
            },
            "type": api.TOKEN_SECRET_TYPE,
        },
    )
    assert "retired-kid" not in s.sweeper.kids_in_use()


def test_a_grant_issued_after_the_request_list_was_taken_is_not_revoked_as_an_orphan():
    """The sweep's request list may predate a new request: the uid is checked against the API server."""
    s = issued()
    s.world.at(3)
    assert s.sweeper.sweep_ledger([]) == 0  # a stale, empty list
    assert s.world.ledger.get(UID)["state"] == "Active"
    assert "revoked" not in [r["event"] for r in s.world.audit_records()]


def test_a_deleted_requests_live_grant_is_revoked_from_its_delete_event_without_a_full_list():
    s = issued()
    gone(s.world)
    s.world.at(3)
    assert s.sweeper.revoke_orphans_of("team-a", "r1") == 1
    assert s.world.ledger.get(UID)["state"] == "Revoked"
    assert not s.world.grant_objects()
    assert [(r["event"], r.get("reason")) for r in s.world.audit_records()][-1] == ("revoked", "RequestDeleted")
