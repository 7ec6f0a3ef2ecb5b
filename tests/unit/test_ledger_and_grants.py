"""The grant ledger (ledger.py) and the effects on a grant (grants.py) against fake_kube."""

from __future__ import annotations

import base64
import datetime as dt

import jwt as pyjwt
import pytest
from fake_kube import CREATED, OPERATOR_NS, RING, UID, World

from breakglass import api
from breakglass.domain import decisions as D
from breakglass.domain.policy import Policy, RequestView
from breakglass.grants import CleanupIncomplete, IssueFailed
from breakglass.k8s import builders
from breakglass.k8s.client import Conflict
from breakglass.ledger import Ledger, configmap_for, entry_from_configmap, is_live
from breakglass.settings import Settings

APPROVED = D.Decision(D.ISSUE, "Approved", "approved by bob (1/1)", approvers=("bob",))


def planned(world: World, decision: D.Decision = APPROVED, policy_changes=None, **request) -> dict:
    world.policy(**(policy_changes or {}))
    req = world.request(**request)
    policy = Policy.from_resource("prod", world.kube.get("BreakGlassPolicy", None, "prod")["spec"])
    return world.grants.plan(req, RequestView.from_resource(req), policy, decision, world.now)


def recorded(world: World, **request) -> dict:
    entry, created = world.ledger.create(planned(world, **request))
    assert created
    return entry


# ------------------------------------------------------------------------------------------ ledger
def test_the_ledger_is_create_if_absent_by_request_uid_so_a_uid_gets_one_jti():
    world = World().at(1)
    first = recorded(world)
    again, created = world.ledger.create(planned(World().at(2)))  # another replica planned anew
    assert not created and again["jti"] == first["jti"] and again["nonce"] == first["nonce"]
    assert len(world.kube.of_kind("ConfigMap")) == 1


def test_a_second_replica_with_a_stale_view_issues_the_first_replicas_jti_never_a_second_token():
    a = World().at(1)
    a.policy()
    a.request()
    a.approve("bob")
    b = World(kube=a.kube).at(1)  # a second replica: same cluster, its view synced before a's write
    a.kube.fail("create", "RoleBinding", exc=ConnectionResetError("a dies after its ledger write"))
    with pytest.raises(ConnectionResetError):
        a.reconcile()
    jti = a.stored_entry()["jti"]
    assert b.ledger.get(UID) is None, "b's view has not seen a's write"

    b.at(1.5).reconcile()

    assert a.stored_entry()["jti"] == jti and a.stored_entry()["state"] == "Active"
    assert len(a.kube.of_kind("Secret")) == 1
    token = base64.b64decode(a.kube.of_kind("Secret")[0]["data"]["token"]).decode()
    assert pyjwt.decode(token, options={"verify_signature": False})["jti"] == jti
    assert b.status()["tokenId"] == jti


def test_a_ledger_update_from_a_stale_copy_conflicts_and_leaves_the_view_alone():
    world = World().at(1)
    entry = recorded(world)
    newer = world.ledger.update(entry, state="Active")
    with pytest.raises(Conflict):
        world.ledger.update(entry, state="Revoked")
    assert world.stored_entry()["state"] == "Active" and world.ledger.get(UID)["state"] == "Active"
    assert int(newer["resourceVersion"]) > int(entry["resourceVersion"])


def test_before_the_watch_synced_a_lookup_asks_the_api_server_never_a_false_miss():
    world = World().at(1)
    recorded(world)
    cold = Ledger(world.kube, OPERATOR_NS)  # not synced yet
    world.kube.reset_calls()
    assert cold.get(UID)["request"]["uid"] == UID
    assert [(c.verb, c.kind) for c in world.kube.calls] == [("read", "ConfigMap")]
    cold._relist()
    world.kube.reset_calls()
    assert cold.get(UID)["request"]["uid"] == UID and world.kube.calls == []


