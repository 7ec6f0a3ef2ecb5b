"""Leader election on a coordination.k8s.io/v1 Lease.

Exactly one replica reconciles, expires, sweeps and runs drills; every replica serves admission,
TokenReview, JWKS/discovery and metrics from its own watch-fed state. The Lease is taken with a
resourceVersion-guarded write, renewed every `retry_period`, and released on a graceful stop so a
successor leads within one retry period. A leader that cannot renew within `renew_deadline` stops
leading (`on_lost` — the runtime exits, so a stale leader never keeps writing).

The decision whether a lease may be taken is a pure function (`may_acquire`) of the lease body,
our identity and `now`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import metrics
from .domain.durations import utcnow
from .k8s.client import Conflict, Kube, error_text

log = logging.getLogger(__name__)


def _micro(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_micro(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


def may_acquire(spec: dict[str, Any], identity: str, now: dt.datetime) -> bool:
    """We may take (or keep) the lease if it is ours, free, released or expired."""
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return True
    renewed = _parse_micro(spec.get("renewTime")) or _parse_micro(spec.get("acquireTime"))
    duration = int(spec.get("leaseDurationSeconds") or 0)
    return renewed is None or renewed + dt.timedelta(seconds=duration) < now


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started: Callable[[], None],
        on_lost: Callable[[], None],
        clock: Callable[[], dt.datetime] = utcnow,
    ):
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.lease_seconds, self.renew_deadline, self.retry_period = lease_seconds, renew_deadline, retry_period
        self.on_started, self.on_lost, self.clock = on_started, on_lost, clock
        self.leading = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_renew = 0.0
        self._mine: dict[str, Any] | None = None  # the lease as our last successful write returned it
        metrics.leader.set(0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Graceful: stop renewing and hand the lease over at once."""
        self._stop.set()
        if release and self.leading.is_set():
            try:
                self._write(
                    lambda spec: {
                        **spec,
                        "holderIdentity": None,
                        "leaseDurationSeconds": 1,
                        "renewTime": _micro(self.clock()),
                    },
                    only_if_ours=True,
                )
                log.info("released leader lease %s/%s", self.namespace, self.name)
            except Exception as exc:  # noqa: BLE001 — the lease then expires on its own
                log.warning("could not release the leader lease: %s", error_text(exc))
        self.leading.clear()
        metrics.leader.set(0)

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        while not self._stop.is_set():
            # The deadline counts from *before* the call: the lease we write says renewTime = now, so
            # a call that blocked (etcd paused) must not buy us time the lease itself did not get.
            attempt = time.monotonic()
            try:
                ours = self._try_acquire_or_renew()
            except Exception as exc:  # noqa: BLE001
                ours = False
                log.warning("leader election: %s", error_text(exc))
            now = time.monotonic()
            if ours and now - attempt > self.lease_seconds - self.renew_deadline:
                ours = False  # renewed too late to trust: the lease may already look expired to others
                log.warning("leader lease renewal took %.1fs: treated as failed", now - attempt)
            if ours:
                self._last_renew = attempt
                if not self.leading.is_set():
                    self.leading.set()
                    metrics.leader.set(1)
                    metrics.leader_changes_total.inc()
                    log.info("became leader (lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
                    try:
                        self.on_started()
                    except Exception as exc:  # noqa: BLE001 — a half-started leader must not stay
                        log.error("could not start leading (%s): stopping", error_text(exc))
                        self.leading.clear()
                        metrics.leader.set(0)
                        self.on_lost()
                        return
            elif self.leading.is_set() and now - self._last_renew > self.renew_deadline:
                self.leading.clear()
                metrics.leader.set(0)
                log.error("lost the leader lease (no renewal for %.0fs): stopping", now - self._last_renew)
                self.on_lost()
                return
            self._stop.wait(self.retry_period)

    def _try_acquire_or_renew(self) -> bool:
        now = self.clock()
        if self.leading.is_set() and self._mine is not None:
            # Renew with one write, guarded by the version of our own last write: if anyone else
            # wrote the lease since, it conflicts and we read it and decide as usual.
            lease = dict(self._mine, spec=self._spec(self._mine.get("spec") or {}, now, fresh=False))
            try:
                self._mine = self.kube.replace_lease(lease)
                return True
            except Conflict:
                self._mine = None
        lease = self.kube.get_lease(self.namespace, self.name)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec({}, now, fresh=True),
            }
            try:
                self._mine = self.kube.create_lease(body)
                return True
            except Conflict:
                return False
        spec = lease.get("spec") or {}
        if not may_acquire(spec, self.identity, now):
            return False
        lease["spec"] = self._spec(spec, now, fresh=spec.get("holderIdentity") != self.identity)
        try:
            self._mine = self.kube.replace_lease(lease)  # resourceVersion-guarded: one winner
            return True
        except Conflict:
            return False

    def _spec(self, spec: dict[str, Any], now: dt.datetime, fresh: bool) -> dict[str, Any]:
        out = dict(
            spec, holderIdentity=self.identity, leaseDurationSeconds=int(self.lease_seconds), renewTime=_micro(now)
        )
        if fresh:
            out["acquireTime"] = _micro(now)
            out["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if spec.get("holderIdentity") else 0)
        return out

    def _write(self, mutate: Callable[[dict], dict], only_if_ours: bool) -> None:
        lease = self.kube.get_lease(self.namespace, self.name)
        if lease is None:
            return
        if only_if_ours and (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"] = mutate(lease.get("spec") or {})
        self.kube.replace_lease(lease)
