"""The durable, bounded outbox: one ConfigMap per pending notification in the operator namespace
(`breakglass-notify-<id>`, labelled), written before a notification counts as emitted, updated
with resourceVersion guards, deleted once delivered or dead-lettered. Only the leader writes it; it
keeps an in-memory index (loaded by one LIST when it starts) so nothing on the hot path lists.

At most `capacity` notifications are pending: adding one more deletes the oldest first (counted as
`dropped`), so a receiver that is down for days cannot grow the namespace without limit."""

from __future__ import annotations

import copy
import json
import logging
import threading
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from .. import api, metrics
from ..k8s.client import Conflict, error_text

log = logging.getLogger(__name__)

OUTBOX_LABEL = "breakglass.dev/outbox"
SELECTOR = f"{api.MANAGED_BY_LABEL}={api.MANAGED_BY},{OUTBOX_LABEL}=notification"
DATA_KEY = "notification.json"
PREFIX = "breakglass-notify-"

notifications_total = Counter(
    "breakglass_notifications_total",
    "Notification outcomes: delivered, retried (an attempt failed), dead_letter (gave up), dropped "
    "(outbox full: oldest removed), cancelled (an Expiring notice for a grant already ended)",
    ["result"],
    registry=metrics.REGISTRY,
)
outbox_depth = Gauge(
    "breakglass_notification_outbox_depth", "Notifications pending in the outbox", registry=metrics.REGISTRY
)
delivery_seconds = Histogram(
    "breakglass_notification_delivery_seconds",
    "From a notification being recorded (or due, for Expiring) to its delivery",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
    registry=metrics.REGISTRY,
)


def due_at(item: dict[str, Any]) -> float:
    return max(item.get("notBefore", 0.0), item.get("nextAttemptAt", 0.0))


