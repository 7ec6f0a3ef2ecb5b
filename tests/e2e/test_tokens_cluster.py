"""On the TokenReview webhook path the token is a working, exactly-scoped credential."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
import time

import jwt as pyjwt
import pytest
from harness import ROOT, secret_token, wait_for

from breakglass.tokens.keys import SigningKey

from .scenario import policy, request, token_secret, token_secret_ref, unique, wait_phase
from .tokens_helpers import forbidden, secret_kubeconfig, unauthorized, with_kubeconfig, with_token


def plugin(cluster, *args, user="admin"):
    return subprocess.run(
        [sys.executable, "-m", "breakglass.plugin.cli", "--kubeconfig", cluster.kubeconfig(user), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "operator")),
    )


def issue(cluster, ns, pol, name, **spec):
    cluster.apply(request(name, ns, pol, **spec), user="alice", verb="create")
    obj = wait_phase(cluster, name, ns, "Active")
    return obj, token_secret(cluster, name, ns)


@pytest.fixture
def grant_policy(cluster):
    name = unique("tok")
    cluster.apply(policy(name, requiredApprovals=0, audiences=["breakglass", "vault"]))
    return name


def test_the_grant_can_do_what_its_role_allows_in_its_namespace_and_nothing_else(
    cluster, running_operator, grant_policy
):
    ns, other = cluster.new_namespace("grant"), cluster.new_namespace("other")
    obj, secret = issue(cluster, ns, grant_policy, "works", clusterRoles=["view"])
    kc = secret_kubeconfig(cluster, secret)
    assert with_kubeconfig(cluster, kc, "get", "serviceaccounts", "-n", ns).returncode == 0
    whoami = with_kubeconfig(cluster, kc, "auth", "can-i", "list", "pods", "-n", ns)
    assert whoami.stdout.strip() == "yes"
    assert forbidden(with_kubeconfig(cluster, kc, "get", "pods", "-n", other))
    assert forbidden(with_kubeconfig(cluster, kc, "delete", "serviceaccount", "default", "-n", ns))
    assert forbidden(with_kubeconfig(cluster, kc, "get", "secrets", "-n", ns))  # view excludes secrets
    bindings = cluster.list("rolebindings", ns, selector="breakglass.dev/request=works")
    grant_binding = [b for b in bindings if b["roleRef"]["kind"] == "ClusterRole"][0]
    assert grant_binding["subjects"] == [
        {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "User",
            "name": f"breakglass:{ns}:works:{obj['metadata']['uid']}",
        }
    ]


def test_two_grants_of_one_person_never_share_permissions(cluster, running_operator, grant_policy):
    ns_a, ns_b = cluster.new_namespace("a"), cluster.new_namespace("b")
    _, sa = issue(cluster, ns_a, grant_policy, "first", namespaces=[ns_a])
    _, sb = issue(cluster, ns_b, grant_policy, "second", namespaces=[ns_b])
    assert with_token(cluster, secret_token(sa), "get", "serviceaccounts", "-n", ns_a).returncode == 0
    assert forbidden(with_token(cluster, secret_token(sa), "get", "serviceaccounts", "-n", ns_b))
    assert forbidden(with_token(cluster, secret_token(sb), "get", "serviceaccounts", "-n", ns_a))


def test_revocation_bites_within_two_seconds_and_removes_the_rolebindings(cluster, running_operator, grant_policy):
    ns = cluster.new_namespace("rev")
    _, secret = issue(cluster, ns, grant_policy, "bite")
    token = secret_token(secret)
    assert with_token(cluster, token, "get", "serviceaccounts", "-n", ns).returncode == 0
    started = time.monotonic()
    cluster.kubectl("patch", "bgr", "bite", "-n", ns, "--type=merge", "-p", '{"spec":{"revoked":true}}')
    # Denied within 2 s: the grant's RoleBindings are gone (403) or the webhook refuses it (401).
    wait_for(
        lambda: with_token(cluster, token, "get", "serviceaccounts", "-n", ns).returncode != 0,
        2,
        "the revoked token to be denied",
        interval=0.1,
    )
    assert time.monotonic() - started < 2.2
    assert cluster.list("rolebindings", ns, selector="breakglass.dev/request=bite") == []
    # kube-apiserver 1.20 caches successful token authentications for 10 s in front of every
    # authenticator (not configurable); after that the webhook's "revoked" answer is final: 401.
    wait_for(
        lambda: unauthorized(with_token(cluster, token, "get", "serviceaccounts", "-n", ns)),
        13,
        "the revoked token to get 401",
        interval=0.25,
    )
    assert time.monotonic() - started < 13
    out = plugin(cluster, "verify", token)
    assert out.returncode == 1 and "Revoked" in out.stdout


def test_an_expired_token_gets_401_even_with_the_operator_stopped(cluster, running_operator, grant_policy):
    ns = cluster.new_namespace("exp")
    _, secret = issue(cluster, ns, grant_policy, "ticking", duration="6s")
    token = secret_token(secret)
    exp = pyjwt.decode(token, options={"verify_signature": False})["exp"]
    assert with_token(cluster, token, "get", "serviceaccounts", "-n", ns).returncode == 0
    running_operator.stop()
    try:
        # Webhook unreachable: the apiserver fails closed (after its fixed 10 s success cache).
        wait_for(lambda: time.time() > exp + 1, 15, "exp to pass")
        wait_for(
            lambda: unauthorized(with_token(cluster, token, "get", "serviceaccounts", "-n", ns)),
            12,
            "401 with the operator down",
            interval=0.25,
        )
    finally:
        running_operator.start()
    assert unauthorized(with_token(cluster, token, "get", "serviceaccounts", "-n", ns))
    out = plugin(cluster, "verify", token)
    assert out.returncode == 1 and "Expired" in out.stdout


def _forge(claims, key: SigningKey, alg=None, kid=None):
    return pyjwt.encode(claims, key.private_key(), algorithm=alg or key.alg, headers={"kid": kid or key.kid})


def test_forged_tampered_foreign_and_unsigned_tokens_get_401_and_verify_names_why(
    cluster, running_operator, grant_policy
):
    ns = cluster.new_namespace("forge")
    _, secret = issue(cluster, ns, grant_policy, "genuine")
    good = secret_token(secret)
    claims = pyjwt.decode(good, options={"verify_signature": False})
    head, body, sig = good.split(".")
    evil = dict(claims, scope="k8s:kube-system:cluster-admin", k8s_user="breakglass:kube-system:x")
    tampered = ".".join([head, base64.urlsafe_b64encode(json.dumps(evil).encode()).rstrip(b"=").decode(), sig])
    foreign_key = SigningKey.generate("ES256", dt.datetime.now(dt.UTC))
    foreign = _forge(claims, foreign_key)
    none_head = (
        base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": pyjwt.get_unverified_header(good)["kid"]}).encode())
        .rstrip(b"=")
        .decode()
    )
    unsigned = f"{none_head}.{body}."
    _, vault_secret = issue(cluster, ns, grant_policy, "for-vault", audiences=["vault"])
    other_audience = secret_token(vault_secret)

    for token, reason in (
        (tampered, "BadSignature"),
        (foreign, "UnknownKid"),
        (unsigned, "UnsignedToken"),
        (other_audience, "WrongAudience"),
    ):
        assert unauthorized(with_token(cluster, token, "get", "serviceaccounts", "-n", ns)), reason
        out = plugin(cluster, "verify", token)
        assert out.returncode == 1 and reason in out.stdout, (reason, out.stdout, out.stderr)
    ok = plugin(cluster, "verify", "--secret", "/".join(token_secret_ref(cluster, "genuine", ns)))
    assert ok.returncode == 0 and "VALID" in ok.stdout and "remaining" in ok.stdout
    via_url = plugin(
        cluster,
        "verify",
        good,
        "--jwks",
        f"{running_operator.issuer}/openid/v1/jwks",
        "--ca-file",
        running_operator.tls_ca,
    )
    assert via_url.returncode == 0, via_url.stdout + via_url.stderr


def _jwks_kids(cluster):
    cm = cluster.get("configmap", "breakglass-jwks", "breakglass-system")
    return {k["kid"] for k in json.loads(cm["data"]["jwks.json"])["keys"]}


def test_key_rotation_keeps_old_tokens_working_until_they_end(cluster, running_operator, grant_policy):
    ns = cluster.new_namespace("rot")
    _, old_secret = issue(cluster, ns, grant_policy, "before")
    old_token = secret_token(old_secret)
    old_kid = pyjwt.get_unverified_header(old_token)["kid"]
    out = subprocess.run(
        [sys.executable, "-m", "breakglass", "keys", "rotate", "--kubeconfig", cluster.kubeconfig()],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "operator")),
    )
    assert out.returncode == 0, out.stderr
    wait_for(lambda: len(_jwks_kids(cluster)) >= 2, 10, "the JWKS to hold both keys")
    time.sleep(2.5)  # the operator's keyring cache is 2 s: new mints use the new key after that
    _, new_secret = issue(cluster, ns, grant_policy, "after")
    new_kid = pyjwt.get_unverified_header(secret_token(new_secret))["kid"]
    assert new_kid != old_kid and {old_kid, new_kid} <= _jwks_kids(cluster)
    assert with_token(cluster, old_token, "get", "serviceaccounts", "-n", ns).returncode == 0
    assert with_token(cluster, secret_token(new_secret), "get", "serviceaccounts", "-n", ns).returncode == 0
    # End every grant signed by the old key: its public half then leaves the JWKS.
    for req in cluster.list("breakglassrequests"):
        if (req.get("status") or {}).get("keyId") == old_kid and req["status"].get("phase") == "Active":
            cluster.kubectl(
                "patch",
                "bgr",
                req["metadata"]["name"],
                "-n",
                req["metadata"]["namespace"],
                "--type=merge",
                "-p",
                '{"spec":{"revoked":true}}',
            )

    def old_key_gone():
        holders = [
            f"{s['metadata']['namespace']}/{s['metadata']['name']}"
            for s in cluster.list("secrets", selector="app.kubernetes.io/managed-by=breakglass-operator")
            if (s["metadata"].get("annotations") or {}).get("breakglass.dev/key-id") == old_kid
        ]
        assert not holders or time.monotonic() < deadline, f"token Secrets still signed by the old key: {holders}"
        return old_kid not in _jwks_kids(cluster)

    deadline = time.monotonic() + 55
    wait_for(old_key_gone, 60, "the old key to leave the JWKS", interval=0.5)
    assert new_kid in _jwks_kids(cluster)


def test_only_the_apiserver_may_ask_authenticate_while_keys_stay_public(
    cluster, running_operator, apiserver_client_cert
):
    import ssl
    import urllib.error
    import urllib.request

    review = json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "x.y.z"}}
    ).encode()
    url = f"{running_operator.issuer}/authenticate"
    anonymous = ssl.create_default_context(cafile=running_operator.tls_ca)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, data=review, method="POST"), context=anonymous)
    assert refused.value.code == 401 and b"client certificate required" in refused.value.read()
    with urllib.request.urlopen(f"{running_operator.issuer}/openid/v1/jwks", context=anonymous) as r:
        assert json.load(r)["keys"]
    apiserver = ssl.create_default_context(cafile=running_operator.tls_ca)
    apiserver.load_cert_chain(apiserver_client_cert.cert_file, apiserver_client_cert.key_file)
    with urllib.request.urlopen(urllib.request.Request(url, data=review, method="POST"), context=apiserver) as r:
        answer = json.load(r)
    assert answer["status"]["authenticated"] is False and "Malformed" in answer["status"]["error"]
