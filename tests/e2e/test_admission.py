"""Bad manifests are rejected at admission with a message naming the field and the rule; nothing is minted."""

from __future__ import annotations

import pytest
import yaml

from .scenario import approval, policy, request, unique, wait_phase


@pytest.fixture(scope="module")
def strict(cluster, operator):
    """A namespace and a strict policy shared by the table below."""
    ns = cluster.new_namespace("adm")
    name = unique("strict")
    cluster.apply(
        policy(
            name,
            allowedNamespaces=["team-*", ns],
            allowedClusterRoles=["view"],
            allowedScopes=["db:*"],
            audiences=["breakglass"],
            requireTicket=True,
            ticketPattern="INC-[0-9]+",
            maxDuration="1h",
        )
    )
    return ns, name


def _req(ns, pol, **spec):
    base = {"ticket": "INC-1"}
    base.update(spec)
    return request(unique("bad"), ns, pol, **base)


BAD_REQUESTS = [
    ("alice", {"duration": "3h"}, "spec.duration '3h' exceeds policy '{pol}' maxDuration 1h"),
    ("alice", {"duration": "forever"}, "spec.duration"),
    ("alice", {"namespaces": ["kube-system"]}, "spec.namespaces ['kube-system'] not allowed by policy"),
    ("alice", {"clusterRoles": ["cluster-admin"]}, "spec.clusterRoles ['cluster-admin'] not allowed by policy"),
    ("alice", {"scopes": ["root:all"]}, "spec.scopes ['root:all'] not allowed by policy"),
    ("alice", {"audiences": ["vault"]}, "spec.audiences ['vault'] not allowed by policy"),
    ("alice", {"ticket": None}, "spec.ticket is required by policy"),
    ("alice", {"ticket": "JIRA-9"}, "does not match policy"),
    ("alice", {"reason": "ab"}, "spec.reason"),
    ("alice", {"reason": "          x"}, "spec.reason must be at least 10 characters"),
    ("alice", {"policy": "no-such-policy"}, "spec.policy 'no-such-policy': no BreakGlassPolicy of that name exists"),
    ("mallory", {}, "spec.requester 'mallory' (groups"),
    ("alice", {"requester": "bob"}, "spec.requester 'bob' differs from the authenticated user 'alice'"),
    ("alice", {"requesterGroups": ["sre-leads"]}, "spec.requesterGroups differs"),
    ("alice", {"emergency": True}, "spec.emergency is true but policy"),
    ("alice", {"revoked": True}, "spec.revoked cannot be true on a new request"),
    ("alice", {"clusterRoles": [], "namespaces": [], "scopes": []}, "request at least one of"),
]


@pytest.mark.parametrize(
    "user,spec,message",
    BAD_REQUESTS,
    ids=[
        "over the max duration",
        "a malformed duration",
        "a namespace outside the policy",
        "a forbidden cluster role",
        "a forbidden scope",
        "a foreign audience",
        "a missing ticket",
        "a ticket not matching the pattern",
        "a reason under ten characters (schema)",
        "a reason of blanks",
        "an unknown policy",
        "an outsider requesting",
        "a forged requester",
        "forged requester groups",
        "emergency not allowed",
        "revoked on create",
        "an empty grant",
    ],
)
def test_a_bad_request_is_rejected_with_its_specific_message(cluster, strict, user, spec, message):
    ns, pol = strict
    manifest = _req(ns, pol, **spec)
    if spec.get("ticket", "x") is None:
        manifest["spec"].pop("ticket")
    out = cluster.try_create(manifest, user=user)
    assert out.returncode != 0
    assert message.format(pol=pol) in out.stderr, out.stderr
    assert cluster.get("breakglassrequest", manifest["metadata"]["name"], ns) is None
    ledger = cluster.list("configmaps", "breakglass-system", selector="breakglass.dev/ledger=grant")
    assert not [c for c in ledger if f'"name": "{manifest["metadata"]["name"]}"' in c["data"]["grant.json"]]


def test_bad_approvals_are_rejected(cluster, strict):
    ns, pol = strict
    missing = cluster.try_create(approval("does-not-exist", ns), user="bob")
    assert missing.returncode != 0 and "spec.request 'does-not-exist': no BreakGlassRequest" in missing.stderr
    bad_decision = cluster.try_create(approval("does-not-exist", ns, decision="Maybe"), user="bob")
    assert bad_decision.returncode != 0 and "spec.decision" in bad_decision.stderr


def test_spec_fields_other_than_revoked_are_immutable_and_approvals_cannot_be_edited(cluster, strict):
    ns, pol = strict
    manifest = _req(ns, pol)
    cluster.apply(manifest, user="alice", verb="create")
    name = manifest["metadata"]["name"]
    wait_phase(cluster, name, ns, "Pending")
    for patch, field in (
        ('{"spec":{"duration":"5m"}}', "spec.duration"),
        ('{"spec":{"namespaces":["team-x"]}}', "spec.namespaces"),
        ('{"spec":{"requester":"dave"}}', "spec.requester"),
    ):
        out = cluster.kubectl(
            "patch", "breakglassrequest", name, "-n", ns, "--type=merge", "-p", patch, user="alice", check=False
        )
        assert out.returncode != 0 and f"{field} is immutable" in out.stderr
    created = cluster.kubectl(
        "create", "-f", "-", "-o", "name", user="bob", input=yaml.safe_dump(approval(name, ns, decision="Deny"))
    ).stdout.strip()
    edit = cluster.kubectl(
        "patch", created, "-n", ns, "--type=merge", "-p", '{"spec":{"decision":"Approve"}}', check=False
    )
    assert edit.returncode != 0 and "immutable" in edit.stderr
