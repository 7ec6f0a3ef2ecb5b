"""The running operator: leadership callbacks, request routing (catch-up, watch events, relists)
and the queues' entry points. Built by wiring.build; handlers reach it through kopf's memo."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import api, metrics
from .audit import AuditLog
from .domain.catchup import RequestSummary, needs_reconcile, wake_at
from .domain.durations import utcnow
from .domain.usage import LEDGER_TRAIL_MAX
from .drills import DrillRunner
from .endpoints import Endpoints
from .expiry import ExpiryTimer
from .grants import Grants
from .informer import Informer
from .k8s.client import Kube, error_text
from .leader import LeaderElector
from .ledger import Ledger
from .lifecycle import Reconciler
from .notify.notifier import Notifier
from .policies import reconcile_policy
from .request_index import RequestIndex
from .seen_namespaces import SeenNamespaces
from .settings import Settings
from .stores import KeyStore, RevocationStore
from .sweeper import Sweeper
from .tls import TLSFiles
from .token_secrets import TokenSecrets
from .workqueue import WorkQueue

log = logging.getLogger(__name__)
TRAIL_URGENT = LEDGER_TRAIL_MAX // 4  # unaudited actions that make the leader record them at once


@dataclass
class Runtime:
    settings: Settings
    kube: Kube
    keys: KeyStore
    revocations: RevocationStore
    audit: AuditLog
    reconciler: Reconciler
    queue: WorkQueue
    sweeper: Sweeper
    endpoints: Endpoints
    tls: TLSFiles
    drills: DrillRunner
    drill_queue: WorkQueue
    expiry: ExpiryTimer
    ledger: Ledger
    grants: Grants
    operator_username: str
    requests: RequestIndex = field(default_factory=RequestIndex)
    request_informer: Informer | None = None
    namespace_exists: SeenNamespaces | None = None
    token_secrets: TokenSecrets | None = None
    elector: LeaderElector | None = None
    notifier: Notifier | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def leading(self) -> bool:
        return self.elector is not None and self.elector.leading.is_set()

    def on_started_leading(self) -> None:
        """Only the leader reconciles, expires, sweeps and drills; it first catches up on everything."""
        from .domain.durations import to_rfc3339

        self.audit.follow_head(self.audit.read_head())  # one chain across leaders
        if self.audit.discrepancy:
            self.audit.record("audit-discrepancy", time=to_rfc3339(utcnow()), problem=self.audit.discrepancy)
            self.audit.discrepancy = None
        if self.notifier is not None:  # loads the outbox a previous leader left (a LIST), then delivers:
            # off the elector's thread, which must keep renewing the lease
            threading.Thread(target=self.notifier.start, name="notifier-start", daemon=True).start()
        self.queue.start()
        self.drill_queue.start()
        self.expiry.start()
        self.reconciler.alert_gates.start()
        # Expiry needs only the ledger: grants that expired while no leader ran lose their Secret at
        # once, before the request index is even synced. Routing waits for the index, off the
        # elector's thread (lease renewals must never wait for it).
        self.arm_expiries()
        threading.Thread(target=self._catch_up_when_indexed, name="catch-up", daemon=True).start()

    def arm_expiries(self) -> None:
        for grant in self.ledger.summaries():
            if grant.state == "Active":
                self.expiry.schedule((grant.namespace, grant.name), *grant.secret, grant.expires)

    def _catch_up_when_indexed(self) -> None:
        views = [self.requests.synced] + ([self.token_secrets.synced] if self.token_secrets else [])
        if not all(view.wait(120) for view in views):
            log.warning("request index or token Secrets not synced after 120 s; the safety resync catches up later")
            return
        try:
            self.catch_up()
        except Exception as exc:  # the slow resync catches up later
            log.warning("catch-up of requests failed: %s", error_text(exc))

    def catch_up(self) -> int:
        """Start of leadership: route every request the index holds (the informer listed them before
        this replica competed for the lease). Returns how many were queued for a reconcile."""
        started = time.monotonic()
        summaries = self.requests.all()
        queued = sum(bool(self.route_safely(req)) for req in summaries)
        self.sweeper.run_step("gauges", self.sweeper.refresh_gauges)  # right at once, not a pass later
        log.info(
            "caught up on %d request(s) in %.1fs: %d to reconcile, the rest settled per the ledger",
            len(summaries),
            time.monotonic() - started,
            queued,
        )
        return queued

    def attach_request_informer(self, informer: Informer) -> None:
        """The index is as fresh as its informer: a failed watch makes its readers fail closed."""
        self.request_informer = informer
        self.requests.synced = informer.synced

    def resync(self) -> None:
        """The slow safety net behind the request watch: list every request again (paged)."""
        self.request_informer.relist()

    def on_request_list(self, pages) -> None:
        """A full list (start, a relist after 410, the safety resync): refresh the index; when leading,
        route every request and name the ones a missed watch event had left behind."""
        bodies = (body for page in pages for body in page)
        had_index = self.requests.synced.is_set()  # the first list finds everything "new": no warning
        summaries, behind = self.requests.replace_all(bodies, lambda: getattr(pages, "resource_version", ""))
        if not self.leading:
            return
        if not had_index:
            behind = set()
        for req in summaries:
            was_queued = self.queue.queued(req.key)
            why = self.route_safely(req)
            if why and req.key in behind and not was_queued:
                log.warning("resync picked up %s/%s (%s): a watch event never reached the operator", *req.key, why)

    def route_safely(self, req: RequestSummary) -> str | None:
        """One request failing to route (an API hiccup) must not leave the others unrouted: it is
        reconciled instead, which retries with backoff."""
        try:
            return self.route(req)
        except Exception as exc:  # noqa: BLE001
            metrics.errors_total.labels("route").inc()
            log.warning("routing %s/%s failed (%s): reconciling it", *req.key, error_text(exc))
            self.enqueue(*req.key)
            return "routing failed"

    def route(self, req: RequestSummary) -> str | None:
        """Reconcile what needs it; for a settled request only (re)arm its timers, with no API call."""
        grant = self.ledger.summary(req.uid)
        now = time.time()
        why = needs_reconcile(req, grant, now, self.keys.has_kid, self._secret_present(grant))
        if why:
            if grant is not None and grant.state == "Active" and grant.expires <= now:
                self.expiry.schedule(req.key, *grant.secret, grant.expires)  # the Secret goes at once
            self.enqueue(*req.key)
            return why
        if grant is not None and grant.state == "Active" and req.phase == api.ACTIVE:
            self.expiry.schedule(req.key, *grant.secret, grant.expires)
            self.queue.add_at(req.key, grant.expires)  # the reconcile that ends it, if the fast path misses
            if grant.idle_deadline:
                self.queue.add_at(req.key, grant.idle_deadline)
        due = wake_at(req, now)
        if due is not None:
            self.queue.add_at(req.key, due)
        return None

    def _secret_present(self, grant) -> bool | None:
        if grant is None or self.token_secrets is None:
            return None
        return self.token_secrets.present(grant.secret[0], grant.secret[2])

    def on_grant_usage(self, _old, grant) -> None:
        """The ledger holds new use or token reuse of a grant (an audit sink's write): when leading,
        reconcile it (audit records, status.usage, limits); an idle deadline that moved is re-armed."""
        if not self.leading:
            return
        if self.requests.synced.is_set() and self.requests.by_uid(grant.uid) is None:
            return  # its request is gone: the sweeper records the use (no reconcile, no orphan scan)
        if not grant.usage_settled:
            # at once where a count limit may be crossed; otherwise coalesced: one status write per interval
            # (and before the ledger's bounded trail could overflow the actions not yet audited)
            urgent = grant.limited or grant.reuses != grant.reported or grant.uses - grant.audited >= TRAIL_URGENT
            delay = 0.0 if urgent else self.usage_status_interval
            self.queue.add_at((grant.namespace, grant.name), time.time() + delay)
        elif grant.idle_deadline:
            self.queue.add_at((grant.namespace, grant.name), grant.idle_deadline)

    def on_token_secret_deleted(self, namespace: str, name: str) -> None:
        if self.leading:
            self.enqueue(namespace, name)  # the reconcile revokes SecretDeleted if it was the live one

    def on_request_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """Every request watch event: index it; when leading, route it (our own writes' echoes and
        settled requests cost nothing)."""
        req = self.requests.observe(event_type, body)
        if not self.leading or self.reconciler.is_own_write(req.namespace, req.name, req.resource_version):
            return
        if event_type == "DELETED":
            self.enqueue(*req.key)  # the reconcile finds it gone and revokes what is left, by uid
            return
        self.route(req)

    def on_lost_leading(self) -> None:
        """A leader that could not renew must stop writing at once: exit (the pod restarts as follower)."""
        import signal

        os.kill(os.getpid(), signal.SIGTERM)

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def enqueue_pending_for_policy(self, policy: str) -> None:
        for req in self.requests.all():
            if req.policy == policy and req.phase in ("", api.PENDING):
                self.enqueue(*req.key)

    def reconcile_key(self, key) -> dt.datetime | None:
        namespace, name = key
        try:
            return self.reconciler.reconcile(namespace, name)
        except Exception as exc:
            metrics.errors_total.labels("reconcile").inc()
            log.warning("reconcile %s/%s failed: %s", namespace, name, error_text(exc))
            raise

    def enqueue_drill(self, namespace: str, name: str) -> None:
        self.drill_queue.add((namespace, name))

    def run_drill_key(self, key) -> dt.datetime | None:
        try:
            return self.drills.reconcile(*key)
        except Exception as exc:
            metrics.errors_total.labels("drill").inc()
            log.warning("drill %s/%s failed to run: %s", key[0], key[1], error_text(exc))
            raise

    @property
    def usage_status_interval(self) -> float:
        return self.settings.usage_status_interval.total_seconds()

    @property
    def protected_namespaces(self) -> tuple[str, ...]:
        return tuple(sorted({self.settings.namespace, self.settings.tokens_namespace}))

    @property
    def policies(self):
        return self.reconciler.policies

    def on_policy(self, body: dict[str, Any], deleted: bool = False) -> None:
        if not self.leading:  # the cache is refreshed on every replica by the TTL; writes are the leader's
            self.policies.forget(body["metadata"]["name"])
            return
        if deleted:
            self.policies.forget(body["metadata"]["name"])
            self.enqueue_pending_for_policy(body["metadata"]["name"])
            return
        self.policies.put(body)
        reconcile_policy(self.kube, body, utcnow(), self.enqueue_pending_for_policy)
