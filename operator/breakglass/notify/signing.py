"""Pure: the signature header, its verification (what a receiver does), the retry backoff and what an
HTTP answer means for a delivery."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Breakglass-Signature"
ID_HEADER = "X-Breakglass-Id"
EVENT_HEADER = "X-Breakglass-Event"
DEFAULT_TOLERANCE = 300  # seconds a receiver accepts between t= and its own clock


def sign(key: bytes, timestamp: int, body: bytes) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    mac = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(key: bytes, header: str, body: bytes, now: float, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """True when `header` signs `body` with `key` and its t= is within `tolerance` of `now`."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(key, timestamp, body).split(",v1=", 1)[1], given)


def backoff_seconds(attempts: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Delay after the `attempts`-th failure: base * 2**(attempts-1), at most `cap`."""
    if attempts <= 0:
        return 0.0
    return min(cap, base * 2 ** min(attempts - 1, 40))


DELIVERED, RETRY, DEAD = "delivered", "retry", "dead"


def verdict(status: int | None) -> str:
    """2xx delivered; no answer, 408, 425, 429 and 5xx are retried; any other 4xx (or 3xx: redirects are
    not followed, a signed body is never re-sent elsewhere) will not get better and is dead-lettered."""
    if status is None or status in (408, 425, 429) or status >= 500:
        return RETRY
    if 200 <= status < 300:
        return DELIVERED
    return DEAD


def give_up(*, attempts: int, age: float, max_attempts: int, max_age: float) -> bool:
    """A notification that failed `attempts` times and is `age` seconds old is dead-lettered."""
    return attempts >= max_attempts or age >= max_age
