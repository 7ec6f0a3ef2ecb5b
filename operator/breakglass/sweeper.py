"""Start-up catch-up and periodic housekeeping.

Anything managed and past its `breakglass.dev/expires-at` is deleted, even when its request is
gone (the operator may have been down at the expiry moment). Gauges are rebuilt from the
cluster, never from memory, so they are right after a restart.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

from . import api, metrics
from .domain.durations import parse_rfc3339
from .k8s.client import Kube, error_text
from .stores import KeyStore, RevocationStore

log = logging.getLogger(__name__)


def expired_objects(items, now: dt.datetime):
    """Pure filter: objects whose expires-at annotation is in the past."""
    for item in items:
        ann = ((item.get("metadata") if isinstance(item, dict) else None) or {}).get("annotations") or {}
        stamp = ann.get(api.EXPIRES_AT_ANNOTATION)
        if stamp and parse_rfc3339(stamp) <= now:
            yield item


class Sweeper:
    def __init__(self, kube: Kube, keys: KeyStore, revocations: RevocationStore,
                 enqueue: Callable[[str, str], None], clock: Callable[[], dt.datetime],
                 rotation_interval: dt.timedelta | None = None):
        self.kube, self.keys, self.revocations = kube, keys, revocations
        self.enqueue, self.clock, self.rotation_interval = enqueue, clock, rotation_interval

    def sweep_expired(self) -> int:
        now = self.clock()
        deleted = 0
        for secret in expired_objects(self.kube.list_managed_secrets(), now):
            meta = secret["metadata"]
            if secret.get("type") != api.TOKEN_SECRET_TYPE:
                continue
            if self.kube.delete_secret(meta["namespace"], meta["name"]):
                deleted += 1
                exp = parse_rfc3339(meta["annotations"][api.EXPIRES_AT_ANNOTATION])
                metrics.expiry_lag.observe(max(0.0, (now - exp).total_seconds()))
                log.info("swept expired token Secret %s/%s", meta["namespace"], meta["name"])
            labels = meta.get("labels") or {}
            if labels.get(api.REQUEST_LABEL):
                self.enqueue(meta["namespace"], labels[api.REQUEST_LABEL])
        bindings = [self.kube.api_client.sanitize_for_serialization(rb) for rb in self.kube.list_managed_rolebindings()]
        for rb in expired_objects(bindings, now):
            labels = rb["metadata"].get("labels") or {}
            self.kube.delete_managed_rbac(labels.get(api.REQUEST_NS_LABEL, ""), labels.get(api.REQUEST_LABEL, ""))
            deleted += 1
        return deleted

    def resync_all(self) -> None:
        """Enqueue every non-terminal request (start-up: catch up on anything missed)."""
        for req in self.kube.list_requests():
            if (req.get("status") or {}).get("phase") not in api.TERMINAL_PHASES or \
                    api.FINALIZER in (req["metadata"].get("finalizers") or []):
                self.enqueue(req["metadata"]["namespace"], req["metadata"]["name"])

    def resync_stale(self, requests: list[dict] | None = None) -> None:
        """Enqueue requests a missed watch event could leave behind: never seen (no status), still
        Pending (an approval event may be the one missed), spec changed since (observedGeneration
        behind, e.g. revoked), or being deleted. Active grants need no polling: expiry is timed."""
        now = self.clock()
        for req in self.kube.list_requests() if requests is None else requests:
            meta, status = req["metadata"], req.get("status") or {}
            if not status.get("phase") and meta.get("creationTimestamp") and \
                    (now - parse_rfc3339(meta["creationTimestamp"])).total_seconds() > 5:
                log.warning("resync picked up %s/%s: no watch event reached the operator for it",
                            meta.get("namespace"), meta.get("name"))
            if status.get("phase") in (None, api.PENDING) \
                    or status.get("observedGeneration") != meta.get("generation") or meta.get("deletionTimestamp"):
                self.enqueue(meta["namespace"], meta["name"])

    def refresh_gauges(self, check_overdue: Callable | None = None, requests: list[dict] | None = None) -> None:
        now = self.clock()
        active: dict[str, int] = {}
        overdue = 0
        for req in self.kube.list_requests() if requests is None else requests:
            status = req.get("status") or {}
            policy = (req.get("spec") or {}).get("policy", "")
            if status.get("phase") == api.ACTIVE and not api.is_drill(req):
                active[policy] = active.get(policy, 0) + 1
            review = status.get("review") or {}
            if review.get("required") and not review.get("reviewedAt") and review.get("dueAt") \
                    and parse_rfc3339(review["dueAt"]) <= now:
                overdue += 1
                if check_overdue:
                    check_overdue(req, now)
        for policy_body in self.kube.list_policies():
            active.setdefault(policy_body["metadata"]["name"], 0)
        metrics.grants_active.clear()
        for policy, n in active.items():
            metrics.grants_active.labels(policy).set(n)
        metrics.reviews_overdue.set(overdue)
        ring = self.keys.current()
        metrics.signing_key_age.set((now - parse_rfc3339(ring.active.created)).total_seconds())

    def housekeeping(self, check_overdue: Callable | None = None) -> None:
        # resync: the level-triggered safety net (like an informer resync) for any watch event that
        # never arrived; a request is decided from cluster state, so extra reconciles are harmless.
        # Resync and gauges share one list of requests per pass; without it both are skipped
        # (gauges must never drop to zero because a list failed).
        steps: list[tuple[str, Callable[[], object]]] = [("sweep", self.sweep_expired)]
        requests = self._run_step("list", self.kube.list_requests)
        if requests is not None:
            steps += [("resync", lambda: self.resync_stale(requests)),
                      ("gauges", lambda: self.refresh_gauges(check_overdue, requests))]
        steps += [("revocations", self.revocations.prune), ("keys", self._keys)]
        for step, fn in steps:
            self._run_step(step, fn)

    @staticmethod
    def _run_step(step: str, fn: Callable[[], object]):
        try:
            return fn()
        except Exception as exc:
            metrics.errors_total.labels(step).inc()
            log.warning("housekeeping step %s failed: %s", step, error_text(exc))
            return None

    def _keys(self) -> None:
        ring = self.keys.prune(self.clock())
        if self.rotation_interval and \
                self.clock() - parse_rfc3339(ring.active.created) >= self.rotation_interval:
            self.keys.rotate()
            log.info("signing key rotated (interval %s)", self.rotation_interval)
