"""HTTPS endpoints: OIDC discovery, JWKS, revocations and the TokenReview webhook."""
from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

from aiohttp import web

from . import api, metrics
from .stores import KeyStore, RevocationStore
from .tokens.jwt_tokens import verify

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


def token_review_response(result, api_version: str = "authentication.k8s.io/v1") -> dict[str, Any]:
    """Build the TokenReview answer from a verification result (pure)."""
    if not result.ok:
        return {"apiVersion": api_version, "kind": "TokenReview",
                "status": {"authenticated": False, "error": f"{result.reason}: {result.message}"}}
    claims = result.claims
    bg = claims.get("breakglass") or {}
    ns, _, name = (bg.get("request") or "/").partition("/")
    return {"apiVersion": api_version, "kind": "TokenReview", "status": {
        "authenticated": True,
        "user": {
            "username": api.grant_username(ns, name),
            "uid": bg.get("uid", ""),
            "groups": api.grant_groups(bg.get("policy", "")),
            "extra": {"requester": [claims.get("sub", "")], "jti": [claims["jti"]],
                      "ticket": [bg.get("ticket", "")]},
        },
        # No `audiences`: kube-apiserver would intersect them with its own api-audiences and
        # reject; the token's own `aud` was already checked against --token-audiences.
    }}


class Endpoints:
    def __init__(self, *, keys: KeyStore, revocations: RevocationStore, issuer: str, audiences: list[str],
                 client_ca_file: str | None = None):
        self.keys, self.revocations, self.issuer, self.audiences = keys, revocations, issuer, audiences
        # With a client CA, /authenticate answers only callers presenting a certificate it signed
        # (kube-apiserver's webhook kubeconfig); JWKS, discovery and revocations stay public.
        self.client_ca_file = client_ca_file
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.get("/.well-known/openid-configuration", self.discovery),
            web.get("/openid/v1/jwks", self.jwks),
            web.get("/revocations", self.revoked),
            web.post("/authenticate", self.authenticate),
            web.get("/healthz", self.healthz),
        ])
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

    async def jwks(self, _request: web.Request) -> web.Response:
        ring = await asyncio.get_running_loop().run_in_executor(None, self.keys.current)
        return web.json_response(ring.jwks(), headers={"Cache-Control": "max-age=10"})

    async def revoked(self, _request: web.Request) -> web.Response:
        entries = await asyncio.get_running_loop().run_in_executor(None, self.revocations.active)
        return web.json_response(entries, headers={"Cache-Control": "no-store"})

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def authenticate(self, request: web.Request) -> web.Response:
        if self.client_ca_file:
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            if not peer:
                metrics.token_reviews_total.labels("unauthenticated_caller").inc()
                return web.json_response({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                          "status": {"authenticated": False,
                                                     "error": "client certificate required"}}, status=401)
        try:
            review = json.loads(await request.text())
            token = review["spec"]["token"]
        except Exception:
            metrics.token_reviews_total.labels("malformed").inc()
            return web.json_response({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                      "status": {"authenticated": False, "error": "malformed TokenReview"}},
                                     status=400)
        loop = asyncio.get_running_loop()
        try:
            ring = await loop.run_in_executor(None, self.keys.current)
            revoked = await loop.run_in_executor(None, self.revocations.jtis)
        except Exception as exc:
            # Fail closed: without keys or the revocation list no token is accepted.
            metrics.token_reviews_total.labels("error").inc()
            metrics.errors_total.labels("tokenreview").inc()
            log.warning("TokenReview failed closed: %s", type(exc).__name__)
            return web.json_response({"apiVersion": review.get("apiVersion", "authentication.k8s.io/v1"),
                                      "kind": "TokenReview",
                                      "status": {"authenticated": False, "error": "verifier unavailable"}})
        result = verify(token, jwks=ring.jwks(), issuer=self.issuer, audience=self.audiences, revoked_jtis=revoked)
        del token
        metrics.token_reviews_total.labels("authenticated" if result.ok else result.reason.lower()).inc()
        return web.json_response(token_review_response(result, review.get("apiVersion", "authentication.k8s.io/v1")))
