"""Housekeeping driven by the grant ledger, never by labels in tenant namespaces.

* A ledger entry whose request is gone (by uid: deleted, or deleted and re-created under the same
  name), however it went, is revoked: out of the allow-list, its objects deleted, audit `revoked`
  with reason `RequestDeleted`.
* An ended entry whose objects are not all deleted yet is cleaned up; once past its exp (plus a
  retention) and settled in its request's status, it is removed, so the ledger stays bounded by
  the grants that are live or recently ended.
* Gauges are rebuilt from the ledger view and the request index (both watch-fed, relisted on
  start), so they are right after a restart and cost no API call.

Nothing here lists requests, Secrets or RoleBindings: a pass scans in-memory summaries only, so an
idle operator with 10,000 grants costs (almost) nothing. The request index is refreshed by the slow
safety resync (`Runtime.resync`).
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
from .ledger import LIVE_STATES, Ledger, Summary
from .request_index import RequestIndex
from .stores import KeyStore, RevocationStore

log = logging.getLogger(__name__)
UNSETTLED_RETENTION = dt.timedelta(days=1)
RETENTION = dt.timedelta(minutes=10)


def index_of(requests: list[dict]) -> RequestIndex:
    index = RequestIndex()
    index.replace_all(requests)
    return index


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
        index: RequestIndex | None = None,
        policy_names: Callable[[], list[str]] = list,
    ):
        self.kube, self.ledger, self.grants, self.keys, self.revocations = kube, ledger, grants, keys, revocations
        self.audit, self.enqueue, self.clock, self.rotation_interval = audit, enqueue, clock, rotation_interval
        self.index, self.policy_names = index, policy_names
        self._overdue: set[str] = set()
        self._passes = 0
        # (entry, now): records the use a grant's ledger entry holds when its request is gone (set by
        # the wiring: UsageRecords.settle for a request that no longer exists)
        self.settle_usage: Callable[[dict, dt.datetime], object] | None = None

    def sweep_ledger(self, requests: list[dict] | None = None) -> int:
        """Revoke orphans, finish cleanups, drop settled entries. The request index tells which
        requests exist (`requests`: a full list instead, as in tests)."""
        index = index_of(requests) if requests is not None else self.index
        now, acted = self.clock(), 0
        stamp = now.timestamp()
        for s in self.ledger.summaries():
            req = index.by_uid(s.uid)
            try:
                if s.state in LIVE_STATES and req is None and self._really_gone(s):
                    self._revoke_orphan(self.ledger.get(s.uid), now)
                    acted += 1
                elif s.state in LIVE_STATES:
                    if s.expires <= stamp and req is not None:
                        self.enqueue(req.namespace, req.name)
                elif not s.cleaned:
                    entry = self.ledger.get(s.uid)
                    self.grants.cleanup(entry)
                    self.ledger.update(entry, cleaned=True)
                    acted += 1
                elif req is None and not s.usage_settled and self.settle_usage is not None:
                    # its request is gone (no reconcile will come): the sinks' late use is audited here
                    self.settle_usage(self.ledger.get(s.uid), now)
                    acted += 1
                elif (
                    stamp > s.expires + RETENTION.total_seconds()
                    and (req is None or req.phase in api.TERMINAL_PHASES)
                    and (s.usage_settled or stamp > s.expires + UNSETTLED_RETENTION.total_seconds())
                ):  # its trail audited first (unless the leader could not for a day)
                    self.ledger.delete({"request": {"uid": s.uid}, "resourceVersion": s.resource_version})
            except Exception as exc:  # one entry must not stop the others
                metrics.errors_total.labels("sweep").inc()
                log.warning("ledger sweep of grant %s failed: %s", s.uid, error_text(exc))
        return acted

    def revoke_orphans_of(self, namespace: str, name: str) -> int:
        """The request `namespace/name` is gone: revoke any live grant recorded for it (by uid check)."""
        now, n = self.clock(), 0
        for s in self.ledger.summaries():
            if (s.namespace, s.name) == (namespace, name) and s.state in LIVE_STATES and self._really_gone(s):
                self._revoke_orphan(self.ledger.get(s.uid), now)
                n += 1
        return n

    def _really_gone(self, s: Summary) -> bool:
        """The index may lag the request's creation: ask the API server, by name, and compare uids."""
        live = self.kube.get_request(s.namespace, s.name)
        return live is None or live["metadata"]["uid"] != s.uid

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

    def lost_keys(self) -> list[Summary]:
        """Live grants whose signing key is no longer in the keyring (keyring deleted or replaced)."""
        lost = [s for s in self.ledger.summaries() if s.state in LIVE_STATES and not self.keys.has_kid(s.kid)]
        metrics.grants_key_lost.set(len(lost))
        for s in lost:
            self.enqueue(s.namespace, s.name)  # its reconcile revokes it
        return lost

    def kids_in_use(self) -> set[str]:
        """Keys that signed a live grant not yet past its exp stay in the JWKS (ledger entries only)."""
        horizon = self.clock().timestamp() - 60
        return {s.kid for s in self.ledger.summaries() if s.kid and s.state in LIVE_STATES and s.expires > horizon}

    def refresh_gauges(self, check_overdue: Callable | None = None, requests: list[dict] | None = None) -> None:
        """From the ledger view and the request index: no API call."""
        index = index_of(requests) if requests is not None else self.index
        now = self.clock()
        stamp = now.timestamp()
        overdue: set[str] = set()
        for req in index.all() if index is not None else ():
            if req.review_due is not None and req.review_due <= stamp:
                overdue.add(req.uid)
                if check_overdue and not req.overdue_marked:
                    check_overdue(req, now)
        self._overdue = overdue
        active: dict[str, int] = dict.fromkeys(self.policy_names(), 0)
        for s in self.ledger.summaries():
            if s.state == "Active" and not s.drill and s.expires > stamp:
                active[s.policy] = active.get(s.policy, 0) + 1
        metrics.grants_active.clear()
        for policy, n in active.items():
            metrics.grants_active.labels(policy).set(n)
        metrics.reviews_overdue.set(len(self._overdue))
        ring = self.keys.current()
        metrics.signing_key_age.set((now - parse_rfc3339(ring.active.created)).total_seconds())

    def note_review(self, uid: str, overdue: bool) -> None:
        """The reconciler reports a review turning overdue or done: the gauge moves at once."""
        (self._overdue.add if overdue else self._overdue.discard)(uid)
        metrics.reviews_overdue.set(len(self._overdue))

    def revoked_entries(self) -> list[dict]:
        stamp = self.clock().timestamp()
        out = []
        for s in self.ledger.summaries():
            if s.state == REVOKED and s.expires > stamp:
                entry = self.ledger.get(s.uid)
                if entry:
                    out.append(entry)
        return out

    def housekeeping(self, check_overdue: Callable | None = None) -> None:
        """One pass over in-memory state (every 5 s on the leader). Ledger steps wait for a synced
        view (key pruning must never see an empty one); request steps for the first full list."""
        steps: list[tuple[str, Callable[[], object]]] = []
        requests_known = self.index is not None and self.index.synced.is_set()
        self._passes += 1
        if self.ledger.synced.is_set() and requests_known:
            steps += [("sweep", self.sweep_ledger)]
        # Undecided requests are not polled here: approvals arrive by watch, approval timeouts are timed,
        # and the slow safety resync (Runtime.resync) routes every Pending request again. Polling every
        # Pending request every 30 s flooded the queue ahead of real approvals (p99 2.4 s at 300 Pending).
        if self.ledger.synced.is_set() and requests_known:
            steps += [("gauges", lambda: self.refresh_gauges(check_overdue))]
        if self.ledger.synced.is_set():  # the published view follows the ledger (rebuilt if deleted)
            steps += [("revocations", lambda: self.revocations.sync(self.revoked_entries(), self.clock()))]
            steps += [("keys", self._keys), ("lost-keys", self.lost_keys)]
        for step, fn in steps:
            self.run_step(step, fn)

    @staticmethod
    def run_step(step: str, fn: Callable[[], object]):
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
