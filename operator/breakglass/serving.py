"""The operator's life inside kopf: configure kopf, serve, compete for the lease, housekeep, stop.

Every replica serves admission, TokenReview/JWKS and metrics at once; the leader (runtime.py's
callbacks) starts the queues. Housekeeping runs only on the leader.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import kopf

from . import metrics
from .bootstrap import inject_ca_bundle
from .runtime import Runtime

log = logging.getLogger(__name__)


async def start(rt: Runtime, kopf_settings: kopf.OperatorSettings) -> None:
    s = rt.settings
    kopf_settings.execution.max_workers = 32  # sync handlers incl. admission; never starve webhooks
    kopf_settings.posting.enabled = False  # our Events are written deliberately, never from logs
    kopf_settings.peering.standalone = True
    kopf_settings.persistence.finalizer = "breakglass.dev/kopf"
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.breakglass.dev")
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.breakglass.dev", key="last-handled-configuration"
    )
    # Watches end server-side (a bookmark just before keeps their resourceVersion fresh); kopf's
    # inactivity timeout must not cut an idle stream earlier: a reconnect from an old version gets
    # 410 Gone and a full relist of every request (measured: one per resource per minute at idle).
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.inactivity_timeout = 330
    kopf_settings.watching.chunk_size = 500  # the initial list in pages: bounded memory at any scale
    kopf_settings.networking.request_timeout = 60
    kopf_settings.scanning.disabled = True  # our CRDs are known; no cluster-wide CRD watch needed (RBAC)
    host = s.webhook_host or (s.bind_address if s.bind_address != "0.0.0.0" else "127.0.0.1")
    kopf_settings.admission.server = kopf.WebhookServer(
        addr=s.bind_address,
        port=s.webhook_port,
        host=host,
        certfile=rt.tls.cert_file,
        pkeyfile=rt.tls.key_file,
        cafile=rt.tls.ca_file,
    )
    if s.local:
        # Development: register our own configurations pointing at 127.0.0.1.
        kopf_settings.admission.managed = "breakglass.dev"
    else:
        # The chart ships the configurations (Service or URL); we only keep their caBundle right.
        await asyncio.get_running_loop().run_in_executor(
            None, inject_ca_bundle, rt.kube, s.webhook_config_name, rt.tls.ca_file
        )
    # Our own writes to requests (finalizers) pass through our own persistent, fail-closed webhooks:
    # start reconciling once the webhook server (started by kopf after this handler) accepts connections.
    rt.ledger.start()
    rt.request_informer.start()
    rt.token_secrets.start()
    rt.tasks.append(asyncio.create_task(_start_queues_when_serving(rt)))
    if rt.endpoints.usage is not None:
        rt.endpoints.usage.start()
    await rt.endpoints.start(s.bind_address, s.https_port, rt.tls.cert_file, rt.tls.key_file)
    if s.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(s.metrics_port, addr=s.bind_address, registry=metrics.REGISTRY)
    rt.tasks.append(asyncio.create_task(_housekeeping(rt)))


async def _start_queues_when_serving(rt: Runtime, timeout: float = 30.0) -> None:
    host = "127.0.0.1" if rt.settings.bind_address in ("0.0.0.0", "") else rt.settings.bind_address
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, rt.settings.webhook_port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    else:
        log.warning("webhook server not reachable after %.0fs; reconciling anyway", timeout)
    # Decisions read the ledger view: never act on an unsynced one. Then compete for the lease (the
    # new leader routes every request from the request index once that is synced: no list of its own).
    # Polled, not waited for in an executor thread: a SIGTERM meanwhile must not wait for it.
    synced_by = asyncio.get_running_loop().time() + 60.0
    while not rt.ledger.synced.is_set() and asyncio.get_running_loop().time() < synced_by:
        await asyncio.sleep(0.05)
    rt.elector.start()


async def _housekeeping(rt: Runtime, interval: float = 5.0) -> None:
    """Every `interval` on the leader: a pass over in-memory state (no LIST). Every
    --resync-interval: the slow safety resync, one paged LIST of requests."""
    loop = asyncio.get_running_loop()
    last_resync = loop.time()
    while True:
        if not rt.leading:
            last_resync = loop.time()  # leadership starts with its own catch-up list
            await asyncio.sleep(interval)
            continue
        if loop.time() - last_resync >= rt.settings.resync_interval.total_seconds():
            last_resync = loop.time()
            await loop.run_in_executor(None, _safe_resync, rt)
        # An overdue review not yet marked on the request: its reconcile sets the condition.
        await loop.run_in_executor(None, rt.sweeper.housekeeping, lambda req, _now: rt.enqueue(*req.key))
        await asyncio.sleep(interval)


def _safe_resync(rt: Runtime) -> None:
    try:
        rt.resync()
    except Exception as exc:  # the next interval tries again; the watches keep working meanwhile
        metrics.errors_total.labels("resync").inc()
        log.warning("safety resync failed: %s", type(exc).__name__)


async def stop(rt: Runtime) -> None:
    # Stop writing first (housekeeping, reconciles, expiries, drills; each queue waits briefly for
    # its in-flight pass), then hand the lease over: a successor leads within one retry period and
    # never overlaps with this replica's writes.
    for t in rt.tasks:
        t.cancel()
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(None, q.stop) for q in (rt.queue, rt.drill_queue, rt.expiry)))
    if rt.notifier is not None:
        rt.notifier.stop()  # pending notifications stay in the outbox for the next leader
    if rt.elector is not None:
        await loop.run_in_executor(None, rt.elector.stop)
    rt.reconciler.alert_gates.stop()
    rt.ledger.stop()
    rt.request_informer.stop()
    rt.token_secrets.stop()
    await rt.endpoints.stop()
    if rt.endpoints.usage is not None:
        rt.endpoints.usage.stop()  # a last flush of what was queued (best effort)
    # Our writes are over. If kopf's own shutdown then hangs (its watchers retrying a kube-apiserver
    # that is restarting, seen in chaos c), do not linger unready: exit; the restart resumes from the
    # cluster's state. A normal stop returns from kopf.run well before this fires (__main__ exits 0).
    timer = threading.Timer(EXIT_GRACE, _exit_now, args=(1,))
    timer.daemon = True
    timer.start()


EXIT_GRACE = 3.0


def _exit_now(code: int) -> None:
    log.error("kopf did not finish stopping within %.0fs: exiting", EXIT_GRACE)
    logging.shutdown()
    os._exit(code)
