"""What the operator needs before its services exist: API credentials for kopf, its own identity,
its serving certificate, the webhook configurations' caBundle and the audit log (HMAC key, head)."""

from __future__ import annotations

import base64
import json
import logging
import os

import kopf

from . import api
from .audit import AuditLog
from .audit_head import AuditHead, ensure_hmac_key
from .domain.durations import utcnow
from .k8s.client import Kube, PermanentError, load_config
from .settings import Settings
from .tls import TLSFiles, generate, write_private

log = logging.getLogger(__name__)


def connection_info(settings: Settings) -> kopf.ConnectionInfo:
    cfg = load_config(settings.kubeconfig).configuration
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken") or ""
    scheme, _, token = auth.partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        default_namespace=None,
    )


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
    name = f"{settings.webhook_config_name}-tls"
    secret = kube.get_secret(settings.namespace, name)
    if secret is None:
        files = generate(directory, hosts)
        data = {}
        for key, path in (("ca.crt", files.ca_file), ("tls.crt", files.cert_file), ("tls.key", files.key_file)):
            with open(path, "rb") as fh:
                data[key] = base64.b64encode(fh.read()).decode()
        secret, _ = kube.create_secret_if_absent(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {
                    "name": name,
                    "namespace": settings.namespace,
                    "labels": {api.MANAGED_BY_LABEL: api.MANAGED_BY},
                },
                "data": data,
            }
        )
    os.makedirs(directory, mode=0o700, exist_ok=True)
    paths = {}
    for key in ("ca.crt", "tls.crt", "tls.key"):
        paths[key] = os.path.join(directory, key)
        write_private(paths[key], base64.b64decode(secret["data"][key]))
    return TLSFiles(paths["ca.crt"], paths["tls.crt"], paths["tls.key"])


def inject_ca_bundle(kube: Kube, config_name: str, ca_file: str | None) -> None:
    """Keep the chart's webhook configurations trusting our serving CA (get/patch by name only)."""
    if not ca_file:
        log.warning("no CA bundle known (--tls-ca-file): webhook configurations left as they are")
        return
    with open(ca_file, "rb") as fh:
        bundle = base64.b64encode(fh.read()).decode()
    for kind in ("validating", "mutating"):
        try:
            cfg = kube.get_webhook_configuration(kind, config_name)
        except PermanentError as exc:
            log.warning(
                "%s webhook configuration %s not readable (%s): admission will fail closed", kind, config_name, exc
            )
            continue
        if cfg is None:
            log.warning("%s webhook configuration %s missing: admission will fail closed", kind, config_name)
            continue
        hooks = cfg.get("webhooks") or []
        if all((h.get("clientConfig") or {}).get("caBundle") == bundle for h in hooks):
            continue
        for h in hooks:
            h.setdefault("clientConfig", {})["caBundle"] = bundle
        kube.patch_webhook_hooks(kind, config_name, hooks)
        log.info("caBundle injected into %s webhook configuration %s", kind, config_name)


def whoami(settings: Settings, kube: Kube) -> str:
    """The operator's own username, so admission can tell its writes (finalizer removal, drill
    requests) from everyone else's: the flag; else the in-cluster ServiceAccount token's subject;
    else a TokenReview of our own bearer token; else our client certificate's CN."""
    if settings.operator_username:
        return settings.operator_username
    sa_token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    bearer = kube.bearer_token()
    if not bearer and os.path.exists(sa_token) and not settings.kubeconfig:
        with open(sa_token) as fh:
            payload = fh.read().strip().split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]
    if bearer:
        status = kube.token_review(bearer).get("status") or {}
        if status.get("authenticated"):
            return status["user"]["username"]
    if kube.client_cert_file():
        from cryptography import x509

        with open(kube.client_cert_file(), "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
        return cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    raise SystemExit("breakglass: cannot tell the operator's own username; set --operator-username")


def build_audit(settings: Settings, kube: Kube) -> AuditLog:
    """HMAC on by default (a key generated into a Secret on first start); the chain's head is
    published in the cluster on every append, so a truncated or re-sealed log is detected."""
    head = AuditHead(settings.namespace, kube.get_configmap, kube.update_configmap, clock=utcnow)
    given = settings.audit_hmac_secret  # flag or BREAKGLASS_AUDIT_HMAC_SECRET (the settings table)
    hmac_key = (
        given.encode() if given else ensure_hmac_key(settings.namespace, kube.get_secret, kube.create_secret_if_absent)
    )
    # Seal-before-write: every record's head (with the record) is stored in the cluster before the
    # record is written, so a dying leader loses nothing and two leaders can never fork the chain.
    import socket

    writer = f"{socket.gethostname()}:{settings.audit_log or '-'}"
    audit = AuditLog(settings.audit_log, hmac_key, on_seal=head.seal_batch, head=head.read_full(), writer=writer)
    audit.read_head = head.read_full  # a new leader continues the chain from the published head
    if audit.discrepancy:
        log.error("audit: %s", audit.discrepancy)  # recorded in the chain once this replica leads
    return audit
