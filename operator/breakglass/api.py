"""API group, kinds, labels and names shared by every layer (the contract)."""

GROUP = "breakglass.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

POLICY_PLURAL = "breakglasspolicies"
REQUEST_PLURAL = "breakglassrequests"
APPROVAL_PLURAL = "breakglassapprovals"
DRILL_PLURAL = "breakglassdrills"

KIND_POLICY = "BreakGlassPolicy"
KIND_REQUEST = "BreakGlassRequest"
KIND_APPROVAL = "BreakGlassApproval"

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
PENDING, ACTIVE, EXPIRED, REVOKED, DENIED, FAILED = (
    "Pending", "Active", "Expired", "Revoked", "Denied", "Failed")
TERMINAL_PHASES = frozenset({EXPIRED, REVOKED, DENIED, FAILED})
COND_APPROVED, COND_ISSUED, COND_EXPIRED, COND_REVOKED = "Approved", "Issued", "Expired", "Revoked"
COND_READY = "Ready"
COND_REVIEW_OVERDUE = "ReviewOverdue"


def token_secret_name(request_name: str) -> str:
    return f"{request_name}-token"


def reader_role_name(request_name: str) -> str:
    return f"{request_name}-token-reader"


def grant_username(namespace: str, request_name: str) -> str:
    """Each grant has its own Kubernetes identity, so two grants never share permissions."""
    return f"breakglass:{namespace}:{request_name}"


def grant_groups(policy: str) -> list[str]:
    return ["breakglass", f"breakglass:policy:{policy}"]


def is_drill(obj: dict) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(DRILL_LABEL) == "true"


def managed_selector(request_namespace: str, request_name: str) -> str:
    """Label selector for everything made for one request (Secret, Roles, RoleBindings)."""
    return (f"{MANAGED_BY_LABEL}={MANAGED_BY},{REQUEST_LABEL}={request_name},"
            f"{REQUEST_NS_LABEL}={request_namespace}")


def managed_labels(request_name: str, request_namespace: str) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        REQUEST_LABEL: request_name,
        REQUEST_NS_LABEL: request_namespace,
    }
