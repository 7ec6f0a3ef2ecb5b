"""Mint and verify grant tokens. Verification gives a precise, named reason on failure."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK

from .keys import SigningKey

LEEWAY_SECONDS = 5


def mint(claims: dict[str, Any], key: SigningKey) -> str:
    return jwt.encode(claims, key.private_key(), algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"})


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    reason: str  # machine-readable: Valid, Expired, Revoked, BadSignature, WrongAudience, ...
    message: str
    claims: dict[str, Any] | None = None
    kid: str | None = None


def _fail(reason: str, message: str, claims=None, kid=None) -> VerifyResult:
    return VerifyResult(False, reason, message, claims, kid)


def verify(
    token: str,
    *,
    jwks: dict[str, Any],
    issuer: str | None,
    audience: str | Iterable[str] | None,
    revoked_jtis: Iterable[str] = (),
    now: dt.datetime | None = None,
    leeway: int = LEEWAY_SECONDS,
) -> VerifyResult:
    """Verify signature, alg, kid, iss, aud, nbf/exp (with leeway) and revocation."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        return _fail("Malformed", f"not a JWT: {exc}")
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or not isinstance(kid, (str, type(None))):
        return _fail("Malformed", "header alg/kid are not strings")
    if not alg or alg.lower() == "none":
        return _fail("UnsignedToken", "alg 'none' is never accepted", kid=kid)
    match = next((k for k in jwks.get("keys", []) if k.get("kid") == kid), None)
    if match is None:
        return _fail("UnknownKid", f"kid {kid!r} is not in the JWKS", kid=kid)
    if match.get("alg") and match["alg"] != alg:
        return _fail("AlgorithmMismatch", f"header alg {alg} does not match key alg {match['alg']}", kid=kid)
    try:
        key = PyJWK.from_json(json.dumps(match)).key
    except jwt.PyJWTError as exc:
        return _fail("BadKey", f"JWKS key {kid!r} unusable: {exc}", kid=kid)
    now_ts = (now or dt.datetime.now(dt.UTC)).timestamp()
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "require": ["exp", "iat", "nbf", "jti", "iss", "aud", "sub"],
            },
        )
    except jwt.InvalidSignatureError:
        return _fail("BadSignature", "signature does not verify against the JWKS key", kid=kid)
    except jwt.MissingRequiredClaimError as exc:
        return _fail("MissingClaim", str(exc), kid=kid)
    except jwt.DecodeError as exc:
        return _fail("Malformed", f"token rejected: {exc}", kid=kid)
    except jwt.PyJWTError as exc:  # signed, but a claim has the wrong type (e.g. a numeric jti)
        return _fail("MalformedClaims", f"token rejected: {exc}", kid=kid)
    bad = claim_shape_problem(claims)
    if bad:
        return _fail("MalformedClaims", bad, None, kid)
    if issuer is not None and claims.get("iss") != issuer:
        return _fail("WrongIssuer", f"iss {claims.get('iss')!r} is not {issuer!r}", claims, kid)
    if audience is not None:
        wanted = {audience} if isinstance(audience, str) else set(audience)
        got = claims.get("aud")
        got = {got} if isinstance(got, str) else set(got or [])
        if not (wanted & got):
            return _fail("WrongAudience", f"aud {sorted(got)} does not include {sorted(wanted)}", claims, kid)
    if now_ts + leeway < claims["nbf"]:
        return _fail("NotYetValid", "token is not valid yet (nbf in the future)", claims, kid)
    if now_ts - leeway >= claims["exp"]:
        ago = int(now_ts - claims["exp"])
        return _fail("Expired", f"token expired {ago}s ago", claims, kid)
    if claims["jti"] in set(revoked_jtis):
        return _fail("Revoked", f"token {claims['jti']} has been revoked", claims, kid)
    return VerifyResult(True, "Valid", f"valid for {int(claims['exp'] - now_ts)}s more", claims, kid)


def claim_shape_problem(claims: Any) -> str | None:
    """Signed claims of the wrong type are malformed, never an exception further down."""
    if not isinstance(claims, dict):
        return "claims are not an object"
    for name in ("exp", "nbf", "iat"):
        if not isinstance(claims.get(name), (int, float)) or isinstance(claims.get(name), bool):
            return f"claim {name} is not a number"
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        return "claim jti is not a string"
    aud = claims.get("aud")
    if not (isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))):
        return "claim aud is not a string or list of strings"
    for name in ("sub", "scope", "k8s_user", "iss"):
        if name in claims and not isinstance(claims[name], str):
            return f"claim {name} is not a string"
    groups = claims.get("k8s_groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return "claim k8s_groups is not a list of strings"
    if "breakglass" in claims:
        bg = claims["breakglass"]
        if not isinstance(bg, dict):
            return "claim breakglass is not an object"
        if (
            not isinstance(bg.get("uid", ""), str)
            or "/" not in str(bg.get("request", "/"))
            or not isinstance(bg.get("request", ""), str)
        ):
            return "claim breakglass.request/uid malformed"
    return None


def unverified_claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})
