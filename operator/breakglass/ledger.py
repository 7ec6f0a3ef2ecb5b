"""The grant ledger: the operator's own record of every token it issued and every object it created.

One ConfigMap per request uid (`breakglass-grant-<uid>`) in the operator namespace, writable only by
the operator's ServiceAccount. It is written *before* anything is delivered, created only if absent
(so a request uid gets one jti, whatever crashes or replicas do), updated with a resourceVersion
guard, and is the only source of truth for "issued". Nothing in a tenant namespace is ever taken as
proof of anything; the operator deletes only objects listed here (by uid, or by the grant's nonce).

A watch keeps an in-memory view (only the fields we need) for the TokenReview allow-list, key
pinning and the sweeper; the process's own writes update it at once.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from . import api, metrics
from .domain.durations import parse_rfc3339
from .k8s.client import Conflict, Kube, error_text

log = logging.getLogger(__name__)

ISSUING, ACTIVE, FAILED, REVOKED, EXPIRED = "Issuing", "Active", "Failed", "Revoked", "Expired"
LIVE_STATES = frozenset({ISSUING, ACTIVE})
SELECTOR = f"{api.MANAGED_BY_LABEL}={api.MANAGED_BY},{api.LEDGER_LABEL}=grant"


def entry_from_configmap(cm: dict[str, Any]) -> dict[str, Any] | None:
    try:
        entry = json.loads((cm.get("data") or {})[api.LEDGER_KEY])
    except (KeyError, TypeError, json.JSONDecodeError):
        return None
    entry["resourceVersion"] = cm["metadata"].get("resourceVersion")
    return entry


def configmap_for(namespace: str, entry: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in entry.items() if k != "resourceVersion"}
    meta: dict[str, Any] = {
        "name": api.ledger_name(entry["request"]["uid"]),
        "namespace": namespace,
        "labels": {api.MANAGED_BY_LABEL: api.MANAGED_BY, api.LEDGER_LABEL: "grant"},
    }
    if entry.get("resourceVersion"):
        meta["resourceVersion"] = entry["resourceVersion"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {api.LEDGER_KEY: json.dumps(body, sort_keys=True)},
    }


def is_live(entry: dict[str, Any] | None, now) -> bool:
    """Active and not past exp: the only tokens TokenReview authenticates."""
    return bool(entry) and entry.get("state") == ACTIVE and parse_rfc3339(entry["expiresAt"]) > now


def _rv(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class Ledger:
    def __init__(self, kube: Kube, namespace: str):
        self.kube, self.namespace = kube, namespace
        self._lock = threading.Lock()
        self._by_uid: dict[str, dict[str, Any]] = {}
        self._by_jti: dict[str, str] = {}
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ reads
    def get(self, uid: str) -> dict[str, Any] | None:
        """From the watch-fed view once synced; before that, from the API server (never a false miss)."""
        if self.synced.is_set():
            with self._lock:
                entry = self._by_uid.get(uid)
                return copy.deepcopy(entry) if entry else None
        return self.fetch(uid)

    def fetch(self, uid: str) -> dict[str, Any] | None:
        """Straight from the API server (for decisions that must not trust a lagging view)."""
        cm = self.kube.read("ConfigMap", self.namespace, api.ledger_name(uid))
        return entry_from_configmap(cm) if cm else None

    def by_jti(self, jti: str) -> dict[str, Any] | None:
        with self._lock:
            uid = self._by_jti.get(jti)
            return self._by_uid.get(uid) if uid else None

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(e) for e in self._by_uid.values()]

    # ------------------------------------------------------------ writes
    def create(self, entry: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create-if-absent by request uid. (entry as stored, created?) — an existing entry wins."""
        cm, created = self.kube.create_if_absent("ConfigMap", configmap_for(self.namespace, entry))
        stored = entry_from_configmap(cm)
        if stored is None:
            raise Conflict(f"ledger entry {cm['metadata']['name']} is unreadable")
        self._remember(stored)
        return stored, created

    def update(self, entry: dict[str, Any], **changes: Any) -> dict[str, Any]:
        """Write `changes` guarded by the entry's resourceVersion (Conflict if it moved)."""
        new = dict(entry, **changes)
        cm = self.kube.replace_configmap(configmap_for(self.namespace, new))
        stored = entry_from_configmap(cm)
        self._remember(stored)
        return stored

    def delete(self, entry: dict[str, Any]) -> None:
        cm = self.kube.read("ConfigMap", self.namespace, api.ledger_name(entry["request"]["uid"]))
        if cm and cm["metadata"].get("resourceVersion") == entry.get("resourceVersion"):
            self.kube.delete_exact("ConfigMap", self.namespace, cm["metadata"]["name"], cm["metadata"]["uid"])
        self._forget(entry["request"]["uid"])

    # ------------------------------------------------------------ the view
    def _remember(self, entry: dict[str, Any]) -> None:
        uid = entry["request"]["uid"]
        with self._lock:
            old = self._by_uid.get(uid)
            if old and _rv(old.get("resourceVersion")) > _rv(entry.get("resourceVersion")):
                return  # a stale watch event must not roll back our own newer write
            if old and old.get("jti") and old.get("jti") != entry.get("jti"):
                self._by_jti.pop(old["jti"], None)
            self._by_uid[uid] = entry
            if entry.get("jti"):
                self._by_jti[entry["jti"]] = uid
        self._gauge()

    def _forget(self, uid: str) -> None:
        with self._lock:
            old = self._by_uid.pop(uid, None)
            if old and old.get("jti"):
                self._by_jti.pop(old["jti"], None)
        self._gauge()

    def _gauge(self) -> None:
        metrics.ledger_entries.set(len(self._by_uid))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

    def _relist(self) -> str:
        items, rv = self.kube.list_configmaps(self.namespace, SELECTOR)
        fresh = {}
        for cm in items:
            entry = entry_from_configmap(cm)
            if entry:
                fresh[entry["request"]["uid"]] = entry
        with self._lock:
            self._by_uid = fresh
            self._by_jti = {e["jti"]: uid for uid, e in fresh.items() if e.get("jti")}
        self._gauge()
        self.synced.set()
        return rv

    def _run(self) -> None:
        backoff = 0.5
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                for type_, cm in self._stream(rv):
                    rv = cm["metadata"].get("resourceVersion") or rv
                    entry = entry_from_configmap(cm)
                    if type_ == "DELETED":
                        uid = cm["metadata"]["name"].removeprefix("breakglass-grant-")
                        self._forget(uid)
                    elif entry:
                        self._remember(entry)
                backoff = 0.5
            except Exception as exc:  # 410 Gone, connection loss: list again
                status = getattr(exc, "status", None)
                if status != 410:  # a routine 410 (compaction) relists at once and keeps readiness
                    self.synced.clear()  # a stale allow-list must not authenticate: fail closed until relisted
                    metrics.errors_total.labels("ledger-watch").inc()
                    log.warning("ledger watch failed (%s); listing again", error_text(exc))
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                rv = None

    def _stream(self, rv: str) -> Iterator[tuple[str, dict[str, Any]]]:
        return self.kube.watch_configmaps(self.namespace, SELECTOR, rv, timeout=60)
