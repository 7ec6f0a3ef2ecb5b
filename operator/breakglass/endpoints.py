"""HTTPS endpoints: OIDC discovery, JWKS, revocations and the TokenReview webhook."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from typing import Any

from aiohttp import web

from . import api, metrics
from .audit_endpoint import receive_batch
from .domain.durations import utcnow
from .domain.reuse import purged_policy, reuse_state, superseded
from .ledger import Ledger, is_live
from .review_cache import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    VerifiedTokenCache,
    keyset_fingerprint,
    token_digest,
)
from .stores import KeyStore, RevocationStore
from .tokens.jwt_tokens import verify
from .usage_sink import UsageSink

log = logging.getLogger(__name__)


def discovery_document(issuer: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer.rstrip('/')}/openid/v1/jwks",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "EdDSA", "RS256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope", "k8s_user", "k8s_groups"],
    }


CLAIMS_MISMATCH = "ClaimsMismatch"


def live_grant_check(result, entry: dict[str, Any] | None, now) -> tuple[bool, str, str]:
    """A verified token authenticates only while the ledger holds its jti as a live grant of the same
    request uid and key (an allow-list bounded by the active grants; revocation removes it)."""
    if not result.ok:
        return False, result.reason, result.message
    claims = result.claims
    if entry is None:
        return False, "UnknownGrant", f"token {claims['jti']} is not a grant the operator issued"
    if claims != entry.get("claims"):
        # Signed by our key over claims we never minted for this jti (a stolen key can at most re-mint
        # the exact grant, never widen it): malformed, whatever the grant's state.
        return False, CLAIMS_MISMATCH, "token claims differ from the grant the ledger recorded"
    if entry.get("state") != "Active" or not is_live(entry, now):
        return False, entry.get("state") or "NotLive", f"token {claims['jti']} grant is {entry.get('state')}"
    if entry.get("kid") != result.kid:
        return False, "GrantMismatch", "token does not match the grant the ledger recorded"
    return True, "Valid", result.message


def token_review_response(
    result, entry: dict[str, Any] | None, now, api_version: str = "authentication.k8s.io/v1", verdict=None
) -> dict[str, Any]:
    """Build the TokenReview answer (pure). The identity comes from the ledger, not from the token.
    `verdict`: live_grant_check's answer when the caller already has it."""
    ok, reason, message = verdict or live_grant_check(result, entry, now)
    if not ok:
        return {
            "apiVersion": api_version,
            "kind": "TokenReview",
            "status": {"authenticated": False, "error": f"{reason}: {message}"},
        }
    claims = result.claims
    bg = claims.get("breakglass") if isinstance(claims.get("breakglass"), dict) else {}
    return {
        "apiVersion": api_version,
        "kind": "TokenReview",
        "status": {
            "authenticated": True,
            "user": {
                "username": api.grant_username(
                    entry["request"]["namespace"], entry["request"]["name"], entry["request"]["uid"]
                ),
                "uid": entry["request"]["uid"],
                "groups": api.grant_groups(entry["policy"]),
                "extra": {
                    "requester": [entry.get("requester", "")],
                    "jti": [entry["jti"]],
                    "ticket": [str(bg.get("ticket", ""))],
                },
            },
            # No `audiences`: kube-apiserver would intersect them with its own api-audiences and
            # reject; the token's own `aud` was already checked against --token-audiences.
        },
    }


