"""Admission and input rules, acting as each kind of caller (pure functions, no cluster)."""

from __future__ import annotations

import copy
import datetime as dt
import pathlib
import sys

import pytest
import yaml

from breakglass import admission, api
from breakglass.domain.approvals import ApprovalView, tally_approvals
from breakglass.domain.checks import evaluate_request, first_failure
from breakglass.domain.durations import DurationError, parse_duration
from breakglass.domain.policy import SCOPE_PATTERN, Policy, RequestView, validate_policy

ROOT = pathlib.Path(__file__).resolve().parents[2]
OPERATOR = "system:serviceaccount:breakglass-system:breakglass-operator"
UID, OLD_UID = "uid-now", "uid-before"
POLICY_SPEC = {
    "requesters": {"groups": ["sre"]},
    "approvers": {"groups": ["leads"]},
    "allowedNamespaces": ["team-*"],
    "allowedClusterRoles": ["view"],
    "allowedScopes": ["db:*"],
    "maxDuration": "1h",
}
POLICIES = {"p": {"spec": POLICY_SPEC}}
EXISTING = {"team-a"}
REQUEST = {
    "metadata": {
        "name": "r",
        "namespace": "team-a",
        "uid": UID,
        "resourceVersion": "7",
        "finalizers": [api.FINALIZER],
        "labels": {"app": "x"},
    },
    "spec": {
        "policy": "p",
        "reason": "database is down badly",
        "duration": "30m",
        "namespaces": ["team-a"],
        "clusterRoles": ["view"],
        "requester": "alice",
        "requesterGroups": ["sre"],
    },
}
CALLERS = {
    "requester": {"username": "alice", "groups": ["sre"]},
    "approver": {"username": "bob", "groups": ["leads"]},
    "admin": {"username": "root", "groups": ["system:masters"]},
    "operator": {"username": OPERATOR, "groups": ["system:serviceaccounts"]},
    "outsider": {"username": "mallory", "groups": ["sre"]},
    "namespace controller": {"username": "system:serviceaccount:kube-system:namespace-controller", "groups": []},
}


def rules(operator=OPERATOR, exists=EXISTING.__contains__):
    return admission.RequestRules(
        get_policy=POLICIES.get,
        namespace_exists=exists,
        admin_groups=("system:masters",),
        operator_username=operator,
        ceiling=dt.timedelta(hours=24),
    )


