"""The pure rules for extending an active grant (domain/extensions.py), for a fixed `now`."""

from __future__ import annotations

import datetime as dt

import pytest

from breakglass.domain.approvals import ApprovalView, Tally, tally_approvals
from breakglass.domain.extensions import APPLY, REFUSE, WAIT, ExtensionView, judge_extension, undecided
from breakglass.domain.policy import Policy, validate_policy

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
REQ_UID, EXT_UID = "req-uid-1", "ext-uid-1"


def minutes(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def policy(**kw) -> Policy:
    base = dict(
        name="prod",
        requester_groups=("sre",),
        approver_users=("bob", "carol", "alice"),
        max_duration="1h",
        extension_allowed=True,
        extension_required_approvals=1,
        extension_max_total="1h",
    )
    base.update(kw)
    return Policy(**base)


def ext(**kw) -> ExtensionView:
    base = dict(
        name="x1",
        uid=EXT_UID,
        request="r1",
        request_uid=REQ_UID,
        requester="alice",
        by="10m",
        reason="still migrating",
        created=minutes(5),
    )
    base.update(kw)
    return ExtensionView(**base)


def approval(approver="bob", decision="Approve", **kw) -> ApprovalView:
    base = dict(
        name=f"a-{approver}-{decision}",
        approver=approver,
        approver_groups=(),
        decision=decision,
        created=minutes(6),
        request_uid=REQ_UID,
        extension="x1",
        extension_uid=EXT_UID,
    )
    base.update(kw)
    return ApprovalView(**base)


EXP, NOW, CEILING = T0 + dt.timedelta(minutes=30), T0 + dt.timedelta(minutes=7), dt.timedelta(hours=24)


def judge(e=None, approvals=(), pol=None, *, exp=EXP, now=NOW, ceiling=CEILING):
    return judge_extension(
        e or ext(),
        list(approvals),
        policy=pol or policy(),
        requester="alice",
        request_uid=REQ_UID,
        issued_at=T0,
        expires_at=exp,
        ceiling=ceiling,
        now=now,
    )


CASES = [
    (
        "one approval from a policy approver extends the grant by spec.by",
        dict(approvals=[approval()]),
        APPLY,
        "Extended",
    ),
    ("without approvals the extension waits", dict(), WAIT, "AwaitingApproval"),
    (
        "requiredApprovals 0 extends without any approval",
        dict(pol=policy(extension_required_approvals=0)),
        APPLY,
        "Extended",
    ),
    (
        "two approvals are needed when the policy says 2; one waits",
        dict(pol=policy(extension_required_approvals=2), approvals=[approval()]),
        WAIT,
        "AwaitingApproval",
    ),
    (
        "the same approver twice counts once",
        dict(pol=policy(extension_required_approvals=2), approvals=[approval(), approval(name="again")]),
        WAIT,
        "AwaitingApproval",
    ),
    (
        "the requester approving their own extension does not count, even with allowSelfApproval",
        dict(pol=policy(allow_self_approval=True), approvals=[approval("alice")]),
        WAIT,
        "AwaitingApproval",
    ),
    ("an approval by a non-approver does not count", dict(approvals=[approval("mallory")]), WAIT, "AwaitingApproval"),
    (
        "an approval for another extension uid does not count",
        dict(approvals=[approval(extension_uid="other-uid")]),
        WAIT,
        "AwaitingApproval",
    ),
    (
        "an approval for another request instance does not count",
        dict(approvals=[approval(request_uid="old-uid")]),
        WAIT,
        "AwaitingApproval",
    ),
    (
        "an approval older than the extension does not count",
        dict(approvals=[approval(created=minutes(4))]),
        WAIT,
        "AwaitingApproval",
    ),
    (
        "a request approval (no spec.extension) never counts for an extension",
        dict(approvals=[approval(extension="", extension_uid="")]),
        WAIT,
        "AwaitingApproval",
    ),
    (
        "any eligible Deny refuses it",
        dict(approvals=[approval(), approval("carol", "Deny")]),
        REFUSE,
        "DeniedByApprover",
    ),
    (
        "a policy without extension.allowed refuses",
        dict(pol=policy(extension_allowed=False), approvals=[approval()]),
        REFUSE,
        "ExtensionNotAllowed",
    ),
    (
        "a total beyond extension.maxTotal is refused (30m granted + 40m > 1h)",
        dict(e=ext(by="40m"), approvals=[approval()]),
        REFUSE,
        "ExceedsMaxTotal",
    ),
    (
        "a total exactly at extension.maxTotal is allowed (30m + 30m = 1h)",
        dict(e=ext(by="30m"), approvals=[approval()]),
        APPLY,
        "Extended",
    ),
    (
        "maxTotal unset falls back to the policy's maxDuration",
        dict(pol=policy(extension_max_total=None, max_duration="35m"), approvals=[approval()]),
        REFUSE,
        "ExceedsMaxTotal",
    ),
    (
        "the operator's --max-token-lifetime bounds the total whatever the policy says",
        dict(pol=policy(extension_max_total="10h"), approvals=[approval()], ceiling=dt.timedelta(minutes=35)),
        REFUSE,
        "ExceedsOperatorCeiling",
    ),
    (
        "an extension filed by someone else than the grant's requester is refused",
        dict(e=ext(requester="mallory"), approvals=[approval()]),
        REFUSE,
        "NotRequestOwner",
    ),
    (
        "an extension bound to another request instance is refused",
        dict(e=ext(request_uid="old-uid"), approvals=[approval(request_uid="old-uid")]),
        REFUSE,
        "RequestUIDMismatch",
    ),
    ("a grant past its exp is not extended", dict(approvals=[approval()], now=minutes(31)), REFUSE, "GrantNotActive"),
    (
        "RequestNamespace delivery cannot be extended (the operator may not rewrite Secrets there)",
        dict(pol=policy(token_delivery="RequestNamespace"), approvals=[approval()]),
        REFUSE,
        "ExtensionNeedsOperatorDelivery",
    ),
]


@pytest.mark.parametrize("case", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_extension_rules(case):
    kwargs, action, reason = case
    decision = judge(**kwargs)
    assert (decision.action, decision.reason) == (action, reason), decision.message


def test_an_applied_extension_moves_exp_by_spec_by_from_the_current_exp():
    decision = judge(approvals=[approval(), approval("carol")], exp=minutes(40))
    assert decision.expires_at == minutes(50)
    assert decision.approvers == ("bob", "carol")


def test_the_max_total_refusal_names_the_field_and_the_numbers():
    decision = judge(e=ext(by="40m"), approvals=[approval()])
    assert "extension.maxTotal 1h" in decision.message and "1h10m" in decision.message


def test_only_this_request_instances_undecided_extensions_are_considered_oldest_first():
    older = ext(name="a", uid="u-a", created=minutes(2))
    newer = ext(name="b", uid="u-b", created=minutes(3))
    decided = ext(name="c", uid="u-c", created=minutes(1))
    foreign = ext(name="d", uid="u-d", request_uid="old-uid")
    before = ext(name="e", uid="u-e", created=T0 - dt.timedelta(minutes=1))
    got = undecided([newer, decided, foreign, older, before], {"u-c"}, request_uid=REQ_UID, request_created=T0)
    assert [e.name for e in got] == ["a", "b"]


def test_extension_approvals_never_count_as_approvals_of_the_request_itself():
    tally = tally_approvals(
        [approval()],
        requester="alice",
        policy=policy(),
        deadline=None,
        request_uid=REQ_UID,
        request_created=T0,
    )
    assert tally == Tally()


def test_a_malformed_extension_max_total_makes_the_policy_invalid():
    problems = validate_policy(policy(extension_max_total="forever", requester_groups=("sre",)))
    assert [p.message for p in problems if "extension.maxTotal" in p.message]
