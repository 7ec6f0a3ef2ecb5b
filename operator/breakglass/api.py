"""API group, kinds, labels and names shared by every layer (the contract)."""

GROUP = "breakglass.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

POLICY_PLURAL = "breakglasspolicies"
REQUEST_PLURAL = "breakglassrequests"
APPROVAL_PLURAL = "breakglassapprovals"
DRILL_PLURAL = "breakglassdrills"
EXTENSION_PLURAL = "breakglassextensions"

KIND_POLICY = "BreakGlassPolicy"
KIND_REQUEST = "BreakGlassRequest"
KIND_APPROVAL = "BreakGlassApproval"
KIND_EXTENSION = "BreakGlassExtension"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "breakglass-operator"
REQUEST_LABEL = "breakglass.dev/request"
REQUEST_NS_LABEL = "breakglass.dev/request-namespace"
EXPIRES_AT_ANNOTATION = "breakglass.dev/expires-at"
TOKEN_ID_ANNOTATION = "breakglass.dev/token-id"
KEY_ID_ANNOTATION = "breakglass.dev/key-id"
ISSUED_AT_ANNOTATION = "breakglass.dev/issued-at"
REQUEST_UID_ANNOTATION = "breakglass.dev/request-uid"
FINALIZER = "breakglass.dev/revoke-on-delete"
DRILL_LABEL = "breakglass.dev/drill"  # "true" on synthetic drill requests: never counted as real grants
# A server-side dry-run carrying this label only learns the caller's identity (explain); never persisted.
IDENTITY_PROBE_LABEL = "breakglass.dev/identity-probe"

TOKEN_SECRET_TYPE = "breakglass.dev/token"
SIGNING_KEYS_SECRET = "breakglass-signing-keys"
REVOCATIONS_CONFIGMAP = "breakglass-revocations"
JWKS_CONFIGMAP = "breakglass-jwks"
DEFAULT_OPERATOR_NAMESPACE = "breakglass-system"

# Phases (for humans) and condition types (for machines).
PENDING, ACTIVE, EXPIRED, REVOKED, DENIED, FAILED = ("Pending", "Active", "Expired", "Revoked", "Denied", "Failed")
SCHEDULED = "Scheduled"  # approved, waiting for spec.startAt (not terminal)
PHASES = (PENDING, SCHEDULED, ACTIVE, EXPIRED, REVOKED, DENIED, FAILED)
TERMINAL_PHASES = frozenset({EXPIRED, REVOKED, DENIED, FAILED})
COND_APPROVED, COND_ISSUED, COND_EXPIRED, COND_REVOKED = "Approved", "Issued", "Expired", "Revoked"
COND_READY = "Ready"
COND_REVIEW_OVERDUE = "ReviewOverdue"


# The grant ledger: one ConfigMap per request uid in the operator namespace, written only by the
# operator. It is the only record of what was issued and of what the operator created.
LEDGER_LABEL = "breakglass.dev/ledger"
LEDGER_KEY = "grant.json"
AUDIT_HEAD_CONFIGMAP = "breakglass-audit-head"
AUDIT_HMAC_SECRET = "breakglass-audit-hmac"
# Random per grant, kept in the ledger: an object carrying it was created by the operator.
GRANT_NONCE_ANNOTATION = "breakglass.dev/grant-nonce"
# Identity prefix: webhook answers and the OIDC flags (--oidc-username-prefix / --oidc-groups-prefix)
# both put it in front of the claims, so no token can name a `system:` user or group.
IDENTITY_PREFIX = "breakglass:"
GRANT_GROUP_CLAIM = "grant"


def ledger_name(request_uid: str) -> str:
    return f"breakglass-grant-{request_uid}"


def token_secret_name(request_uid: str) -> str:
    """Named by the request uid: a new request with an old name never meets an old Secret."""
    return f"breakglass-token-{request_uid}"


def reader_role_name(request_uid: str) -> str:
    return f"breakglass-token-reader-{request_uid}"


def grant_user_claim(namespace: str, request_name: str, request_uid: str) -> str:
    return f"{namespace}:{request_name}:{request_uid}"


def grant_username(namespace: str, request_name: str, request_uid: str) -> str:
    """Each grant has its own Kubernetes identity, never reused: it carries the request uid."""
    return IDENTITY_PREFIX + grant_user_claim(namespace, request_name, request_uid)


def grant_group_claims(policy: str) -> list[str]:
    return [GRANT_GROUP_CLAIM, f"policy:{policy}"]


def grant_groups(policy: str) -> list[str]:
    return [IDENTITY_PREFIX + g for g in grant_group_claims(policy)]


def is_drill(obj: dict) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(DRILL_LABEL) == "true"


def managed_labels(request_name: str, request_namespace: str) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        REQUEST_LABEL: request_name,
        REQUEST_NS_LABEL: request_namespace,
    }
