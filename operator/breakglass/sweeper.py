"""Housekeeping driven by the grant ledger, never by labels in tenant namespaces.

* A ledger entry whose request is gone (by uid: deleted, or deleted and re-created under the same
  name), however it went, is revoked: out of the allow-list, its objects deleted, audit `revoked`
  with reason `RequestDeleted`.
* An ended entry whose objects are not all deleted yet is cleaned up; once past its exp (plus a
  retention) and settled in its request's status, it is removed, so the ledger stays bounded by
  the grants that are live or recently ended.
* Gauges are rebuilt from the cluster, never from memory, so they are right after a restart.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from . import api, metrics
from .audit import AuditLog
from .domain.durations import parse_rfc3339, to_rfc3339
from .grants import REVOKED, Grants
from .k8s.client import Kube, error_text
from .ledger import LIVE_STATES, Ledger
from .stores import KeyStore, RevocationStore

log = logging.getLogger(__name__)
RETENTION = dt.timedelta(minutes=10)
LIST_EVERY = 6  # housekeeping passes (5 s each) between full request lists: 30 s


def request_keys(requests: list[dict]) -> dict[str, dict]:
    return {r["metadata"]["uid"]: r for r in requests}


class Sweeper:
    def __init__(
        self,
        kube: Kube,
        ledger: Ledger,
        grants: Grants,
        keys: KeyStore,
        revocations: RevocationStore,
        audit: AuditLog,
        enqueue: Callable[[str, str], None],
        clock: Callable[[], dt.datetime],
        rotation_interval: dt.timedelta | None = None,
    ):
        self.kube, self.ledger, self.grants, self.keys, self.revocations = kube, ledger, grants, keys, revocations
        self.audit, self.enqueue, self.clock, self.rotation_interval = audit, enqueue, clock, rotation_interval
        self._passes = 0
        self._overdue: dict[str, bool] = {}

    def sweep_ledger(self, requests: list[dict]) -> int:
        """Revoke orphans, finish cleanups, drop settled entries. `requests` is a fresh full list."""
        now, by_uid, acted = self.clock(), request_keys(requests), 0
        for entry in self.ledger.entries():
            req = by_uid.get(entry["request"]["uid"])
            exp = parse_rfc3339(entry["expiresAt"])
            try:
                if entry["state"] in LIVE_STATES and req is None and self._really_gone(entry):
                    self._revoke_orphan(entry, now)
                    acted += 1
                elif entry["state"] in LIVE_STATES:
                    if exp <= now:
                        self.enqueue(req["metadata"]["namespace"], req["metadata"]["name"])
                elif not entry.get("cleaned"):
                    self.grants.cleanup(entry)
                    self.ledger.update(entry, cleaned=True)
                    acted += 1
                elif now > exp + RETENTION and (
                    req is None or (req.get("status") or {}).get("phase") in api.TERMINAL_PHASES
                ):
                    self.ledger.delete(entry)
            except Exception as exc:  # one entry must not stop the others
                metrics.errors_total.labels("sweep").inc()
                log.warning("ledger sweep of grant %s failed: %s", entry["request"]["uid"], error_text(exc))
        return acted

    def revoke_orphans_of(self, namespace: str, name: str) -> int:
        """The request `namespace/name` is gone: revoke any live grant recorded for it (by uid check)."""
        now, n = self.clock(), 0
        for entry in self.ledger.entries():
            req = entry["request"]
            if (
                (req["namespace"], req["name"]) == (namespace, name)
                and entry["state"] in LIVE_STATES
                and self._really_gone(entry)
            ):
                self._revoke_orphan(entry, now)
                n += 1
        return n

    def _really_gone(self, entry: dict) -> bool:
        """The list may predate the request: ask the API server, by name, and compare uids."""
        req = entry["request"]
        live = self.kube.get_request(req["namespace"], req["name"])
        return live is None or live["metadata"]["uid"] != req["uid"]

    def _revoke_orphan(self, entry: dict, now: dt.datetime) -> None:
        req = entry["request"]
        log.warning(
            "request %s/%s (uid %s) is gone but its grant was live: revoking", req["namespace"], req["name"], req["uid"]
        )
        try:  # revoke first; the audit record is written even if the cleanup fails
            self.grants.end(entry, REVOKED, "RequestDeleted", "the request is gone; its token is revoked")
        finally:
            self._audit_orphan(entry, now)

    def _audit_orphan(self, entry: dict, now: dt.datetime) -> None:
        req = entry["request"]
        self.audit.record(
            "revoked",
            key=f"{req['uid']}:revoked",
            time=to_rfc3339(now),
            request=dict(req),
            policy=entry.get("policy", ""),
            requester=entry.get("requester", ""),
            jti=entry["jti"],
            kid=entry["kid"],
            expiresAt=entry["expiresAt"],
            reason="RequestDeleted",
            outcome="revoked",
            drill=bool(entry.get("drill")),
        )
        metrics.revocations_total.labels("RequestDeleted").inc()

    def lost_keys(self) -> list[dict]:
        """Live grants whose signing key is no longer in the keyring (keyring deleted or replaced)."""
        lost = [e for e in self.ledger.entries() if e.get("state") in LIVE_STATES and not self.keys.has_kid(e["kid"])]
        metrics.grants_key_lost.set(len(lost))
        for e in lost:
            self.enqueue(e["request"]["namespace"], e["request"]["name"])  # its reconcile revokes it
        return lost

    def kids_in_use(self) -> set[str]:
        """Keys that signed a live grant not yet past its exp stay in the JWKS (ledger entries only)."""
        now = self.clock()
        return {
            e["kid"]
            for e in self.ledger.entries()
            if e.get("kid")
            and e.get("state") in LIVE_STATES
            and parse_rfc3339(e["expiresAt"]) > now - dt.timedelta(minutes=1)
        }

    def resync_all(self) -> None:
        """Enqueue every non-terminal request (start-up: catch up on anything missed)."""
        for req in self.kube.list_requests():
            if (req.get("status") or {}).get("phase") not in api.TERMINAL_PHASES or api.FINALIZER in (
                req["metadata"].get("finalizers") or []
            ):
                self.enqueue(req["metadata"]["namespace"], req["metadata"]["name"])

    def resync_stale(self, requests: list[dict] | None = None) -> None:
        """Enqueue requests a missed watch event could leave behind: never seen (no status), still
        Pending (an approval event may be the one missed), spec changed since (observedGeneration
        behind, e.g. revoked), or being deleted. Active grants need no polling: expiry is timed."""
        now = self.clock()
        for req in self.kube.list_requests() if requests is None else requests:
            meta, status = req["metadata"], req.get("status") or {}
            if (
                not status.get("phase")
                and meta.get("creationTimestamp")
                and (now - parse_rfc3339(meta["creationTimestamp"])).total_seconds() > 5
            ):
                log.warning(
                    "resync picked up %s/%s: no watch event reached the operator for it",
                    meta.get("namespace"),
                    meta.get("name"),
                )
            if (
                status.get("phase") in (None, api.PENDING)
                or status.get("observedGeneration") != meta.get("generation")
                or meta.get("deletionTimestamp")
            ):
                self.enqueue(meta["namespace"], meta["name"])

    def note_review(self, uid: str, overdue: bool) -> None:
        """The reconciler reports a review turning overdue or done: the gauge moves at once."""
        self._overdue[uid] = overdue
        metrics.reviews_overdue.set(sum(self._overdue.values()))

    def refresh_gauges(self, check_overdue: Callable | None = None, requests: list[dict] | None = None) -> None:
        """Every pass from the ledger (no LIST of requests); overdue reviews are rebuilt from a full
        request list when one is given (the 30 s safety net) and moved by the reconciler in between."""
        now = self.clock()
        if requests is not None:
            overdue: dict[str, bool] = {}
            for req in requests:
                review = (req.get("status") or {}).get("review") or {}
                if (
                    review.get("required")
                    and not review.get("reviewedAt")
                    and review.get("dueAt")
                    and parse_rfc3339(review["dueAt"]) <= now
                ):
                    overdue[req["metadata"]["uid"]] = True
                    if check_overdue:
                        check_overdue(req, now)
            self._overdue = overdue
        active: dict[str, int] = {}
        for entry in self.ledger.entries():
            if entry.get("state") == "Active" and not entry.get("drill") and parse_rfc3339(entry["expiresAt"]) > now:
                active[entry["policy"]] = active.get(entry["policy"], 0) + 1
        for policy_body in self.kube.list_policies():
            active.setdefault(policy_body["metadata"]["name"], 0)
        metrics.grants_active.clear()
        for policy, n in active.items():
            metrics.grants_active.labels(policy).set(n)
        metrics.reviews_overdue.set(sum(self._overdue.values()))
        ring = self.keys.current()
        metrics.signing_key_age.set((now - parse_rfc3339(ring.active.created)).total_seconds())

    def housekeeping(self, check_overdue: Callable | None = None) -> None:
        # resync: the level-triggered safety net (like an informer resync) for any watch event that
        # never arrived; a request is decided from cluster state, so extra reconciles are harmless.
        # Resync and gauges share one list of requests per pass; without it both are skipped
        # (gauges must never drop to zero because a list failed).
        steps: list[tuple[str, Callable[[], object]]] = []
        # The full request list is the slow safety net (every LIST_EVERY passes): watch events drive
        # reconciles (the work queue no longer loses wake-ups) and a deleted request's grant is revoked
        # from its DELETED event; ledger-only steps below run every pass.
        self._passes += 1
        requests = self._run_step("list", self.kube.list_requests) if self._passes % LIST_EVERY == 1 else None
        if requests is not None and self.ledger.synced.is_set():
            steps += [("sweep", lambda: self.sweep_ledger(requests))]
        if requests is not None:
            steps += [("resync", lambda: self.resync_stale(requests))]
        if self.ledger.synced.is_set():
            steps += [("gauges", lambda: self.refresh_gauges(check_overdue, requests))]
        if self.ledger.synced.is_set():  # the published view follows the ledger (rebuilt if deleted)
            steps += [
                (
                    "revocations",
                    lambda: self.revocations.sync(
                        [
                            e
                            for e in self.ledger.entries()
                            if e.get("state") == REVOKED and parse_rfc3339(e["expiresAt"]) > self.clock()
                        ],
                        self.clock(),
                    ),
                )
            ]
        if self.ledger.synced.is_set():  # key pruning needs the full ledger view, never an empty one
            steps += [("keys", self._keys), ("lost-keys", self.lost_keys)]
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
        if self.rotation_interval and self.clock() - parse_rfc3339(ring.active.created) >= self.rotation_interval:
            self.keys.rotate()
            log.info("signing key rotated (interval %s)", self.rotation_interval)
