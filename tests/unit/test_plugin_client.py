"""The plugin's cluster access: the namespace it works in, and every API failure mapped to the exit
code the README promises (1 refused / not allowed, 3 API error, 4 not found)."""

from __future__ import annotations

import json
import types

import pytest
import yaml
from kubernetes.client.rest import ApiException

from breakglass.plugin.client import Client, api_error
from breakglass.plugin.errors import API_ERROR, NOT_FOUND, NOT_OK, CliError


def kubeconfig(tmp_path, namespaces):
    """A kubeconfig with one context per (name, namespace or None); the first is current."""
    contexts = [
        {"name": n, "context": {"cluster": "c", "user": "u", **({"namespace": ns} if ns else {})}}
        for n, ns in namespaces
    ]
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": namespaces[0][0],
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": contexts,
            }
        )
    )
    return str(path)


def args(path, namespace=None, context=None):
    return types.SimpleNamespace(kubeconfig=path, context=context, namespace=namespace)


@pytest.mark.parametrize(
    "contexts,flag,context,expected",
    [
        ([("main", "team-db")], None, None, "team-db"),
        ([("main", "team-db")], "other", None, "other"),
        ([("main", None)], None, None, "default"),
        ([("main", "team-db"), ("ops", "ops-ns")], None, "ops", "ops-ns"),
        ([("main", "team-db"), ("ops", None)], None, "ops", "default"),
        ([("main", "team-db"), ("ops", "ops-ns")], "flag-ns", "ops", "flag-ns"),
    ],
    ids=[
        "the current context's namespace is used",
        "-n wins over the context",
        "no namespace anywhere is default",
        "--context picks that context's namespace",
        "--context without a namespace is default",
        "-n wins over --context",
    ],
)
def test_the_namespace_comes_from_the_flag_then_the_context_then_default(tmp_path, contexts, flag, context, expected):
    assert Client(args(kubeconfig(tmp_path, contexts), flag, context)).namespace == expected


def test_an_unreadable_kubeconfig_is_an_api_error(tmp_path):
    with pytest.raises(CliError) as exc:
        Client(args(str(tmp_path / "missing")))
    assert exc.value.code == API_ERROR and str(exc.value).startswith("cannot load kubeconfig:")


def refusal(status, message=None, reason="Reason"):
    return ApiException(
        status=status, reason=reason, body=None if message is None else json.dumps({"message": message})
    )


@pytest.mark.parametrize(
    "exc,what,code,message",
    [
        (
            refusal(404, 'requests "x" not found'),
            "BreakGlassRequest ns/x",
            NOT_FOUND,
            "BreakGlassRequest ns/x not found",
        ),
        (refusal(404, "the server could not find it"), "", NOT_FOUND, "object not found: the server could not find it"),
        (refusal(403, "secrets is forbidden"), "", NOT_OK, "not allowed: secrets is forbidden"),
        (
            refusal(403, 'admission webhook "x" denied the request: spec.reason too short'),
            "",
            NOT_OK,
            'rejected: admission webhook "x" denied the request: spec.reason too short',
        ),
        (refusal(400, "bad body"), "", NOT_OK, "rejected: bad body"),
        (refusal(422, "spec.duration: invalid"), "", NOT_OK, "rejected: spec.duration: invalid"),
        (refusal(500, "etcd is sad"), "", API_ERROR, "API error 500: etcd is sad"),
        (refusal(503, None, reason="Service Unavailable"), "", API_ERROR, "API error 503: Service Unavailable"),
    ],
    ids=[
        "a named 404 says what is missing",
        "an unnamed 404 quotes the server",
        "a forbidden read is not allowed",
        "an admission refusal is rejected",
        "a bad request is rejected",
        "an invalid object is rejected",
        "a server error is an API error",
        "a body without JSON falls back to the reason",
    ],
)
def test_api_errors_map_to_the_plugins_exit_codes(exc, what, code, message):
    err = api_error(exc, what)
    assert (err.code, str(err)) == (code, message)


class Raising:
    """A CustomObjectsApi/CoreV1Api stand-in: every call raises `exc` (or returns `result`)."""

    def __init__(self, exc=None, result=None):
        self.exc, self.result, self.calls = exc, result, []

    def __getattr__(self, verb):
        def call(*a, **kw):
            self.calls.append((verb, a, kw))
            if self.exc is not None:
                raise self.exc
            return self.result

        return call