def changed(**edits):
    """REQUEST with edits: 'revoke', 'label', 'unfinalize', 'drill', 'reason' (each a small change)."""
    new = copy.deepcopy(REQUEST)
    new["metadata"]["resourceVersion"] = "8"
    new["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    for edit in edits:
        if edit == "revoke":
            new["spec"]["revoked"] = True
        elif edit == "label":
            new["metadata"]["labels"]["team"] = "blue"
        elif edit == "unfinalize":
            new["metadata"]["finalizers"] = []
        elif edit == "drill":
            new["metadata"]["labels"][api.DRILL_LABEL] = "true"
        elif edit == "reason":
            new["spec"]["reason"] = "something else entirely"
    return new


def act(caller, operation, new=None, operator=OPERATOR):
    body = REQUEST if operation == "DELETE" else new
    return admission.validate_request(operation, body, REQUEST, CALLERS[caller], rules(operator))


ACTIONS = [
    ("requester", "UPDATE", {"revoke": 1}, None),
    ("requester", "DELETE", None, None),
    ("requester", "UPDATE", {"label": 1}, None),
    ("approver", "UPDATE", {"revoke": 1}, None),
    ("approver", "DELETE", None, "ApproverMayOnlyRevoke"),
    ("approver", "UPDATE", {"revoke": 1, "label": 1}, "ApproverMayOnlyRevoke"),
    ("admin", "DELETE", None, None),
    ("admin", "UPDATE", {"label": 1}, None),
    ("operator", "UPDATE", {"unfinalize": 1}, None),
    ("operator", "UPDATE", {"drill": 1}, None),
    ("outsider", "UPDATE", {"revoke": 1}, "NotRequestOwner"),
    ("outsider", "DELETE", None, "NotRequestOwner"),
    ("outsider", "UPDATE", {"drill": 1}, "NotRequestOwner"),
    ("requester", "UPDATE", {"unfinalize": 1}, "FinalizerOperatorOnly"),
    ("admin", "UPDATE", {"unfinalize": 1}, "FinalizerOperatorOnly"),
    ("requester", "UPDATE", {"drill": 1}, "DrillLabelOperatorOnly"),
    ("admin", "UPDATE", {"drill": 1}, "DrillLabelOperatorOnly"),
    ("requester", "UPDATE", {"reason": 1}, "Immutable"),
    ("namespace controller", "DELETE", None, None),
]


@pytest.mark.parametrize(
    "caller,operation,edits,reason",
    ACTIONS,
    ids=[
        "the requester may revoke their own request",
        "the requester may delete their own request",
        "the requester may relabel their own request",
        "an approver of the policy may revoke the request",
        "an approver may not delete the request",
        "an approver may not change anything besides revoking",
        "an admin group member may delete anyone's request",
        "an admin group member may relabel anyone's request",
        "the operator may remove its finalizer",
        "the operator may set the drill label",
        "anyone else may not revoke the request",
        "anyone else may not delete the request",
        "anyone else may not label the request a drill",
        "the requester may not remove the revoke-on-delete finalizer",
        "not even an admin may remove the revoke-on-delete finalizer",
        "the requester may not label a request a drill",
        "not even an admin may label a request a drill",
        "the spec stays immutable for the requester",
        "the namespace controller may delete requests with their namespace",
    ],
)
def test_who_may_change_or_delete_a_request(caller, operation, edits, reason):
    verdict = act(caller, operation, changed(**edits) if edits is not None else None)
    assert (None if verdict.ok else verdict.reason) == reason


def test_a_refusal_names_who_may_act_instead():
    message = act("outsider", "DELETE").message
    assert all(who in message for who in ("mallory", "'alice'", "system:masters", "approvers of policy 'p'"))


def test_an_unresolved_operator_identity_lets_nobody_remove_the_finalizer():
    assert not act("operator", "UPDATE", changed(unfinalize=1), operator=None).ok


def created(labels, caller="requester", operator=OPERATOR, namespaces=("team-a",), **spec):
    body = copy.deepcopy(REQUEST)
    body["metadata"] = {"name": "r", "namespace": "team-a", "labels": labels}
    body["spec"].update(spec, namespaces=list(namespaces), requester=CALLERS[caller]["username"])
    return admission.validate_request("CREATE", body, None, CALLERS[caller], rules(operator))


@pytest.mark.parametrize(
    "labels,caller,reason",
    [
        ({}, "requester", None),
        ({api.DRILL_LABEL: "true"}, "requester", "DrillLabelOperatorOnly"),
        ({api.DRILL_LABEL: "false"}, "requester", "DrillLabelOperatorOnly"),
        ({api.DRILL_LABEL: "true"}, "operator", "RequesterNotAllowed"),
    ],
    ids=[
        "a plain request may be created",
        "a requester may not file a request labelled as a drill",
        "any drill label value is the operator's",
        "the operator's drill label passes on to the policy checks",
    ],
)
def test_only_the_operator_creates_drill_requests(labels, caller, reason):
    verdict = created(labels, caller)
    assert (None if verdict.ok else verdict.reason) == reason


@pytest.mark.parametrize(
    "namespaces,exists,reason",
    [
        (("team-a",), EXISTING.__contains__, None),
        (("team-gone",), EXISTING.__contains__, "NamespaceNotFound"),
        (("kube-system",), EXISTING.__contains__, "NamespaceNotAllowed"),
        (("team-a",), lambda name: 1 / 0, "NamespaceLookupFailed"),
    ],
    ids=[
        "an existing namespace is accepted",
        "a namespace that does not exist is refused",
        "a namespace outside the policy is refused before its existence is looked up",
        "a failing namespace lookup refuses without exception text",
    ],
)
def test_request_target_namespaces_must_exist(namespaces, exists, reason):
    body = copy.deepcopy(REQUEST)
    body["spec"]["namespaces"] = list(namespaces)
    verdict = admission.validate_request("CREATE", body, None, CALLERS["requester"], rules(exists=exists))
    assert (None if verdict.ok else verdict.reason) == reason
    if reason:
        assert verdict.message.startswith("spec.namespaces") and "division" not in verdict.message


@pytest.mark.parametrize(
    "duration,reason",
    [
        ("9" * 30 + "h", "InvalidDuration"),
        ("876001h", "InvalidDuration"),
        ("25h", "DurationExceedsMax"),
    ],
    ids=[
        "a number too large to compute is refused",
        "a duration beyond a hundred years is refused",
        "a duration beyond the policy maximum is refused",
    ],
)
def test_duration_messages_name_spec_duration_and_no_exception(duration, reason):
    verdict = created({}, duration=duration)
    assert verdict.reason == reason and verdict.message.startswith("spec.duration")
    assert "Overflow" not in verdict.message and "magnitude" not in verdict.message


def test_parse_duration_names_the_value_it_cannot_hold():
    with pytest.raises(DurationError, match="'99999999999999999999h' is too large"):
        parse_duration("99999999999999999999h")


POLICY = Policy.from_resource("p", {**POLICY_SPEC, "allowedScopes": ["*"]})


@pytest.mark.parametrize(
    "scope,reason",
    [
        ("db:read", None),
        ("db:read k8s:cluster-admin", "ScopeMalformed"),
        ("db:read\n", "ScopeMalformed"),
        ("k8s:prod:admin", "ScopeNotAllowed"),
        ("K8S:prod:admin", "ScopeNotAllowed"),
        ("-db", "ScopeMalformed"),
        ("x" * 129, "ScopeMalformed"),
        ("a" + "/._:+=@-" * 10, None),
    ],
    ids=[
        "a plain scope passes",
        "a scope with a space is refused",
        "a trailing newline is refused",
        "the reserved k8s prefix is refused",
        "the reserved prefix is refused in any case",
        "a scope must start with a letter or digit",
        "a scope is at most 128 characters",
        "the permitted punctuation passes",
    ],
)
def test_each_scope_is_one_well_formed_unreserved_token(scope, reason):
    view = RequestView(
        name="r",
        namespace="team-a",
        requester="alice",
        requester_groups=("sre",),
        reason="database is down badly",
        scopes=("db:write", scope),
        policy="p",
    )
    failure = first_failure(evaluate_request(view, POLICY))
    assert (failure.reason if failure else None) == reason
    if failure:
        assert failure.message.startswith("spec.scopes")


def test_token_delivery_defaults_to_the_operator_namespace_and_rejects_unknown_values():
    assert Policy.from_resource("p", POLICY_SPEC).token_delivery == "OperatorNamespace"
    assert (
        Policy.from_resource("p", {**POLICY_SPEC, "tokenDelivery": "RequestNamespace"}).token_delivery
        == "RequestNamespace"
    )
    problems = validate_policy(Policy.from_resource("p", {**POLICY_SPEC, "tokenDelivery": "Anywhere"}))
    assert [p.reason for p in problems] == ["InvalidTokenDelivery"]


# --- approvals belong to one request instance ---------------------------------------------
def approval(**spec):
    return {
        "metadata": {
            "name": "a",
            "namespace": "team-a",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "c1"}],
        },
        "spec": {"request": "r", "decision": "Approve", **spec},
    }


