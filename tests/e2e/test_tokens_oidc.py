"""kube-apiserver's own OIDC authenticator trusts the operator's issuer.

The apiserver maps the token to the same user as the webhook (claims k8s_user / k8s_groups, both
prefixed `breakglass:` by --oidc-username-prefix / --oidc-groups-prefix, so no token the operator's
key signs can name a `system:` user or group) and enforces exp itself, so an
expired token fails even with the operator stopped.
"""

from __future__ import annotations

import base64
import time
import uuid

import jwt as pyjwt
import pytest
from harness import Operator, operator_ports, secret_token, start_control_plane, stop_cluster, wait_for

from breakglass import tls
from breakglass.tokens.jwt_tokens import mint
from breakglass.tokens.keys import Keyring

from .scenario import policy, request, unique, wait_phase
from .tokens_helpers import forbidden, unauthorized, with_token


@pytest.fixture(scope="module")
def oidc_env(e2e_dir):
    base = e2e_dir / "oidc"
    base.mkdir(exist_ok=True)
    ports = operator_ports()
    certs = tls.generate(str(base / "tls"), ["127.0.0.1", "localhost"])
    issuer = f"https://127.0.0.1:{ports['https']}"
    cluster = start_control_plane(
        base / "cluster",
        [
            f"--oidc-issuer-url={issuer}",
            "--oidc-client-id=breakglass",
            "--oidc-username-claim=k8s_user",
            "--oidc-username-prefix=breakglass:",
            "--oidc-groups-claim=k8s_groups",
            "--oidc-groups-prefix=breakglass:",
            f"--oidc-ca-file={certs.ca_file}",
            "--oidc-signing-algs=ES256",
        ],
    )
    op = None
    try:
        op = Operator.on_ports(cluster, base / "operator", ports, certs)
        op.start()
        yield cluster, op
    finally:
        if op:
            op.stop()
        stop_cluster(base / "cluster")


def _token(cluster, req):
    ref = req["status"]["secretRef"]
    return secret_token(cluster.get("secret", ref["name"], ref["namespace"]))


def test_the_apiserver_oidc_authenticator_maps_the_token_to_the_grant_user(oidc_env):
    cluster, op = oidc_env
    ns, other = cluster.new_namespace("oidc"), cluster.new_namespace("elsewhere")
    pol = unique("oidc")
    cluster.apply(policy(pol, requiredApprovals=0))
    cluster.apply(request("via-oidc", ns, pol), user="alice", verb="create")
    req = wait_phase(cluster, "via-oidc", ns, "Active")
    uid = req["metadata"]["uid"]
    assert req["status"]["username"] == f"breakglass:{ns}:via-oidc:{uid}"
    token = _token(cluster, req)
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert claims["k8s_user"] == f"{ns}:via-oidc:{uid}"
    assert claims["k8s_groups"] == ["grant", f"policy:{pol}"]
    # The apiserver retries OIDC discovery until the issuer answers; allow it a moment.
    wait_for(
        lambda: with_token(cluster, token, "get", "serviceaccounts", "-n", ns).returncode == 0,
        30,
        "the OIDC authenticator to accept the token",
        interval=0.5,
    )
    denied = with_token(cluster, token, "get", "serviceaccounts", "-n", other)
    assert forbidden(denied) and f'User "breakglass:{ns}:via-oidc:{uid}"' in denied.stderr
    assert forbidden(with_token(cluster, token, "delete", "serviceaccount", "default", "-n", ns))


def test_an_expired_token_fails_oidc_even_with_the_operator_stopped(oidc_env):
    cluster, op = oidc_env
    ns = cluster.new_namespace("oidc-exp")
    pol = unique("oidc-exp")
    cluster.apply(policy(pol, requiredApprovals=0))
    cluster.apply(request("short", ns, pol, duration="8s"), user="alice", verb="create")
    token = _token(cluster, wait_phase(cluster, "short", ns, "Active"))
    exp = pyjwt.decode(token, options={"verify_signature": False})["exp"]
    wait_for(
        lambda: with_token(cluster, token, "get", "serviceaccounts", "-n", ns).returncode == 0,
        30,
        "the token to work first",
        interval=0.5,
    )
    op.stop()
    try:
        wait_for(lambda: time.time() > exp + 1, 20, "exp to pass")
        # exp is enforced by the apiserver itself (after its fixed 10 s success cache).
        wait_for(
            lambda: unauthorized(with_token(cluster, token, "get", "serviceaccounts", "-n", ns)),
            12,
            "401 after exp with no operator running",
            interval=0.25,
        )
    finally:
        op.start()


def test_a_token_the_operators_key_signs_with_system_masters_gets_no_such_group(oidc_env):
    """Whoever holds the signing key (read here as admin from its Secret) mints a token claiming
    system:masters and a system: user; the apiserver prefixes both, so it is nobody special."""
    cluster, op = oidc_env
    ns = cluster.new_namespace("masters")
    secret = cluster.get("secret", "breakglass-signing-keys", "breakglass-system")
    key = Keyring.from_json(base64.b64decode(secret["data"]["keyring.json"]).decode()).active
    now = int(time.time())
    forged = mint(
        {
            "iss": op.issuer,
            "aud": "breakglass",
            "sub": "admin",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": str(uuid.uuid4()),
            "k8s_user": "system:admin",
            "k8s_groups": ["system:masters"],
        },
        key,
    )
    # The apiserver retries OIDC discovery until the issuer answers: wait until the token is accepted
    # as someone (Forbidden, not Unauthorized).
    probe = lambda: with_token(cluster, forged, "get", "secrets", "-n", "kube-system")  # noqa: E731
    wait_for(lambda: forbidden(probe()), 30, "the OIDC authenticator to accept the forged token", interval=0.5)
    out = probe()
    assert 'User "breakglass:system:admin"' in out.stderr, out.stderr
    assert with_token(cluster, forged, "auth", "can-i", "*", "*", "--all-namespaces").stdout.strip() == "no"
    assert with_token(cluster, forged, "auth", "can-i", "create", "clusterrolebindings").stdout.strip() == "no"
    listed = with_token(cluster, forged, "auth", "can-i", "--list", "-n", ns)
    assert listed.returncode == 0 and "*.*" not in listed.stdout, listed.stdout

    # The group the apiserver sees is breakglass:system:masters: bind something to exactly that name.
    cluster.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "prefixed-masters", "namespace": ns},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "prefixed-masters", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prefixed-masters"},
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "breakglass:system:masters"}
                ],
            },
        ]
    )
    wait_for(
        lambda: with_token(cluster, forged, "get", "configmaps", "-n", ns).returncode == 0,
        10,
        "the token to act as group breakglass:system:masters",
    )
    assert forbidden(with_token(cluster, forged, "get", "secrets", "-n", ns))
