"""Builds the services once at start-up and wires them into a `Runtime` (the composition root)."""

from __future__ import annotations

import logging
import os
import time

from .alert_gate import AlertGates
from .bootstrap import build_audit, tls_files, whoami
from .domain.durations import utcnow
from .drills import DrillRunner
from .endpoints import Endpoints
from .expiry import ExpiryTimer
from .grants import Grants
from .informer import Informer
from .k8s.client import Kube, load_config
from .leader import LeaderElector
from .ledger import Ledger
from .lifecycle import Reconciler
from .notify.notifier import Notifier
from .runtime import Runtime
from .seen_namespaces import SeenNamespaces
from .settings import Settings
from .stores import KeyStore, RevocationStore
from .sweeper import Sweeper
from .token_secrets import TokenSecrets
from .usage_sink import UsageSink
from .workqueue import WorkQueue

log = logging.getLogger(__name__)


def build(settings: Settings) -> Runtime:
    kube = Kube(load_config(settings.kubeconfig, pool_size=max(32, settings.workers * 2)))
    kube.ensure_namespace(settings.namespace)
    if settings.tokens_namespace != settings.namespace:
        kube.ensure_namespace(settings.tokens_namespace)
    holder: dict[str, Runtime] = {}
    ledger = Ledger(kube, settings.namespace)
    keys = KeyStore(
        kube, settings.namespace, settings.signing_alg, kids_in_use=lambda: holder["rt"].sweeper.kids_in_use()
    )
    keys.ensure()
    revocations = RevocationStore(kube, settings.namespace)
    audit = build_audit(settings, kube)
    cluster_ca_b64 = None
    if settings.cluster_ca_file:
        import base64 as b64

        with open(settings.cluster_ca_file, "rb") as fh:
            cluster_ca_b64 = b64.b64encode(fh.read()).decode()
    grants = Grants(
        kube=kube,
        ledger=ledger,
        keys=keys,
        revocations=revocations,
        settings=settings,
        clock=utcnow,
        cluster_ca_b64=cluster_ca_b64,
    )
    expiry = ExpiryTimer(kube.delete_secret, lambda key: holder["rt"].queue.add(key))
    reconciler = Reconciler(
        kube=kube,
        ledger=ledger,
        grants=grants,
        audit=audit,
        settings=settings,
        clock=utcnow,
        schedule_expiry=expiry.schedule,
    )
    queue = WorkQueue(lambda key: holder["rt"].reconcile_key(key), workers=settings.workers)
    sweeper = Sweeper(
        kube,
        ledger,
        grants,
        keys,
        revocations,
        audit,
        lambda ns, n: queue.add((ns, n)),
        utcnow,
        settings.key_rotation_interval,
        index=None,
        policy_names=lambda: holder["rt"].policies.names(),
    )
    usage = UsageSink(ledger, max_inflight=settings.audit_sink_max_inflight)
    endpoints = Endpoints(
        usage=usage,
        keys=keys,
        revocations=revocations,
        ledger=ledger,
        issuer=settings.issuer,
        audiences=list(settings.token_audiences),
        client_ca_file=settings.client_ca_file,
    )
    drills = DrillRunner(
        kube=kube,
        audit=audit,
        issuer=settings.issuer,
        operator_namespace=settings.namespace,
        clock=utcnow,
        ledger=ledger,
    )
    drill_queue = WorkQueue(lambda key: holder["rt"].run_drill_key(key), workers=2, retry_seconds=5.0)
    rt = Runtime(
        settings=settings,
        kube=kube,
        keys=keys,
        revocations=revocations,
        audit=audit,
        reconciler=reconciler,
        queue=queue,
        sweeper=sweeper,
        endpoints=endpoints,
        tls=tls_files(settings, kube),
        drills=drills,
        drill_queue=drill_queue,
        expiry=expiry,
        ledger=ledger,
        grants=grants,
        operator_username=whoami(settings, kube),
    )
    import socket

    rt.elector = LeaderElector(
        kube,
        namespace=settings.namespace,
        name=settings.lease_name,
        # Pod name + pid: a container restarted in the same pod (pid 1 again) takes its lease back at once.
        identity=f"{socket.gethostname()}-{os.getpid()}",
        lease_seconds=settings.lease_duration.total_seconds(),
        renew_deadline=settings.lease_renew_deadline.total_seconds(),
        retry_period=settings.lease_retry_period.total_seconds(),
        on_started=rt.on_started_leading,
        on_lost=rt.on_lost_leading,
    )
    sweeper.index = rt.requests
    rt.namespace_exists = SeenNamespaces(kube.namespace_exists)
    rt.token_secrets = TokenSecrets(kube, settings.tokens_namespace, rt.on_token_secret_deleted)
    rt.attach_request_informer(
        Informer(
            "requests",
            kube.iter_request_pages,
            lambda rv: kube.watch_requests(rv, timeout=300),
            rt.on_request_list,
            rt.on_request_event,
        )
    )
    reconciler.on_orphans = sweeper.revoke_orphans_of
    sweeper.settle_usage = reconciler.usage.settle_orphan
    ledger.on_usage = rt.on_grant_usage
    reconciler.alert_gates = AlertGates(
        default_url=settings.alertmanager_url,
        interval=settings.alertmanager_poll_interval.total_seconds(),
        policy_body=reconciler.policies.get,
        requests=rt.requests.all,
        enqueue=lambda ns, n: queue.add((ns, n)),
    )
    reconciler.recorder.on_review = sweeper.note_review
    rt.notifier = reconciler.recorder.notifier = Notifier(
        kube=kube,
        namespace=settings.namespace,
        policy=reconciler.policies.get,
        is_live=lambda uid: (g := ledger.summary(uid)) is not None and g.state == "Active" and g.expires > time.time(),
        max_age=settings.notify_max_age.total_seconds(),
        max_attempts=settings.notify_max_attempts,
        capacity=settings.notify_outbox_capacity,
        backoff_cap=settings.notify_backoff_cap.total_seconds(),
    )
    holder["rt"] = rt
    log.info("operator identity %s; token namespace %s", rt.operator_username, settings.tokens_namespace)
    return rt
