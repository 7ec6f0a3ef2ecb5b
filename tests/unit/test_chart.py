"""The chart, linted and rendered by the real Helm engine (helm-python-sdk, Helm v4)."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack"))

import render_chart  # noqa: E402

helm_python = pytest.importorskip("helm_python")

VALUE_SETS = {
    "defaults": {},
    "monitoring on": {
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True},
        },
        "networkPolicy": {"enabled": True},
    },
    "two replicas": {"replicas": 2},
    "custom issuer": {"issuer": "https://breakglass.example.com", "clusterServer": "https://k8s.example.com:6443"},
    "apiserver client certificate": {"tokenReview": {"clientCASecretName": "apiserver-client-ca"}},
    "outside the cluster": {
        "webhook": {"url": "https://10.0.0.5:9443"},
        "rbac": {"requesterGroups": ["sre"], "approverGroups": ["sre-leads"]},
    },
    "token namespace and request-namespace delivery": {
        "tokenNamespace": "breakglass-tokens",
        "rbac": {
            "tokenDeliveryNamespaces": ["batch", "ml"],
            "adminGroups": ["sre-admins", "platform"],
            "grantableClusterRoles": ["view", "edit", "admin"],
        },
    },
}


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_the_chart_lints_clean_in_strict_mode():
    result = helm_python.lint(str(render_chart.CHART), strict=True)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_the_chart_renders_for_each_values_set(values):
    docs = render_chart.manifests(values)
    assert by_kind(docs, "Deployment") and by_kind(docs, "ValidatingWebhookConfiguration")
    deploy = by_kind(docs, "Deployment")[0]
    assert deploy["spec"]["replicas"] == values.get("replicas", 2)
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "breakglass-operator"
        assert "helm.sh/chart" in doc["metadata"]["labels"]


def test_monitoring_extras_render_only_when_enabled():
    off = {d["kind"] for d in render_chart.manifests({})}
    on = {d["kind"] for d in render_chart.manifests(VALUE_SETS["monitoring on"])}
    assert not {"ServiceMonitor", "PrometheusRule", "NetworkPolicy"} & off
    assert {"ServiceMonitor", "PrometheusRule", "NetworkPolicy"} <= on
    rule = by_kind(render_chart.manifests(VALUE_SETS["monitoring on"]), "PrometheusRule")[0]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "BreakGlassDrillFailing",
        "BreakGlassDrillStale",
        "BreakGlassReviewOverdue",
        "BreakGlassGrantOutlivesPolicy",
        "BreakGlassTokenReviewErrors",
        "BreakGlassExpiryLagHigh",
    } <= alerts
    dashboard = by_kind(render_chart.manifests(VALUE_SETS["monitoring on"]), "ConfigMap")[0]
    assert json.loads(dashboard["data"]["breakglass.json"])["panels"]


def test_a_custom_issuer_reaches_the_operator_args():
    deploy = by_kind(render_chart.manifests(VALUE_SETS["custom issuer"]), "Deployment")[0]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--issuer=https://breakglass.example.com" in args
    assert "--cluster-server=https://k8s.example.com:6443" in args


@pytest.mark.parametrize(
    "values,where",
    [
        ({"replicas": "two"}, "/replicas"),
        ({"signingAlgorithm": "HS256"}, "/signingAlgorithm"),
        ({"rbac": {"grantableClusterRoles": ["cluster-admin"]}}, "/rbac/grantableClusterRoles/0"),
        ({"issuer": "http://insecure"}, "/issuer"),
        ({"webhook": {"timeoutSeconds": 60}}, "/webhook/timeoutSeconds"),
        ({"unknownKey": 1}, "unknownKey"),
        ({"tokenNamespace": "Not_A_Namespace"}, "/tokenNamespace"),
        ({"rbac": {"tokenDeliveryNamespaces": ["ok", "no spaces"]}}, "/rbac/tokenDeliveryNamespaces/1"),
        ({"rbac": {"adminGroups": ["a,b"]}}, "/rbac/adminGroups/0"),
    ],
    ids=[
        "replicas must be a number",
        "HMAC algorithms are refused",
        "cluster-admin is never grantable",
        "the issuer must be https",
        "webhook timeouts are capped at 30 s",
        "unknown keys are refused",
        "the token namespace must be a namespace name",
        "delivery namespaces must be namespace names",
        "an admin group cannot smuggle a second group through a comma",
    ],
)
def test_bad_values_fail_with_the_offending_path(values, where):
    with pytest.raises(helm_python.HelmValuesError) as exc:
        render_chart.manifests(values)
    assert where in str(exc.value)


def test_deploy_matches_the_default_render():
    assert (ROOT / "deploy" / "breakglass-operator.yaml").read_text() == render_chart.deploy_text(), (
        "deploy/ drifted from the chart: run make deploy"
    )


def test_the_operator_rbac_has_no_wildcards_escalate_or_impersonate():
    docs = render_chart.manifests(VALUE_SETS["outside the cluster"])
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role["rules"]:
            for key in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            assert not {"escalate", "impersonate"} & set(rule["verbs"]), (role["metadata"]["name"], rule)
            if "bind" in rule["verbs"]:
                assert rule["resourceNames"] == ["view", "edit"]
    user_roles = [
        r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith(("-requester", "-approver"))
    ]
    assert len(user_roles) == 2
    for role in user_roles:
        assert all("secrets" not in rule["resources"] for rule in role["rules"])


def test_the_deployment_is_hardened():
    deploy = by_kind(render_chart.manifests({}), "Deployment")[0]
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]


def test_webhooks_fail_closed_and_point_at_the_operator_paths():
    docs = render_chart.manifests({})
    hooks = [
        h
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for cfg in by_kind(docs, kind)
        for h in cfg["webhooks"]
    ]
    assert {h["clientConfig"]["service"]["path"] for h in hooks} == {
        "/stamp-requester",
        "/stamp-approver",
        "/validate-request",
        "/validate-approval",
        "/stamp-extension",
        "/validate-extension",
    }
    assert all(h["failurePolicy"] == "Fail" and h["sideEffects"] == "None" for h in hooks)
    url_docs = render_chart.manifests(VALUE_SETS["outside the cluster"])
    url_hooks = [h for cfg in by_kind(url_docs, "ValidatingWebhookConfiguration") for h in cfg["webhooks"]]
    assert {h["clientConfig"]["url"] for h in url_hooks} == {
        "https://10.0.0.5:9443/validate-request",
        "https://10.0.0.5:9443/validate-approval",
        "https://10.0.0.5:9443/validate-extension",
    }


def test_the_dockerfile_runs_as_non_root_without_build_tools():
    text = (ROOT / "Dockerfile").read_text()
    final_stage = text.split("FROM python:3.11-slim\n")[-1]
    assert "USER 65532" in final_stage and "gcc" not in final_stage and "build-essential" not in final_stage


def test_a_client_ca_secret_locks_authenticate_to_the_apiserver():
    deploy = by_kind(render_chart.manifests(VALUE_SETS["apiserver client certificate"]), "Deployment")[0]
    pod = deploy["spec"]["template"]["spec"]
    assert "--client-ca-file=/etc/breakglass/client-ca/ca.crt" in pod["containers"][0]["args"]
    assert {"name": "client-ca", "secret": {"secretName": "apiserver-client-ca"}} in pod["volumes"]


# ---------------------------------------------------------------- least privilege
def operator_rules(docs, namespace=None):
    """Rules the operator's ServiceAccount holds: cluster-wide (namespace None) or in one namespace."""
    bindings = [
        b
        for b in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding")
        if any(s["kind"] == "ServiceAccount" and s["name"] == "breakglass-operator" for s in b["subjects"])
    ]
    out = []
    for b in bindings:
        bns = b["metadata"].get("namespace")
        if b["kind"] == "ClusterRoleBinding" and namespace is not None:
            continue
        if b["kind"] == "RoleBinding" and bns != namespace:
            continue
        (role,) = [
            r
            for r in by_kind(docs, b["roleRef"]["kind"])
            if r["metadata"]["name"] == b["roleRef"]["name"]
            and r["metadata"].get("namespace") == (bns if b["roleRef"]["kind"] == "Role" else None)
        ]
        out.extend(role["rules"])
    return out


