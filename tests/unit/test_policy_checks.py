import pytest

from breakglass.domain.checks import evaluate_request, first_failure
from breakglass.domain.policy import Policy, RequestView, validate_policy

POLICY = Policy(
    name="prod-db",
    requester_groups=("sre",),
    approver_groups=("sre-leads",),
    allowed_namespaces=("team-*", "prod"),
    allowed_cluster_roles=("view", "edit"),
    allowed_scopes=("db:*",),
    max_duration="1h",
    require_ticket=True,
    ticket_pattern=r"INC-\d+",
)


def req(**kw):
    base = dict(
        name="r",
        namespace="team-a",
        requester="alice",
        requester_groups=("sre",),
        reason="database is down badly",
        ticket="INC-1",
        duration="30m",
        namespaces=("team-a",),
        cluster_roles=("view",),
        scopes=("db:read",),
        policy="prod-db",
    )
    base.update(kw)
    return RequestView(**base)


CASES = [
    ({}, None),
    ({"requester": "mallory", "requester_groups": ("contractors",)}, "RequesterNotAllowed"),
    ({"reason": "short"}, "ReasonTooShort"),
    ({"duration": "3h"}, "DurationExceedsMax"),
    ({"duration": "banana"}, "InvalidDuration"),
    ({"namespaces": ("kube-system",)}, "NamespaceNotAllowed"),
    ({"cluster_roles": ("cluster-admin",)}, "ClusterRoleNotAllowed"),
    ({"scopes": ("admin:all",)}, "ScopeNotAllowed"),
    ({"scopes": ("k8s:prod:admin",)}, "ScopeNotAllowed"),
    ({"audiences": ("vault",)}, "AudienceNotAllowed"),
    ({"ticket": None}, "TicketRequired"),
    ({"ticket": "JIRA-1"}, "TicketPatternMismatch"),
    ({"emergency": True}, "EmergencyNotAllowed"),
    ({"cluster_roles": (), "namespaces": (), "scopes": ()}, "NothingRequested"),
    ({"namespaces": ()}, "NamespacesRequired"),
]


@pytest.mark.parametrize(
    "change,reason",
    CASES,
    ids=[
        "a request inside the policy passes",
        "an outsider may not request",
        "a short reason is refused",
        "a duration over the max is refused",
        "a malformed duration is refused",
        "a namespace outside the globs is refused",
        "an unlisted cluster role is refused",
        "an unlisted scope is refused",
        "a scope posing as a kubernetes grant is refused",
        "a foreign audience is refused",
        "a missing ticket is refused",
        "a ticket not matching the pattern is refused",
        "emergency is refused when the policy does not allow it",
        "an empty grant is refused",
        "cluster roles without namespaces are refused",
    ],
)
def test_request_checks_name_the_failing_rule(change, reason):
    failure = first_failure(evaluate_request(req(**change), POLICY))
    assert (failure.reason if failure else None) == reason
    if failure:
        assert "spec." in failure.message or "request" in failure.message


def test_the_duration_message_names_field_policy_and_limit():
    failure = first_failure(evaluate_request(req(duration="3h"), POLICY))
    assert failure.message == "spec.duration '3h' exceeds policy 'prod-db' maxDuration 1h"


@pytest.mark.parametrize(
    "spec,reason",
    [
        ({"requesters": {"groups": ["sre"]}, "approvers": {"groups": ["x"]}}, None),
        (
            {"requesters": {"groups": ["sre"]}, "approvers": {"groups": ["x"]}, "ticketPattern": "(["},
            "InvalidTicketPattern",
        ),
        (
            {
                "requesters": {"groups": ["sre"]},
                "approvers": {"groups": ["x"]},
                "maxDuration": "5m",
                "defaultDuration": "15m",
            },
            "MaxBelowDefault",
        ),
        ({"requesters": {"groups": ["sre"]}, "requiredApprovals": 1}, "NoApprovers"),
        ({"requesters": {"groups": ["sre"]}, "requiredApprovals": 0}, None),
        ({"approvers": {"groups": ["x"]}}, "NoRequesters"),
        (
            {"requesters": {"groups": ["sre"]}, "approvers": {"groups": ["x"]}, "allowedClusterRoles": ["*"]},
            "WildcardClusterRole",
        ),
    ],
    ids=[
        "a sane policy is ready",
        "a bad regex is reported",
        "max below default is reported",
        "an empty approver set that needs approvals can never approve",
        "no approvers are fine when none are needed",
        "a policy nobody may use is reported",
        "a wildcard cluster role is refused",
    ],
)
def test_policy_validation_reports_the_first_problem(spec, reason):
    problems = validate_policy(Policy.from_resource("p", spec))
    assert (problems[0].reason if problems else None) == reason