@pytest.fixture
def client(tmp_path):
    return Client(args(kubeconfig(tmp_path, [("main", "team-db")])))


@pytest.mark.parametrize(
    "call,api_attr,exc,code,message",
    [
        (
            lambda c: c.get_request("x"),
            "custom",
            refusal(404, "gone"),
            NOT_FOUND,
            "BreakGlassRequest team-db/x not found",
        ),
        (lambda c: c.get_policy("p"), "custom", refusal(404, "gone"), NOT_FOUND, "BreakGlassPolicy p not found"),
        (lambda c: c.get_secret("ns", "s"), "core", refusal(404, "gone"), NOT_FOUND, "Secret ns/s not found"),
        (lambda c: c.get_configmap("ns", "cm"), "core", refusal(404, "gone"), NOT_FOUND, "ConfigMap ns/cm not found"),
        (lambda c: c.get_secret("ns", "s"), "core", refusal(403, "forbidden"), NOT_OK, "not allowed: forbidden"),
        (lambda c: c.list_requests(), "custom", refusal(500, "boom"), API_ERROR, "API error 500: boom"),
        (
            lambda c: c.create_request({}),
            "custom",
            refusal(403, "admission webhook said no"),
            NOT_OK,
            "rejected: admission webhook said no",
        ),
        (
            lambda c: c.create_approval({}),
            "custom",
            refusal(403, "admission webhook said no"),
            NOT_OK,
            "rejected: admission webhook said no",
        ),
        (lambda c: c.revoke_request("x"), "custom", refusal(404, "gone"), NOT_FOUND, "object not found: gone"),
        (
            lambda c: c.list_policies(),
            "custom",
            ConnectionRefusedError("refused"),
            API_ERROR,
            "cannot reach the API server: refused",
        ),
    ],
    ids=[
        "a missing request",
        "a missing policy",
        "a missing Secret",
        "a missing ConfigMap",
        "a forbidden Secret",
        "a failing list",
        "a refused request",
        "a refused approval",
        "revoking a request deleted meanwhile",
        "an unreachable API server",
    ],
)
def test_each_call_reports_its_failure_with_the_right_exit_code(client, call, api_attr, exc, code, message):
    setattr(client.kube, api_attr, Raising(exc))
    with pytest.raises(CliError) as raised:
        call(client)
    assert (raised.value.code, str(raised.value)) == (code, message)


@pytest.mark.parametrize(
    "call,verb,expected_args",
    [
        (
            lambda c: c.list_requests(),
            "list_namespaced_custom_object",
            ("breakglass.dev", "v1alpha1", "team-db", "breakglassrequests"),
        ),
        (
            lambda c: c.list_requests(all_namespaces=True),
            "list_cluster_custom_object",
            ("breakglass.dev", "v1alpha1", "breakglassrequests"),
        ),
        (
            lambda c: c.revoke_request("x"),
            "patch_namespaced_custom_object",
            ("breakglass.dev", "v1alpha1", "team-db", "breakglassrequests", "x", {"spec": {"revoked": True}}),
        ),
        (
            lambda c: c.create_approval({"b": 1}),
            "create_namespaced_custom_object",
            ("breakglass.dev", "v1alpha1", "team-db", "breakglassapprovals", {"b": 1}),
        ),
        (
            lambda c: c.create_request({"b": 1}),
            "create_namespaced_custom_object",
            ("breakglass.dev", "v1alpha1", "team-db", "breakglassrequests", {"b": 1}),
        ),
    ],
    ids=[
        "list is namespaced",
        "list -A is cluster-wide",
        "revoke patches spec.revoked",
        "an approval is created in the request's namespace",
        "a request is created in the namespace",
    ],
)
def test_calls_go_to_the_namespace_and_resource_asked_for(client, call, verb, expected_args):
    custom = client.kube.custom = Raising(result={"items": []})
    call(client)
    assert custom.calls == [(verb, expected_args, {})]


def test_whoami_is_a_dry_run_create_stamped_by_admission(client):
    custom = client.kube.custom = Raising(
        result={"items": [], "spec": {"requester": "alice", "requesterGroups": ["sre"]}}
    )
    assert client.whoami() == ("alice", ["sre"])
    verb, a, kw = custom.calls[-1]
    assert verb == "create_namespaced_custom_object" and kw == {"dry_run": "All"}
    assert a[4]["metadata"]["labels"] == {"breakglass.dev/identity-probe": "true"}
