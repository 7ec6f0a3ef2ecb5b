"""Operator settings: BREAKGLASS_* environment variables mirrored by CLI flags, validated once."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from dataclasses import dataclass

from . import api
from .domain.durations import DurationError, parse_duration
from .tokens.keys import SUPPORTED_ALGS


@dataclass(frozen=True)
class Settings:
    namespace: str = api.DEFAULT_OPERATOR_NAMESPACE
    issuer: str = "https://127.0.0.1:8443"
    kubeconfig: str | None = None
    local: bool = False
    bind_address: str = "127.0.0.1"
    https_port: int = 8443
    webhook_port: int = 9443
    webhook_host: str | None = None
    tls_cert_file: str | None = None
    tls_private_key_file: str | None = None
    metrics_port: int = 8080
    health_port: int = 8081
    signing_alg: str = "ES256"
    key_rotation_interval: dt.timedelta | None = None
    max_token_lifetime: dt.timedelta = dt.timedelta(hours=24)
    cluster_server: str | None = None
    cluster_ca_file: str | None = None
    audit_log: str | None = None
    audit_hmac_secret: str | None = None
    workers: int = 16
    state_dir: str = "/tmp/breakglass-operator"
    webhook_config_name: str = "breakglass-operator"
    tls_ca_file: str | None = None
    client_ca_file: str | None = None
    # Where token Secrets and their reader Roles live (default: the operator namespace).
    token_namespace: str | None = None
    # Members of these groups may change or delete anyone's request (admission).
    admin_groups: tuple[str, ...] = ("system:masters",)
    # The operator's own Kubernetes username; found at start when not given (see runtime.whoami).
    operator_username: str | None = None
    # Audiences the TokenReview webhook accepts.
    token_audiences: tuple[str, ...] = ("breakglass",)
    # Loggers switched to DEBUG (troubleshooting a missed event, say).
    debug_loggers: tuple[str, ...] = ()
    # Leader election (coordination.k8s.io/v1 Lease in --namespace): one replica reconciles.
    lease_name: str = "breakglass-operator-leader"
    lease_duration: dt.timedelta = dt.timedelta(seconds=10)
    lease_renew_deadline: dt.timedelta = dt.timedelta(seconds=7)
    lease_retry_period: dt.timedelta = dt.timedelta(seconds=1)
    # The slow safety net behind the watches: one paged LIST of requests this often (leader only).
    resync_interval: dt.timedelta = dt.timedelta(minutes=10)
    # Notifications (policy spec.notify): give up after this age / attempts; retry backoff cap; outbox bound.
    notify_max_age: dt.timedelta = dt.timedelta(hours=24)
    notify_max_attempts: int = 50
    notify_backoff_cap: dt.timedelta = dt.timedelta(minutes=5)
    notify_outbox_capacity: int = 1000
    # Incident-gated auto-approval: the default Alertmanager (API v2) of policies' whenAlertFiring, polled
    # by the leader this often (only for gates some live request uses).
    alertmanager_url: str | None = None
    alertmanager_poll_interval: dt.timedelta = dt.timedelta(seconds=5)
    # Usage trail (POST /audit): a grant's status.usage is written this often at most (grants with
    # count limits: at once); beyond audit_sink_max_inflight batches at once the sink answers 503.
    usage_status_interval: dt.timedelta = dt.timedelta(seconds=2)
    audit_sink_max_inflight: int = 8

    @property
    def tokens_namespace(self) -> str:
        return self.token_namespace or self.namespace


# (flag, env suffix, help, type)
_OPTIONS = [
    ("--namespace", "NAMESPACE", "namespace where the operator keeps its own state (keys, revocations, JWKS)", str),
    ("--issuer", "ISSUER", "issuer URL: the JWT 'iss' and the OIDC discovery issuer", str),
    ("--kubeconfig", "KUBECONFIG", "kubeconfig file (default: in-cluster, then ~/.kube/config)", str),
    ("--bind-address", "BIND_ADDRESS", "address for the HTTPS, webhook and metrics listeners", str),
    ("--https-port", "HTTPS_PORT", "port of the HTTPS endpoints (JWKS, discovery, revocations, TokenReview)", int),
    ("--webhook-port", "WEBHOOK_PORT", "port of the admission webhook server", int),
    ("--webhook-host", "WEBHOOK_HOST", "host name put into the webhook URLs (default: bind address)", str),
    (
        "--webhook-config-name",
        "WEBHOOK_CONFIG_NAME",
        "name of the chart's Validating/MutatingWebhookConfigurations whose caBundle the operator keeps in sync "
        "(ignored with --local, which registers its own)",
        str,
    ),
    ("--tls-cert-file", "TLS_CERT_FILE", "serving certificate (PEM); generated with a local CA when absent", str),
    ("--tls-private-key-file", "TLS_PRIVATE_KEY_FILE", "serving private key (PEM)", str),
    (
        "--tls-ca-file",
        "TLS_CA_FILE",
        "CA bundle of the serving certificate, injected into the webhook configurations",
        str,
    ),
    (
        "--client-ca-file",
        "CLIENT_CA_FILE",
        "CA whose client certificates may call /authenticate (kube-apiserver's webhook identity)",
        str,
    ),
    ("--metrics-port", "METRICS_PORT", "port of /metrics (0 disables)", int),
    ("--health-port", "HEALTH_PORT", "port of kopf's liveness endpoint /healthz (0 disables)", int),
    ("--signing-alg", "SIGNING_ALG", f"JWT signing algorithm: {', '.join(SUPPORTED_ALGS)}", str),
    ("--key-rotation-interval", "KEY_ROTATION_INTERVAL", "rotate the signing key this often (e.g. 24h)", str),
    (
        "--max-token-lifetime",
        "MAX_TOKEN_LIFETIME",
        "upper bound of any policy's maxDuration; retired keys stay this long",
        str,
    ),
    ("--cluster-server", "CLUSTER_SERVER", "API server URL written into the token Secret's kubeconfig", str),
    ("--cluster-ca-file", "CLUSTER_CA_FILE", "CA file for that kubeconfig (default: in-cluster CA)", str),
    ("--audit-log", "AUDIT_LOG", "append the hash-chained audit log to this file (always also on stdout)", str),
    ("--audit-hmac-secret", "AUDIT_HMAC_SECRET", "HMAC key for audit records (or set the env variable)", str),
    ("--workers", "WORKERS", "reconcile worker threads", int),
    ("--state-dir", "STATE_DIR", "where generated local certificates go", str),
    (
        "--token-namespace",
        "TOKEN_NAMESPACE",
        "namespace for token Secrets and their per-request reader Roles (default: --namespace)",
        str,
    ),
    (
        "--admin-groups",
        "ADMIN_GROUPS",
        "comma-separated groups whose members may revoke, change or delete anyone's request",
        str,
    ),
    ("--lease-name", "LEASE_NAME", "name of the leader-election Lease in --namespace", str),
    ("--lease-duration", "LEASE_DURATION", "how long a leader's lease lasts without renewal (e.g. 10s)", str),
    (
        "--lease-renew-deadline",
        "LEASE_RENEW_DEADLINE",
        "a leader that could not renew for this long stops (must be shorter than --lease-duration)",
        str,
    ),
    ("--lease-retry-period", "LEASE_RETRY_PERIOD", "how often replicas try to acquire or renew the lease", str),
    (
        "--resync-interval",
        "RESYNC_INTERVAL",
        "how often the leader re-lists every request as a safety net behind the watches (e.g. 10m)",
        str,
    ),
    (
        "--notify-max-age",
        "NOTIFY_MAX_AGE",
        "a notification not delivered within this time is dead-lettered (e.g. 24h)",
        str,
    ),
    ("--notify-max-attempts", "NOTIFY_MAX_ATTEMPTS", "delivery attempts before a notification is dead-lettered", int),
    ("--notify-backoff-cap", "NOTIFY_BACKOFF_CAP", "longest wait between delivery attempts (e.g. 5m)", str),
    (
        "--notify-outbox-capacity",
        "NOTIFY_OUTBOX_CAPACITY",
        "most notifications pending at once; beyond it the least important is dropped (counted)",
        int,
    ),
    (
        "--alertmanager-url",
        "ALERTMANAGER_URL",
        "default Alertmanager (http(s)://host:port) for policies' autoApprove.whenAlertFiring",
        str,
    ),
    (
        "--alertmanager-poll-interval",
        "ALERTMANAGER_POLL_INTERVAL",
        "how often the leader asks Alertmanager about the alerts policies gate on (e.g. 5s)",
        str,
    ),
    ("--token-audiences", "TOKEN_AUDIENCES", "comma-separated audiences /authenticate accepts", str),
    (
        "--debug-loggers",
        "DEBUG_LOGGERS",
        "comma-separated logger names to log at DEBUG (e.g. kopf._cogs.clients.watching)",
        str,
    ),
    (
        "--operator-username",
        "OPERATOR_USERNAME",
        "the operator's own Kubernetes username (default: found at start from its credentials)",
        str,
    ),
    (
        "--usage-status-interval",
        "USAGE_STATUS_INTERVAL",
        "write a grant's status.usage at most this often (grants with count limits: at once)",
        str,
    ),
    (
        "--audit-sink-max-inflight",
        "AUDIT_SINK_MAX_INFLIGHT",
        "audit batches stored at once; more are answered 503 (kube-apiserver retries) and counted",
        int,
    ),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--local",
        action="store_true",
        default=os.environ.get("BREAKGLASS_LOCAL", "") in ("1", "true"),
        help="serve admission on 127.0.0.1 with a generated CA and register the webhooks",
    )
    for flag, env, help_, type_ in _OPTIONS:
        parser.add_argument(
            flag, type=type_, default=os.environ.get(f"BREAKGLASS_{env}"), help=f"{help_} [env BREAKGLASS_{env}]"
        )


class SettingsError(ValueError):
    pass


def from_args(ns: argparse.Namespace) -> Settings:
    """Validate once, with a message naming the flag."""
    defaults = Settings()
    values = {}
    for flag, _env, _help, type_ in _OPTIONS:
        key = flag.lstrip("-").replace("-", "_")
        raw = getattr(ns, key, None)
        if raw is None:
            continue
        if type_ is int:
            try:
                raw = int(raw)
            except ValueError:
                raise SettingsError(f"{flag} must be an integer, got {raw!r}") from None
            if not 0 <= raw <= 65535 and key.endswith("port"):
                raise SettingsError(f"{flag} must be a port number, got {raw}")
        values[key] = raw
    for key in (
        "key_rotation_interval",
        "max_token_lifetime",
        "lease_duration",
        "lease_renew_deadline",
        "lease_retry_period",
        "resync_interval",
        "notify_max_age",
        "notify_backoff_cap",
        "alertmanager_poll_interval",
        "usage_status_interval",
    ):
        if key in values:
            try:
                values[key] = parse_duration(values[key])
            except DurationError as exc:
                raise SettingsError(f"--{key.replace('_', '-')}: {exc}") from None
    if values.get("signing_alg", defaults.signing_alg) not in SUPPORTED_ALGS:
        raise SettingsError(f"--signing-alg must be one of {', '.join(SUPPORTED_ALGS)}, got {values['signing_alg']!r}")
    if bool(values.get("tls_cert_file")) != bool(values.get("tls_private_key_file")):
        raise SettingsError("--tls-cert-file and --tls-private-key-file go together")
    for key in ("tls_cert_file", "tls_private_key_file", "cluster_ca_file", "tls_ca_file", "client_ca_file"):
        if values.get(key) and not os.path.isfile(values[key]):
            raise SettingsError(f"--{key.replace('_', '-')} {values[key]!r} does not exist")
    lease = values.get("lease_duration", defaults.lease_duration)
    renew = values.get("lease_renew_deadline", defaults.lease_renew_deadline)
    retry = values.get("lease_retry_period", defaults.lease_retry_period)
    if not retry < renew < lease:
        raise SettingsError("--lease-retry-period < --lease-renew-deadline < --lease-duration must hold")
    for key in ("admin_groups", "token_audiences", "debug_loggers"):
        if key in values:
            values[key] = tuple(g.strip() for g in values[key].split(",") if g.strip())
    for key in ("notify_max_attempts", "notify_outbox_capacity", "audit_sink_max_inflight"):
        if key in values and values[key] < 1:
            raise SettingsError(f"--{key.replace('_', '-')} must be at least 1")
    if not values.get("token_audiences", defaults.token_audiences):
        raise SettingsError("--token-audiences needs at least one audience")
    url = values.get("alertmanager_url")
    if url is not None and not (url.startswith("http://") or url.startswith("https://")):
        raise SettingsError(f"--alertmanager-url must be an http(s):// URL, got {url!r}")
    issuer = values.get("issuer", defaults.issuer)
    if not issuer.startswith("https://"):
        raise SettingsError(f"--issuer must be an https:// URL, got {issuer!r}")
    values["local"] = bool(ns.local)
    return Settings(**values)
