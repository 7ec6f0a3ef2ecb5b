"""Incident-gated auto-approval: the pure rules (matching, snapshot, verdicts, resolve-and-revoke) with an
injected `now`, the poller against a fake Alertmanager, and the reconciler end to end on fake_kube."""

from __future__ import annotations

import datetime as dt
import urllib.error

import pytest
from fake_kube import CREATED, REQUEST, World

from breakglass import metrics
from breakglass.alert_gate import AlertGates
from breakglass.domain import alert_gate as G
from breakglass.domain import decisions as D
from breakglass.domain.catchup import summarize_request
from breakglass.domain.conditions import get_condition
from breakglass.domain.policy import Policy, RequestView, validate_policy

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
URL = "http://alertmanager.test:9093"
MATCH = {"alertname": "PostgresDown", "namespace": "team-db"}
GATE = G.Gate(matchers=tuple(sorted(MATCH.items())), revoke_on_resolve=True, resolve_grace="2m")
KEY = (URL, GATE.matchers)


def am_alert(labels=None, state="active", fp="fp1", starts="2026-01-01T11:58:00Z"):
    return {"labels": dict(MATCH if labels is None else labels), "fingerprint": fp, "startsAt": starts,
            "status": {"state": state}}  # fmt: skip


ALERT = G.parse_alerts(GATE.matchers, [am_alert()])[0]


# ------------------------------------------------------------------------------ matching
@pytest.mark.parametrize(
    "body, fingerprints",
    [
        ([am_alert()], ["fp1"]),
        ([am_alert({**MATCH, "severity": "page"})], ["fp1"]),  # extra labels do not matter
        ([am_alert({"alertname": "PostgresDown"})], []),  # a matcher's label missing
        ([am_alert({**MATCH, "namespace": "team-db2"})], []),  # exact values: no prefix match
        ([am_alert({**MATCH, "namespace": "team-.*"})], []),  # no regex either way
        ([am_alert(state="suppressed")], []),  # silenced or inhibited is not firing
        ([am_alert(fp="b", starts="2026-01-01T11:59:00Z"), am_alert(fp="a")], ["a", "b"]),  # oldest first
    ],
    ids=[
        "an alert carrying exactly the matched labels matches",
        "labels beyond the matchers do not matter",
        "an alert missing a matched label does not match",
        "a value that only shares a prefix does not match",
        "a regex-looking value is compared literally",
        "a suppressed alert is not firing",
        "several matching alerts are ordered oldest first",
    ],
)
def test_alerts_match_the_policy_labels_exactly(body, fingerprints):
    assert [a.fingerprint for a in G.parse_alerts(GATE.matchers, body)] == fingerprints


@pytest.mark.parametrize("body", [{"alerts": []}, [{"fingerprint": "x"}], "nope"])
def test_an_answer_that_is_not_a_list_of_alerts_is_an_error_not_an_empty_answer(body):
    with pytest.raises(ValueError):
        G.parse_alerts(GATE.matchers, body)


def test_filter_parameters_quote_and_escape_the_values():
    assert G.filter_params((("a", 'x"y\\z'),)) == [("filter", 'a="x\\"y\\\\z"')]


# ------------------------------------------------------------------------------ the policy
@pytest.mark.parametrize(
    "auto, problem",
    [
        ({"whenAlertFiring": {"matchers": MATCH}}, None),
        ({"whenAlertFiring": {"matchers": {}}}, "InvalidAlertGate"),
        ({"whenAlertFiring": {"matchers": {"bad-name": "x"}}}, "InvalidAlertGate"),
        ({"whenAlertFiring": {"matchers": MATCH, "alertmanagerURL": "ftp://x"}}, "InvalidAlertGate"),
        ({"whenAlertFiring": {"matchers": MATCH}, "resolveGrace": "soon"}, "InvalidDuration"),
    ],
    ids=[
        "a gate with label matchers is valid",
        "a gate without matchers would match every alert and makes the policy invalid",
        "a matcher with an invalid label name makes the policy invalid",
        "an alertmanagerURL that is not http(s) makes the policy invalid",
        "a resolveGrace that is not a duration makes the policy invalid",
    ],
)
def test_policy_validation_of_the_gate(auto, problem):
    spec = {"requesters": {"groups": ["sre"]}, "approvers": {"groups": ["x"]}, "autoApprove": auto}
    pol = Policy.from_resource("p", spec)
    reasons = [v.reason for v in validate_policy(pol)]
    assert reasons == ([problem] if problem else [])