def test_a_stale_watch_event_never_rolls_back_our_own_newer_write():
    world = World().at(1)
    entry = recorded(world)
    old_event = dict(entry)
    active = world.ledger.update(entry, state="Active")
    world.ledger._remember(old_event)
    assert world.ledger.get(UID)["state"] == "Active"
    assert world.ledger.by_jti(active["jti"])["state"] == "Active"


def test_the_view_finds_grants_by_jti_and_forgets_deleted_ones():
    world = World().at(1)
    entry = recorded(world)
    assert world.ledger.by_jti(entry["jti"])["request"]["uid"] == UID
    assert world.ledger.by_jti("unknown") is None
    world.ledger.delete(entry)
    assert world.stored_entry() is None and world.ledger.by_jti(entry["jti"]) is None
    assert world.ledger.get(UID) is None


def test_a_ledger_entry_changed_by_someone_else_is_not_deleted():
    world = World().at(1)
    entry = recorded(world)
    world.ledger.update(entry, state="Active")
    world.ledger.delete(entry)  # our copy is stale
    assert world.stored_entry()["state"] == "Active"


def test_the_relist_reads_only_ledger_configmaps_and_skips_unreadable_ones():
    world = World().at(1)
    entry = recorded(world)
    world.kube.put(
        "ConfigMap",
        {
            "metadata": {
                "name": "breakglass-grant-junk",
                "namespace": OPERATOR_NS,
                "labels": {api.MANAGED_BY_LABEL: api.MANAGED_BY, api.LEDGER_LABEL: "grant"},
            },
            "data": {api.LEDGER_KEY: "{not json"},
        },
    )
    world.kube.put(
        "ConfigMap",
        {
            "metadata": {"name": "unrelated", "namespace": OPERATOR_NS},
            "data": {
                api.LEDGER_KEY: configmap_for(
                    OPERATOR_NS, dict(entry, request={"namespace": "x", "name": "y", "uid": "u"})
                )["data"][api.LEDGER_KEY]
            },
        },
    )
    fresh = Ledger(world.kube, OPERATOR_NS)
    fresh._relist()
    assert [e["request"]["uid"] for e in fresh.entries()] == [UID]


def test_a_ledger_configmap_round_trips_without_its_resource_version_in_the_data():
    world = World().at(1)
    entry = recorded(world)
    cm = configmap_for(OPERATOR_NS, entry)
    assert cm["metadata"]["name"] == api.ledger_name(UID) and cm["metadata"]["resourceVersion"]
    assert "resourceVersion" not in cm["data"][api.LEDGER_KEY]
    assert entry_from_configmap(cm) == entry
    assert entry_from_configmap({"metadata": {}, "data": {}}) is None


@pytest.mark.parametrize(
    "state,minutes,live",
    [
        ("Active", 10, True),
        ("Active", 11, False),
        ("Issuing", 5, False),
        ("Revoked", 5, False),
        ("Expired", 5, False),
        ("Failed", 5, False),
    ],
    ids=[
        "active before exp authenticates",
        "active at exp does not",
        "an unfinished issue does not",
        "revoked does not",
        "expired does not",
        "failed does not",
    ],
)
def test_only_an_active_unexpired_entry_is_live(state, minutes, live):
    entry = {"state": state, "expiresAt": "2026-01-01T12:11:00Z"}
    assert is_live(entry, CREATED + dt.timedelta(minutes=minutes)) is live
    assert is_live(None, CREATED) is False


