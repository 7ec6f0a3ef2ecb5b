"""Scheduled start (spec.startAt): the rules as pure functions of plain data and an injected `now`,
the status they produce, admission, and one reconciler pass at a time against the in-memory cluster."""

from __future__ import annotations

import base64
import copy
import datetime as dt

import jwt as pyjwt
import pytest
from fake_kube import CREATED, OPERATOR_NS, UID, World

from breakglass import admission, api
from breakglass.domain import decisions as D
from breakglass.domain.approvals import ApprovalView, tally_approvals
from breakglass.domain.conditions import get_condition
from breakglass.domain.durations import to_rfc3339
from breakglass.domain.policy import Policy, RequestView, validate_policy
from breakglass.domain.scheduling import StartAtError, check_start_at, parse_start_at
from breakglass.domain.status import Outcome, changes, next_status
from breakglass.plugin.cli import build_parser
from breakglass.plugin.commands import request_body
from breakglass.plugin.errors import CliError
from breakglass.plugin.output import request_row

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)  # the request's creation
START = T0 + dt.timedelta(hours=2)
POLICY = Policy(
    name="p",
    requester_groups=("sre",),
    approver_groups=("leads",),
    required_approvals=1,
    allowed_namespaces=("*",),
    allowed_cluster_roles=("view",),
    approval_timeout="30m",
    auto_approve_groups=("oncall",),
    emergency_allowed=True,
)
REQ = RequestView(
    name="r",
    namespace="ns",
    requester="alice",
    requester_groups=("sre",),
    reason="planned failover of the primary",
    duration="10m",
    namespaces=("ns",),
    cluster_roles=("view",),
    policy="p",
    start_at=to_rfc3339(START),
)


def req(**changes) -> RequestView:
    return RequestView(**{**REQ.__dict__, **changes})


def pol(**changes) -> Policy:
    return Policy(**{**POLICY.__dict__, **changes})


