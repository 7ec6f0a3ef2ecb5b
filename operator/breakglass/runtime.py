"""Wires the services together once at start-up; handlers reach them through kopf's memo."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import api, metrics
from .audit import AuditLog
from .drills import DrillRunner
from .domain.durations import utcnow
from .endpoints import Endpoints
from .k8s.client import Kube, error_text, load_config
from .lifecycle import Reconciler
from .policies import reconcile_policy
from .settings import Settings
from .stores import KeyStore, RevocationStore
from .sweeper import Sweeper
from .tls import TLSFiles, generate
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

# Set by __main__ before kopf starts (kopf has no way to pass arguments to startup handlers).
SETTINGS: Settings | None = None


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
    tasks: list[asyncio.Task] = field(default_factory=list)

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def enqueue_pending_for_policy(self, policy: str) -> None:
        for req in self.kube.list_requests():
            if (req.get("spec") or {}).get("policy") == policy and \
                    (req.get("status") or {}).get("phase") in (None, api.PENDING):
                self.enqueue(req["metadata"]["namespace"], req["metadata"]["name"])

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

    def on_policy(self, body: dict[str, Any]) -> None:
        reconcile_policy(self.kube, body, utcnow(), self.enqueue_pending_for_policy)


def connection_info(settings: Settings) -> kopf.ConnectionInfo:
    cfg = load_config(settings.kubeconfig).configuration
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken") or ""
    scheme, _, token = auth.partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        scheme=scheme or None, token=token or None,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file, default_namespace=None)


def tls_files(settings: Settings) -> TLSFiles:
    if settings.tls_cert_file:
        return TLSFiles(None, settings.tls_cert_file, settings.tls_private_key_file)
    hosts = ["127.0.0.1", "localhost"]
    if settings.webhook_host and settings.webhook_host not in hosts:
        hosts.insert(0, settings.webhook_host)
    if settings.bind_address not in hosts and settings.bind_address != "0.0.0.0":
        hosts.append(settings.bind_address)
    return generate(os.path.join(settings.state_dir, "tls"), hosts)


def build(settings: Settings) -> Runtime:
    kube = Kube(load_config(settings.kubeconfig, pool_size=max(32, settings.workers * 2)))
    kube.ensure_namespace(settings.namespace)
    keys = KeyStore(kube, settings.namespace, settings.signing_alg, settings.max_token_lifetime)
    keys.ensure()
    revocations = RevocationStore(kube, settings.namespace)
    hmac_key = (settings.audit_hmac_secret or os.environ.get("BREAKGLASS_AUDIT_HMAC_SECRET") or "").encode() or None
    audit = AuditLog(settings.audit_log, hmac_key)
    reconciler = Reconciler(kube=kube, keys=keys, revocations=revocations, audit=audit, settings=settings,
                            clock=utcnow)
    holder: dict[str, Runtime] = {}
    queue = WorkQueue(lambda key: holder["rt"].reconcile_key(key), workers=settings.workers)
    sweeper = Sweeper(kube, keys, revocations, lambda ns, n: queue.add((ns, n)), utcnow,
                      settings.key_rotation_interval)
    endpoints = Endpoints(keys=keys, revocations=revocations, issuer=settings.issuer,
                          audiences=list(settings_audiences()))
    drills = DrillRunner(kube=kube, audit=audit, issuer=settings.issuer, operator_namespace=settings.namespace,
                         clock=utcnow)
    drill_queue = WorkQueue(lambda key: holder["rt"].run_drill_key(key), workers=2, retry_seconds=5.0)
    rt = Runtime(settings=settings, kube=kube, keys=keys, revocations=revocations, audit=audit,
                 reconciler=reconciler, queue=queue, sweeper=sweeper, endpoints=endpoints,
                 tls=tls_files(settings), drills=drills, drill_queue=drill_queue)
    holder["rt"] = rt
    return rt


def settings_audiences() -> list[str]:
    raw = os.environ.get("BREAKGLASS_TOKEN_AUDIENCES", "breakglass")
    return [a.strip() for a in raw.split(",") if a.strip()]


async def start(rt: Runtime, kopf_settings: kopf.OperatorSettings) -> None:
    s = rt.settings
    kopf_settings.posting.enabled = False  # our Events are written deliberately, never from logs
    kopf_settings.peering.standalone = True
    kopf_settings.persistence.finalizer = "breakglass.dev/kopf"
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.breakglass.dev")
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.breakglass.dev", key="last-handled-configuration")
    kopf_settings.watching.server_timeout = 300
    kopf_settings.networking.request_timeout = 60
    host = s.webhook_host or (s.bind_address if s.bind_address != "0.0.0.0" else "127.0.0.1")
    kopf_settings.admission.server = kopf.WebhookServer(
        addr=s.bind_address, port=s.webhook_port, host=host,
        certfile=rt.tls.cert_file, pkeyfile=rt.tls.key_file, cafile=rt.tls.ca_file)
    kopf_settings.admission.managed = "breakglass.dev"
    rt.queue.start()
    rt.drill_queue.start()
    await rt.endpoints.start(s.bind_address, s.https_port, rt.tls.cert_file, rt.tls.key_file)
    if s.metrics_port:
        from prometheus_client import start_http_server
        start_http_server(s.metrics_port, addr=s.bind_address, registry=metrics.REGISTRY)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, rt.sweeper.sweep_expired)
    await loop.run_in_executor(None, rt.sweeper.resync_all)
    rt.tasks.append(asyncio.create_task(_housekeeping(rt)))


async def _housekeeping(rt: Runtime, interval: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await loop.run_in_executor(None, rt.sweeper.housekeeping, rt.reconciler.check_review_overdue)
        await asyncio.sleep(interval)


async def stop(rt: Runtime) -> None:
    for t in rt.tasks:
        t.cancel()
    rt.queue.stop()
    rt.drill_queue.stop()
    await rt.endpoints.stop()