def live(namespace, name):
    return REQUEST if (namespace, name) == ("team-a", "r") else None


@pytest.mark.parametrize(
    "spec,reason",
    [
        ({}, None),
        ({"requestUID": UID}, None),
        ({"requestUID": OLD_UID}, "RequestUIDMismatch"),
        ({"request": "gone"}, "RequestNotFound"),
    ],
    ids=[
        "the live request's uid is stamped",
        "the same uid given by the client is accepted",
        "a different uid given by the client is refused",
        "an approval for no live request is refused",
    ],
)
def test_admission_stamps_the_live_request_uid_onto_an_approval(spec, reason):
    verdict, fields, owners = admission.stamp_approval_request(approval(**spec), live)
    assert (None if verdict.ok else verdict.reason) == reason
    if verdict.ok:
        assert fields == {"requestUID": UID}
        assert owners[-1] == {
            "apiVersion": "breakglass.dev/v1alpha1",
            "kind": "BreakGlassRequest",
            "name": "r",
            "uid": UID,
            "blockOwnerDeletion": False,
        }
        assert owners[0]["uid"] == "c1" and len(owners) == 2


def test_an_approval_stamped_for_a_replaced_request_is_refused_at_validation():
    body = approval(requestUID=OLD_UID, approver="bob", approverGroups=["leads"])
    verdict = admission.validate_approval_create(body, CALLERS["approver"], live, POLICIES.get)
    assert verdict.reason == "RequestUIDMismatch"
    body["spec"]["requestUID"] = UID
    assert admission.validate_approval_create(body, CALLERS["approver"], live, POLICIES.get).ok