def namespaces_where_the_operator_can(docs, verb, resource):
    spaces = {r["metadata"].get("namespace") for r in by_kind(docs, "Role")}
    return {
        ns
        for ns in spaces
        if any(resource in rule["resources"] and verb in rule["verbs"] for rule in operator_rules(docs, ns))
    }


def test_with_default_values_the_operator_has_no_cluster_wide_secret_or_role_creation_rights():
    docs = render_chart.manifests({})
    cluster_roles = by_kind(docs, "ClusterRole")
    assert {r["metadata"]["name"] for r in cluster_roles} == {
        "breakglass-operator",
        "breakglass-operator-requester",
        "breakglass-operator-approver",
    }
    for role in cluster_roles:
        for rule in role["rules"]:
            where = (role["metadata"]["name"], rule)
            assert "secrets" not in rule["resources"], where
            assert not ({"roles", "*"} & set(rule["resources"]) and {"create", "*"} & set(rule["verbs"])), where
            assert not {"escalate", "impersonate", "*"} & set(rule["verbs"]), where
            assert "*" not in rule["resources"] and "*" not in rule["apiGroups"], where
            if "bind" in rule["verbs"]:
                assert rule["resources"] == ["clusterroles"], where
                assert rule["resourceNames"] == ["view", "edit"], where
    cluster_wide = operator_rules(docs)
    assert any("bind" in r["verbs"] for r in cluster_wide)
    assert [r for r in cluster_wide if "bind" in r["verbs"]] == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind", "get"],
            "resourceNames": ["view", "edit"],
        }
    ]


