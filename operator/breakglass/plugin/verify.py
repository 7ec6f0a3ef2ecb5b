"""`kubectl breakglass verify`: check a token against the operator's JWKS and revocations and name
the precise failure (exit 1)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
import time

from .. import api
from ..domain.durations import format_duration
from .client import fetch_json
from .errors import NOT_OK, OK, USAGE, CliError, try_or
from .output import emit, print_verification


def cmd_verify(args, client_factory) -> int:
    from ..tokens.jwt_tokens import unverified_claims, verify

    token = args.token
    client = None
    if args.secret:
        ns, _, name = args.secret.partition("/")
        if not name:
            raise CliError("--secret takes NAMESPACE/NAME", USAGE)
        client = client_factory()
        token = base64.b64decode(client.get_secret(ns, name)["data"]["token"]).decode()
    if token == "-":
        token = sys.stdin.read().strip()
    if not token:
        raise CliError("give a TOKEN, '-' for stdin, or --secret NS/NAME", USAGE)
    issuer = args.issuer
    revoked: set[str] = set()
    if args.jwks:
        jwks = fetch_json(args.jwks, args.ca_file, args.insecure_skip_tls_verify)
        base = args.jwks.rsplit("/openid/v1/jwks", 1)[0]
        if issuer is None and args.jwks.endswith("/openid/v1/jwks"):
            issuer = base
        try:
            revoked = {e["jti"] for e in fetch_json(f"{base}/revocations", args.ca_file, args.insecure_skip_tls_verify)}
        except CliError:
            print("warning: revocation list not reachable; revocation not checked", file=sys.stderr)
    else:  # --from-cluster (default)
        client = client or client_factory()
        cm = client.get_configmap(args.operator_namespace, api.JWKS_CONFIGMAP)
        jwks = json.loads(cm["data"]["jwks.json"])
        rcm = try_or(lambda: client.get_configmap(args.operator_namespace, api.REVOCATIONS_CONFIGMAP), None)
        revoked = {e["jti"] for e in json.loads(((rcm or {}).get("data") or {}).get("revocations.json", "[]"))}
    result = verify(token, jwks=jwks, issuer=issuer, audience=args.audience, revoked_jtis=revoked)
    claims = result.claims
    if claims is None:
        try:
            claims = unverified_claims(token)
        except Exception:
            claims = None
    out = {"valid": result.ok, "reason": result.reason, "message": result.message, "kid": result.kid, "claims": claims}
    if claims and "exp" in claims:
        out["remaining"] = format_duration(dt.timedelta(seconds=max(0, int(claims["exp"] - time.time()))))
    if args.output in ("json", "yaml"):
        emit(args, out, lambda: None)
    else:
        print_verification(result.ok, result.reason, result.message, result.kid, claims, out.get("remaining", "-"))
    del token
    return OK if result.ok else NOT_OK
