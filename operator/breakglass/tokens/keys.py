"""Signing keys: generation, RFC 7638 thumbprint kids, JWKS, a rotating keyring.

The keyring is serialised as JSON into the signing-key Secret: private keys never leave it.
Retired keys keep their public half in the JWKS until every token they signed has expired.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SUPPORTED_ALGS = ("ES256", "EdDSA", "RS256")


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64u(value: int, length: int | None = None) -> str:
    length = length or (value.bit_length() + 7) // 8
    return _b64u(value.to_bytes(length, "big"))


def generate_private_key(alg: str):
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unsupported signing algorithm {alg!r} (choose one of {', '.join(SUPPORTED_ALGS)})")


def public_jwk(public_key) -> dict[str, str]:
    """The required public members only, as RFC 7638 needs for the thumbprint."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        nums = public_key.public_numbers()
        return {"crv": "P-256", "kty": "EC", "x": _int_b64u(nums.x, 32), "y": _int_b64u(nums.y, 32)}
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64u(raw)}
    if isinstance(public_key, rsa.RSAPublicKey):
        nums = public_key.public_numbers()
        return {"e": _int_b64u(nums.e), "kty": "RSA", "n": _int_b64u(nums.n)}
    raise TypeError(f"unsupported key type {type(public_key).__name__}")


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, no whitespace."""
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return _b64u(hashlib.sha256(canonical.encode()).digest())


@dataclass
class SigningKey:
    alg: str
    private_pem: str
    created: str  # RFC 3339
    retired: str | None = None  # when it stopped signing
    kid: str = ""
    _private: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.kid:
            self.kid = thumbprint(public_jwk(self.private_key().public_key()))

    def private_key(self):
        if self._private is None:
            self._private = serialization.load_pem_private_key(self.private_pem.encode(), password=None)
        return self._private

    def jwk(self) -> dict[str, str]:
        out = dict(public_jwk(self.private_key().public_key()))
        out.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return out

    @classmethod
    def generate(cls, alg: str, now: dt.datetime) -> SigningKey:
        key = generate_private_key(alg)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        from ..domain.durations import to_rfc3339

        return cls(alg=alg, private_pem=pem, created=to_rfc3339(now), _private=key)


@dataclass
class Keyring:
    active_kid: str
    keys: list[SigningKey]

    @property
    def active(self) -> SigningKey:
        for k in self.keys:
            if k.kid == self.active_kid:
                return k
        raise LookupError(f"active key {self.active_kid} missing from keyring")

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    def to_json(self) -> str:
        return json.dumps(
            {
                "activeKid": self.active_kid,
                "keys": [
                    {
                        "kid": k.kid,
                        "alg": k.alg,
                        "privateKeyPem": k.private_pem,
                        "created": k.created,
                        "retired": k.retired,
                    }
                    for k in self.keys
                ],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Keyring:
        data = json.loads(text)
        keys = [
            SigningKey(
                alg=k["alg"],
                private_pem=k["privateKeyPem"],
                created=k["created"],
                retired=k.get("retired"),
                kid=k.get("kid", ""),
            )
            for k in data["keys"]
        ]
        return cls(active_kid=data["activeKid"], keys=keys)

    @classmethod
    def new(cls, alg: str, now: dt.datetime) -> Keyring:
        key = SigningKey.generate(alg, now)
        return cls(active_kid=key.kid, keys=[key])

    def rotated(self, alg: str, now: dt.datetime) -> Keyring:
        from ..domain.durations import to_rfc3339

        new_key = SigningKey.generate(alg, now)
        keys = []
        for k in self.keys:
            if k.kid == self.active_kid and not k.retired:
                k = SigningKey(
                    alg=k.alg, private_pem=k.private_pem, created=k.created, retired=to_rfc3339(now), kid=k.kid
                )
            keys.append(k)
        return Keyring(active_kid=new_key.kid, keys=keys + [new_key])

    def pruned(
        self,
        now: dt.datetime,
        in_use_kids: set[str] | frozenset[str] = frozenset(),
        grace: dt.timedelta = dt.timedelta(seconds=30),
    ) -> Keyring:
        """Drop retired keys once no live token Secret was signed by them.

        `grace` covers a mint that read the keyring just before rotation but has not yet
        created its Secret.
        """
        from ..domain.durations import parse_rfc3339

        keep = [
            k
            for k in self.keys
            if k.kid == self.active_kid
            or not k.retired
            or k.kid in in_use_kids
            or parse_rfc3339(k.retired) + grace > now
        ]
        return Keyring(active_kid=self.active_kid, keys=keep)