# ------------------------------------------------------------------------------------------ plan
def test_the_plan_names_everything_by_request_uid_before_anything_exists():
    world = World().at(1)
    entry = planned(world)
    assert entry["state"] == "Issuing" and entry["kid"] == RING.active_kid
    assert entry["username"] == f"breakglass:team-a:r1:{UID}"
    assert entry["claims"]["jti"] == entry["jti"] and entry["claims"]["k8s_user"] == f"team-a:r1:{UID}"
    assert (entry["issuedAt"], entry["expiresAt"]) == ("2026-01-01T12:01:00Z", "2026-01-01T12:11:00Z")
    assert entry["secret"] == {"namespace": OPERATOR_NS, "name": f"breakglass-token-{UID}", "uid": ""}
    assert [(o["kind"], o["namespace"]) for o in entry["objects"]] == [
        ("RoleBinding", "team-a"),
        ("RoleBinding", "team-b"),
        ("Role", OPERATOR_NS),
        ("RoleBinding", OPERATOR_NS),
        ("Secret", OPERATOR_NS),
    ]
    assert all(o["uid"] == "" and UID in o["name"] for o in entry["objects"])
    assert len(entry["nonce"]) == 32 and entry["approval"]["approvers"] == ["bob"]
    assert world.kube.calls == [], "planning touches nothing"


def test_two_plans_never_share_a_jti_or_a_nonce():
    a, b = planned(World()), planned(World())
    assert a["jti"] != b["jti"] and a["nonce"] != b["nonce"]


def test_a_token_namespace_setting_moves_the_secret_and_its_reader_role():
    world = World(settings=Settings(namespace=OPERATOR_NS, token_namespace="bg-tokens"))
    entry = planned(world)
    assert {o["namespace"] for o in entry["objects"] if o["kind"] != "RoleBinding" or "reader" in o["name"]} == {
        "bg-tokens"
    }
    assert entry["secret"]["namespace"] == "bg-tokens"


def test_request_namespace_delivery_puts_the_secret_where_the_request_is():
    world = World()
    entry = planned(world, policy_changes={"tokenDelivery": "RequestNamespace"})
    assert entry["secret"]["namespace"] == "team-a"
    assert {(o["kind"], o["namespace"]) for o in entry["objects"][2:]} == {
        ("Role", "team-a"),
        ("RoleBinding", "team-a"),
        ("Secret", "team-a"),
    }


def test_an_emergency_plan_records_when_its_review_is_due():
    world = World().at(1)
    entry = planned(world, D.Decision(D.ISSUE, "EmergencyAccess", "emergency", emergency=True), emergency=True)
    assert entry["approval"]["emergency"] is True and entry["claims"]["breakglass"]["emergency"] is True
    assert entry["approval"]["reviewDueAt"] == "2026-01-01T12:06:00Z"  # reviewWithin 5m


# ----------------------------------------------------------------------------------------- issue
def test_issue_creates_every_planned_object_and_records_their_uids():
    world = World().at(1)
    entry = world.grants.issue(recorded(world))
    assert entry["state"] == "Active" and entry["activatedAt"] == "2026-01-01T12:01:00Z"
    for ref in entry["objects"]:
        assert world.kube.get(ref["kind"], ref["namespace"], ref["name"])["metadata"]["uid"] == ref["uid"]
    secret = world.kube.get("Secret", OPERATOR_NS, f"breakglass-token-{UID}")
    assert secret["type"] == api.TOKEN_SECRET_TYPE and set(secret["data"]) == {"token", "expiresAt"}
    token = base64.b64decode(secret["data"]["token"]).decode()
    claims = pyjwt.decode(
        token,
        RING.active.private_key().public_key(),
        algorithms=["ES256"],
        options={"verify_exp": False, "verify_aud": False},
    )
    assert claims == entry["claims"]
    assert world.grants.issue(entry) == entry, "an Active grant is not issued again"


def test_with_a_cluster_server_the_secret_carries_a_kubeconfig_for_the_grant_identity():
    world = World(settings=Settings(namespace=OPERATOR_NS, cluster_server="https://kube.test:6443")).at(1)
    world.grants.issue(recorded(world))
    secret = world.kube.get("Secret", OPERATOR_NS, f"breakglass-token-{UID}")
    kubeconfig = base64.b64decode(secret["data"]["kubeconfig"]).decode()
    assert "https://kube.test:6443" in kubeconfig and f"breakglass:team-a:r1:{UID}" in kubeconfig


