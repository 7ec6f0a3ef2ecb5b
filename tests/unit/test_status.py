"""The request status as a pure function (domain/status.py): next_status, changes, review_due."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from breakglass import api
from breakglass.domain.approvals import ApprovalView, Tally
from breakglass.domain.conditions import get_condition
from breakglass.domain.status import Outcome, changes, next_status, review_due

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(minutes=5)
T0S, NOWS = "2026-01-01T12:00:00Z", "2026-01-01T12:05:00Z"


def grant(**changes):
    g = {
        "request": {"namespace": "team-a", "name": "r1", "uid": "u1"},
        "state": "Active",
        "jti": "j1",
        "kid": "k1",
        "issuedAt": "2026-01-01T12:01:00Z",
        "expiresAt": "2026-01-01T12:11:00Z",
        "activatedAt": "2026-01-01T12:01:00Z",
        "username": "breakglass:team-a:r1:u1",
        "secret": {"namespace": "breakglass-system", "name": "breakglass-token-u1", "uid": "s1"},
        "approval": {
            "reason": "Approved",
            "message": "approved by bob (1/1)",
            "approvers": ["bob"],
            "emergency": False,
        },
    }
    g.update(changes)
    return g


def cond(type_, status, reason, when=T0S, message=""):
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": when,
        "observedGeneration": 1,
    }


def approval(who, decision="Approve"):
    return ApprovalView(
        name=f"{who}-{decision}",
        approver=who,
        approver_groups=(),
        decision=decision,
        created=T0 + dt.timedelta(minutes=1),
    )


PENDING = {
    "phase": "Pending",
    "message": "0/1 approvals",
    "conditions": [cond("Approved", "False", "AwaitingApproval")],
    "observedGeneration": 1,
}
ACTIVE = {
    "phase": "Active",
    "message": "access granted",
    "tokenId": "j1",
    "keyId": "k1",
    "issuedAt": "2026-01-01T12:01:00Z",
    "expiresAt": "2026-01-01T12:11:00Z",
    "approvedAt": "2026-01-01T12:01:00Z",
    "username": "breakglass:team-a:r1:u1",
    "secretRef": {"namespace": "breakglass-system", "name": "breakglass-token-u1"},
    "conditions": [cond("Approved", "True", "Approved"), cond("Issued", "True", "TokenIssued")],
    "observedGeneration": 1,
}
EMERGENCY = grant(
    approval={
        "reason": "EmergencyAccess",
        "message": "emergency",
        "approvers": [],
        "emergency": True,
        "reviewDueAt": "2026-01-01T12:04:00Z",
    }
)


# (old status, outcome, grant, tally) -> (phase, {condition: (status, reason, lastTransitionTime)}, extra checks)
CASES = [
    (
        "a first pass that waits says Approved=False since now",
        {},
        Outcome("Pending", "AwaitingApproval", "0/1"),
        None,
        Tally(),
        "Pending",
        {"Approved": ("False", "AwaitingApproval", NOWS)},
    ),
    (
        "waiting again with another message keeps the transition time",
        PENDING,
        Outcome("Pending", "AwaitingApproval", "still 0/1"),
        None,
        Tally(),
        "Pending",
        {"Approved": ("False", "AwaitingApproval", T0S)},
    ),
    (
        "a denial keeps Approved=False and its transition time, with the new reason",
        PENDING,
        Outcome("Denied", "DeniedByApprover", "denied by dave"),
        None,
        Tally(denied_by=["dave"]),
        "Denied",
        {"Approved": ("False", "DeniedByApprover", T0S)},
    ),
    (
        "an issue flips Approved to True and sets Issued=True, both now",
        PENDING,
        Outcome("Active", "TokenIssued", "granted"),
        grant(),
        Tally(approved_by=["bob"]),
        "Active",
        {"Approved": ("True", "Approved", NOWS), "Issued": ("True", "TokenIssued", NOWS)},
    ),
    (
        "an Active grant seen again changes no transition time",
        ACTIVE,
        Outcome("Active", "TokenIssued", "granted"),
        grant(),
        None,
        "Active",
        {"Approved": ("True", "Approved", T0S), "Issued": ("True", "TokenIssued", T0S)},
    ),
    (
        "expiry flips Issued to False and adds Expired=True",
        ACTIVE,
        Outcome("Expired", "DurationElapsed", "expired"),
        grant(state="Expired"),
        None,
        "Expired",
        {
            "Approved": ("True", "Approved", T0S),
            "Issued": ("False", "TokenExpired", NOWS),
            "Expired": ("True", "DurationElapsed", NOWS),
        },
    ),
    (
        "revocation flips Issued to False and adds Revoked=True with the ledger's reason",
        ACTIVE,
        Outcome("Revoked", "SecretDeleted", "the token Secret was deleted"),
        grant(state="Revoked"),
        None,
        "Revoked",
        {
            "Approved": ("True", "Approved", T0S),
            "Issued": ("False", "TokenRevoked", NOWS),
            "Revoked": ("True", "SecretDeleted", NOWS),
        },
    ),
    (
        "revoking a pending request adds only Revoked (nothing was issued)",
        PENDING,
        Outcome("Revoked", "Revoked", "spec.revoked is true"),
        None,
        Tally(),
        "Revoked",
        {"Approved": ("False", "AwaitingApproval", T0S), "Revoked": ("True", "Revoked", NOWS)},
    ),
    (
        "a failure before any grant leaves Approved Unknown",
        PENDING,
        Outcome("Failed", "PolicyNotFound", "no policy"),
        None,
        None,
        "Failed",
        {"Approved": ("Unknown", "PolicyNotFound", NOWS)},
    ),
    (
        "a failed issue says Issued=False and still that it was approved",
        PENDING,
        Outcome("Failed", "IssueFailed", "namespace missing"),
        grant(state="Failed", activatedAt=None),
        Tally(approved_by=["bob"]),
        "Failed",
        {"Approved": ("True", "Approved", NOWS), "Issued": ("False", "IssueFailed", NOWS)},
    ),
    (
        "nothing new decided (a terminal request) keeps every condition as it was",
        {**ACTIVE, "phase": "Expired"},
        Outcome("Expired", "", ""),
        None,
        None,
        "Expired",
        {"Approved": ("True", "Approved", T0S), "Issued": ("True", "TokenIssued", T0S)},
    ),
]


@pytest.mark.parametrize("old,outcome,entry,tally,phase,conds", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_next_status_sets_phase_and_conditions(old, outcome, entry, tally, phase, conds):
    before = copy.deepcopy(old)
    new = next_status(old, generation=1, outcome=outcome, grant=entry, tally=tally, now=NOW)
    got = {c["type"]: (c["status"], c["reason"], c["lastTransitionTime"]) for c in new["conditions"]}
    assert (new["phase"], got) == (phase, conds)
    assert new["observedGeneration"] == 1 and new["message"] == (outcome.message or "")
    assert old == before, "pure: the old status is not modified"


def test_an_active_status_names_the_grant_and_points_at_its_secret():
    new = next_status(
        PENDING,
        generation=1,
        outcome=Outcome("Active", "TokenIssued", "granted"),
        grant=grant(),
        tally=Tally(approved_by=["bob"], counted=[approval("bob")]),
        now=NOW,
    )
    assert new["secretRef"] == {"namespace": "breakglass-system", "name": "breakglass-token-u1"}
    assert (new["tokenId"], new["keyId"], new["username"]) == ("j1", "k1", "breakglass:team-a:r1:u1")
    assert (new["issuedAt"], new["expiresAt"]) == ("2026-01-01T12:01:00Z", "2026-01-01T12:11:00Z")
    assert new["approvals"] == [{"approver": "bob", "decision": "Approve", "time": "2026-01-01T12:01:00Z"}]


@pytest.mark.parametrize(
    "phase,reason",
    [("Expired", "DurationElapsed"), ("Revoked", "Revoked")],
    ids=["an expired grant", "a revoked grant"],
)
def test_an_ended_grant_no_longer_points_at_a_secret_but_keeps_its_identity(phase, reason):
    new = next_status(
        ACTIVE, generation=1, outcome=Outcome(phase, reason, "ended"), grant=grant(state=phase), tally=None, now=NOW
    )
    assert "secretRef" not in new and new["tokenId"] == "j1"


def test_a_failed_issue_shows_no_token():
    new = next_status(
        PENDING,
        generation=1,
        outcome=Outcome("Failed", "IssueFailed", "x"),
        grant=grant(state="Failed", activatedAt=None),
        tally=None,
        now=NOW,
    )
    assert not {"tokenId", "secretRef", "issuedAt", "username"} & set(new)


def test_ignored_approvals_accumulate_and_are_reported_once():
    first = next_status(
        PENDING,
        generation=1,
        outcome=Outcome("Pending", "AwaitingApproval", "0/1"),
        grant=None,
        tally=Tally(ignored=[("old-one", "bob", "another request uid")]),
        now=NOW,
    )
    again = next_status(
        first,
        generation=1,
        outcome=Outcome("Pending", "AwaitingApproval", "0/1"),
        grant=None,
        tally=Tally(ignored=[("old-one", "bob", "x"), ("mallory-1", "mallory", "not an approver")]),
        now=NOW,
    )
    assert first["ignoredApprovals"] == ["old-one"] and again["ignoredApprovals"] == ["mallory-1", "old-one"]
    assert changes(PENDING, first) == ["ignored:old-one"]
    assert changes(first, again) == ["ignored:mallory-1"]


# ------------------------------------------------------------------------------ emergency reviews
def test_an_emergency_grant_requires_a_review_due_when_the_ledger_says():
    new = next_status(
        PENDING,
        generation=1,
        outcome=Outcome("Active", "TokenIssued", "granted"),
        grant=EMERGENCY,
        tally=Tally(),
        now=T0 + dt.timedelta(minutes=1),
    )
    assert new["review"] == {"required": True, "dueAt": "2026-01-01T12:04:00Z"}
    assert review_due(new) == T0 + dt.timedelta(minutes=4)
    assert get_condition(new["conditions"], api.COND_REVIEW_OVERDUE) is None


def test_a_review_approval_marks_the_review_done_and_nothing_is_due_any_more():
    open_ = next_status(
        PENDING,
        generation=1,
        outcome=Outcome("Active", "TokenIssued", "granted"),
        grant=EMERGENCY,
        tally=Tally(),
        now=T0 + dt.timedelta(minutes=1),
    )
    done = next_status(
        open_,
        generation=1,
        outcome=Outcome("Active", "TokenIssued", "granted"),
        grant=EMERGENCY,
        tally=Tally(reviewed_by=["carol"], counted=[approval("carol", "Review")]),
        now=T0 + dt.timedelta(minutes=3),
    )
    assert done["review"] == {
        "required": True,
        "dueAt": "2026-01-01T12:04:00Z",
        "reviewer": "carol",
        "reviewedAt": "2026-01-01T12:03:00Z",
    }
    assert review_due(done) is None
    overdue = get_condition(done["conditions"], api.COND_REVIEW_OVERDUE)
    assert (overdue["status"], overdue["reason"]) == ("False", "Reviewed")
    assert changes(open_, done) == ["approval:carol:Review", "reviewed"]
    later = next_status(
        done,
        generation=1,
        outcome=Outcome("Active", "TokenIssued", "granted"),
        grant=EMERGENCY,
        tally=Tally(reviewed_by=["dave"]),
        now=T0 + dt.timedelta(minutes=9),
    )
    assert later["review"]["reviewer"] == "carol" and changes(done, later) == []


def test_a_review_not_filed_by_its_due_time_is_overdue_once():
    open_ = next_status(
        PENDING,
        generation=1,
        outcome=Outcome("Active", "TokenIssued", "granted"),
        grant=EMERGENCY,
        tally=Tally(),
        now=T0 + dt.timedelta(minutes=1),
    )
    due = next_status(
        open_,
        generation=1,
        outcome=Outcome("Active", "TokenIssued", "granted"),
        grant=EMERGENCY,
        tally=Tally(),
        now=T0 + dt.timedelta(minutes=4),
    )
    still = next_status(
        due,
        generation=1,
        outcome=Outcome("Active", "TokenIssued", "granted"),
        grant=EMERGENCY,
        tally=Tally(),
        now=T0 + dt.timedelta(minutes=6),
    )
    first, second = (get_condition(s["conditions"], api.COND_REVIEW_OVERDUE) for s in (due, still))
    assert (first["status"], first["lastTransitionTime"]) == ("True", "2026-01-01T12:04:00Z")
    assert second == first
    assert changes(open_, due) == ["overdue"] and changes(due, still) == []


# --------------------------------------------------------------------------------------- changes
@pytest.mark.parametrize(
    "old,new,expected",
    [
        ({}, {"phase": "Pending"}, ["requested"]),
        ({}, {"phase": "Denied"}, ["requested", "phase:Denied"]),
        ({"phase": "Pending"}, {"phase": "Pending"}, []),
        (
            {"phase": "Pending"},
            {"phase": "Active", "approvals": [{"approver": "bob", "decision": "Approve"}]},
            ["approval:bob:Approve", "phase:Active"],
        ),
        (
            {"phase": "Pending", "approvals": [{"approver": "bob", "decision": "Approve"}]},
            {
                "phase": "Pending",
                "approvals": [{"approver": "bob", "decision": "Approve"}, {"approver": "carol", "decision": "Approve"}],
            },
            ["approval:carol:Approve"],
        ),
        ({"phase": "Active"}, {"phase": "Active"}, []),
        ({"phase": "Active"}, {"phase": "Expired"}, ["phase:Expired"]),
        ({"phase": "Revoked"}, {"phase": "Revoked"}, []),
        (
            {"phase": "Pending", "ignoredApprovals": ["a"]},
            {"phase": "Pending", "ignoredApprovals": ["a", "b"]},
            ["ignored:b"],
        ),
    ],
    ids=[
        "a new request is requested",
        "a request denied on its first pass is requested, then denied",
        "waiting again is no news",
        "the counted approval comes before the issue",
        "only the new approver is news",
        "an active grant seen again is no news",
        "expiry is a phase change",
        "a terminal request seen again is no news",
        "only the newly ignored approval is news",
    ],
)
def test_changes_lists_what_deserves_an_event_and_an_audit_record(old, new, expected):
    assert changes(old, new) == expected