def test_secret_and_role_rights_exist_only_in_the_operator_token_and_delivery_namespaces():
    assert namespaces_where_the_operator_can(render_chart.manifests({}), "get", "secrets") == {"breakglass-system"}
    assert namespaces_where_the_operator_can(render_chart.manifests({}), "create", "roles") == {"breakglass-system"}
    docs = render_chart.manifests(VALUE_SETS["token namespace and request-namespace delivery"])
    for verb, resource in (
        ("get", "secrets"),
        ("create", "secrets"),
        ("delete", "secrets"),
        ("create", "roles"),
        ("create", "rolebindings"),
    ):
        assert namespaces_where_the_operator_can(docs, verb, resource) == {
            "breakglass-system",
            "breakglass-tokens",
            "batch",
            "ml",
        }, (verb, resource)
    # Request-namespace delivery needs no listing, watching or rewriting of Secrets there.
    for ns in ("batch", "ml"):
        secret_verbs = {v for r in operator_rules(docs, ns) if "secrets" in r["resources"] for v in r["verbs"]}
        assert secret_verbs == {"get", "create", "delete"}
    # The ledger, JWKS, revocations and audit head live only in the operator namespace.
    assert namespaces_where_the_operator_can(docs, "update", "configmaps") == {"breakglass-system"}
    (bind,) = [r for r in operator_rules(docs) if "bind" in r["verbs"]]
    assert bind["resourceNames"] == ["view", "edit", "admin"]


def test_the_token_namespace_and_admin_groups_reach_the_operator_flags():
    default_args = by_kind(render_chart.manifests({}), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert "--admin-groups=system:masters" in default_args
    assert not [a for a in default_args if a.startswith("--token-namespace")]
    args = by_kind(render_chart.manifests(VALUE_SETS["token namespace and request-namespace delivery"]), "Deployment")[
        0
    ]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--token-namespace=breakglass-tokens" in args
    assert "--admin-groups=sre-admins,platform" in args
    no_admins = by_kind(render_chart.manifests({"rbac": {"adminGroups": []}}), "Deployment")[0]
    assert "--admin-groups=" in no_admins["spec"]["template"]["spec"]["containers"][0]["args"]


def test_anyone_authenticated_may_read_the_audit_head_but_not_the_hmac_key():
    docs = render_chart.manifests({})
    (public,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "breakglass-operator-public-keys"]
    (rule,) = public["rules"]
    assert rule["resources"] == ["configmaps"] and rule["verbs"] == ["get"]
    assert set(rule["resourceNames"]) == {"breakglass-jwks", "breakglass-revocations", "breakglass-audit-head"}
