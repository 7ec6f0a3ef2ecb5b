import datetime as dt

import pytest

from breakglass.domain import decisions as D
from breakglass.domain.approvals import ApprovalView, tally_approvals
from breakglass.domain.policy import Policy, RequestView

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
CREATED = NOW - dt.timedelta(minutes=1)
UID = "11111111-2222-3333-4444-555555555555"
POLICY = Policy(
    name="p",
    requester_groups=("sre",),
    approver_groups=("sre-leads",),
    approver_users=("alice",),
    required_approvals=2,
    allowed_namespaces=("*",),
    allowed_cluster_roles=("view",),
    emergency_allowed=True,
    auto_approve_groups=("oncall",),
)
REQ = RequestView(
    name="r",
    namespace="ns",
    requester="alice",
    requester_groups=("sre",),
    reason="database is down badly",
    duration="10m",
    namespaces=("ns",),
    cluster_roles=("view",),
    policy="p",
)


def appr(who, decision="Approve", groups=("sre-leads",), minutes=0, name=None):
    return ApprovalView(
        name=name or f"{who}-{decision}",
        approver=who,
        approver_groups=groups,
        decision=decision,
        created=CREATED + dt.timedelta(minutes=minutes),
        request_uid=UID,
    )


def tally(*approvals):
    return tally_approvals(
        list(approvals),
        requester="alice",
        policy=POLICY,
        deadline=D.approval_deadline(CREATED, POLICY),
        request_uid=UID,
        request_created=CREATED,
    )


def test_distinct_approvers_are_counted_once():
    t = tally(appr("bob"), appr("bob", name="again"), appr("carol"))
    assert t.approved_by == ["bob", "carol"]


def test_self_approval_is_ignored_when_the_policy_forbids_it():
    t = tally(appr("alice", groups=("sre",)))
    assert t.approved_by == [] and "forbids self-approval" in t.ignored[0][2]


def test_outsiders_are_ignored_with_a_reason():
    t = tally(appr("mallory", groups=("contractors",)))
    assert t.approved_by == [] and "not an approver" in t.ignored[0][2]


def test_approvals_after_the_timeout_do_not_count():
    t = tally(appr("bob", minutes=45))
    assert t.approved_by == [] and "after the approval timeout" in t.ignored[0][2]


def decide(request=REQ, phase="Pending", policy=POLICY, t=None, grant=None, secret_present=True, now=NOW):
    return D.decide(
        request=request,
        phase=phase,
        policy=policy,
        tally=t or tally(),
        created=CREATED,
        grant=grant,
        secret_present=secret_present,
        now=now,
    )


LIVE = D.Grant(D.G_ACTIVE, NOW + dt.timedelta(minutes=5))


@pytest.mark.parametrize(
    "kwargs,action,reason",
    [
        ({}, D.WAIT, "AwaitingApproval"),
        ({"t": tally(appr("bob"))}, D.WAIT, "AwaitingApproval"),
        ({"t": tally(appr("bob"), appr("carol"))}, D.ISSUE, "Approved"),
        ({"t": tally(appr("bob"), appr("carol"), appr("dave", "Deny"))}, D.DENY, "DeniedByApprover"),
        ({"now": CREATED + dt.timedelta(minutes=31)}, D.DENY, "ApprovalTimeout"),
        ({"policy": None}, D.FAIL, "PolicyNotFound"),
        ({"policy": Policy(name="p", requester_groups=("sre",), required_approvals=1)}, D.FAIL, "PolicyInvalid"),
        ({"request": RequestView(**{**REQ.__dict__, "requester_groups": ("sre", "oncall")})}, D.ISSUE, "AutoApproved"),
        ({"request": RequestView(**{**REQ.__dict__, "emergency": True})}, D.ISSUE, "EmergencyAccess"),
        ({"request": RequestView(**{**REQ.__dict__, "duration": "2h"})}, D.DENY, "DurationExceedsMax"),
        ({"request": RequestView(**{**REQ.__dict__, "revoked": True})}, D.REVOKE, "Revoked"),
        ({"grant": LIVE, "phase": "Active"}, D.ACTIVE, "Active"),
        ({"grant": D.Grant(D.G_ACTIVE, NOW), "phase": "Active"}, D.EXPIRE, "DurationElapsed"),
        ({"phase": "Expired"}, D.NOTHING, "Terminal"),
        ({"grant": D.Grant(D.G_ISSUING, NOW + dt.timedelta(minutes=5))}, D.ISSUE, "Resume"),
        (
            {"grant": LIVE, "phase": "Active", "request": RequestView(**{**REQ.__dict__, "revoked": True})},
            D.REVOKE,
            "Revoked",
        ),
        (
            {"grant": D.Grant(D.G_ACTIVE, NOW), "request": RequestView(**{**REQ.__dict__, "revoked": True})},
            D.EXPIRE,
            "DurationElapsed",
        ),
        ({"grant": LIVE, "phase": "Active", "secret_present": False}, D.REVOKE, "SecretDeleted"),
        (
            {"grant": D.Grant(D.G_REVOKED, NOW + dt.timedelta(minutes=5), "RequestDeleted"), "phase": "Active"},
            D.SETTLE,
            "RequestDeleted",
        ),
        ({"grant": D.Grant(D.G_FAILED, NOW + dt.timedelta(minutes=5))}, D.SETTLE, "Failed"),
        ({"grant": LIVE, "phase": "Active", "policy": None}, D.ACTIVE, "Active"),
        ({"grant": LIVE, "t": tally(appr("dave", "Deny"))}, D.ACTIVE, "Active"),
    ],
    ids=[
        "nothing approved yet waits",
        "one of two approvals still waits",
        "two approvals issue",
        "any deny wins",
        "pending past the timeout is denied",
        "a missing policy fails",
        "an invalid policy fails",
        "an auto-approve group issues at once",
        "emergency issues at once",
        "the policy is re-checked at reconcile time",
        "revoked spec revokes",
        "an active grant waits for expiry",
        "expiry at exp",
        "terminal requests are left alone",
        "an issue recorded in the ledger but not finished is resumed, never re-planned",
        "revoking a live grant revokes it",
        "expiry wins over a revocation at exp",
        "a deleted token Secret revokes the grant",
        "a grant the ledger ended is settled with the ledger's reason, whatever the phase says",
        "a failed grant is settled, never issued again",
        "once issued the grant no longer depends on the policy",
        "a deny after the issue does not end a live grant",
    ],
)
def test_the_decision_follows_the_rules(kwargs, action, reason):
    decision = decide(**kwargs)
    assert (decision.action, decision.reason) == (action, reason)


def test_waiting_requeues_at_the_approval_deadline():
    assert decide().requeue_at == CREATED + dt.timedelta(minutes=30)


def test_a_live_grant_requeues_at_its_expiry():
    assert decide(grant=LIVE, phase="Active").requeue_at == LIVE.expires_at


def test_the_operator_ceiling_bounds_every_grant_whatever_the_policy_says():
    long_policy = Policy(**{**POLICY.__dict__, "max_duration": "48h"})
    request = RequestView(**{**REQ.__dict__, "duration": "30h", "emergency": True})
    decision = D.decide(
        request=request,
        phase="Pending",
        policy=long_policy,
        tally=tally(),
        created=CREATED,
        grant=None,
        now=NOW,
        ceiling=dt.timedelta(hours=24),
    )
    assert (decision.action, decision.reason) == (D.DENY, "ExceedsOperatorCeiling")
