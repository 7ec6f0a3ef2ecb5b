"""Wires the services together once at start-up; handlers reach them through kopf's memo."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import api, metrics
from .audit import AuditLog
from .drills import DrillRunner
from .domain.durations import utcnow
from .endpoints import Endpoints
from .expiry import ExpiryTimer
from .grants import Grants
from .k8s.client import Kube, error_text, load_config
from .leader import LeaderElector
from .ledger import Ledger
from .lifecycle import Reconciler
from .policies import reconcile_policy
from .settings import Settings
from .stores import KeyStore, RevocationStore
from .sweeper import Sweeper
from .tls import TLSFiles, generate, write_private
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
    expiry: ExpiryTimer
    ledger: Ledger
    grants: Grants
    operator_username: str
    elector: LeaderElector | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def leading(self) -> bool:
        return self.elector is not None and self.elector.leading.is_set()

    def on_started_leading(self) -> None:
        """Only the leader reconciles, expires, sweeps and drills; it first catches up on everything."""
        self.queue.start()
        self.drill_queue.start()
        self.expiry.start()
        try:
            self.sweeper.resync_all()
        except Exception as exc:  # the housekeeping resync catches up later
            log.warning("catch-up resync failed: %s", error_text(exc))

    def on_lost_leading(self) -> None:
        """A leader that could not renew must stop writing at once: exit (the pod restarts as follower)."""
        import signal
        os.kill(os.getpid(), signal.SIGTERM)

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


def connection_info(settings: Settings) -> kopf.ConnectionInfo:
    cfg = load_config(settings.kubeconfig).configuration
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken") or ""
    scheme, _, token = auth.partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        scheme=scheme or None, token=token or None,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file, default_namespace=None)


def tls_files(settings: Settings, kube: Kube) -> TLSFiles:
    """Serving certificate: given by flags, generated for --local, or shared by replicas via a Secret."""
    if settings.tls_cert_file:
        return TLSFiles(settings.tls_ca_file, settings.tls_cert_file, settings.tls_private_key_file)
    hosts = ["127.0.0.1", "localhost"]
    if settings.webhook_host and settings.webhook_host not in hosts:
        hosts.insert(0, settings.webhook_host)
    if settings.bind_address not in hosts and settings.bind_address != "0.0.0.0":
        hosts.append(settings.bind_address)
    directory = os.path.join(settings.state_dir, "tls")
    if settings.local:
        return generate(directory, hosts)
    return shared_tls(kube, settings, directory, hosts)


def shared_tls(kube: Kube, settings: Settings, directory: str, hosts: list[str]) -> TLSFiles:
    import base64
    name = f"{settings.webhook_config_name}-tls"
    secret = kube.get_secret(settings.namespace, name)
    if secret is None:
        files = generate(directory, hosts)
        data = {}
        for key, path in (("ca.crt", files.ca_file), ("tls.crt", files.cert_file), ("tls.key", files.key_file)):
            with open(path, "rb") as fh:
                data[key] = base64.b64encode(fh.read()).decode()
        secret, _ = kube.create_secret_if_absent({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": settings.namespace,
                         "labels": {api.MANAGED_BY_LABEL: api.MANAGED_BY}}, "data": data})
    os.makedirs(directory, mode=0o700, exist_ok=True)
    paths = {}
    for key in ("ca.crt", "tls.crt", "tls.key"):
        paths[key] = os.path.join(directory, key)
        write_private(paths[key], base64.b64decode(secret["data"][key]))
    return TLSFiles(paths["ca.crt"], paths["tls.crt"], paths["tls.key"])


def inject_ca_bundle(kube: Kube, config_name: str, ca_file: str | None) -> None:
    """Keep the chart's webhook configurations trusting our serving CA."""
    import base64
    import kubernetes
    from kubernetes.client.rest import ApiException
    if not ca_file:
        log.warning("no CA bundle known (--tls-ca-file): webhook configurations left as they are")
        return
    with open(ca_file, "rb") as fh:
        bundle = base64.b64encode(fh.read()).decode()
    adm = kubernetes.client.AdmissionregistrationV1Api(kube.api_client)
    for read, patch in ((adm.read_validating_webhook_configuration, adm.patch_validating_webhook_configuration),
                        (adm.read_mutating_webhook_configuration, adm.patch_mutating_webhook_configuration)):
        try:
            cfg = kube.api_client.sanitize_for_serialization(read(config_name))
        except ApiException as exc:
            log.warning("webhook configuration %s not readable (%s): admission will fail closed",
                        config_name, exc.status)
            continue
        hooks = cfg.get("webhooks") or []
        if all((h.get("clientConfig") or {}).get("caBundle") == bundle for h in hooks):
            continue
        for h in hooks:
            h.setdefault("clientConfig", {})["caBundle"] = bundle
        patch(config_name, {"webhooks": hooks})
        log.info("caBundle injected into %s %s", cfg.get("kind"), config_name)


