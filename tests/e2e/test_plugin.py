"""`kubectl breakglass` as alice/bob/mallory against the real control plane, and `explain`
agreeing with what admission and the operator then actually do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from harness import ROOT

from .scenario import policy, request, unique, wait_phase


def kb(cluster, user, *args, stdin=None):
    """Run the plugin the way kubectl would: as `kubectl breakglass` found on PATH."""
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "operator"), PATH=f"{ROOT / 'tests' / 'e2e' / 'bin'}:{os.environ['PATH']}"
    )
    return subprocess.run(
        [cluster.kubectl_bin, "breakglass", "--kubeconfig", cluster.kubeconfig(user), *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module", autouse=True)
def plugin_on_path():
    """kubectl finds plugins as executables named kubectl-<name> on PATH."""
    bindir = ROOT / "tests" / "e2e" / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "kubectl-breakglass"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m breakglass.plugin.cli "$@"\n')
    shim.chmod(0o755)
    yield
    shim.unlink()
    bindir.rmdir()


def test_the_plugin_drives_a_request_from_filing_to_revocation(cluster, running_operator):
    ns = cluster.new_namespace("kb")
    pol = unique("kb")
    cluster.apply(policy(pol, allowedScopes=["db:*"]))
    filed = kb(
        cluster,
        "alice",
        "-n",
        ns,
        "request",
        "--policy",
        pol,
        "--reason",
        "checkout service is 500ing",
        "--duration",
        "20m",
        "--namespace-access",
        ns,
        "--role",
        "view",
        "--scope",
        "db:read",
        "--name",
        "checkout",
    )
    assert filed.returncode == 0, filed.stderr
    assert filed.stdout.strip() == "checkout"
    wait_phase(cluster, "checkout", ns, "Pending")
    listed = kb(cluster, "bob", "-n", ns, "list")
    assert (
        listed.returncode == 0 and "checkout" in listed.stdout and "0/1" in listed.stdout and "Pending" in listed.stdout
    )

    approved = kb(cluster, "bob", "-n", ns, "approve", "checkout", "--comment", "ok")
    assert approved.returncode == 0 and "approver bob" in approved.stdout
    wait_phase(cluster, "checkout", ns, "Active")
    status = kb(cluster, "alice", "-n", ns, "status", "checkout")
    assert status.returncode == 0 and "Active" in status.stdout and "1/1" in status.stdout
    as_json = json.loads(kb(cluster, "alice", "-n", ns, "status", "checkout", "-o", "json").stdout)
    assert as_json["status"]["phase"] == "Active"

    token = kb(cluster, "alice", "-n", ns, "token", "checkout")
    assert token.returncode == 0 and token.stdout.count(".") == 2
    kc_path = running_operator.workdir / "alice-checkout.kubeconfig"
    out = kb(cluster, "alice", "-n", ns, "token", "checkout", "--kubeconfig-out", str(kc_path))
    assert out.returncode == 0 and oct(kc_path.stat().st_mode & 0o777) == "0o600"
    assert yaml.safe_load(kc_path.read_text())["users"][0]["user"]["token"] == token.stdout.strip()
    dave = kb(cluster, "dave", "-n", ns, "token", "checkout")
    assert dave.returncode != 0 and "not allowed" in dave.stderr

    verified = kb(cluster, "alice", "verify", token.stdout.strip())
    assert verified.returncode == 0 and "VALID" in verified.stdout
    revoked = kb(cluster, "alice", "-n", ns, "revoke", "checkout")
    assert revoked.returncode == 0
    wait_phase(cluster, "checkout", ns, "Revoked")
    after = kb(cluster, "alice", "-n", ns, "token", "checkout")
    assert after.returncode == 1 and "Revoked" in after.stderr


def test_request_wait_prints_the_secret_name_once_issued(cluster, running_operator):
    ns = cluster.new_namespace("kbw")
    pol = unique("kbw")
    cluster.apply(policy(pol, requiredApprovals=0))
    out = kb(
        cluster,
        "alice",
        "-n",
        ns,
        "request",
        "--policy",
        pol,
        "--reason",
        "auto-approved investigation",
        "--namespace-access",
        ns,
        "--role",
        "view",
        "--name",
        "quick",
        "--wait",
        "--timeout",
        "30",
    )
    assert out.returncode == 0, out.stderr
    uid = cluster.get("breakglassrequest", "quick", ns)["metadata"]["uid"]
    assert out.stdout.strip() == f"breakglass-system/breakglass-token-{uid}"


@pytest.mark.parametrize(
    "args,user,code,message",
    [
        (["request", "--policy", "{pol}", "--reason", "x" * 12, "--duration", "soon"], "alice", 2, "--duration"),
        (
            [
                "request",
                "--policy",
                "{pol}",
                "--reason",
                "a valid reason text",
                "--role",
                "view",
                "--namespace-access",
                "{ns}",
            ],
            "mallory",
            1,
            "not in policy",
        ),
        (["approve", "no-such-request"], "bob", 4, "not found"),
        (["deny", "no-such-request"], "bob", 4, "not found"),
        (["status", "no-such-request"], "alice", 4, "not found"),
        (["revoke", "no-such-request"], "alice", 4, "not found"),
        (["request", "--policy", "{pol}", "--reason", "too short"], "alice", 1, "spec.reason"),
        (["audit", "verify", "/no/such/file"], "alice", 2, "cannot read"),
        (["verify"], "alice", 2, "give a TOKEN"),
        ([], "alice", 2, "usage"),
    ],
    ids=[
        "a bad duration",
        "an outsider requesting",
        "approving an unknown request",
        "denying an unknown request",
        "status of an unknown request",
        "revoking an unknown request",
        "a short reason",
        "a missing audit file",
        "verify without a token",
        "no command",
    ],
)
def test_each_misuse_gets_a_clear_message_and_a_non_zero_exit(cluster, running_operator, args, user, code, message):
    ns = cluster.new_namespace("kbm")
    pol = unique("kbm")
    cluster.apply(policy(pol))
    out = kb(cluster, user, "-n", ns, *[a.format(pol=pol, ns=ns) for a in args])
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert message in (out.stderr + out.stdout)


def test_mallorys_approval_is_refused_and_alice_cannot_approve_herself(cluster, running_operator):
    ns = cluster.new_namespace("kbi")
    pol = unique("kbi")
    cluster.apply(policy(pol))
    kb(
        cluster,
        "alice",
        "-n",
        ns,
        "request",
        "--policy",
        pol,
        "--reason",
        "payments queue stuck again",
        "--namespace-access",
        ns,
        "--role",
        "view",
        "--name",
        "stuck",
    )
    wait_phase(cluster, "stuck", ns, "Pending")
    own = kb(cluster, "alice", "-n", ns, "approve", "stuck")
    assert own.returncode == 1 and "forbids self-approval" in own.stderr
    outsider = kb(cluster, "mallory", "-n", ns, "approve", "stuck")
    assert outsider.returncode == 1 and "is not an approver of policy" in outsider.stderr
    assert cluster.get("bgr", "stuck", ns)["status"]["phase"] == "Pending"


EXPLAIN_CASES = [
    ("alice", {}, True),
    ("alice", {"duration": "5h"}, False),
    ("alice", {"namespaces": ["kube-system"]}, False),
    ("alice", {"clusterRoles": ["cluster-admin"]}, False),
    ("alice", {"scopes": ["root:all"]}, False),
    ("mallory", {}, False),
    ("alice", {"reason": "  tiny    "}, False),
    ("alice", {"emergency": True}, True),
    ("dave", {"audiences": ["vault"]}, False),
    ("dave", {"duration": "45m", "scopes": ["db:write"]}, True),
    ("alice", {"policy": "no-such-policy"}, False),
    ("bob", {}, False),
]


@pytest.mark.parametrize(
    "user,change,expected",
    EXPLAIN_CASES,
    ids=[
        "a plain request",
        "too long",
        "a forbidden namespace",
        "a forbidden role",
        "a forbidden scope",
        "an outsider",
        "a blank reason",
        "emergency allowed",
        "a foreign audience",
        "within limits with scopes",
        "an unknown policy",
        "an approver who is not a requester",
    ],
)
def test_explain_agrees_with_admission_and_the_operator(cluster, running_operator, tmp_path, user, change, expected):
    ns = cluster.new_namespace("explain")
    pol = unique("explain")
    cluster.apply(
        policy(
            pol,
            allowedNamespaces=[ns],
            emergency={"allowed": True, "reviewWithin": "1h"},
            autoApprove={"groups": ["sre"]},
            maxDuration="1h",
        )
    )
    manifest = request("sim", ns, pol, **change)
    if change.get("policy"):
        manifest["spec"]["policy"] = change["policy"]
    path = tmp_path / "request.yaml"
    path.write_text(yaml.safe_dump(manifest))
    explained = kb(cluster, user, "-n", ns, "explain", "-f", str(path))
    assert explained.returncode == (0 if expected else 1), explained.stdout + explained.stderr
    assert ("would be admitted" if expected else "would be REJECTED") in explained.stdout
    assert cluster.get("bgr", "sim", ns) is None, "explain must create nothing"
    created = cluster.try_create(manifest, user=user)
    assert (created.returncode == 0) == expected, created.stderr
    if expected:
        # sre is in autoApprove: the operator issues at once, as explain said.
        assert "issued at once" in explained.stdout
        wait_phase(cluster, "sim", ns, "Active")
    else:
        failing = [line for line in explained.stdout.splitlines() if line.startswith("FAIL")]
        assert failing, explained.stdout
