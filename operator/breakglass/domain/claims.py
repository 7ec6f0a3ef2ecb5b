"""JWT claims for a grant."""
from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from .. import api
from .policy import Policy, RequestView, effective_audiences


def new_token_id() -> str:
    """Random 128-bit jti."""
    return secrets.token_hex(16)


def kubernetes_scopes(request: RequestView) -> list[str]:
    return [f"k8s:{ns}:{role}" for ns in request.namespaces for role in request.cluster_roles]


def build_claims(*, request: RequestView, policy: Policy, request_uid: str, issuer: str,
                 approvers: list[str] | tuple[str, ...], issued_at: dt.datetime,
                 duration: dt.timedelta, jti: str, emergency: bool, drill: bool = False) -> dict[str, Any]:
    iat = int(issued_at.timestamp())
    audiences = list(effective_audiences(request, policy))
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": request.requester,
        "aud": audiences if len(audiences) != 1 else audiences[0],
        "iat": iat,
        "nbf": iat,
        "exp": iat + int(duration.total_seconds()),
        "jti": jti,
        "scope": " ".join(list(request.scopes) + kubernetes_scopes(request)),
        "k8s_user": api.grant_username(request.namespace, request.name),
        "k8s_groups": api.grant_groups(policy.name),
        "breakglass": {
            "request": f"{request.namespace}/{request.name}",
            "uid": request_uid,
            "policy": policy.name,
            "reason": request.reason,
            "ticket": request.ticket or "",
            "approvers": list(approvers),
            "emergency": emergency,
        },
    }
    if drill:
        claims["breakglass"]["drill"] = True
    return claims
