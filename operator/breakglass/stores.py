"""Operator state kept in the cluster: signing keyring (Secret), JWKS and revocations (ConfigMaps)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import api, metrics
from .domain.durations import to_rfc3339, utcnow
from .k8s.client import Conflict, Kube
from .tokens.keys import Keyring

log = logging.getLogger(__name__)
KEYRING_KEY = "keyring.json"
JWKS_KEY = "jwks.json"
REVOCATIONS_KEY = "revocations.json"


class KeyStore:
    """Loads the keyring from its Secret (create-if-absent), caches it briefly, publishes the JWKS.

    The cached ring is re-read from the API at most once per `cache_seconds`: one read at a time
    (concurrent callers wait for it and share its answer), started ahead in a background thread
    once the ring is 3/4 of its age so `peek()` (the TokenReview hot path) answers from memory without
    ever waiting for the API. An unchanged Secret keeps the same Keyring object (parsed keys reused)."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        alg: str,
        cache_seconds: float = 2.0,
        kids_in_use: Callable[[], set[str]] | None = None,
    ):
        self.kube, self.namespace, self.alg = kube, namespace, alg
        # Retired keys stay published while a live ledger entry was signed by them (never a tenant object).
        self._kids_in_use = kids_in_use or (lambda: set())
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()  # single flight for API reads of the keyring
        self._cached: tuple[float, Keyring] | None = None
        self._cached_raw: str | None = None  # the Secret's keyring text behind _cached
        self._ahead: threading.Thread | None = None

    def _read_raw(self) -> tuple[str, dict[str, Any]] | None:
        secret = self.kube.get_secret(self.namespace, api.SIGNING_KEYS_SECRET)
        if secret is None:
            return None
        return base64.b64decode((secret.get("data") or {})[KEYRING_KEY]).decode(), secret

    def _read(self) -> tuple[Keyring, dict[str, Any]] | None:
        found = self._read_raw()
        return (Keyring.from_json(found[0]), found[1]) if found else None

    def _remember(self, ring: Keyring, raw: str | None) -> None:
        with self._lock:
            self._cached, self._cached_raw = (time.monotonic(), ring), raw

    def ensure(self) -> Keyring:
        """Read the keyring, creating it on first start; safe against concurrent starts."""
        found = self._read_raw()
        if found is None:
            ring = Keyring.new(self.alg, utcnow())
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": api.SIGNING_KEYS_SECRET,
                    "namespace": self.namespace,
                    "labels": {api.MANAGED_BY_LABEL: api.MANAGED_BY},
                },
                "data": {KEYRING_KEY: base64.b64encode(ring.to_json().encode()).decode()},
            }
            self.kube.create_secret_if_absent(body)
            found = self._read_raw()
        raw = found[0]
        ring = Keyring.from_json(raw)
        self.publish_jwks(ring)
        self._remember(ring, raw)
        return ring

    def peek(self) -> Keyring | None:
        """The cached ring while it is fresh (no I/O, never blocks on the API), else None: the caller
        then calls current() off the event loop. A ring past 3/4 of its age is re-read in the background."""
        now = time.monotonic()
        with self._lock:
            cached = self._cached
            if cached is None or now - cached[0] >= self.cache_seconds:
                return None
            ahead = now - cached[0] >= self.cache_seconds * 0.75 and not (self._ahead and self._ahead.is_alive())
            if ahead:
                self._ahead = threading.Thread(target=self._refresh_ahead, name="keyring-refresh", daemon=True)
        if ahead:
            self._ahead.start()
        return cached[1]

    def _refresh_ahead(self) -> None:
        try:
            self._refresh(self.cache_seconds * 0.75)
        except Exception as exc:  # noqa: BLE001 — the ring ages out and callers fail closed
            log.debug("background keyring refresh failed: %s", type(exc).__name__)

    def current(self) -> Keyring:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.cache_seconds:
                return self._cached[1]
        return self._refresh(self.cache_seconds)

    def _refresh(self, max_age: float) -> Keyring:
        """Re-read the keyring unless a read finished within `max_age` (one read at a time)."""
        with self._refresh_lock:
            with self._lock:
                if self._cached and time.monotonic() - self._cached[0] < max_age:
                    return self._cached[1]
                previous, previous_raw = (self._cached[1] if self._cached else None), self._cached_raw
            found = self._read_raw()
            if found is None:
                # The keyring vanished while running: a new one lets new grants work, but every token signed
                # by the old keys is dead. Loud: metric, error log; grants signed by lost keys are revoked
                # (reason SigningKeyLost) by their reconcile, with an Event each.
                metrics.signing_keyring_recreated_total.inc()
                log.error(
                    "signing keyring Secret %s/%s is missing: creating a new one; tokens signed by the "
                    "old keys no longer verify",
                    self.namespace,
                    api.SIGNING_KEYS_SECRET,
                )
                return self.ensure()
            raw = found[0]
            ring = previous if previous is not None and raw == previous_raw else Keyring.from_json(raw)
            self._remember(ring, raw)
            return ring

    def has_kid(self, kid: str) -> bool:
        return any(k.kid == kid for k in self.current().keys)

    def publish_jwks(self, ring: Keyring) -> None:
        text = json.dumps(ring.jwks(), sort_keys=True)
        self.kube.update_configmap(self.namespace, api.JWKS_CONFIGMAP, lambda data: {**data, JWKS_KEY: text})

    def rotate(self, alg: str | None = None, now: dt.datetime | None = None) -> Keyring:
        """New key signs from now on; the old public key stays until its tokens have expired."""
        now = now or utcnow()
        for _ in range(10):
            found = self._read()
            if found is None:
                self.ensure()
                continue
            ring, secret = found
            new_ring = ring.rotated(alg or self.alg, now)
            raw = new_ring.to_json()
            secret["data"][KEYRING_KEY] = base64.b64encode(raw.encode()).decode()
            try:
                self.kube.replace_secret(secret)  # resourceVersion guards concurrent rotations
            except Conflict:
                continue
            self.publish_jwks(new_ring)
            self._remember(new_ring, raw)
            return new_ring
        raise RuntimeError("key rotation kept conflicting; try again")

    def kids_in_use(self) -> set[str]:
        return set(self._kids_in_use())

    def prune(self, now: dt.datetime | None = None) -> Keyring:
        """Remove retired public keys from the JWKS once no live token Secret uses them."""
        now = now or utcnow()
        found = self._read()
        if not found:
            return self.ensure()
        ring, secret = found
        if not any(k.retired for k in ring.keys):
            return ring
        pruned = ring.pruned(now, self.kids_in_use())
        if len(pruned.keys) != len(ring.keys):
            raw = pruned.to_json()
            secret["data"][KEYRING_KEY] = base64.b64encode(raw.encode()).decode()
            try:
                self.kube.replace_secret(secret)
            except Conflict:
                return ring
            self.publish_jwks(pruned)
            self._remember(pruned, raw)
        return pruned