class Outbox:
    def __init__(self, kube, namespace: str, capacity: int = 1000):
        self.kube, self.namespace, self.capacity = kube, namespace, max(1, capacity)
        self._lock = threading.Lock()
        self._index: dict[str, tuple[dict[str, Any], str, str]] = {}  # name -> (item, resourceVersion, uid)
        self.loaded = False

    # ------------------------------------------------------------------ reading
    def load(self) -> int:
        """One LIST (start of leadership): every notification a previous leader left pending."""
        items, _ = self.kube.list_configmaps(self.namespace, SELECTOR)
        found = {}
        for cm in items:
            try:
                item = json.loads((cm.get("data") or {})[DATA_KEY])
            except (KeyError, ValueError):
                log.warning("outbox entry %s unreadable; removing it", cm["metadata"]["name"])
                self._delete(cm["metadata"]["name"], cm["metadata"]["uid"])
                continue
            found[cm["metadata"]["name"]] = (item, cm["metadata"]["resourceVersion"], cm["metadata"]["uid"])
        with self._lock:
            for name, value in found.items():
                self._index.setdefault(name, value)  # an add since then is at least as new
            self.loaded = True
        self._gauge()
        return len(found)

    def depth(self) -> int:
        with self._lock:
            return len(self._index)

    def due(self, now: float, skip: set[str] = frozenset()) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            ready = [(due_at(i), n, i) for n, (i, _, _) in self._index.items() if n not in skip and due_at(i) <= now]
        return [(n, copy.deepcopy(i)) for _, n, i in sorted(ready, key=lambda t: t[:2])]

    def next_due(self, skip: set[str] = frozenset()) -> float | None:
        with self._lock:
            return min((due_at(i) for n, (i, _, _) in self._index.items() if n not in skip), default=None)

    # ------------------------------------------------------------------ writing
    def add(self, item: dict[str, Any]) -> bool:
        """Record a notification (create-if-absent by its id: a re-emitted transition is not a second
        one). Raises when it could not be recorded: the caller's pass is retried, nothing is lost."""
        name = PREFIX + item["id"]
        with self._lock:
            if name in self._index:
                return False
            excess = len(self._index) - self.capacity + 1
            # Full: make room from the least important notices first (a flood of cheap `Requested`
            # notices, which any requester can cause, never evicts a Revoked or ReviewOverdue one);
            # if everything pending matters more than this notice, this one is dropped instead.
            rank = _rank(item)
            candidates = sorted(
                ((n, held) for n, held in self._index.items() if _rank(held[0]) <= rank),
                key=lambda kv: (_rank(kv[1][0]), kv[1][0].get("createdAt", 0.0)),
            )
            oldest = candidates[: max(0, excess)]
            if excess > 0 and len(oldest) < excess:
                notifications_total.labels("dropped").inc()
                log.warning("notification outbox full (%d): dropped %s %s", self.capacity, item.get("kind"), name)
                return False
        for old_name, (_, _, uid) in oldest:
            if self._delete(old_name, uid):
                notifications_total.labels("dropped").inc()
                log.warning("notification outbox full (%d): dropped the oldest, %s", self.capacity, old_name)
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {api.MANAGED_BY_LABEL: api.MANAGED_BY, OUTBOX_LABEL: "notification"},
            },
            "data": {DATA_KEY: json.dumps(item, sort_keys=True)},
        }
        stored, created = self.kube.create_if_absent("ConfigMap", body)
        with self._lock:
            if created or name not in self._index:
                try:
                    kept = json.loads(stored["data"][DATA_KEY])
                except (KeyError, ValueError, TypeError):
                    kept = item
                self._index[name] = (kept, stored["metadata"]["resourceVersion"], stored["metadata"]["uid"])
        self._gauge()
        return created

    def update(self, name: str, item: dict[str, Any]) -> bool:
        """Write back attempts / next attempt, guarded by resourceVersion. False: changed or gone (the
        index is refreshed from the cluster)."""
        with self._lock:
            held = self._index.get(name)
        if held is None:
            return False
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "resourceVersion": held[1],
                "labels": {api.MANAGED_BY_LABEL: api.MANAGED_BY, OUTBOX_LABEL: "notification"},
            },
            "data": {DATA_KEY: json.dumps(item, sort_keys=True)},
        }
        try:
            stored = self.kube.replace_configmap(body)
        except Conflict:
            self._refresh(name)
            return False
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                self._forget(name)
                return False
            raise
        with self._lock:
            if name in self._index:
                self._index[name] = (item, stored["metadata"]["resourceVersion"], held[2])
        return True

    def remove(self, name: str) -> None:
        """Delivered or dead-lettered: delete exactly the object we hold (by uid)."""
        with self._lock:
            held = self._index.get(name)
        if held is not None:
            self._delete(name, held[2])
        self._forget(name)

    # ------------------------------------------------------------------ internals
    def _delete(self, name: str, uid: str) -> bool:
        try:
            ok = self.kube.delete_exact("ConfigMap", self.namespace, name, uid)
        except Exception as exc:  # left behind: the next load delivers it again (at-least-once)
            log.warning("outbox entry %s not deleted: %s", name, error_text(exc))
            return False
        self._forget(name)
        return ok

    def _forget(self, name: str) -> None:
        with self._lock:
            self._index.pop(name, None)
        self._gauge()

    def _refresh(self, name: str) -> None:
        cm = self.kube.read("ConfigMap", self.namespace, name)
        if cm is None:
            self._forget(name)
            return
        with self._lock:
            meta = cm["metadata"]
            self._index[name] = (json.loads(cm["data"][DATA_KEY]), meta["resourceVersion"], meta["uid"])

    def _gauge(self) -> None:
        outbox_depth.set(self.depth())


# Which notices a full outbox keeps longest: what approvers and reviewers must act on last.
_PRIORITY = {"Requested": 0, "Approved": 1, "Issued": 2, "Denied": 3, "Expiring": 4, "Revoked": 5, "ReviewOverdue": 6}


def _rank(item: dict[str, Any]) -> int:
    return _PRIORITY.get(item.get("kind", ""), 0)