# ------------------------------------------------------------------------------ snapshot and verdicts
@pytest.mark.parametrize(
    "prev, ok, alerts, resolved_since",
    [
        (None, True, (ALERT,), None),
        (None, True, (), T0),
        (G.GateState(True, (ALERT,)), True, (), T0),
        (G.GateState(True, (), resolved_since=T0 - dt.timedelta(minutes=1)), True, (), T0 - dt.timedelta(minutes=1)),
        (G.GateState(True, (), resolved_since=T0 - dt.timedelta(minutes=1)), False, (), T0 - dt.timedelta(minutes=1)),
        (G.GateState(True, (ALERT,)), False, (), None),
        (G.GateState(True, (), resolved_since=T0 - dt.timedelta(minutes=1)), True, (ALERT,), None),
    ],
    ids=[
        "a firing answer has no resolve time",
        "a first answer without the alert starts the resolve clock now",
        "the first answer after a firing one without the alert starts the resolve clock",
        "later answers without the alert keep the clock where it started",
        "an error keeps the resolve clock where it was",
        "an error while firing does not start the resolve clock",
        "the alert firing again stops the resolve clock",
    ],
)
def test_the_snapshot_tracks_when_the_incident_resolved(prev, ok, alerts, resolved_since):
    state = G.next_state(prev, ok=ok, alerts=alerts, error="" if ok else "unreachable", now=T0)
    assert state.resolved_since == resolved_since and state.ok == ok and state.checked_at == T0
    assert state.firing == (ok and bool(alerts))


@pytest.mark.parametrize(
    "key, state, expected",
    [
        (None, None, ("False", "AlertmanagerNotConfigured")),
        (KEY, None, ("Unknown", "AlertmanagerNotQueried")),
        (KEY, G.GateState(False, error="unreachable: Connection refused"), ("False", "AlertmanagerUnreachable")),
        (KEY, G.GateState(True, ()), ("False", "AlertNotFiring")),
        (KEY, G.GateState(True, (ALERT,)), ("True", "AlertFiring")),
    ],
    ids=[
        "no Alertmanager URL anywhere says so",
        "before the first answer the gate is unknown",
        "an unreachable Alertmanager is not firing, and the condition says why",
        "a successful answer without the alert is not firing",
        "a matching alert is firing",
    ],
)
def test_the_alert_gate_condition(key, state, expected):
    status, reason, _ = G.gate_condition(GATE, key, state)
    assert (status, reason) == expected


@pytest.mark.parametrize(
    "gate, state, now_min, revoke, due_min",
    [
        (GATE, G.GateState(True, (ALERT,)), 10, False, None),
        (GATE, G.GateState(True, (), resolved_since=T0), 1, False, 2),
        (GATE, G.GateState(True, (), resolved_since=T0), 2, True, None),
        (GATE, G.GateState(False, resolved_since=T0), 60, False, None),
        (GATE, None, 60, False, None),
        (G.Gate(GATE.matchers, revoke_on_resolve=False), G.GateState(True, (), resolved_since=T0), 60, False, None),
        (G.Gate(GATE.matchers, revoke_on_resolve=True), G.GateState(True, (), resolved_since=T0), 0, True, None),
    ],
    ids=[
        "a grant is kept while its alert fires",
        "a resolved incident is revoked only after the grace; the reconcile comes back then",
        "a resolved incident is revoked once the grace has passed",
        "an Alertmanager error never revokes, however long",
        "no answer yet never revokes",
        "without revokeOnResolve a resolved incident leaves the grant to its expiry",
        "without a grace the first answer showing the incident resolved revokes",
    ],
)
def test_revoke_on_resolve(gate, state, now_min, revoke, due_min):
    got_revoke, due, why = G.resolve_check(gate, state, T0 + dt.timedelta(minutes=now_min))
    assert got_revoke == revoke and (due == (T0 + dt.timedelta(minutes=due_min) if due_min is not None else None))
    assert ("resolved" in why) == revoke


# ------------------------------------------------------------------------------ decide()
POLICY = Policy.from_resource(
    "prod",
    {
        "requesters": {"groups": ["sre"]},
        "approvers": {"groups": ["leads"]},
        "allowedNamespaces": ["team-*"],
        "allowedClusterRoles": ["view"],
        "autoApprove": {"whenAlertFiring": {"matchers": MATCH}},
    },
)
VIEW = RequestView("r", "team-db", "alice", ("sre",), reason="primary down, need logs", policy="prod",
                   namespaces=("team-db",), cluster_roles=("view",))  # fmt: skip


@pytest.mark.parametrize(
    "gate_alert, view, action, reason",
    [
        (ALERT, VIEW, D.ISSUE, "AlertFiring"),
        (None, VIEW, D.WAIT, "AwaitingApproval"),
        (ALERT, RequestView(**{**VIEW.__dict__, "namespaces": ("kube-system",)}), D.DENY, "NamespaceNotAllowed"),
    ],
    ids=[
        "a firing alert the policy gates on approves a request that passes every rule",
        "without a firing alert the request waits for people",
        "a firing alert never overrides a rule the request breaks",
    ],
)
def test_decide_with_the_gate(gate_alert, view, action, reason):
    d = D.decide(request=view, phase="Pending", policy=POLICY, tally=None, created=T0, grant=None, now=T0,
                 gate_alert=gate_alert)  # fmt: skip
    assert (d.action, d.reason) == (action, reason)
    assert (d.alert == ALERT.as_dict()) == (action == D.ISSUE)