MAX_PUBLISHED_BYTES = 512 * 1024


class RevocationStore:
    """ConfigMap `breakglass-revocations`: a *published view* of revoked jtis until their exp.

    Correctness never depends on it (TokenReview authenticates only live ledger entries); it is for
    token consumers that verify offline. It is bounded: past MAX_PUBLISHED_BYTES the entries that
    expire soonest are left out (metric `breakglass_revocations_unpublished_total`).
    """

    def __init__(self, kube: Kube, namespace: str, cache_seconds: float = 0.5):
        self.kube, self.namespace, self.cache_seconds = kube, namespace, cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, list[dict[str, Any]]] | None = None

    @staticmethod
    def _entries(data: dict[str, str]) -> list[dict[str, Any]]:
        try:
            return json.loads(data.get(REVOCATIONS_KEY) or "[]")
        except json.JSONDecodeError:
            return []

    def add(self, *, jti: str, exp: int, request: str, reason: str, now: dt.datetime | None = None) -> None:
        now = now or utcnow()

        def mutate(data: dict[str, str]) -> dict[str, str]:
            entries = [e for e in self._entries(data) if e.get("exp", 0) > now.timestamp() and e["jti"] != jti]
            entries.append({"jti": jti, "exp": exp, "request": request, "reason": reason, "revokedAt": to_rfc3339(now)})
            entries.sort(key=lambda e: -e.get("exp", 0))
            text = json.dumps(entries, sort_keys=True)
            while len(text) > MAX_PUBLISHED_BYTES and entries:
                entries.pop()  # the one expiring soonest
                metrics.revocations_unpublished_total.inc()
                text = json.dumps(entries, sort_keys=True)
            return {**data, REVOCATIONS_KEY: text}

        self.kube.update_configmap(self.namespace, api.REVOCATIONS_CONFIGMAP, mutate)
        with self._lock:
            self._cached = None

    def publish(self, **entry: Any) -> bool:
        """Best effort: a failure is visible (metric, log) but never blocks a revocation."""
        try:
            self.add(**entry)
            return True
        except Exception as exc:  # noqa: BLE001
            metrics.errors_total.labels("revocation-view").inc()
            log.warning("revocation view not updated for jti %s: %s", entry.get("jti"), type(exc).__name__)
            return False

    def sync(self, revoked: list[dict[str, Any]], now: dt.datetime | None = None) -> bool:
        """Make the published view hold every revoked, unexpired ledger grant (`revoked`: ledger
        entries). A deleted or edited view is rebuilt from the ledger; returns True if it was written."""
        now = now or utcnow()
        want = {e["jti"]: e for e in revoked if e.get("jti")}
        cm = self.kube.get_configmap(self.namespace, api.REVOCATIONS_CONFIGMAP)
        have = {e.get("jti") for e in self._entries((cm or {}).get("data") or {}) if e.get("exp", 0) > now.timestamp()}
        missing = [e for jti, e in want.items() if jti not in have]
        if cm is not None and not missing:
            self.prune(now)
            return False
        if cm is None:
            metrics.errors_total.labels("revocation-view-missing").inc()
            log.warning("ConfigMap %s was missing: rebuilding it from the ledger", api.REVOCATIONS_CONFIGMAP)
        from .domain.durations import parse_rfc3339

        for e in missing or [None]:
            if e is None:  # nothing revoked: still recreate the (empty) view
                self.kube.update_configmap(
                    self.namespace,
                    api.REVOCATIONS_CONFIGMAP,
                    lambda data: {**data, REVOCATIONS_KEY: data.get(REVOCATIONS_KEY, "[]")},
                )
                continue
            self.add(
                jti=e["jti"],
                exp=int(parse_rfc3339(e["expiresAt"]).timestamp()),
                request=f"{e['request']['namespace']}/{e['request']['name']}",
                reason=e.get("reason", ""),
                now=now,
            )
        return True

    def prune(self, now: dt.datetime | None = None) -> None:
        now = now or utcnow()
        cm = self.kube.get_configmap(self.namespace, api.REVOCATIONS_CONFIGMAP)
        if cm is None:
            return
        entries = self._entries(cm.get("data") or {})
        if all(e.get("exp", 0) > now.timestamp() for e in entries):
            return
        self.kube.update_configmap(
            self.namespace,
            api.REVOCATIONS_CONFIGMAP,
            lambda data: {
                **data,
                REVOCATIONS_KEY: json.dumps(
                    [e for e in self._entries(data) if e.get("exp", 0) > now.timestamp()], sort_keys=True
                ),
            },
        )

    def active(self, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        now = now or utcnow()
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.cache_seconds:
                entries = self._cached[1]
            else:
                entries = None
        if entries is None:
            cm = self.kube.get_configmap(self.namespace, api.REVOCATIONS_CONFIGMAP)
            entries = self._entries((cm or {}).get("data") or {})
            with self._lock:
                self._cached = (time.monotonic(), entries)
        return [{"jti": e["jti"], "exp": e["exp"]} for e in entries if e.get("exp", 0) > now.timestamp()]

    def jtis(self) -> set[str]:
        return {e["jti"] for e in self.active()}
