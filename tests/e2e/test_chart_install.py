"""The rendered chart applies to the real apiserver, and a full lifecycle runs with the
operator authenticated as the chart's ServiceAccount under the chart's RBAC (no admin rights)."""

from __future__ import annotations

import base64
import re
import sys

import pytest
import yaml
from harness import (
    ROOT,
    Operator,
    operator_ports,
    secret_token,
    start_control_plane,
    stop_cluster,
    wait_for,
    write_tokenreview_webhook_config,
)
from harness import kubeconfig as harness_kubeconfig  # noqa: I001

from breakglass import tls

from .scenario import approve, policy, request, token_secret, token_secret_ref, unique, wait_phase
from .tokens_helpers import forbidden, unauthorized, with_token

sys.path.insert(0, str(ROOT / "hack"))
import render_chart  # noqa: E402

MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}  # their CRDs come from prometheus-operator


# The local control plane is Kubernetes 1.20: PodDisruptionBudget is policy/v1beta1 there.
OLD_PDB = {"podDisruptionBudget": {"apiVersion": "policy/v1beta1"}}


@pytest.mark.parametrize(
    "values",
    [
        OLD_PDB,
        {"replicas": 2, **OLD_PDB},
        {"issuer": "https://bg.example.com", **OLD_PDB},
        {
            "metrics": {
                "serviceMonitor": {"enabled": True},
                "prometheusRule": {"enabled": True},
                "dashboard": {"enabled": True},
            },
            "networkPolicy": {"enabled": True},
            **OLD_PDB,
        },
    ],
    ids=["defaults", "two replicas", "custom issuer", "monitoring on"],
)
def test_the_rendered_chart_passes_server_side_dry_run(cluster, values):
    release = unique("dry")
    ns = cluster.new_namespace("chart")
    docs = [d for d in render_chart.manifests(values, name=release, namespace=ns) if d["kind"] not in MONITORING_KINDS]
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    assert out.returncode == 0 and "(server dry run)" in out.stdout


def test_the_default_deploy_manifests_apply_for_real(cluster):
    text = (ROOT / "deploy" / "breakglass-operator.yaml").read_text()
    # Apply under a throwaway name so the session operator's own state is untouched.
    docs = [d for d in yaml.safe_load_all(text) if d]
    for d in docs:
        if d["kind"] == "Namespace":
            d["metadata"]["name"] = "bg-deploy-test"
        elif d["metadata"].get("namespace") == "breakglass-system":
            d["metadata"]["namespace"] = "bg-deploy-test"
        if d["kind"] in (
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingWebhookConfiguration",
            "MutatingWebhookConfiguration",
        ):
            d["metadata"]["name"] += "-deploy-test"
        if d["kind"] == "PodDisruptionBudget":  # policy/v1 needs 1.21; the local control plane is 1.20
            d["apiVersion"] = "policy/v1beta1"
    # The webhook configurations would intercept every request without a reachable operator: apply
    # them with no rules so only their validity is tested.
    for d in docs:
        if d["kind"].endswith("WebhookConfiguration"):
            for h in d["webhooks"]:
                h["rules"] = []
    out = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    assert "deployment.apps/breakglass-operator created" in out.stdout
    cluster.kubectl("delete", "-f", "-", "--wait=false", input=yaml.safe_dump_all(docs), check=False)


