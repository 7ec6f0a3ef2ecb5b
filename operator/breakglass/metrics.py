"""Prometheus metrics. Labels never carry user or request names (cardinality, privacy)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 1800, 3600)

requests_total = Counter(
    "breakglass_requests_total", "Requests by final outcome", ["policy", "outcome"], registry=REGISTRY
)
approvals_total = Counter(
    "breakglass_approvals_total", "Approvals counted, by decision", ["decision"], registry=REGISTRY
)
grants_active = Gauge("breakglass_grants_active", "Active grants (drills excluded)", ["policy"], registry=REGISTRY)
time_to_approval = Histogram(
    "breakglass_time_to_approval_seconds", "Request creation to approval", buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
time_to_issue = Histogram(
    "breakglass_time_to_issue_seconds",
    "Request creation (or approval) to token Secret",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
expiry_lag = Histogram(
    "breakglass_expiry_lag_seconds",
    "Token exp to Secret deleted",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
revocations_total = Counter("breakglass_revocations_total", "Revocations by reason", ["reason"], registry=REGISTRY)
token_reviews_total = Counter(
    "breakglass_token_reviews_total", "TokenReview webhook answers", ["result"], registry=REGISTRY
)
admission_rejections_total = Counter(
    "breakglass_admission_rejections_total", "Admission rejections", ["kind", "rule"], registry=REGISTRY
)
errors_total = Counter("breakglass_errors_total", "Errors by stage", ["stage"], registry=REGISTRY)
reviews_overdue = Gauge("breakglass_reviews_overdue", "Emergency grants whose review is overdue", registry=REGISTRY)
signing_key_age = Gauge("breakglass_signing_key_age_seconds", "Age of the active signing key", registry=REGISTRY)
drill_runs_total = Counter("breakglass_drill_runs_total", "Drill runs", ["drill", "result"], registry=REGISTRY)
drill_last_success = Gauge(
    "breakglass_drill_last_success_timestamp_seconds", "Last successful drill run", ["drill"], registry=REGISTRY
)
leader = Gauge("breakglass_leader", "1 while this replica holds the leader lease", registry=REGISTRY)
leader_changes_total = Counter("breakglass_leader_changes_total", "Times this replica became leader", registry=REGISTRY)
signing_keyring_recreated_total = Counter(
    "breakglass_signing_keyring_recreated_total",
    "Times the signing keyring Secret was found missing and recreated",
    registry=REGISTRY,
)
grants_key_lost = Gauge(
    "breakglass_grants_signing_key_lost", "Live grants whose signing key is gone", registry=REGISTRY
)
ledger_entries = Gauge("breakglass_ledger_entries", "Grant ledger entries (live and recently ended)", registry=REGISTRY)
extensions_total = Counter(
    "breakglass_extensions_total",
    "Extensions of active grants by result (applied, refused)",
    ["policy", "result"],
    registry=REGISTRY,
)
issue_rollbacks_total = Counter(
    "breakglass_issue_rollbacks_total", "Issues rolled back (request Failed)", ["reason"], registry=REGISTRY
)
revocations_unpublished_total = Counter(
    "breakglass_revocations_unpublished_total", "Revoked jtis left out of the bounded published view", registry=REGISTRY
)
token_review_cache_total = Counter(
    "breakglass_token_review_cache_total",
    "TokenReview verified-token cache lookups (hit: signature check skipped; liveness is always checked)",
    ["result"],
    registry=REGISTRY,
)
alertmanager_up = Gauge(
    "breakglass_alertmanager_up",
    "1 when every Alertmanager the alert gate asked in its last round answered, 0 when one did not",
    registry=REGISTRY,
)
alertmanager_queries_total = Counter(
    "breakglass_alertmanager_queries_total",
    "Alert gate queries to Alertmanager by result (ok, error)",
    ["result"],
    registry=REGISTRY,
)
grant_requests_total = Counter(
    "breakglass_grant_requests_total",
    "API requests made by grant identities (kube-apiserver audit events), by class (read, write, denied)",
    ["policy", "verb_class"],
    registry=REGISTRY,
)
audit_events_total = Counter(
    "breakglass_audit_events_total",
    "Audit events the sink received, by result (recorded, ignored, dropped, malformed, unauthenticated)",
    ["result"],
    registry=REGISTRY,
)
audit_sink_lag_seconds = Gauge(
    "breakglass_audit_sink_lag_seconds",
    "Seconds from kube-apiserver's stageTimestamp to receipt, for the oldest event of the latest batch",
    registry=REGISTRY,
)
audit_handling_seconds = Histogram(
    "breakglass_audit_handling_seconds",
    "Time the audit sink took to answer one batch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
token_reuse_total = Counter(
    "breakglass_token_reuse_total",
    "Presentations of a revoked or expired break-glass token to the TokenReview webhook",
    ["policy", "state"],
    registry=REGISTRY,
)
