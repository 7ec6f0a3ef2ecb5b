import base64
import datetime as dt
import json

import jwt as pyjwt
import pytest

from breakglass.domain.claims import build_claims
from breakglass.domain.policy import Policy, RequestView
from breakglass.tokens.jwt_tokens import mint, verify
from breakglass.tokens.keys import Keyring, SigningKey, public_jwk, thumbprint

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
POLICY = Policy(
    name="prod-db",
    requester_groups=("sre",),
    approver_groups=("sre-leads",),
    allowed_namespaces=("*",),
    allowed_cluster_roles=("view",),
    allowed_scopes=("db:*",),
)
REQ = RequestView(
    name="r1",
    namespace="team-a",
    requester="alice",
    requester_groups=("sre",),
    reason="database is down badly",
    ticket="INC-1",
    namespaces=("team-a", "team-b"),
    cluster_roles=("view",),
    scopes=("db:read",),
    policy="prod-db",
)


def claims(now=NOW, minutes=10, jti="j1", **kw):
    return build_claims(
        request=REQ,
        policy=POLICY,
        request_uid="uid-1",
        issuer="https://issuer",
        approvers=["bob"],
        issued_at=now,
        duration=dt.timedelta(minutes=minutes),
        jti=jti,
        emergency=False,
        **kw,
    )


def test_rfc7638_thumbprint_matches_the_rfc_example():
    # RFC 7638 section 3.1 example key.
    jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",  # noqa: E501 — a fixed RSA modulus
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
def test_kid_is_the_thumbprint_of_the_public_key_for_every_algorithm(alg):
    key = SigningKey.generate(alg, NOW)
    assert key.kid == thumbprint(public_jwk(key.private_key().public_key()))
    assert key.jwk()["alg"] == alg and "d" not in key.jwk()


def test_claims_carry_identity_scope_and_grant_details():
    c = claims()
    assert c["sub"] == "alice" and c["aud"] == "breakglass" and c["exp"] - c["iat"] == 600
    assert c["scope"] == "db:read k8s:team-a:view k8s:team-b:view"
    # Unprefixed: kube-apiserver's --oidc-*-prefix (and the webhook) add "breakglass:" in front.
    assert c["k8s_user"] == "team-a:r1:uid-1"
    assert c["k8s_groups"] == ["grant", "policy:prod-db"]
    assert c["breakglass"]["request"] == "team-a/r1" and c["breakglass"]["approvers"] == ["bob"]


def test_a_minted_token_verifies_against_the_jwks():
    ring = Keyring.new("ES256", NOW)
    token = mint(claims(), ring.active)
    result = verify(token, jwks=ring.jwks(), issuer="https://issuer", audience="breakglass", now=NOW)
    assert result.ok and result.claims["jti"] == "j1" and result.kid == ring.active_kid
    assert pyjwt.get_unverified_header(token)["kid"] == ring.active_kid


def _tamper(token):
    head, body, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=="))
    data["scope"] = "k8s:kube-system:cluster-admin"
    body = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return ".".join([head, body, sig])


def _alg_none(token):
    head = base64.urlsafe_b64encode(b'{"alg":"none","kid":"x"}').rstrip(b"=").decode()
    return ".".join([head, token.split(".")[1], ""])


RING = Keyring.new("ES256", NOW)
FOREIGN = Keyring.new("ES256", NOW)


@pytest.mark.parametrize(
    "make,kwargs,reason",
    [
        (lambda: _tamper(mint(claims(), RING.active)), {}, "BadSignature"),
        (lambda: mint(claims(), RING.active), {"audience": "vault"}, "WrongAudience"),
        (lambda: mint(claims(), RING.active), {"issuer": "https://evil"}, "WrongIssuer"),
        (lambda: mint(claims(), FOREIGN.active), {}, "UnknownKid"),
        (lambda: _alg_none(mint(claims(), RING.active)), {}, "UnsignedToken"),
        (lambda: mint(claims(now=NOW - dt.timedelta(hours=1)), RING.active), {}, "Expired"),
        (lambda: mint(claims(), RING.active), {"revoked_jtis": {"j1"}}, "Revoked"),
        (lambda: "not-a-jwt", {}, "Malformed"),
    ],
    ids=[
        "a tampered token fails its signature",
        "another audience is refused",
        "another issuer is refused",
        "a foreign key's kid is unknown",
        "alg none is never accepted",
        "an expired token is refused",
        "a revoked jti is refused",
        "garbage is malformed",
    ],
)
def test_verification_names_the_precise_reason(make, kwargs, reason):
    args = {"jwks": RING.jwks(), "issuer": "https://issuer", "audience": "breakglass", "now": NOW, **kwargs}
    assert verify(make(), **args).reason == reason


def test_a_foreign_key_posing_with_our_kid_fails_the_signature():
    forged = pyjwt.encode(claims(), FOREIGN.active.private_key(), algorithm="ES256", headers={"kid": RING.active_kid})
    assert (
        verify(forged, jwks=RING.jwks(), issuer="https://issuer", audience="breakglass", now=NOW).reason
        == "BadSignature"
    )


def test_rotation_keeps_old_public_keys_while_tokens_signed_by_them_live():
    ring = Keyring.new("ES256", NOW)
    old_kid = ring.active_kid
    rotated = ring.rotated("ES256", NOW + dt.timedelta(minutes=1))
    assert rotated.active_kid != old_kid and {k["kid"] for k in rotated.jwks()["keys"]} == {old_kid, rotated.active_kid}
    later = NOW + dt.timedelta(minutes=30)
    assert len(rotated.pruned(later, in_use_kids={old_kid}).keys) == 2
    assert [k.kid for k in rotated.pruned(later, in_use_kids=set()).keys] == [rotated.active_kid]


def test_a_just_retired_key_survives_the_grace_period_for_in_flight_mints():
    rotated = Keyring.new("ES256", NOW).rotated("ES256", NOW)
    assert len(rotated.pruned(NOW + dt.timedelta(seconds=5), in_use_kids=set()).keys) == 2


def test_keyring_round_trips_through_json():
    ring = Keyring.new("EdDSA", NOW).rotated("ES256", NOW)
    again = Keyring.from_json(ring.to_json())
    assert again.active_kid == ring.active_kid and again.jwks() == ring.jwks()


@pytest.mark.parametrize(
    "change",
    [
        {"exp": "tomorrow"},
        {"nbf": True},
        {"jti": ""},
        {"aud": {"x": 1}},
        {"breakglass": "admin"},
    ],
    ids=["a string exp", "a boolean nbf", "an empty jti", "an object audience", "a string breakglass claim"],
)
def test_signed_claims_of_the_wrong_shape_are_malformed_never_an_exception(change):
    token = pyjwt.encode(
        {**claims(), **change}, RING.active.private_key(), algorithm="ES256", headers={"kid": RING.active_kid}
    )
    result = verify(token, jwks=RING.jwks(), issuer="https://issuer", audience="breakglass", now=NOW)
    assert (result.ok, result.reason, result.claims) == (False, "MalformedClaims", None)