def minutes(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


# ------------------------------------------------------------------------------ admission-time rules
RULES = [
    ("a request without startAt starts when approved", req(start_at=None), POLICY, True, "StartsWhenApproved"),
    ("a startAt two hours ahead is accepted", REQ, POLICY, True, "ScheduledStart"),
    ("a startAt 10 s in the past is tolerated as clock skew", req(start_at="2026-01-01T11:59:50Z"), POLICY, True, None),
    (
        "a startAt two minutes in the past is refused",
        req(start_at="2026-01-01T11:58:00Z"),
        POLICY,
        False,
        "StartAtInThePast",
    ),
    ("a startAt exactly maxScheduleAhead ahead is accepted", req(start_at="2026-01-08T12:00:00Z"), POLICY, True, None),
    (
        "a startAt one second beyond maxScheduleAhead is refused",
        req(start_at="2026-01-08T12:00:01Z"),
        POLICY,
        False,
        "StartAtTooFarAhead",
    ),
    ("the policy's own maxScheduleAhead bounds it", REQ, pol(max_schedule_ahead="1h"), False, "StartAtTooFarAhead"),
    ("a word is not a time", req(start_at="tomorrow"), POLICY, False, "StartAtMalformed"),
    ("a time without an offset is refused", req(start_at="2026-01-01T14:00:00"), POLICY, False, "StartAtMalformed"),
    ("a date that does not exist is refused", req(start_at="2026-13-01T14:00:00Z"), POLICY, False, "StartAtMalformed"),
    ("an empty startAt is refused", req(start_at=""), POLICY, False, "StartAtMalformed"),
    (
        "an offset and fractional seconds are accepted",
        req(start_at="2026-01-01T15:00:00.250+02:00"),
        POLICY,
        True,
        None,
    ),
    ("a lower-case t and z are accepted", req(start_at="2026-01-01t14:00:00z"), POLICY, True, None),
    ("emergency access cannot be scheduled", req(emergency=True), POLICY, False, "StartAtWithEmergency"),
]


@pytest.mark.parametrize("request_,policy,ok,reason", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_the_scheduling_rules(request_, policy, ok, reason):
    verdict = check_start_at(request_, policy, T0)
    assert verdict.ok is ok, verdict.message
    if reason:
        assert verdict.reason == reason
    if not ok:
        assert "spec.startAt" in verdict.message


def test_refusals_name_the_field_the_value_and_the_limit():
    past = check_start_at(req(start_at="2026-01-01T11:00:00Z"), POLICY, T0).message
    assert "spec.startAt 2026-01-01T11:00:00Z is in the past (by 1h" in past
    ahead = check_start_at(req(start_at="2026-01-09T12:00:00Z"), POLICY, T0).message
    assert "beyond policy 'p' maxScheduleAhead 168h" in ahead
    bad = check_start_at(req(start_at="soon"), POLICY, T0).message
    assert bad.startswith("spec.startAt 'soon' is not an RFC 3339 time")


def test_parse_start_at_reads_an_offset_as_utc():
    assert parse_start_at("2026-01-01T15:00:00+02:00") == dt.datetime(2026, 1, 1, 13, 0, tzinfo=dt.UTC)
    with pytest.raises(StartAtError):
        parse_start_at(12)


def test_max_schedule_ahead_defaults_to_seven_days_and_must_be_a_duration():
    assert Policy.from_resource("p", {}).max_schedule_ahead == "168h"
    problems = validate_policy(pol(max_schedule_ahead="7d", approver_users=("bob",)))
    assert [p.message for p in problems if "maxScheduleAhead" in p.message]


# ------------------------------------------------------------------------------ decisions
def appr(who="bob", decision="Approve", at=1.0, groups=("leads",)):
    return ApprovalView(
        name=f"{who}-{decision}",
        approver=who,
        approver_groups=groups,
        decision=decision,
        created=minutes(at),
        request_uid=UID,
    )


def tally(*approvals, policy=POLICY):
    return tally_approvals(
        list(approvals),
        requester="alice",
        policy=policy,
        deadline=D.approval_deadline(T0, policy),
        request_uid=UID,
        request_created=T0,
    )


def decide(request=REQ, policy=POLICY, t=None, now=None, phase="Pending"):
    return D.decide(
        request=request,
        phase=phase,
        policy=policy,
        tally=t or tally(policy=policy),
        created=T0,
        grant=None,
        now=now or minutes(2),
    )


DECISIONS = [
    ("approved before startAt waits in Scheduled until startAt", {"t": tally(appr())}, D.SCHEDULE, "ScheduledStart"),
    ("not approved before startAt waits for approval as today", {}, D.WAIT, "AwaitingApproval"),
    ("approved and startAt reached issues", {"t": tally(appr()), "now": START}, D.ISSUE, "Approved"),
    (
        "approved after startAt but inside the window issues at once",
        {"t": tally(appr()), "now": START + dt.timedelta(minutes=5)},
        D.ISSUE,
        "Approved",
    ),
    (
        "approved only after the scheduled window ended is denied and nothing is issued",
        {"t": tally(appr()), "now": START + dt.timedelta(minutes=10)},
        D.DENY,
        "ScheduledWindowElapsed",
    ),
    (
        "the approval timeout does not apply to the wait for startAt",
        {"t": tally(appr()), "now": minutes(90), "phase": "Scheduled"},
        D.SCHEDULE,
        "ScheduledStart",
    ),
    (
        "the approval timeout still applies to the approval",
        {"now": minutes(31)},
        D.DENY,
        "ApprovalTimeout",
    ),
    (
        "an approval filed after the approval timeout does not schedule",
        {"t": tally(appr(at=40)), "now": minutes(41)},
        D.DENY,
        "ApprovalTimeout",
    ),
    (
        "an auto-approved requester is scheduled too",
        {"request": req(requester_groups=("sre", "oncall"))},
        D.SCHEDULE,
        "ScheduledStart",
    ),
    (
        "a policy needing no approval schedules at once",
        {"policy": pol(required_approvals=0)},
        D.SCHEDULE,
        "ScheduledStart",
    ),
    ("a deny before startAt denies", {"t": tally(appr(), appr("carol", "Deny"))}, D.DENY, "DeniedByApprover"),
    (
        "revoking a Scheduled request cancels it",
        {"request": req(revoked=True), "t": tally(appr()), "phase": "Scheduled"},
        D.REVOKE,
        "Revoked",
    ),
    (
        "a startAt the policy no longer allows is denied at reconcile",
        {
            "policy": pol(max_schedule_ahead="1h"),
            "t": tally(appr(groups=("leads",)), policy=pol(max_schedule_ahead="1h")),
        },
        D.DENY,
        "StartAtTooFarAhead",
    ),
    (
        "a malformed startAt that bypassed admission is denied",
        {"request": req(start_at="later")},
        D.DENY,
        "StartAtMalformed",
    ),
    (
        "emergency with startAt that bypassed admission is denied",
        {"request": req(emergency=True)},
        D.DENY,
        "StartAtWithEmergency",
    ),
]


@pytest.mark.parametrize("kwargs,action,reason", [d[1:] for d in DECISIONS], ids=[d[0] for d in DECISIONS])
def test_the_scheduling_decision(kwargs, action, reason):
    decision = decide(**kwargs)
    assert (decision.action, decision.reason) == (action, reason), decision.message


def test_a_scheduled_decision_requeues_at_start_at_and_carries_the_approval():
    decision = decide(t=tally(appr()))
    assert decision.requeue_at == START and decision.starts_at == START
    assert (decision.approval_reason, decision.approval_message) == ("Approved", "approved by bob (1/1)")
    assert to_rfc3339(START) in decision.message and decision.approvers == ("bob",)


def test_an_issue_of_a_scheduled_request_starts_the_token_at_start_at_even_when_late():
    assert decide(t=tally(appr()), now=START + dt.timedelta(seconds=3)).starts_at == START
    assert decide(request=req(start_at=None), t=tally(appr())).starts_at is None


def test_revoking_a_scheduled_request_says_nothing_was_issued():
    decision = decide(request=req(revoked=True), phase="Scheduled")
    assert "cancelled; nothing was issued" in decision.message


# ------------------------------------------------------------------------------ status
SCHEDULED = Outcome(
    api.SCHEDULED,
    "ScheduledStart",
    "approved by bob (1/1); the token is issued at X",
    "Approved",
    "approved by bob (1/1)",
)


def test_a_scheduled_status_is_approved_not_issued_and_names_the_time():
    new = next_status({}, generation=1, outcome=SCHEDULED, grant=None, tally=None, now=T0)
    assert new["phase"] == "Scheduled" and new["approvedAt"] == to_rfc3339(T0)
    approved, issued = get_condition(new["conditions"], "Approved"), get_condition(new["conditions"], "Issued")
    assert (approved["status"], approved["reason"]) == ("True", "Approved")
    assert (issued["status"], issued["reason"], issued["message"]) == ("False", "ScheduledStart", SCHEDULED.message)
    assert changes({"phase": "Pending"}, new) == ["phase:Scheduled"]


def test_a_second_scheduled_pass_moves_no_transition_time_and_changes_nothing():
    first = next_status({}, generation=1, outcome=SCHEDULED, grant=None, tally=None, now=T0)
    again = next_status(first, generation=1, outcome=SCHEDULED, grant=None, tally=None, now=minutes(5))
    assert again == first and changes(first, again) == []


def test_the_issue_at_start_at_flips_only_issued():
    first = next_status({}, generation=1, outcome=SCHEDULED, grant=None, tally=None, now=T0)
    grant = {
        "state": "Active",
        "jti": "j1",
        "kid": "k1",
        "issuedAt": to_rfc3339(START),
        "expiresAt": to_rfc3339(START + dt.timedelta(minutes=10)),
        "activatedAt": to_rfc3339(START),
        "username": "breakglass:ns:r:u",
        "secret": {"namespace": OPERATOR_NS, "name": "s", "uid": "su"},
        "approval": {"reason": "Approved", "message": "approved by bob (1/1)", "approvers": ["bob"]},
    }
    active = next_status(
        first, generation=1, outcome=Outcome(api.ACTIVE, "TokenIssued", "x"), grant=grant, tally=None, now=START
    )
    approved, issued = get_condition(active["conditions"], "Approved"), get_condition(active["conditions"], "Issued")
    assert approved["lastTransitionTime"] == to_rfc3339(T0)
    assert (issued["status"], issued["lastTransitionTime"]) == ("True", to_rfc3339(START))
    assert active["approvedAt"] == to_rfc3339(T0) and active["issuedAt"] == to_rfc3339(START)


def test_a_scheduled_request_revoked_before_its_start_says_nothing_was_issued():
    first = next_status({}, generation=1, outcome=SCHEDULED, grant=None, tally=None, now=T0)
    revoked = next_status(
        first,
        generation=2,
        outcome=Outcome(api.REVOKED, "Revoked", "cancelled"),
        grant=None,
        tally=None,
        now=minutes(3),
    )
    issued = get_condition(revoked["conditions"], "Issued")
    assert (issued["status"], issued["reason"], issued["message"]) == (
        "False",
        "Revoked",
        "nothing was issued: cancelled",
    )
    assert get_condition(revoked["conditions"], "Revoked")["status"] == "True"
    assert changes(first, revoked) == ["phase:Revoked"]


# ------------------------------------------------------------------------------ admission
REQUEST_BODY = {
    "metadata": {"name": "r", "namespace": "team-a", "uid": UID, "resourceVersion": "7"},
    "spec": {
        "policy": "p",
        "reason": "planned failover of the primary",
        "duration": "30m",
        "namespaces": ["team-a"],
        "clusterRoles": ["view"],
        "requester": "alice",
        "requesterGroups": ["sre"],
        "startAt": to_rfc3339(START),
    },
}
ALICE = {"username": "alice", "groups": ["sre"]}


def admit(operation, body, old=None, user=ALICE, now=T0, max_ahead="168h"):
    spec = {
        "requesters": {"groups": ["sre"]},
        "approvers": {"groups": ["leads"]},
        "allowedNamespaces": ["team-*"],
        "allowedClusterRoles": ["view"],
        "maxDuration": "1h",
        "maxScheduleAhead": max_ahead,
    }
    rules = admission.RequestRules(
        get_policy={"p": {"spec": spec}}.get, namespace_exists=lambda n: True, clock=lambda: now
    )
    return admission.validate_request(operation, body, old, user, rules)


def with_spec(**spec):
    body = copy.deepcopy(REQUEST_BODY)
    body["spec"].update(spec)
    return body


ADMISSION = [
    ("a startAt two hours ahead is admitted", "CREATE", with_spec(), None, True, None),
    (
        "a startAt in the past is rejected",
        "CREATE",
        with_spec(startAt="2026-01-01T11:00:00Z"),
        None,
        False,
        "StartAtInThePast",
    ),
    (
        "a startAt beyond maxScheduleAhead is rejected",
        "CREATE",
        with_spec(startAt="2026-02-01T12:00:00Z"),
        None,
        False,
        "StartAtTooFarAhead",
    ),
    ("a malformed startAt is rejected", "CREATE", with_spec(startAt="next tuesday"), None, False, "StartAtMalformed"),
    (
        "changing startAt after creation is rejected",
        "UPDATE",
        with_spec(startAt="2026-01-01T15:00:00Z"),
        REQUEST_BODY,
        False,
        "Immutable",
    ),
    (
        "removing startAt after creation is rejected",
        "UPDATE",
        with_spec(startAt=None),
        REQUEST_BODY,
        False,
        "Immutable",
    ),
    (
        "adding a startAt after creation is rejected",
        "UPDATE",
        REQUEST_BODY,
        with_spec(startAt=None),
        False,
        "Immutable",
    ),
    ("revoking a scheduled request is admitted", "UPDATE", with_spec(revoked=True), REQUEST_BODY, True, None),
    ("deleting a scheduled request is admitted", "DELETE", REQUEST_BODY, REQUEST_BODY, True, None),
]


@pytest.mark.parametrize("operation,body,old,ok,reason", [a[1:] for a in ADMISSION], ids=[a[0] for a in ADMISSION])
def test_admission_of_a_scheduled_start(operation, body, old, ok, reason):
    verdict = admit(operation, body, old)
    assert verdict.ok is ok, verdict.message
    if reason:
        assert verdict.reason == reason and "spec.startAt" in verdict.message


def test_admission_judges_start_at_against_its_own_clock():
    assert admit("CREATE", with_spec(), now=START + dt.timedelta(minutes=1)).reason == "StartAtInThePast"
    assert admit("CREATE", with_spec(), max_ahead="1h").reason == "StartAtTooFarAhead"


# ------------------------------------------------------------------------------ the reconciler
START_AT = CREATED + dt.timedelta(minutes=60)


def scheduled_world(**spec) -> World:
    world = World()
    world.policy()
    world.request(startAt=to_rfc3339(START_AT), **spec)
    return world


def test_an_approved_scheduled_request_waits_with_nothing_created_and_requeues_at_start_at():
    world = scheduled_world()
    world.approve("bob")
    assert world.at(2).reconcile() == START_AT
    st = world.status()
    assert st["phase"] == "Scheduled" and to_rfc3339(START_AT) in st["message"]
    assert get_condition(st["conditions"], "Issued")["reason"] == "ScheduledStart"
    assert world.stored_entry() is None and not world.grant_objects()
    assert [r["event"] for r in world.audit_records()] == ["requested", "approval", "scheduled"]
    assert world.kube.events() == ["Requested", "Approved", "Scheduled"]


def test_at_start_at_the_token_is_issued_with_iat_nbf_start_at_and_exp_start_at_plus_duration():
    world = scheduled_world()
    world.approve("bob")
    world.at(2).reconcile()
    world.at(45).reconcile()  # past the approval timeout (30m), before startAt: still Scheduled
    assert world.status()["phase"] == "Scheduled" and world.stored_entry() is None
    expiry = world.at(60).reconcile()
    st = world.status()
    assert st["phase"] == "Active" and expiry == START_AT + dt.timedelta(minutes=10)
    secret = world.kube.get("Secret", OPERATOR_NS, api.token_secret_name(UID))
    claims = pyjwt.decode(base64.b64decode(secret["data"]["token"]).decode(), options={"verify_signature": False})
    start = int(START_AT.timestamp())
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (start, start, start + 600)
    assert st["issuedAt"] == to_rfc3339(START_AT) and st["expiresAt"] == to_rfc3339(START_AT + dt.timedelta(minutes=10))
    assert st["approvedAt"] == to_rfc3339(CREATED + dt.timedelta(minutes=2))
    assert world.kube.events() == ["Requested", "Approved", "Scheduled", "Issued"]  # Approved once


def test_a_scheduled_request_revoked_before_its_start_is_revoked_and_never_issued():
    world = scheduled_world()
    world.approve("bob")
    world.at(2).reconcile()
    world.change_request(revoked=True)
    assert world.at(3).reconcile() is None
    st = world.status()
    assert st["phase"] == "Revoked" and "nothing was issued" in st["message"]
    assert world.stored_entry() is None and not world.grant_objects() and not world.revocations.published
    assert [r["event"] for r in world.audit_records()][-1] == "revoked"
    assert world.kube.events()[-1] == "Revoked"
    world.at(60).reconcile()
    assert world.status()["phase"] == "Revoked" and world.stored_entry() is None


def test_a_scheduled_request_deleted_before_its_start_is_audited_as_revoked_with_an_event():
    world = scheduled_world()
    world.approve("bob")
    world.at(2).reconcile()
    world.delete_request()
    world.at(3).reconcile()
    assert world.kube.get(api.KIND_REQUEST, "team-a", "r1") is None
    assert world.audit_records()[-1]["event"] == "revoked" and world.audit_records()[-1]["reason"] == "RequestDeleted"
    assert world.kube.events()[-1] == "Revoked" and world.stored_entry() is None


# ------------------------------------------------------------------------------ the plugin
def parse(*argv):
    return build_parser().parse_args(["request", "--policy", "p", "--reason", "planned failover", *argv])


def test_the_plugin_files_start_at_as_given_or_relative_to_now():
    spec = request_body(parse("--start-at", "2026-11-28T22:00:00Z"), "team-a")["spec"]
    assert spec["startAt"] == "2026-11-28T22:00:00Z"
    spec = request_body(parse("--start-at", "+2h"), "team-a", now=T0)["spec"]
    assert spec["startAt"] == "2026-01-01T14:00:00Z"
    assert "startAt" not in request_body(parse(), "team-a")["spec"]


@pytest.mark.parametrize("value", ["tomorrow", "+2d", "2026-11-28T22:00:00"])
def test_a_bad_start_at_is_a_usage_error_before_anything_is_filed(value):
    with pytest.raises(CliError) as err:
        request_body(parse("--start-at", value), "team-a")
    assert "--start-at" in str(err.value) and err.value.code == 2


def test_list_shows_when_a_scheduled_request_starts():
    body = {
        "metadata": {"namespace": "team-a", "name": "r"},
        "spec": {"policy": "p", "requester": "alice", "startAt": to_rfc3339(START)},
        "status": {"phase": "Scheduled"},
    }
    assert request_row(body, {}, T0)[2:] == ["Scheduled", "alice", "p", "0/1", "starts in 2h"]


def test_explain_judges_start_at_and_says_when_the_token_would_be_issued():
    from breakglass.plugin.explain import explain

    body = {"kind": api.KIND_REQUEST, "metadata": {"name": "r"}, "spec": dict(REQUEST_BODY["spec"])}
    policy_body = {"spec": {**POLICY_SPEC_FOR_EXPLAIN}}
    ok = explain(body, "alice", ["sre"], "team-a", policy_body, now=T0)
    assert ok["allowed"] and "issued at spec.startAt" in ok["approval"]
    late = explain(body, "alice", ["sre"], "team-a", policy_body, now=START + dt.timedelta(hours=1))
    failed = [c for c in late["checks"] if not c["ok"]]
    assert not late["allowed"] and [c["rule"] for c in failed] == ["startAt"]


POLICY_SPEC_FOR_EXPLAIN = {
    "requesters": {"groups": ["sre"]},
    "approvers": {"groups": ["leads"]},
    "allowedNamespaces": ["team-*"],
    "allowedClusterRoles": ["view"],
    "maxDuration": "1h",
}
