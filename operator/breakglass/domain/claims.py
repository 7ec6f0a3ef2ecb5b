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


def build_claims(
    *,
    request: RequestView,
    policy: Policy,
    request_uid: str,
    issuer: str,
    approvers: list[str] | tuple[str, ...],
    issued_at: dt.datetime,
    duration: dt.timedelta,
    jti: str,
    emergency: bool,
    drill: bool = False,
) -> dict[str, Any]:
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
        # Unprefixed: kube-apiserver's --oidc-username-prefix / --oidc-groups-prefix and the
        # TokenReview answer both put "breakglass:" in front, so no claim can name a system: identity.
        "k8s_user": api.grant_user_claim(request.namespace, request.name, request_uid),
        "k8s_groups": api.grant_group_claims(policy.name),
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
