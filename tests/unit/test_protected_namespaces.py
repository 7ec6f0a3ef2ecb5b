"""The operator's own namespaces are never a grant target, whatever a policy's globs allow."""

from __future__ import annotations

import datetime as dt

import pytest

from breakglass.admission import validate_request_create
from breakglass.domain import decisions as D
from breakglass.domain.policy import Policy, RequestView

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
POLICY = Policy(
    name="p",
    requester_groups=("sre",),
    approver_groups=("leads",),
    required_approvals=0,
    allowed_namespaces=("*",),
    allowed_cluster_roles=("edit",),
)
PROTECTED = ("breakglass-system", "breakglass-tokens")


def _view(namespaces):
    return RequestView(
        name="r",
        namespace="team-a",
        requester="alice",
        requester_groups=("sre",),
        reason="database primary is down",
        namespaces=tuple(namespaces),
        cluster_roles=("edit",),
        duration="10m",
        policy="p",
    )


@pytest.mark.parametrize(
    "namespaces,denied",
    [
        (["team-a"], False),
        (["breakglass-system"], True),
        (["team-a", "breakglass-tokens"], True),
    ],
    ids=[
        "an ordinary namespace is issued",
        "the operator namespace is denied",
        "the token namespace among others is denied",
    ],
)
def test_reconcile_denies_a_grant_into_the_operators_own_namespaces(namespaces, denied):
    decision = D.decide(
        request=_view(namespaces),
        phase=None,
        policy=POLICY,
        tally=None,
        created=NOW,
        grant=None,
        now=NOW,
        protected=PROTECTED,
    )
    assert (decision.action == D.DENY and decision.reason == "ProtectedNamespace") is denied
    assert (decision.action == D.ISSUE) is not denied


def test_admission_refuses_a_grant_into_the_operator_namespace_naming_spec_namespaces():
    body = {
        "metadata": {"name": "r", "namespace": "team-a"},
        "spec": {
            "policy": "p",
            "reason": "database primary is down",
            "namespaces": ["breakglass-system"],
            "clusterRoles": ["edit"],
            "duration": "10m",
            "requester": "alice",
            "requesterGroups": ["sre"],
        },
    }
    policy_body = {
        "metadata": {"name": "p"},
        "spec": {
            "requesters": {"groups": ["sre"]},
            "requiredApprovals": 0,
            "allowedNamespaces": ["*"],
            "allowedClusterRoles": ["edit"],
        },
    }
    verdict = validate_request_create(
        body,
        {"username": "alice", "groups": ["sre"]},
        lambda _: policy_body,
        namespace_exists=lambda _: True,
        protected=PROTECTED,
    )
    assert not verdict.ok and verdict.reason == "ProtectedNamespace" and "spec.namespaces" in verdict.message
