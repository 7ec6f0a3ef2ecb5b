"""The TokenReview webhook remembers verified tokens (by hash, until exp) but asks the ledger every time."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import threading
import time

from aiohttp.test_utils import TestClient, TestServer

from breakglass import endpoints as endpoints_module
from breakglass import metrics
from breakglass.domain.durations import to_rfc3339
from breakglass.endpoints import Endpoints
from breakglass.review_cache import VerifiedTokenCache, entry_size, keyset_fingerprint, token_digest
from breakglass.stores import KEYRING_KEY, KeyStore
from breakglass.tokens.jwt_tokens import VerifyResult, mint
from breakglass.tokens.keys import Keyring

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
ISSUER = "https://issuer.test"
RING = Keyring.new("ES256", NOW - dt.timedelta(days=1))


class Keys:
    def __init__(self, ring: Keyring = RING):
        self.ring = ring

    def current(self) -> Keyring:
        return self.ring


class LedgerView:
    """The two things TokenReview uses of the ledger: `synced` and `by_jti`."""

    def __init__(self):
        self.synced = threading.Event()
        self.synced.set()
        self.entries: dict[str, dict] = {}

    def by_jti(self, jti: str):
        return self.entries.get(jti)


class Clock:
    def __init__(self, now: dt.datetime = NOW):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def grant(ledger: LedgerView, jti: str = "j1", minutes: int = 10, ring: Keyring = RING, uid: str = "uid-1") -> str:
    """Record a live grant in the ledger view and return its token."""
    iat = int(NOW.timestamp())
    claims = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": "breakglass",
        "iat": iat,
        "nbf": iat,
        "exp": iat + minutes * 60,
        "jti": jti,
        "k8s_user": f"team-a:r1:{uid}",
        "k8s_groups": ["policy:prod"],
        "breakglass": {"request": "team-a/r1", "uid": uid, "policy": "prod", "ticket": "INC-1"},
    }
    ledger.entries[jti] = {
        "jti": jti,
        "state": "Active",
        "expiresAt": to_rfc3339(NOW + dt.timedelta(minutes=minutes)),
        "claims": claims,
        "kid": ring.active.kid,
        "request": {"namespace": "team-a", "name": "r1", "uid": uid},
        "policy": "prod",
        "requester": "alice",
    }
    return mint(claims, ring.active)


def world(**kwargs):
    ledger, clock, keys = LedgerView(), Clock(), Keys()
    ep = Endpoints(
        keys=keys,
        revocations=None,
        ledger=ledger,
        issuer=ISSUER,
        audiences=["breakglass"],
        clock=clock,
        **kwargs,
    )
    return ep, ledger, clock, keys


def review(ep: Endpoints, *tokens: str) -> list[tuple[int, dict]]:
    async def go():
        answers = []
        async with TestClient(TestServer(ep.app())) as client:
            for token in tokens:
                body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
                resp = await client.post("/authenticate", json=body)
                answers.append((resp.status, await resp.json()))
        return answers

    return asyncio.run(go())


def counting_verify(monkeypatch) -> list[int]:
    calls = []
    real = endpoints_module.verify

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(endpoints_module, "verify", spy)
    return calls


def cache_counts() -> tuple[float, float]:
    return (
        metrics.token_review_cache_total.labels("hit")._value.get(),
        metrics.token_review_cache_total.labels("miss")._value.get(),
    )


def test_a_repeated_review_is_answered_from_the_cache_with_the_same_answer(monkeypatch):
    ep, ledger, _, _ = world()
    token = grant(ledger)
    calls = counting_verify(monkeypatch)
    hits, misses = cache_counts()
    first, second, third = review(ep, token, token, token)
    assert first == second == third
    assert first[0] == 200 and first[1]["status"]["authenticated"] is True
    assert first[1]["status"]["user"]["uid"] == "uid-1"
    assert len(calls) == 1  # the signature was checked once
    assert cache_counts() == (hits + 2, misses + 1)


def test_a_revoked_grant_is_refused_even_while_its_token_is_cached():
    ep, ledger, _, _ = world()
    token = grant(ledger)
    (before,) = review(ep, token)
    assert before[1]["status"]["authenticated"] is True and len(ep.verified) == 1
    ledger.entries["j1"]["state"] = "Revoked"
    (after,) = review(ep, token)
    assert after[0] == 200
    assert after[1]["status"]["authenticated"] is False
    assert after[1]["status"]["error"].startswith("Revoked:")


def test_a_grant_gone_from_the_ledger_is_refused_even_while_its_token_is_cached():
    ep, ledger, _, _ = world()
    token = grant(ledger)
    review(ep, token)
    del ledger.entries["j1"]
    (after,) = review(ep, token)
    assert after[1]["status"]["authenticated"] is False and after[1]["status"]["error"].startswith("UnknownGrant:")


def test_a_cached_token_past_its_exp_is_refused_and_dropped_from_the_cache(monkeypatch):
    ep, ledger, clock, _ = world()
    token = grant(ledger, minutes=10)
    review(ep, token)
    # The ledger (wrongly) still calls it live: only the cache could let it through, and it must not.
    ledger.entries["j1"]["expiresAt"] = to_rfc3339(NOW + dt.timedelta(hours=5))
    clock.now = NOW + dt.timedelta(minutes=10, seconds=10)  # past exp and its leeway
    calls = counting_verify(monkeypatch)
    (after,) = review(ep, token)
    assert after[1]["status"]["authenticated"] is False
    assert after[1]["status"]["error"].startswith("Expired:")
    assert calls == [1] and len(ep.verified) == 0


def test_the_cache_never_answers_for_a_success_at_or_past_exp():
    cache = VerifyResult(True, "Valid", "", {"exp": 100, "nbf": 0, "jti": "j"}, "k")
    c = VerifiedTokenCache()
    assert c.put(b"d", "ks", cache, now_ts=50)
    assert c.get(b"d", "ks", now_ts=99.9) is not None
    assert c.get(b"d", "ks", now_ts=100) is None and len(c) == 0
    assert not c.put(b"d", "ks", cache, now_ts=100)  # never stored once expired


def test_a_key_rotation_empties_the_cache_and_a_token_of_a_removed_key_is_refused():
    ep, ledger, _, keys = world()
    token = grant(ledger)
    review(ep, token)
    assert len(ep.verified) == 1
    keys.ring = Keyring.new("ES256", NOW)  # the old key is gone from the ring
    (after,) = review(ep, token)
    assert after[1]["status"]["authenticated"] is False and after[1]["status"]["error"].startswith("UnknownKid:")
    assert len(ep.verified) == 0


def test_a_rotation_that_keeps_the_old_key_still_verifies_its_tokens_afresh(monkeypatch):
    ep, ledger, _, keys = world()
    token = grant(ledger)
    review(ep, token)
    keys.ring = RING.rotated("ES256", NOW)
    calls = counting_verify(monkeypatch)
    (after,) = review(ep, token)
    assert after[1]["status"]["authenticated"] is True and calls == [1]  # kid set changed: verified again


def test_a_refused_token_is_not_remembered_so_it_can_succeed_later():
    ep, ledger, clock, _ = world()
    token = grant(ledger)
    clock.now = NOW - dt.timedelta(minutes=1)  # before nbf (and its leeway)
    (early,) = review(ep, token)
    assert early[1]["status"]["error"].startswith("NotYetValid:") and len(ep.verified) == 0
    clock.now = NOW + dt.timedelta(seconds=1)
    (later,) = review(ep, token)
    assert later[1]["status"]["authenticated"] is True


def test_the_cache_never_holds_the_token_string():
    ep, ledger, _, _ = world()
    token = grant(ledger)
    review(ep, token)
    assert list(ep.verified._entries) == [hashlib.sha256(token.encode()).digest()] == [token_digest(token)]

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, bytes):
            yield value.decode("latin-1")
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from strings(k)
                yield from strings(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from strings(v)

    held = list(strings(list(ep.verified._entries.items())))
    assert held and not any(token in s or s in token and len(s) > 40 for s in held)
    signature = token.rsplit(".", 1)[1]
    assert not any(signature in s for s in held)


def test_the_cache_is_bounded_and_drops_the_least_recently_used():
    c = VerifiedTokenCache(max_entries=3)
    ok = VerifyResult(True, "Valid", "", {"exp": 1000, "nbf": 0, "jti": "j"}, "k")
    for d in (b"a", b"b", b"c"):
        c.put(d, "ks", ok, now_ts=1)
    assert c.get(b"a", "ks", now_ts=2) is not None  # a is now the most recently used
    c.put(b"d", "ks", ok, now_ts=3)
    assert len(c) == 3
    assert c.get(b"b", "ks", now_ts=4) is None
    assert all(c.get(d, "ks", now_ts=4) is not None for d in (b"a", b"c", b"d"))


def test_the_cache_keeps_within_its_memory_budget():
    c = VerifiedTokenCache(max_entries=100, max_bytes=3 * entry_size(1000))
    ok = VerifyResult(True, "Valid", "", {"exp": 1000, "nbf": 0, "jti": "j"}, "k")
    for i in range(10):
        assert c.put(bytes([i]), "ks", ok, now_ts=1, token_length=1000)
    assert len(c) == 3 and c.bytes <= c.max_bytes
    assert [d[0] for d in c._entries] == [7, 8, 9]
    assert not c.put(b"huge", "ks", ok, now_ts=1, token_length=10_000)  # bigger than the whole budget
    c.put(b"\x09", "ks", ok, now_ts=2, token_length=1000)  # a re-put is counted once
    assert len(c) == 3 and c.bytes == 3 * entry_size(1000)


def test_a_review_holds_at_most_the_configured_number_of_tokens():
    ep, ledger, _, _ = world(cache_entries=2)
    tokens = [grant(ledger, jti=f"j{i}", uid=f"uid-{i}") for i in range(5)]
    answers = review(ep, *tokens)
    assert all(a[1]["status"]["authenticated"] is True for a in answers)
    assert len(ep.verified) == 2


def test_a_different_issuer_or_audience_set_is_a_different_keyset():
    jwks = RING.jwks()
    assert keyset_fingerprint(jwks, ISSUER, ["b", "a"]) == keyset_fingerprint(jwks, ISSUER, ["a", "b"])
    assert keyset_fingerprint(jwks, ISSUER, ["a"]) != keyset_fingerprint(jwks, "https://other", ["a"])
    assert keyset_fingerprint(jwks, ISSUER, ["a"]) != keyset_fingerprint(
        RING.rotated("ES256", NOW).jwks(), ISSUER, ["a"]
    )


def test_without_a_synced_ledger_even_a_cached_token_is_refused():
    ep, ledger, _, _ = world()
    token = grant(ledger)
    review(ep, token)
    ledger.synced.clear()
    (after,) = review(ep, token)
    assert after == (
        200,
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "status": {"authenticated": False, "error": "verifier unavailable"},
        },
    )


def test_without_keys_even_a_cached_token_is_refused():
    ep, ledger, _, keys = world()
    token = grant(ledger)
    review(ep, token)

    def unavailable():
        raise ConnectionError("apiserver down")

    keys.current = unavailable
    (after,) = review(ep, token)
    assert after[1]["status"] == {"authenticated": False, "error": "verifier unavailable"}


def test_malformed_and_unparsable_reviews_keep_their_status_codes():
    ep, ledger, _, _ = world()
    grant(ledger)

    async def go():
        async with TestClient(TestServer(ep.app())) as client:
            bad_body = await client.post("/authenticate", data=b"{not json")
            not_a_jwt = await client.post("/authenticate", json={"spec": {"token": "not-a-jwt"}})
            return bad_body.status, not_a_jwt.status, await not_a_jwt.json()

    bad_body, not_a_jwt, answer = asyncio.run(go())
    assert bad_body == 400
    assert not_a_jwt == 200 and answer["status"]["authenticated"] is False  # a non-JWT is refused, as before


class SecretKube:
    """Just the Secret/ConfigMap calls KeyStore makes, counting reads; `delay` slows each read."""

    def __init__(self, ring: Keyring, delay: float = 0.0):
        self.data = base64.b64encode(ring.to_json().encode()).decode()
        self.reads, self.delay = 0, delay
        self.lock = threading.Lock()

    def get_secret(self, namespace, name):
        with self.lock:
            self.reads += 1
        time.sleep(self.delay)
        return {"metadata": {"name": name}, "data": {KEYRING_KEY: self.data}}

    def update_configmap(self, namespace, name, mutate):
        mutate({})


def test_the_keystore_answers_from_memory_while_fresh_and_refreshes_ahead_in_the_background():
    kube = SecretKube(RING)
    store = KeyStore(kube, "ns", "ES256", cache_seconds=0.4)
    ring = store.ensure()
    reads = kube.reads
    assert store.peek() is ring and kube.reads == reads  # fresh: no read at all
    time.sleep(0.32)  # past 3/4 of its age: answered from memory, re-read behind the caller's back
    assert store.peek() is ring
    deadline = time.monotonic() + 2
    while kube.reads == reads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kube.reads == reads + 1
    assert store.peek() is ring  # the Secret did not change: the same parsed ring is kept


def test_a_stale_keyring_is_not_answered_from_memory_and_is_read_once_for_many_callers():
    kube = SecretKube(RING, delay=0.1)
    store = KeyStore(kube, "ns", "ES256", cache_seconds=0.05)
    store.ensure()
    time.sleep(0.1)
    assert store.peek() is None  # stale: the caller must hop off the loop to current()
    reads = kube.reads
    rings = []
    threads = [threading.Thread(target=lambda: rings.append(store.current())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kube.reads == reads + 1 and len({id(r) for r in rings}) == 1


def test_a_changed_keyring_secret_is_picked_up_as_a_new_ring():
    kube = SecretKube(RING)
    store = KeyStore(kube, "ns", "ES256", cache_seconds=0.01)
    first = store.ensure()
    rotated = RING.rotated("ES256", NOW)
    kube.data = base64.b64encode(rotated.to_json().encode()).decode()
    time.sleep(0.02)
    assert {k.kid for k in store.current().keys} == {k.kid for k in rotated.keys} != {k.kid for k in first.keys}