@pytest.fixture(scope="module")
def chart_env(e2e_dir):
    """A fresh control plane with the chart installed; the operator runs as the chart's ServiceAccount."""
    base = e2e_dir / "chart"
    base.mkdir(exist_ok=True)
    ports = operator_ports()
    certs = tls.generate(str(base / "tls"), ["127.0.0.1", "localhost"])
    flags = write_tokenreview_webhook_config(base / "tokenreview.kubeconfig", ports["https"], certs.ca_file)
    cluster = start_control_plane(
        base / "cluster", flags, ROOT / "charts" / "breakglass-operator" / "crds", users=False
    )
    op = None
    try:
        values = {
            "webhook": {"url": f"https://127.0.0.1:{ports['webhook']}"},
            **OLD_PDB,
            "issuer": f"https://127.0.0.1:{ports['https']}",
            "clusterServer": cluster.server,
            "rbac": {"requesterGroups": ["sre", "contractors"], "approverGroups": ["sre-leads"]},
        }
        cluster.kubectl("create", "namespace", "breakglass-system")
        docs = render_chart.manifests(values)
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

        def sa_token():
            sa = cluster.get("serviceaccount", "breakglass-operator", "breakglass-system")
            names = [s["name"] for s in (sa or {}).get("secrets") or []]
            return names and cluster.get("secret", names[0], "breakglass-system")

        secret = wait_for(sa_token, 30, "the ServiceAccount token Secret")
        token = base64.b64decode(secret["data"]["token"]).decode()
        kubeconfig = base / "operator-sa.kubeconfig"
        kubeconfig.write_text(harness_kubeconfig(cluster.server, cluster.ca_file, {"token": token}))
        op = Operator.on_ports(
            cluster,
            base / "operator",
            ports,
            certs,
            kubeconfig=str(kubeconfig),
            local=False,
            webhook_config_name="breakglass-operator",
        )
        op.start()
        yield cluster, op
    finally:
        if op:
            op.stop()
        stop_cluster(base / "cluster")


def test_a_full_lifecycle_works_with_the_operator_as_the_charts_service_account(chart_env):
    cluster, op = chart_env
    whoami = cluster.kubectl(
        "auth", "can-i", "--list", "--as", "system:serviceaccount:breakglass-system:breakglass-operator"
    )
    assert "escalate" not in whoami.stdout and "impersonate" not in whoami.stdout
    cfg = cluster.get("validatingwebhookconfiguration", "breakglass-operator")
    assert all(h["clientConfig"].get("caBundle") for h in cfg["webhooks"]), "caBundle injected by the operator"

    ns, other = cluster.new_namespace("chart-life"), cluster.new_namespace("chart-other")
    pol = unique("chart")
    cluster.apply(policy(pol, emergency={"allowed": True, "reviewWithin": "1h"}))
    cluster.apply(request("incident", ns, pol, scopes=["db:read"]), user="alice", verb="create")
    wait_phase(cluster, "incident", ns, "Pending")
    rejected = cluster.try_create(request("too-long", ns, pol, duration="9h"), user="alice")
    assert rejected.returncode != 0 and "exceeds policy" in rejected.stderr
    approve(cluster, "bob", "incident", ns)
    obj = wait_phase(cluster, "incident", ns, "Active")
    token = secret_token(token_secret(cluster, "incident", ns, user="alice"))
    ref_ns, ref_name = token_secret_ref(cluster, "incident", ns)
    assert cluster.kubectl("get", "secret", ref_name, "-n", ref_ns, user="dave", check=False).returncode != 0
    wait_for(
        lambda: with_token(cluster, token, "get", "serviceaccounts", "-n", ns).returncode == 0, 10, "the grant to work"
    )
    assert forbidden(with_token(cluster, token, "get", "serviceaccounts", "-n", other))

    cluster.kubectl(
        "patch", "bgr", "incident", "-n", ns, "--type=merge", "-p", '{"spec":{"revoked":true}}', user="alice"
    )
    wait_phase(cluster, "incident", ns, "Revoked")
    assert token_secret(cluster, "incident", ns) is None
    assert cluster.list("rolebindings", ns, selector="breakglass.dev/request=incident") == []
    wait_for(lambda: unauthorized(with_token(cluster, token, "get", "serviceaccounts", "-n", ns)), 13, "401")
    revs = cluster.get("configmap", "breakglass-revocations", "breakglass-system")["data"]["revocations.json"]
    assert obj["status"]["tokenId"] in revs

    cluster.apply(request("brief", ns, pol, duration="5s", emergency=True), user="dave", verb="create")
    wait_phase(cluster, "brief", ns, "Active")
    wait_phase(cluster, "brief", ns, "Expired", timeout=15)
    assert token_secret(cluster, "brief", ns) is None
    # Any RBAC shortfall shows up as a 403/Forbidden in a log line (audit JSON lines hold only hashes).
    denied = [
        line
        for line in op.log_path.read_text().splitlines()
        if not line.startswith("{") and re.search(r"Forbidden|\b403\b", line)
    ]
    assert denied == [], f"the chart's RBAC was insufficient: {denied[:3]}"
