"""Verified-token cache for the TokenReview webhook.

Verifying a token (signature, alg, kid, iss, aud, nbf) is a pure function of the token, the key set
and the issuer/audiences: its *success* may be remembered until the token's exp, so a repeated review
skips the JWKS lookup and the signature check. Liveness is never cached: every review still asks the
ledger (revocation bites at once).

What is kept: the SHA-256 of the token (never the token) -> the verified claims, kid, jti, nbf, exp.
Failures are never cached (a token refused now is verified afresh next time). An entry is dropped at
the token's exp, when the key set (kids, algs) or the issuer/audiences change, and the least recently
used one goes first past `max_entries` or past `max_bytes` (estimated from the token's length: parsed
claims take about 4 bytes per token character, ~3 KB for a typical grant). Only tokens our own keys
signed can ever enter, so in practice it holds one entry per live grant token presented.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from .tokens.jwt_tokens import LEEWAY_SECONDS, VerifyResult

DEFAULT_MAX_ENTRIES = 50_000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # well inside the chart's 256Mi limit
ENTRY_OVERHEAD_BYTES = 256  # digest, tuple, OrderedDict slot


def entry_size(token_length: int) -> int:
    """Estimated memory of one entry: the parsed claims of a token of this length, plus overhead."""
    return 4 * token_length + ENTRY_OVERHEAD_BYTES


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def keyset_fingerprint(jwks: dict[str, Any], issuer: str | None, audiences: Any) -> Hashable:
    """What a verification depends on besides the token: the published keys (kid is the key's RFC 7638
    thumbprint), their algs, the issuer and the accepted audiences."""
    keys = frozenset((k.get("kid"), k.get("alg"), k.get("kty")) for k in jwks.get("keys", []))
    auds = (audiences,) if isinstance(audiences, str) or audiences is None else tuple(sorted(audiences))
    return keys, issuer, auds


class VerifiedTokenCache:
    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES, leeway: int = LEEWAY_SECONDS
    ):
        self.max_entries, self.max_bytes, self.leeway = max_entries, max_bytes, leeway
        self._lock = threading.Lock()
        # digest -> (claims, kid, nbf, exp, estimated size)
        self._entries: OrderedDict[bytes, tuple[dict[str, Any], str | None, float, float, int]] = OrderedDict()
        self._keyset: Hashable | None = None
        self.bytes = 0  # estimated memory held

    def _drop(self, digest: bytes) -> None:
        self.bytes -= self._entries.pop(digest)[4]

    def __len__(self) -> int:
        return len(self._entries)

    def _check_keyset(self, keyset: Hashable) -> None:
        if keyset != self._keyset:  # rotation, pruning, a lost keyring, new audiences: start over
            self._entries.clear()
            self._keyset, self.bytes = keyset, 0

    def get(self, digest: bytes, keyset: Hashable, now_ts: float) -> VerifyResult | None:
        """The remembered successful verification of this token under `keyset`, if still within its
        validity window at `now_ts`; else None (verify it)."""
        with self._lock:
            self._check_keyset(keyset)
            hit = self._entries.get(digest)
            if hit is None:
                return None
            claims, kid, nbf, exp, _ = hit
            if now_ts >= exp:  # never a success past exp
                self._drop(digest)
                return None
            if now_ts + self.leeway < nbf:  # a clock that went back: let verify decide
                return None
            self._entries.move_to_end(digest)
        return VerifyResult(True, "Valid", f"valid for {int(exp - now_ts)}s more", claims, kid)

    def put(
        self, digest: bytes, keyset: Hashable, result: VerifyResult, now_ts: float, token_length: int = 1024
    ) -> bool:
        """Remember a successful verification until the token's exp; anything else is not kept."""
        if not result.ok or not result.claims:
            return False
        claims = result.claims
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, (int, float)) or not isinstance(nbf, (int, float)) or now_ts >= exp:
            return False
        size = entry_size(token_length)
        if size > self.max_bytes:
            return False
        with self._lock:
            self._check_keyset(keyset)
            if digest in self._entries:
                self._drop(digest)
            self._entries[digest] = (claims, result.kid, float(nbf), float(exp), size)
            self.bytes += size
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
            for _ in range(2):  # shed a couple of long-unused, expired entries as we go
                oldest, entry = next(iter(self._entries.items()))
                if entry[3] > now_ts:
                    break
                self._drop(oldest)
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._keyset, self.bytes = None, 0