# ------------------------------------------------------------------------------ the poller
class FakeAM:
    def __init__(self):
        self.answer: object = []
        self.calls = 0

    def __call__(self, url, matchers):
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def gated_world(**auto):
    world = World()
    world.policy(autoApprove={"whenAlertFiring": {"matchers": {"alertname": "PostgresDown"}}, **auto})
    world.request()
    am, woken = FakeAM(), []
    gates = AlertGates(
        default_url=URL,
        interval=5,
        policy_body=world.reconciler.policies.get,
        requests=lambda: [summarize_request(b) for k, b in list(world.kube.objects.items()) if k[0] == REQUEST],
        enqueue=lambda ns, n: woken.append((ns, n)),
        clock=world.clock,
        fetch=am,
    )
    world.reconciler.alert_gates = gates
    return world, am, gates, woken


FIRING = [am_alert({"alertname": "PostgresDown", "instance": "db-0"})]


def test_a_pending_request_waits_until_the_poller_sees_the_alert_fire_and_is_then_issued_as_alert_firing():
    world, am, gates, woken = gated_world()
    world.at(1).reconcile()
    assert get_condition(world.status()["conditions"], "AlertGate")["reason"] == "AlertmanagerNotQueried"
    assert gates.poll_once() and woken == [("team-a", "r1")]  # the first answer wakes the request
    world.at(1.5).reconcile()
    st = world.status()
    assert st["phase"] == "Pending" and get_condition(st["conditions"], "AlertGate")["reason"] == "AlertNotFiring"
    am.answer = FIRING
    assert gates.poll_once() == [(URL, (("alertname", "PostgresDown"),))]
    world.at(2).reconcile()
    st = world.status()
    assert st["phase"] == "Active"
    assert get_condition(st["conditions"], "Approved")["reason"] == "AlertFiring"
    assert st["approval"] == {
        "reason": "AlertFiring",
        "alert": {
            "fingerprint": "fp1",
            "labels": {"alertname": "PostgresDown", "instance": "db-0"},
            "startsAt": "2026-01-01T11:58:00Z",
        },
    }
    assert world.stored_entry()["approval"]["alert"]["fingerprint"] == "fp1"
    issued = [r for r in world.audit_records() if r["event"] == "issued"]
    assert issued[0]["alert"]["fingerprint"] == "fp1" and issued[0]["approval"] == "AlertFiring"
    assert gates.poll_once() == []  # nothing changed: nobody woken again


def test_the_resolved_incident_revokes_the_alert_approved_grant_after_the_grace_and_errors_never_do():
    world, am, gates, woken = gated_world(revokeOnResolve=True, resolveGrace="2m")
    am.answer = FIRING
    gates.poll_once()
    world.at(1).reconcile()
    assert world.status()["phase"] == "Active"
    am.answer = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    world.at(2)
    gates.poll_once()
    assert metrics.alertmanager_up._value.get() == 0
    world.at(5).reconcile()
    assert world.status()["phase"] == "Active"  # an error is not a resolution
    am.answer = []
    world.at(6)
    woken.clear()
    assert gates.poll_once() and woken == [("team-a", "r1")]
    assert metrics.alertmanager_up._value.get() == 1
    again = world.at(7).reconcile()
    assert world.status()["phase"] == "Active" and again == CREATED + dt.timedelta(minutes=8)
    world.at(8).reconcile()
    st = world.status()
    assert st["phase"] == "Revoked" and get_condition(st["conditions"], "Revoked")["reason"] == "IncidentResolved"
    assert world.stored_entry()["state"] == "Revoked"
    assert not world.grant_objects()


def test_a_human_approval_still_issues_while_alertmanager_is_unreachable():
    world, am, gates, _ = gated_world()
    am.answer = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    gates.poll_once()
    world.at(1).reconcile()
    cond = get_condition(world.status()["conditions"], "AlertGate")
    assert (cond["status"], cond["reason"]) == ("False", "AlertmanagerUnreachable") and "refused" in cond["message"]
    world.approve("bob")
    world.at(2).reconcile()
    st = world.status()
    assert st["phase"] == "Active" and get_condition(st["conditions"], "Approved")["reason"] == "Approved"
    assert "approval" not in st


def test_a_grant_approved_by_people_is_never_revoked_when_an_alert_resolves():
    world, am, gates, _ = gated_world(revokeOnResolve=True)
    world.approve("bob")
    world.at(1).reconcile()
    gates.poll_once()  # nothing firing
    world.at(5).reconcile()
    assert world.status()["phase"] == "Active"


def test_gates_are_polled_only_for_policies_some_live_request_uses():
    world, am, gates, _ = gated_world()
    world.kube.objects[(REQUEST, "team-a", "r1")]["status"] = {"phase": "Denied"}
    assert gates.gates_in_use() == set() and gates.poll_once() == [] and am.calls == 0
