"""Which presentations of a break-glass token are reuse of a grant that ended (the leaked-token alarm)."""

from __future__ import annotations

from typing import Any


def reuse_state(result: Any, entry: dict[str, Any] | None) -> str | None:
    """`revoked`, `superseded` (an extension replaced it) or `expired` when a token the operator
    really issued (signature good, claims equal
    to the ledger's) is presented after its grant ended; `expired` too for a correctly signed expired
    token whose ledger entry was already purged; None for anything else."""
    if entry is None:
        return "expired" if result.reason == "Expired" and purged_policy(result.claims) else None
    if superseded(result, entry):
        return "expired" if result.reason == "Expired" else "superseded"
    if not result.claims or result.claims != entry.get("claims"):
        return None
    if result.reason == "Expired" or entry.get("state") == "Expired":
        return "expired"
    if result.ok and entry.get("state") in ("Revoked", "Failed"):
        return "revoked"
    return None


def purged_policy(claims: Any) -> str:
    """The policy a signed token names (its grant's ledger entry may be gone); '' if none."""
    bg = claims.get("breakglass") if isinstance(claims, dict) else None
    policy = bg.get("policy") if isinstance(bg, dict) else None
    return policy[:253] if isinstance(policy, str) else ""


def superseded(result: Any, entry: dict[str, Any] | None) -> bool:
    """A token of this grant that an extension replaced: signed by our key (verified, or only
    expired), its jti among the ledger's previousJtis, naming the same request uid."""
    claims = result.claims if isinstance(result.claims, dict) else {}
    bg = claims.get("breakglass") if isinstance(claims.get("breakglass"), dict) else {}
    return (
        entry is not None
        and (result.ok or result.reason == "Expired")
        and claims.get("jti") in (entry.get("previousJtis") or [])
        and bg.get("uid") == entry["request"]["uid"]
    )
