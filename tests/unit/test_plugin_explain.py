"""`kubectl breakglass explain` and the operator's decide() agree: the same rules admit or refuse a
request, and the approval path explain describes is the one decide() takes (no approvals yet)."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from breakglass.domain import decisions as D
from breakglass.domain.policy import Policy, RequestView
from breakglass.plugin.explain import explain

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
NS = "team-db"
BASE_POLICY = {
    "requesters": {"groups": ["sre"]},
    "approvers": {"users": ["carol"], "groups": ["sre-leads"]},
    "requiredApprovals": 1,
    "allowedNamespaces": [NS],
    "allowedClusterRoles": ["view", "edit"],
    "allowedScopes": ["db:*"],
    "maxDuration": "1h",
    "emergency": {"allowed": True, "reviewWithin": "2h"},
    "autoApprove": {"groups": ["oncall"]},
}
BASE_REQUEST = {
    "policy": "prod-db",
    "reason": "database primary is down, investigating",
    "namespaces": [NS],
    "clusterRoles": ["view"],
    "duration": "10m",
}
MISSING = object()


def body(**spec):
    return {
        "apiVersion": "breakglass.dev/v1alpha1",
        "kind": "BreakGlassRequest",
        "metadata": {"name": "sim"},
        "spec": {**BASE_REQUEST, **spec},
    }


def decide_as_the_operator(request_body, user, groups, policy_spec):
    """What the operator would decide for this request right after it was filed (no approvals)."""
    stamped = {
        "metadata": {**request_body["metadata"], "namespace": NS},
        "spec": {**request_body["spec"], "requester": user, "requesterGroups": groups},
    }
    name = request_body["spec"].get("policy") or ""
    policy = None if policy_spec is MISSING else Policy.from_resource(name, policy_spec)
    return D.decide(
        request=RequestView.from_resource(stamped),
        phase=None,
        policy=policy,
        tally=None,
        created=NOW,
        grant=None,
        now=NOW,
    )


CASES = [
    # id, user, groups, policy spec changes (or MISSING), request spec changes, decide's reason, explain's approval
    (
        "a plain request waits for one approver",
        "alice",
        ["sre"],
        {},
        {},
        "AwaitingApproval",
        "needs 1 approval(s) from users ['carol'] / groups ['sre-leads']; alice may not approve it",
    ),
    (
        "self-approval allowed is not mentioned as forbidden",
        "alice",
        ["sre"],
        {"allowSelfApproval": True},
        {},
        "AwaitingApproval",
        "needs 1 approval(s) from users ['carol'] / groups ['sre-leads']",
    ),
    (
        "two approvals are asked for when the policy wants two",
        "alice",
        ["sre"],
        {"requiredApprovals": 2},
        {},
        "AwaitingApproval",
        "needs 2 approval(s)",
    ),
    (
        "an emergency request is issued at once",
        "alice",
        ["sre"],
        {},
        {"emergency": True},
        "EmergencyAccess",
        "emergency: issued at once, review required within 2h",
    ),
    (
        "an emergency request under a policy without emergencies is refused",
        "alice",
        ["sre"],
        {"emergency": {"allowed": False}},
        {"emergency": True},
        "EmergencyNotAllowed",
        "needs 1 approval(s)",
    ),
    (
        "a policy requiring no approval issues at once",
        "alice",
        ["sre"],
        {"requiredApprovals": 0},
        {},
        "NoApprovalRequired",
        "no approval required: issued at once",
    ),
    (
        "an autoApprove group issues at once",
        "dave",
        ["sre", "oncall"],
        {},
        {},
        "AutoApproved",
        "auto-approved (autoApprove group): issued at once",
    ),
    (
        "emergency wins over auto-approval",
        "dave",
        ["sre", "oncall"],
        {},
        {"emergency": True},
        "EmergencyAccess",
        "emergency: issued at once",
    ),
    (
        "no approval required wins over auto-approval",
        "dave",
        ["sre", "oncall"],
        {"requiredApprovals": 0},
        {},
        "NoApprovalRequired",
        "no approval required",
    ),
    (
        "a duration over the maximum is refused",
        "alice",
        ["sre"],
        {},
        {"duration": "5h"},
        "DurationExceedsMax",
        "needs 1 approval(s)",
    ),
    (
        "a namespace outside the policy is refused",
        "alice",
        ["sre"],
        {},
        {"namespaces": ["kube-system"]},
        None,
        "needs 1 approval(s)",
    ),
    (
        "a role outside the policy is refused",
        "alice",
        ["sre"],
        {},
        {"clusterRoles": ["cluster-admin"]},
        None,
        "needs 1 approval(s)",
    ),
    ("a scope outside the policy is refused", "alice", ["sre"], {}, {"scopes": ["root:all"]}, None, None),
    ("an outsider is refused", "mallory", ["contractors"], {}, {}, None, None),
    ("a blank reason is refused", "alice", ["sre"], {}, {"reason": "   tiny   "}, None, None),
    ("an unknown policy fails", "alice", ["sre"], MISSING, {}, "PolicyNotFound", None),
    ("an invalid policy fails", "alice", ["sre"], {"maxDuration": "forever"}, {}, "PolicyInvalid", None),
]


@pytest.mark.parametrize(
    "user,groups,policy_changes,request_changes,reason,approval", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_explain_says_what_decide_does(user, groups, policy_changes, request_changes, reason, approval):
    request_body = body(**request_changes)
    policy_spec = MISSING if policy_changes is MISSING else {**BASE_POLICY, **policy_changes}
    explained = explain(request_body, user, groups, NS, None if policy_spec is MISSING else {"spec": policy_spec})
    decided = decide_as_the_operator(request_body, user, groups, policy_spec)

    assert explained["allowed"] == (decided.action not in (D.DENY, D.FAIL)), (explained, decided)
    if explained["allowed"]:
        assert ("issued at once" in explained["approval"]) == (decided.action == D.ISSUE)
        assert explained["approval"].startswith("needs") == (decided.action == D.WAIT)
    else:
        first = next(c for c in explained["checks"] if not c["ok"])
        if decided.action == D.FAIL:
            assert first["rule"] == "policy"
        else:
            assert first["message"] == decided.message
    if reason is not None:
        assert decided.reason == reason
    if approval is not None:
        assert explained["approval"].startswith(approval)
    if policy_spec is MISSING:
        assert "approval" not in explained


@pytest.mark.parametrize(
    "emergency_allowed,required,emergency,groups",
    list(itertools.product((False, True), (0, 1, 2), (False, True), (["sre"], ["sre", "oncall"]))),
)
def test_explain_and_decide_agree_on_the_approval_path_for_every_combination(
    emergency_allowed, required, emergency, groups
):
    spec = {
        **BASE_POLICY,
        "requiredApprovals": required,
        "emergency": {"allowed": emergency_allowed, "reviewWithin": "2h"},
    }
    request_body = body(emergency=emergency)
    explained = explain(request_body, "alice", groups, NS, {"spec": spec})
    decided = decide_as_the_operator(request_body, "alice", groups, spec)
    assert explained["allowed"] == (decided.action not in (D.DENY, D.FAIL))
    if explained["allowed"]:
        assert ("issued at once" in explained["approval"]) == (decided.action == D.ISSUE), (
            explained["approval"],
            decided,
        )


def test_a_refused_rule_is_the_first_failure_decide_reports():
    request_body = body(duration="5h", clusterRoles=["cluster-admin"])
    explained = explain(request_body, "alice", ["sre"], NS, {"spec": BASE_POLICY})
    decided = decide_as_the_operator(request_body, "alice", ["sre"], BASE_POLICY)
    first = next(c for c in explained["checks"][1:] if not c["ok"])
    assert decided.action == D.DENY and first["message"] == decided.message


def test_explain_reports_the_effective_duration_and_who_asks():
    explained = explain(body(duration=None), "alice", ["sre"], NS, {"spec": {**BASE_POLICY, "defaultDuration": "20m"}})
    assert (explained["duration"], explained["requester"], explained["groups"]) == ("20m", "alice", ["sre"])
    assert list(explained) == ["allowed", "checks", "requester", "groups", "approval", "duration"]
    assert explained["checks"][0] == {"rule": "policy", "ok": True, "message": "policy 'prod-db' is Ready"}


def test_approval_path_is_what_decide_returns_before_the_clock_is_asked():
    policy = Policy.from_resource("prod-db", {**BASE_POLICY, "approvalTimeout": "30m"})
    stamped = RequestView.from_resource(
        {
            "metadata": {"name": "sim", "namespace": NS},
            "spec": {**BASE_REQUEST, "requester": "alice", "requesterGroups": ["sre"]},
        }
    )
    waiting = D.decide(request=stamped, phase=None, policy=policy, tally=None, created=NOW, grant=None, now=NOW)
    assert waiting == D.replace(D.approval_path(stamped, policy), requeue_at=NOW + dt.timedelta(minutes=30))
    late = D.decide(
        request=stamped,
        phase=None,
        policy=policy,
        tally=None,
        created=NOW,
        grant=None,
        now=NOW + dt.timedelta(minutes=31),
    )
    assert (late.action, late.reason) == (D.DENY, "ApprovalTimeout")