CREATED = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "uid,minutes,why",
    [
        (UID, 0, None),
        (UID, 5, None),
        (OLD_UID, 5, "another request instance"),
        ("", 5, "no spec.requestUID"),
        (UID, -1, "created before this request"),
    ],
    ids=[
        "an approval created with the request counts",
        "a later approval for this uid counts",
        "an approval for an earlier request of the same name is ignored",
        "an unstamped approval is ignored",
        "an approval older than the request is ignored",
    ],
)
def test_the_tally_counts_only_approvals_for_this_request_instance(uid, minutes, why):
    view = ApprovalView(
        name="a",
        approver="bob",
        approver_groups=("leads",),
        decision="Approve",
        created=CREATED + dt.timedelta(minutes=minutes),
        request_uid=uid,
    )
    tally = tally_approvals(
        [view],
        requester="alice",
        policy=Policy.from_resource("p", POLICY_SPEC),
        deadline=None,
        request_uid=UID,
        request_created=CREATED,
    )
    assert tally.approved_by == ([] if why else ["bob"])
    assert (why in tally.ignored[0][2]) if why else not tally.ignored


def test_approval_view_reads_the_stamped_uid():
    assert ApprovalView.from_resource({"spec": {"requestUID": UID}}).request_uid == UID


# --- generated schema and webhook registration --------------------------------------------
def crd(plural):
    return yaml.safe_load((ROOT / "crds" / f"breakglass.dev_{plural}.yaml").read_text())["spec"]["versions"][0][
        "schema"
    ]["openAPIV3Schema"]["properties"]


def test_the_crds_carry_the_new_fields_with_descriptions_and_the_scope_pattern():
    assert crd("breakglassapprovals")["spec"]["properties"]["requestUID"]["description"]
    delivery = crd("breakglasspolicies")["spec"]["properties"]["tokenDelivery"]
    assert delivery["enum"] == ["OperatorNamespace", "RequestNamespace"] and delivery["default"] == "OperatorNamespace"
    assert crd("breakglassrequests")["status"]["properties"]["username"]["description"]
    assert crd("breakglassrequests")["spec"]["properties"]["scopes"]["items"]["pattern"] == SCOPE_PATTERN


def test_the_request_webhook_sees_deletes_in_the_chart_and_in_kopf_managed_mode():
    pytest.importorskip("helm_python")
    sys.path.insert(0, str(ROOT / "hack"))
    import kopf
    import render_chart

    from breakglass import handlers  # noqa: F401  (registers the decorators)

    hooks = {
        h["name"]: h
        for d in render_chart.manifests({})
        if d["kind"] == "ValidatingWebhookConfiguration"
        for h in d["webhooks"]
    }
    assert hooks["validate-request.breakglass.dev"]["rules"][0]["operations"] == ["CREATE", "UPDATE", "DELETE"]
    assert hooks["validate-approval.breakglass.dev"]["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    registered = {h.id: h for h in kopf.get_default_registry()._webhooks.get_all_handlers()}
    assert set(registered["validate-request"].operations) == {"CREATE", "UPDATE", "DELETE"}