def test_issue_adopts_an_object_it_created_before_a_crash_but_nothing_else():
    world = World().at(1)
    entry = recorded(world)
    ours = builders.build_object(entry["objects"][0], entry)
    world.kube.put("RoleBinding", ours)  # what a crashed earlier attempt left
    active = world.grants.issue(entry)
    assert active["state"] == "Active"
    assert (
        active["objects"][0]["uid"]
        == world.kube.get("RoleBinding", "team-a", ours["metadata"]["name"])["metadata"]["uid"]
    )


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body: body["metadata"]["annotations"].pop(api.GRANT_NONCE_ANNOTATION),
        lambda body: body["metadata"]["annotations"].update({api.GRANT_NONCE_ANNOTATION: "0" * 32}),
        lambda body: body["subjects"].append({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "eve"}),
        lambda body: body["roleRef"].update(name="cluster-admin"),
    ],
    ids=[
        "without a nonce",
        "with another nonce",
        "with our nonce and an extra subject",
        "with our nonce and another role",
    ],
)
def test_an_object_under_a_planned_name_that_is_not_exactly_ours_fails_the_issue_untouched(tamper):
    world = World().at(1)
    entry = recorded(world)
    body = builders.build_object(entry["objects"][1], entry)
    tamper(body)
    squatter = world.kube.put("RoleBinding", body)
    with pytest.raises(IssueFailed) as failed:
        world.grants.issue(entry)
    assert failed.value.reason == "NameTaken"
    assert world.kube.get("RoleBinding", "team-b", body["metadata"]["name"]) == squatter
    assert world.grant_objects() == {("RoleBinding", "team-b", body["metadata"]["name"])}
    stored = world.stored_entry()
    assert (stored["state"], stored["cleaned"]) == ("Failed", True)


def test_a_permanent_refusal_rolls_back_and_never_delivers_a_token():
    world = World(namespaces=("team-a",)).at(1)
    entry = recorded(world)
    with pytest.raises(IssueFailed) as failed:
        world.grants.issue(entry)
    assert failed.value.reason == "IssueFailed" and "team-b" in failed.value.message
    assert not world.grant_objects()
    assert failed.value.entry["state"] == "Failed" and failed.value.entry["cleaned"] is True
    assert world.stored_entry()["objects"][0]["uid"], "the ledger kept what was created (and deleted)"
    assert not [c for c in world.kube.calls if c.kind == "Secret" and c.verb == "create"]


# ------------------------------------------------------------------------------------ end & cleanup
def active(world: World) -> dict:
    return world.grants.issue(recorded(world.at(1)))


def test_revoke_marks_the_ledger_first_then_deletes_by_uid_then_publishes():
    world = World()
    entry = active(world)
    world.kube.reset_calls()
    ended = world.at(3).grants.end(entry, "Revoked", "Revoked", "spec.revoked is true")
    writes = [(c.verb, c.kind) for c in world.kube.writes()]
    assert writes[0] == ("replace", "ConfigMap") and writes[-1] == ("replace", "ConfigMap")
    assert [w for w in writes[1:-1]] == [
        ("delete", "Secret"),
        ("delete", "RoleBinding"),
        ("delete", "Role"),
        ("delete", "RoleBinding"),
        ("delete", "RoleBinding"),
    ]
    assert (ended["state"], ended["reason"], ended["cleaned"], ended["endedAt"]) == (
        "Revoked",
        "Revoked",
        True,
        "2026-01-01T12:03:00Z",
    )
    assert world.revocations.published == [
        {
            "jti": entry["jti"],
            "exp": int(dt.datetime(2026, 1, 1, 12, 11, tzinfo=dt.UTC).timestamp()),
            "request": "team-a/r1",
            "reason": "Revoked",
            "now": world.now,
        }
    ]


