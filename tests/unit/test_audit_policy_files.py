"""The kube-apiserver audit policy for the usage trail: deploy/ and the chart ship the same file, and it sends
the operator one Metadata event per request of a grant identity and nothing else."""

from __future__ import annotations

import pathlib
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY_POLICY = ROOT / "deploy" / "kube-apiserver" / "audit-policy.yaml"
CHART_POLICY = ROOT / "charts" / "breakglass-operator" / "files" / "audit-policy.yaml"
sys.path.insert(0, str(ROOT / "hack"))


def test_deploy_and_the_chart_ship_the_same_audit_policy():
    assert DEPLOY_POLICY.read_bytes() == CHART_POLICY.read_bytes(), (
        "deploy/kube-apiserver/audit-policy.yaml and charts/breakglass-operator/files/audit-policy.yaml "
        "differ: copy one to the other"
    )


def test_the_policy_logs_grant_identities_at_metadata_once_per_request_and_nothing_else():
    policy = yaml.safe_load(DEPLOY_POLICY.read_text())
    assert policy["apiVersion"] == "audit.k8s.io/v1" and policy["kind"] == "Policy"
    assert policy["omitStages"] == ["RequestReceived"]  # ResponseStarted: long-running requests count at start
    # The first matching rule decides: grant identities (every one carries breakglass:grant, webhook and
    # OIDC path alike) at Metadata (never bodies), then everyone else at None.
    assert policy["rules"] == [
        {"level": "Metadata", "userGroups": ["breakglass:grant"]},
        {"level": "None"},
    ]


def test_the_harness_points_kube_apiserver_at_the_shipped_policy_and_the_audit_path(tmp_path):
    import harness

    class Client:
        cert_file, key_file = "/c/client.crt", "/c/client.key"

    flags = harness.write_audit_webhook_config(tmp_path / "audit.kubeconfig", 8443, "/c/ca.crt", Client())
    assert flags == [
        f"--audit-policy-file={DEPLOY_POLICY}",
        f"--audit-webhook-config-file={tmp_path / 'audit.kubeconfig'}",
        "--audit-webhook-mode=batch",
        "--audit-webhook-batch-max-wait=1s",
        "--audit-webhook-version=audit.k8s.io/v1",
        "--audit-webhook-initial-backoff=1s",
        "--audit-webhook-batch-max-size=100",
    ]
    config = yaml.safe_load((tmp_path / "audit.kubeconfig").read_text())
    assert config["clusters"][0]["cluster"] == {
        "server": "https://127.0.0.1:8443/audit",
        "certificate-authority": "/c/ca.crt",
    }
    assert config["users"][0]["user"] == {"client-certificate": "/c/client.crt", "client-key": "/c/client.key"}


def test_the_example_webhook_kubeconfig_names_the_audit_path_and_a_client_certificate():
    config = yaml.safe_load((ROOT / "deploy" / "kube-apiserver" / "audit-webhook.kubeconfig.example").read_text())
    (cluster,) = config["clusters"]
    assert cluster["cluster"]["server"].endswith(".svc:8443/audit")
    assert cluster["cluster"]["certificate-authority"]
    (user,) = config["users"]
    assert set(user["user"]) == {"client-certificate", "client-key"}
    (context,) = config["contexts"]
    assert config["current-context"] == context["name"]


def test_the_chart_ships_the_policy_as_a_configmap_only_when_asked():
    pytest.importorskip("helm_python")
    import render_chart

    def policy_maps(values):
        docs = render_chart.manifests(values)
        return [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "breakglass-audit-policy"]

    assert policy_maps({}) == []
    (cm,) = policy_maps({"auditSink": {"policyConfigMap": True}})
    assert cm["data"] == {"audit-policy.yaml": CHART_POLICY.read_text()}
