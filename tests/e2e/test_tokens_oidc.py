"""Issue 4, second scenario: kube-apiserver's own OIDC authenticator trusts the operator's issuer.

The apiserver maps the token to the same user as the webhook (claims k8s_user / k8s_groups) and
enforces exp itself, so an expired token fails even with the operator stopped.
"""
from __future__ import annotations

import time

import jwt as pyjwt
import pytest

from breakglass import tls

from .harness import Operator, operator_ports, install_crds, secret_token, start_cluster, stop_cluster, wait_for
from .scenario import policy, request, unique, wait_phase
from .tokens_helpers import forbidden, unauthorized, with_token
from .harness import ROOT


@pytest.fixture(scope="module")
def oidc_env(e2e_dir):
    base = e2e_dir / "oidc"
    base.mkdir(exist_ok=True)
    ports = operator_ports()
    certs = tls.generate(str(base / "tls"), ["127.0.0.1", "localhost"])
    issuer = f"https://127.0.0.1:{ports['https']}"
    cluster = start_cluster(base / "cluster", [
        f"--oidc-issuer-url={issuer}", "--oidc-client-id=breakglass", "--oidc-username-claim=k8s_user",
        "--oidc-username-prefix=-", "--oidc-groups-claim=k8s_groups", f"--oidc-ca-file={certs.ca_file}",
        "--oidc-signing-algs=ES256"])
    op = None
    try:
        install_crds(cluster)
        cluster.kubectl("apply", "-f", str(ROOT / "tests/e2e/manifests/users-rbac.yaml"))
        op = Operator.on_ports(cluster, base / "operator", ports, certs)
        op.start()
        yield cluster, op
    finally:
        if op:
            op.stop()
        stop_cluster(base / "cluster")


def test_the_apiserver_oidc_authenticator_maps_the_token_to_the_grant_user(oidc_env):
    cluster, op = oidc_env
    ns, other = cluster.new_namespace("oidc"), cluster.new_namespace("elsewhere")
    pol = unique("oidc")
    cluster.apply(policy(pol, requiredApprovals=0))
    cluster.apply(request("via-oidc", ns, pol), user="alice", verb="create")
    wait_phase(cluster, "via-oidc", ns, "Active")
    token = secret_token(cluster.get("secret", "via-oidc-token", ns))
    # The apiserver retries OIDC discovery until the issuer answers; allow it a moment.
    wait_for(lambda: with_token(cluster, token, "get", "serviceaccounts", "-n", ns).returncode == 0, 30,
             "the OIDC authenticator to accept the token", interval=0.5)
    denied = with_token(cluster, token, "get", "serviceaccounts", "-n", other)
    assert forbidden(denied) and f"breakglass:{ns}:via-oidc" in denied.stderr
    assert forbidden(with_token(cluster, token, "delete", "serviceaccount", "default", "-n", ns))


def test_an_expired_token_fails_oidc_even_with_the_operator_stopped(oidc_env):
    cluster, op = oidc_env
    ns = cluster.new_namespace("oidc-exp")
    pol = unique("oidc-exp")
    cluster.apply(policy(pol, requiredApprovals=0))
    cluster.apply(request("short", ns, pol, duration="8s"), user="alice", verb="create")
    wait_phase(cluster, "short", ns, "Active")
    token = secret_token(cluster.get("secret", "short-token", ns))
    exp = pyjwt.decode(token, options={"verify_signature": False})["exp"]
    wait_for(lambda: with_token(cluster, token, "get", "serviceaccounts", "-n", ns).returncode == 0, 30,
             "the token to work first", interval=0.5)
    op.stop()
    try:
        wait_for(lambda: time.time() > exp + 1, 20, "exp to pass")
        # exp is enforced by the apiserver itself (after its fixed 10 s success cache).
        wait_for(lambda: unauthorized(with_token(cluster, token, "get", "serviceaccounts", "-n", ns)), 12,
                 "401 after exp with no operator running", interval=0.25)
    finally:
        op.start()