class Endpoints:
    def __init__(
        self,
        *,
        keys: KeyStore,
        revocations: RevocationStore,
        ledger: Ledger,
        issuer: str,
        audiences: list[str],
        client_ca_file: str | None = None,
        clock=utcnow,
        cache_entries: int = DEFAULT_MAX_ENTRIES,
        cache_bytes: int = DEFAULT_MAX_BYTES,
        usage: UsageSink | None = None,
    ):
        self.keys, self.revocations, self.issuer, self.audiences = keys, revocations, issuer, audiences
        self.ledger, self.clock, self.usage = ledger, clock, usage
        # With a client CA, /authenticate answers only callers presenting a certificate it signed
        # (kube-apiserver's webhook kubeconfig); JWKS, discovery and revocations stay public.
        self.client_ca_file = client_ca_file
        self._runner: web.AppRunner | None = None
        # Successful verifications by token hash until exp (liveness is asked of the ledger every time).
        self.verified = VerifiedTokenCache(cache_entries, cache_bytes)
        self._ring_seen: tuple[object, dict[str, Any], Any] | None = None  # (ring, its JWKS, fingerprint)
        self._cache_hit = metrics.token_review_cache_total.labels("hit")
        self._cache_miss = metrics.token_review_cache_total.labels("miss")

    def app(self) -> web.Application:
        app = web.Application()  # 1 MiB bodies; /audit reads its own (MAX_BODY) after admission
        app.add_routes(
            [
                web.post("/audit", self.audit),
                web.get("/.well-known/openid-configuration", self.discovery),
                web.get("/openid/v1/jwks", self.jwks),
                web.get("/revocations", self.revoked),
                web.post("/authenticate", self.authenticate),
                web.get("/healthz", self.healthz),
            ]
        )
        return app

    async def start(self, host: str, port: int, cert_file: str, key_file: str) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_file, key_file)
        if self.client_ca_file:
            ctx.verify_mode = ssl.CERT_OPTIONAL  # verified when presented; required by /authenticate
            ctx.load_verify_locations(cafile=self.client_ca_file)
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=ctx, reuse_address=True).start()
        log.info("HTTPS endpoints on https://%s:%d", host, port)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def discovery(self, _request: web.Request) -> web.Response:
        return web.json_response(discovery_document(self.issuer))

    async def _ring(self):
        """The keyring from memory while fresh; only a stale one is re-read, off the event loop."""
        peek = getattr(self.keys, "peek", None)
        ring = peek() if peek else None
        if ring is None:
            ring = await asyncio.get_running_loop().run_in_executor(None, self.keys.current)
        return ring

    def _jwks_of(self, ring) -> tuple[dict[str, Any], Any]:
        """The ring's JWKS and verification fingerprint, computed once per keyring object."""
        seen = self._ring_seen
        if seen is None or seen[0] is not ring:
            jwks = ring.jwks()
            seen = (ring, jwks, keyset_fingerprint(jwks, self.issuer, self.audiences))
            self._ring_seen = seen
        return seen[1], seen[2]

    async def jwks(self, _request: web.Request) -> web.Response:
        ring = await self._ring()
        return web.json_response(self._jwks_of(ring)[0], headers={"Cache-Control": "max-age=10"})

    async def revoked(self, _request: web.Request) -> web.Response:
        entries = await asyncio.get_running_loop().run_in_executor(None, self.revocations.active)
        return web.json_response(entries, headers={"Cache-Control": "no-store"})

    async def healthz(self, _request: web.Request) -> web.Response:
        """Ready only with a synced ledger view (TokenReview answers from it)."""
        if not self.ledger.synced.is_set():
            return web.Response(text="ledger not synced", status=503)
        return web.Response(text="ok")

    @staticmethod
    def _has_client_cert(request: web.Request) -> bool:
        """The TLS layer verified it against --client-ca-file (CERT_OPTIONAL: checked when presented)."""
        return bool(request.transport.get_extra_info("peercert") if request.transport else None)

    async def audit(self, request: web.Request) -> web.Response:
        """kube-apiserver's audit webhook backend (usage_sink.py). Only callers with a client
        certificate from --client-ca-file; without that flag nobody (forged events could revoke
        grants through their use limits)."""
        started = time.perf_counter()
        if not self.client_ca_file or not self._has_client_cert(request):
            metrics.audit_events_total.labels("unauthenticated").inc()
            why = "client certificate required" if self.client_ca_file else "audit sink needs --client-ca-file"
            return web.json_response({"error": why}, status=401)
        return await receive_batch(request, self.usage, started)

    def _note_reuse(self, result, entry: dict[str, Any] | None) -> None:
        """A revoked or expired break-glass token presented again: a leaked-token alarm (by jti)."""
        state = reuse_state(result, entry)
        if state is None:
            return
        policy = entry.get("policy", "") if entry else purged_policy(result.claims)
        metrics.token_reuse_total.labels(policy, state).inc()
        if entry is not None and self.usage is not None:
            self.usage.note_reuse(entry["request"]["uid"], state)

    async def authenticate(self, request: web.Request) -> web.Response:
        if self.client_ca_file:
            if not self._has_client_cert(request):
                metrics.token_reviews_total.labels("unauthenticated_caller").inc()
                return web.json_response(
                    {
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "status": {"authenticated": False, "error": "client certificate required"},
                    },
                    status=401,
                )
        try:
            review = json.loads(await request.text())
            token = review["spec"]["token"]
        except Exception:
            metrics.token_reviews_total.labels("malformed").inc()
            return web.json_response(
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "status": {"authenticated": False, "error": "malformed TokenReview"},
                },
                status=400,
            )

        def malformed():
            metrics.token_reviews_total.labels("malformed").inc()
            return web.json_response(
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "status": {"authenticated": False, "error": "malformed TokenReview"},
                },
                status=401,
            )

        if not isinstance(review, dict) or not isinstance(token, str):
            return malformed()
        api_version = (
            review.get("apiVersion")
            if review.get("apiVersion") in ("authentication.k8s.io/v1", "authentication.k8s.io/v1beta1")
            else "authentication.k8s.io/v1"
        )
        try:
            ring = await self._ring()
            if not self.ledger.synced.is_set():
                raise RuntimeError("grant ledger not synced yet")
        except Exception as exc:
            # Fail closed: without keys or the ledger no token is accepted.
            metrics.token_reviews_total.labels("error").inc()
            metrics.errors_total.labels("tokenreview").inc()
            log.warning("TokenReview failed closed: %s", type(exc).__name__)
            return web.json_response(
                {
                    "apiVersion": api_version,
                    "kind": "TokenReview",
                    "status": {"authenticated": False, "error": "verifier unavailable"},
                }
            )
        now = self.clock()
        try:
            jwks, keyset = self._jwks_of(ring)
            digest = token_digest(token)
            result = self.verified.get(digest, keyset, now.timestamp())
            if result is not None:
                self._cache_hit.inc()
            else:
                self._cache_miss.inc()
                result = verify(token, jwks=jwks, issuer=self.issuer, audience=self.audiences, now=now)
                self.verified.put(digest, keyset, result, now.timestamp(), len(token))
        except Exception:  # noqa: BLE001 — any token we cannot parse is refused, never a 500
            return malformed()
        finally:
            del token
        if result.reason in ("MalformedClaims", "MissingClaim"):  # signed but malformed: 401, never a 500
            return malformed()
        signed = result.ok or result.reason == "Expired"  # an expired token's claims are verified too
        entry = self.ledger.by_jti(result.claims["jti"]) if signed and result.claims else None
        verdict = live_grant_check(result, entry, now)
        if verdict[1] == CLAIMS_MISMATCH and superseded(result, entry):
            verdict = (False, "Superseded", "an extension replaced this token; only the newer one authenticates")
        elif verdict[1] == CLAIMS_MISMATCH:
            return malformed()
        if not verdict[0]:
            self._note_reuse(result, entry)
        elif self.usage is not None and self.usage.exhausted(entry["request"]["uid"]):
            verdict = (False, "UseLimitReached", "the grant reached its use limit; it is being revoked")
        answer = token_review_response(result, entry, now, api_version, verdict=verdict)
        ok = answer["status"]["authenticated"]
        label = "authenticated" if ok else (answer["status"]["error"].split(":")[0].lower())
        metrics.token_reviews_total.labels(label).inc()
        return web.json_response(answer)