def test_expiry_is_not_published_as_a_revocation():
    world = World()
    entry = active(world)
    world.at(11).grants.end(entry, "Expired", "DurationElapsed", "expired")
    assert world.revocations.published == [] and not world.grant_objects()


def test_cleanup_deletes_only_the_object_with_the_recorded_uid():
    world = World()
    entry = active(world)
    rb = entry["objects"][0]
    world.kube.remove(rb["kind"], rb["namespace"], rb["name"])
    replacement = world.kube.put(
        "RoleBinding",
        {"metadata": {"name": rb["name"], "namespace": rb["namespace"]}, "roleRef": {"name": "edit"}, "subjects": []},
    )
    world.grants.end(entry, "Revoked", "Revoked", "x")
    assert world.grant_objects() == {("RoleBinding", rb["namespace"], rb["name"])}
    assert world.kube.get("RoleBinding", rb["namespace"], rb["name"]) == replacement


def test_one_failing_delete_does_not_keep_the_other_objects_alive():
    world = World()
    entry = active(world)
    world.kube.fail("delete", "Secret", exc=RuntimeError("apiserver 500"))
    with pytest.raises(CleanupIncomplete, match="Secret"):
        world.grants.end(entry, "Revoked", "Revoked", "x")
    assert {k for k, _, _ in world.grant_objects()} == {"Secret"}
    assert world.stored_entry()["state"] == "Revoked", "the token left the allow-list anyway"


def test_a_failing_ledger_write_on_revoke_still_deletes_everything_then_raises():
    world = World()
    entry = active(world)
    world.kube.fail("replace", "ConfigMap", exc=ConnectionError("kube-apiserver unreachable"))
    with pytest.raises(ConnectionError):
        world.grants.end(entry, "Revoked", "Revoked", "x")
    assert not world.grant_objects()
    assert world.revocations.published == []


def test_a_revoke_racing_another_writer_of_the_grant_deletes_everything_and_leaves_the_decision_to_the_next_pass():
    world = World()
    entry = active(world)
    world.ledger.update(entry, reason="someone else")  # e.g. another replica ended it meanwhile
    with pytest.raises(Conflict):
        world.grants.end(entry, "Revoked", "Revoked", "x")
    assert not world.grant_objects()
    assert world.revocations.published == []


def test_a_revoke_racing_an_audit_sink_keeps_the_use_it_folded_in_and_succeeds():
    world = World()
    entry = active(world)
    world.ledger.update(entry, usage={"requests": 3, "audited": 0})  # a sink's write: the view is behind
    ended = world.grants.end(entry, "Revoked", "UseLimitReached", "x")
    assert ended["state"] == "Revoked" and ended["cleaned"]
    assert ended["usage"] == {"requests": 3, "audited": 0}
    assert world.revocations.published and not world.grant_objects()


def test_the_secret_counts_as_present_only_while_it_is_the_one_we_created():
    world = World()
    entry = active(world)
    assert world.grants.secret_present(entry)
    ref = entry["secret"]
    world.kube.remove("Secret", ref["namespace"], ref["name"])
    assert not world.grants.secret_present(entry)
    world.kube.put(
        "Secret", {"metadata": {"name": ref["name"], "namespace": ref["namespace"]}, "type": api.TOKEN_SECRET_TYPE}
    )
    assert not world.grants.secret_present(entry), "a look-alike re-created under the name is not ours"


def test_an_idle_revoke_overtaken_by_a_new_use_does_nothing_and_leaves_the_decision_to_the_next_pass():
    world = World()
    entry = active(world)
    world.ledger.update(entry, usage={"requests": 1, "audited": 0})  # a sink stored a use meanwhile
    with pytest.raises(Conflict):
        world.grants.end(entry, "Revoked", "IdleTimeout", "idle", use_sensitive=True)
    assert world.grant_objects(), "nothing deleted: the grant was used after all"
    assert world.ledger.fetch(entry["request"]["uid"])["state"] == "Active"