def whoami(settings: Settings, kube: Kube) -> str:
    """The operator's own username, so admission can tell its writes (finalizer removal, drill
    requests) from everyone else's: the flag; else the in-cluster ServiceAccount token's subject;
    else a TokenReview of our own bearer token; else our client certificate's CN."""
    if settings.operator_username:
        return settings.operator_username
    import base64 as b64
    import json as js
    sa_token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    cfg = kube.api_client.configuration
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken") or ""
    if not auth and os.path.exists(sa_token) and not settings.kubeconfig:
        with open(sa_token) as fh:
            payload = fh.read().strip().split(".")[1]
        return js.loads(b64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]
    if auth:
        status = kube.token_review(auth.partition(" ")[2] or auth).get("status") or {}
        if status.get("authenticated"):
            return status["user"]["username"]
    if cfg.cert_file:
        from cryptography import x509
        with open(cfg.cert_file, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
        return cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    raise SystemExit("breakglass: cannot tell the operator's own username; set --operator-username")


def build(settings: Settings) -> Runtime:
    kube = Kube(load_config(settings.kubeconfig, pool_size=max(32, settings.workers * 2)))
    kube.ensure_namespace(settings.namespace)
    if settings.tokens_namespace != settings.namespace:
        kube.ensure_namespace(settings.tokens_namespace)
    holder: dict[str, Runtime] = {}
    ledger = Ledger(kube, settings.namespace)
    keys = KeyStore(kube, settings.namespace, settings.signing_alg,
                    kids_in_use=lambda: holder["rt"].sweeper.kids_in_use())
    keys.ensure()
    revocations = RevocationStore(kube, settings.namespace)
    audit = build_audit(settings, kube)
    cluster_ca_b64 = None
    if settings.cluster_ca_file:
        import base64 as b64
        with open(settings.cluster_ca_file, "rb") as fh:
            cluster_ca_b64 = b64.b64encode(fh.read()).decode()
    grants = Grants(kube=kube, ledger=ledger, keys=keys, revocations=revocations, settings=settings,
                    clock=utcnow, cluster_ca_b64=cluster_ca_b64)
    expiry = ExpiryTimer(kube.delete_secret, lambda key: holder["rt"].queue.add(key))
    reconciler = Reconciler(kube=kube, ledger=ledger, grants=grants, audit=audit, settings=settings,
                            clock=utcnow, schedule_expiry=expiry.schedule)
    queue = WorkQueue(lambda key: holder["rt"].reconcile_key(key), workers=settings.workers)
    sweeper = Sweeper(kube, ledger, grants, keys, revocations, audit, lambda ns, n: queue.add((ns, n)), utcnow,
                      settings.key_rotation_interval)
    endpoints = Endpoints(keys=keys, revocations=revocations, ledger=ledger, issuer=settings.issuer,
                          audiences=list(settings_audiences()), client_ca_file=settings.client_ca_file)
    drills = DrillRunner(kube=kube, audit=audit, issuer=settings.issuer, operator_namespace=settings.namespace,
                         clock=utcnow, ledger=ledger)
    drill_queue = WorkQueue(lambda key: holder["rt"].run_drill_key(key), workers=2, retry_seconds=5.0)
    rt = Runtime(settings=settings, kube=kube, keys=keys, revocations=revocations, audit=audit,
                 reconciler=reconciler, queue=queue, sweeper=sweeper, endpoints=endpoints,
                 tls=tls_files(settings, kube), drills=drills, drill_queue=drill_queue, expiry=expiry,
                 ledger=ledger, grants=grants, operator_username=whoami(settings, kube))
    import socket
    rt.elector = LeaderElector(
        kube, namespace=settings.namespace, name=settings.lease_name,
        # Pod name + pid: a container restarted in the same pod (pid 1 again) takes its lease back at once.
        identity=f"{socket.gethostname()}-{os.getpid()}",
        lease_seconds=settings.lease_duration.total_seconds(),
        renew_deadline=settings.lease_renew_deadline.total_seconds(),
        retry_period=settings.lease_retry_period.total_seconds(),
        on_started=rt.on_started_leading, on_lost=rt.on_lost_leading)
    reconciler.on_orphans = sweeper.revoke_orphans_of
    holder["rt"] = rt
    log.info("operator identity %s; token namespace %s", rt.operator_username, settings.tokens_namespace)
    return rt


def build_audit(settings: Settings, kube: Kube) -> AuditLog:
    """HMAC on by default (a key generated into a Secret on first start); the chain's head is
    published in the cluster on every append, so a truncated or re-sealed log is detected."""
    from .audit import AuditHead, ensure_hmac_key
    from .domain.durations import to_rfc3339
    head = AuditHead(settings.namespace, kube.get_configmap, kube.update_configmap, clock=utcnow)
    given = settings.audit_hmac_secret or os.environ.get("BREAKGLASS_AUDIT_HMAC_SECRET")
    hmac_key = given.encode() if given else ensure_hmac_key(settings.namespace, kube.get_secret,
                                                            kube.create_secret_if_absent)
    audit = AuditLog(settings.audit_log, hmac_key, on_append=head.publish, head=head.read())
    if audit.discrepancy:
        log.error("audit: %s", audit.discrepancy)
        audit.record("audit-discrepancy", time=to_rfc3339(utcnow()), problem=audit.discrepancy)
    return audit


def settings_audiences() -> list[str]:
    raw = os.environ.get("BREAKGLASS_TOKEN_AUDIENCES", "breakglass")
    return [a.strip() for a in raw.split(",") if a.strip()]


async def start(rt: Runtime, kopf_settings: kopf.OperatorSettings) -> None:
    s = rt.settings
    kopf_settings.execution.max_workers = 32  # sync handlers incl. admission; never starve webhooks
    kopf_settings.posting.enabled = False  # our Events are written deliberately, never from logs
    kopf_settings.peering.standalone = True
    kopf_settings.persistence.finalizer = "breakglass.dev/kopf"
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.breakglass.dev")
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.breakglass.dev", key="last-handled-configuration")
    kopf_settings.watching.server_timeout = 300
    kopf_settings.networking.request_timeout = 60
    kopf_settings.scanning.disabled = True  # our CRDs are known; no cluster-wide CRD watch needed (RBAC)
    host = s.webhook_host or (s.bind_address if s.bind_address != "0.0.0.0" else "127.0.0.1")
    kopf_settings.admission.server = kopf.WebhookServer(
        addr=s.bind_address, port=s.webhook_port, host=host,
        certfile=rt.tls.cert_file, pkeyfile=rt.tls.key_file, cafile=rt.tls.ca_file)
    if s.local:
        # Development: register our own configurations pointing at 127.0.0.1.
        kopf_settings.admission.managed = "breakglass.dev"
    else:
        # The chart ships the configurations (Service or URL); we only keep their caBundle right.
        await asyncio.get_running_loop().run_in_executor(
            None, inject_ca_bundle, rt.kube, s.webhook_config_name, rt.tls.ca_file)
    # Our own writes to requests (finalizers) pass through our own persistent, fail-closed webhooks:
    # start reconciling once the webhook server (started by kopf after this handler) accepts connections.
    rt.ledger.start()
    rt.tasks.append(asyncio.create_task(_start_queues_when_serving(rt)))
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
    # Decisions read the ledger view: never act on an unsynced one. Then compete for the lease.
    await asyncio.get_running_loop().run_in_executor(None, rt.ledger.wait_synced, 60.0)
    rt.elector.start()


async def _housekeeping(rt: Runtime, interval: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    while True:
        if not rt.leading:
            await asyncio.sleep(interval)
            continue
        await loop.run_in_executor(None, rt.sweeper.housekeeping, lambda req, _now: _reconcile_if_not_marked(rt, req))
        await asyncio.sleep(interval)


def _reconcile_if_not_marked(rt: Runtime, req: dict) -> None:
    """An overdue review not yet marked on the request: its reconcile sets the condition."""
    conds = (req.get("status") or {}).get("conditions") or []
    if not any(c.get("type") == api.COND_REVIEW_OVERDUE and c.get("status") == "True" for c in conds):
        rt.enqueue(req["metadata"]["namespace"], req["metadata"]["name"])


async def stop(rt: Runtime) -> None:
    if rt.elector is not None:  # hand the lease over first: a successor leads within one retry period
        await asyncio.get_running_loop().run_in_executor(None, rt.elector.stop)
    for t in rt.tasks:
        t.cancel()
    rt.queue.stop()
    rt.drill_queue.stop()
    rt.expiry.stop()
    rt.ledger.stop()
    await rt.endpoints.stop()
