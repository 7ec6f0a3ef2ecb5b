"""What housekeeping, routing and TokenReview read of every grant without parsing its ledger entry."""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

from .domain.durations import parse_rfc3339
from .domain.limits import idle_deadline

ACTIVE = "Active"


class Summary(NamedTuple):
    """What housekeeping scans for every grant, without parsing the whole entry."""

    uid: str
    namespace: str
    name: str
    state: str
    jti: str
    kid: str
    policy: str
    expires: float  # exp as a POSIX timestamp
    drill: bool
    cleaned: bool
    resource_version: str
    secret: tuple[str, str, str]  # the token Secret's namespace, name, uid (expiry deletes it by uid)
    # Use (domain/usage.py): actions counted / audited by the leader, token reuses seen / reported,
    # when idleness revokes it (POSIX seconds, 0: no idleTimeout), whether it has count limits.
    uses: int = 0
    audited: int = 0
    reuses: int = 0
    reported: int = 0
    idle_deadline: float = 0.0
    limited: bool = False
    previous_jtis: tuple[str, ...] = ()  # tokens an extension replaced (TokenReview names their reuse)

    @property
    def usage_settled(self) -> bool:
        """Every use and token reuse the ledger holds is in the audit log (nothing for the leader)."""
        return self.uses == self.audited and self.reuses == self.reported


def summarize(entry: dict[str, Any]) -> Summary:
    req, secret = entry["request"], entry.get("secret") or {}
    shared = sys.intern  # namespaces, states, kids and policies repeat across thousands of grants
    return Summary(
        uid=req["uid"],
        namespace=shared(req["namespace"]),
        name=req["name"],
        state=shared(entry.get("state", "")),
        jti=entry.get("jti", ""),
        kid=shared(entry.get("kid", "")),
        policy=shared(entry.get("policy", "")),
        expires=parse_rfc3339(entry["expiresAt"]).timestamp(),
        drill=bool(entry.get("drill")),
        cleaned=bool(entry.get("cleaned")),
        resource_version=entry.get("resourceVersion") or "",
        secret=(shared(secret.get("namespace", "")), secret.get("name", ""), secret.get("uid", "")),
        previous_jtis=tuple(entry.get("previousJtis") or ()),
        **_usage_fields(entry),
    )


def _usage_fields(entry: dict[str, Any]) -> dict[str, Any]:
    usage, reuse, limits = entry.get("usage") or {}, entry.get("reuse") or {}, entry.get("limits") or {}
    if not (usage or reuse or limits):
        return {}
    deadline = idle_deadline(entry) if entry.get("state") == ACTIVE else None
    return {
        "uses": int(usage.get("requests", 0)),
        "audited": int(usage.get("audited", 0)),
        "reuses": int(reuse.get("seen", 0)),
        "reported": int(reuse.get("reported", 0)),
        "idle_deadline": deadline.timestamp() if deadline else 0.0,
        "limited": limits.get("maxRequests") is not None or limits.get("maxWrites") is not None,
    }
