#!/usr/bin/env python3
"""Generate crds/*.yaml (and the chart's copy) from one compact description.

Every field carries a description; `make crds` regenerates, a unit test fails on drift.
"""

from __future__ import annotations

import copy
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
from breakglass.domain.durations import DURATION_PATTERN  # noqa: E402  (one source for the patterns)
from breakglass.domain.policy import SCOPE_PATTERN  # noqa: E402

DURATION = {"type": "string", "pattern": DURATION_PATTERN, "maxLength": 32}
NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
RFC3339 = {"type": "string", "format": "date-time"}
# One scope per item, no whitespace (the webhook checks the same pattern).
SCOPE = {"type": "string", "pattern": SCOPE_PATTERN, "maxLength": 128}


def s(desc, **kw):
    return {"type": "string", "description": desc, **kw}


def arr(desc, items, **kw):
    return {"type": "array", "description": desc, "items": items, **kw}


def obj(desc, props, required=None, **kw):
    out = {"type": "object", "description": desc, "properties": props, **kw}
    if required:
        out["required"] = required
    return out


def d(desc, default=None):
    out = dict(DURATION, description=desc)
    if default:
        out["default"] = default
    return out


def limits(desc):
    count = {"type": "integer", "minimum": 1}
    return obj(
        desc,
        {
            "maxRequests": dict(count, description="Revoke once the grant identity made this many API requests."),
            "maxWrites": dict(
                count, description="Revoke once it made this many successful writes (create/update/patch/delete)."
            ),
            "idleTimeout": d(
                "Revoke once unused for this long (at least 10s); measured from the last use, or from issue."
            ),
        },
    )


def subjects(desc):
    return obj(
        desc,
        {
            "users": arr(
                "User names as the API server authenticates them.", s("A user name.", maxLength=253), maxItems=256
            ),
            "groups": arr(
                "Group names as the API server authenticates them.", s("A group name.", maxLength=253), maxItems=256
            ),
        },
    )


def conditions():
    return arr(
        "Kubernetes-style conditions; lastTransitionTime moves only when status flips.",
        obj(
            "One condition.",
            {
                "type": s("Condition type."),
                "status": s("True, False or Unknown.", enum=["True", "False", "Unknown"]),
                "reason": s("Machine-readable CamelCase reason."),
                "message": s("Human-readable explanation."),
                "lastTransitionTime": dict(RFC3339, description="When status last flipped."),
                "observedGeneration": {
                    "type": "integer",
                    "description": "metadata.generation this condition reflects.",
                },
            },
            required=["type", "status"],
        ),
        **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


POLICY_SPEC = obj(
    "Who may request what, who approves, and for how long.",
    {
        "requesters": subjects("Who may file requests under this policy."),
        "approvers": subjects("Who may approve, deny or review requests under this policy."),
        "requiredApprovals": {
            "type": "integer",
            "minimum": 0,
            "maximum": 10,
            "default": 1,
            "description": "Distinct eligible approvers needed (0 = no human approval).",
        },
        "allowSelfApproval": {
            "type": "boolean",
            "default": False,
            "description": "Whether a requester who is also an approver may approve their own request.",
        },
        "allowedNamespaces": arr(
            "Namespaces a grant may target: names or globs such as team-*.",
            s("A namespace name or glob.", maxLength=253),
            maxItems=256,
        ),
        "allowedClusterRoles": arr(
            "ClusterRoles a grant may bind (exact names; '*' is refused).",
            s("A ClusterRole name.", maxLength=253),
            maxItems=256,
        ),
        "allowedScopes": arr(
            "Globs for free-form JWT scopes, e.g. db:*.", s("A scope glob.", maxLength=253), maxItems=256
        ),
        "audiences": arr(
            "Token audiences a request may ask for (default [breakglass]).",
            s("An audience.", maxLength=253),
            maxItems=32,
            default=["breakglass"],
        ),
        "defaultDuration": d("Grant duration when a request names none (<n>h<n>m<n>s).", "15m"),
        "maxDuration": d("Longest grant a request may ask for.", "1h"),
        "approvalTimeout": d("How long a request may stay Pending before it is Denied (ApprovalTimeout).", "30m"),
        "maxScheduleAhead": d(
            "How far after its creation a request's spec.startAt may be (default 168h = 7 days).", "168h"
        ),
        "requireTicket": {"type": "boolean", "default": False, "description": "Whether spec.ticket is mandatory."},
        "ticketPattern": s("Regular expression a ticket must fully match.", maxLength=512),
        "autoApprove": obj(
            "Requests approved without a human: by requester group, or while an incident's alert is firing.",
            {
                "groups": arr(
                    "Groups whose members are approved automatically.", s("A group name.", maxLength=253), maxItems=64
                ),
                "whenAlertFiring": obj(
                    "Auto-approve while an alert with exactly these labels is firing (active, not silenced, not "
                    "inhibited) in Alertmanager. Alertmanager unreachable or erroring counts as not firing.",
                    {
                        "matchers": {
                            "type": "object",
                            "description": "Label name -> exact value (no regex), e.g. {alertname: PostgresDown}.",
                            "additionalProperties": {"type": "string", "maxLength": 1024},
                            "minProperties": 1,
                            "maxProperties": 16,
                        },
                        "alertmanagerURL": s(
                            "Alertmanager base URL (API v2); default: the operator's --alertmanager-url.",
                            pattern=r"^https?://\S+$",
                            maxLength=2048,
                        ),
                    },
                    required=["matchers"],
                ),
                "revokeOnResolve": {
                    "type": "boolean",
                    "default": False,
                    "description": "Revoke grants an alert approved (IncidentResolved) once no matching alert fires.",
                },
                "resolveGrace": d("How long after the incident resolved such grants are revoked (default: at once)."),
            },
        ),
        "emergency": obj(
            "Emergency access: issued at once, reviewed afterwards.",
            {
                "allowed": {
                    "type": "boolean",
                    "default": False,
                    "description": "Whether spec.emergency requests are issued without approval.",
                },
                "reviewWithin": d("An approver must file a Review within this time after issue.", "24h"),
            },
        ),
        "extension": obj(
            "Extending an active grant (BreakGlassExtension): a new token in the same Secret, later exp.",
            {
                "allowed": {"type": "boolean", "default": False, "description": "Whether grants may be extended."},
                "requiredApprovals": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 10,
                    "default": 1,
                    "description": "Distinct approvers (never the requester) needed per extension; 0 = none.",
                },
                "maxTotal": d("Longest total grant (original + approved extensions); default: maxDuration."),
            },
        ),
        "limits": limits(
            "Use limits of every grant, counted from kube-apiserver's audit events (needs the audit sink, "
            "see README). Fixed at issue; a request may only lower them."
        ),
        "tokenDelivery": s(
            "Where the token Secret and its reader Role go. OperatorNamespace (default): the operator's "
            "token namespace, readable only by the requester. RequestNamespace: the request's namespace, "
            "for workloads that mount it; anyone who can read Secrets there can read the token.",
            enum=["OperatorNamespace", "RequestNamespace"],
            default="OperatorNamespace",
        ),
        "notify": arr(
            "Webhooks told about this policy's requests (at-least-once, signed; see README Notifications).",
            obj(
                "One notification target.",
                {
                    "webhook": s("http(s) URL notifications are POSTed to.", pattern=r"^https?://", maxLength=2048),
                    "format": s(
                        "json (signed payload) or slack (webhook body).", enum=["json", "slack"], default="json"
                    ),
                    "secretRef": obj(
                        "Secret in the operator namespace holding the HMAC key (required for json).",
                        {"name": dict(NAME, description="Secret name."), "key": s("Key in the Secret.", maxLength=253)},
                        required=["name", "key"],
                    ),
                    "events": arr(
                        "Events sent (default all).",
                        s(
                            "An event.",
                            enum=["Requested", "Approved", "Denied", "Issued", "Expiring", "Revoked", "ReviewOverdue"],
                        ),
                        maxItems=7,
                    ),
                    "expiringLead": d("How long before exp the Expiring notice is sent.", "5m"),
                },
                required=["webhook"],
            ),
            maxItems=16,
        ),
    },
    required=["requesters"],
)

POLICY_STATUS = obj(
    "Observed state of the policy.",
    {
        "conditions": conditions(),
        "observedGeneration": {"type": "integer", "description": "metadata.generation last evaluated."},
    },
)

REQUEST_SPEC = obj(
    "What is requested, why, and for how long. Immutable except spec.revoked.",
    {
        "policy": dict(NAME, description="Name of the BreakGlassPolicy this request is filed under."),
        "reason": s("Why access is needed (10-1024 characters).", minLength=10, maxLength=1024),
        "ticket": s("Incident or change ticket.", maxLength=128),
        "duration": d("How long the grant lasts (<n>h<n>m<n>s); default: the policy's defaultDuration."),
        "namespaces": arr(
            "Namespaces in which each ClusterRole is bound.", dict(NAME, description="A namespace."), maxItems=64
        ),
        "clusterRoles": arr(
            "ClusterRoles to bind in each namespace.", s("A ClusterRole name.", maxLength=253), maxItems=32
        ),
        "scopes": arr(
            "Free-form JWT scopes, e.g. db:read; the k8s: prefix is reserved.",
            dict(SCOPE, description="One scope: letters, digits and ._:/+=@- (no whitespace)."),
            maxItems=64,
        ),
        "audiences": arr("Token audiences (default: the policy's).", s("An audience.", maxLength=253), maxItems=16),
        "emergency": {
            "type": "boolean",
            "default": False,
            "description": "Issue at once without approval (policy must allow it); a review is then required.",
        },
        "startAt": s(
            "Scheduled start, RFC 3339 with an offset (e.g. 2026-11-28T22:00:00Z), at most the policy's "
            "maxScheduleAhead after creation. Approvals may come before it; the request then waits in phase "
            "Scheduled and the token is issued at startAt, valid until startAt + duration. Checked by admission.",
            maxLength=64,
        ),
        "limits": limits("Lower use limits for this grant than its policy's (admission refuses higher ones)."),
        "revoked": {
            "type": "boolean",
            "default": False,
            "description": "Set to true to revoke: the token Secret is deleted at once and the jti is revoked.",
        },
        "requester": s("Written by admission from the authenticated user; never chosen by the client.", maxLength=253),
        "requesterGroups": arr(
            "Written by admission from the authenticated user's groups.",
            s("A group name.", maxLength=253),
            maxItems=256,
        ),
    },
    required=["policy", "reason"],
)

REQUEST_STATUS = obj(
    "Observed state of the request.",
    {
        "phase": s(
            "Pending, Scheduled (approved, waiting for spec.startAt), Active, Expired, Revoked, Denied or Failed.",
            enum=["Pending", "Scheduled", "Active", "Expired", "Revoked", "Denied", "Failed"],
        ),
        "message": s("Human-readable summary of the phase."),
        "conditions": conditions(),
        "observedGeneration": {"type": "integer", "description": "metadata.generation last reconciled."},
        "approvals": arr(
            "Counted approvals.",
            obj(
                "One approval.",
                {
                    "approver": s("Verified approver identity."),
                    "decision": s("Approve, Deny or Review.", enum=["Approve", "Deny", "Review"]),
                    "time": dict(RFC3339, description="When the approval was filed.", nullable=True),
                    "comment": s("Approver's comment."),
                },
            ),
        ),
        "ignoredApprovals": arr(
            "Names of approvals that did not count (see ApprovalIgnored Events).", s("A BreakGlassApproval name.")
        ),
        "approvedAt": dict(RFC3339, description="When the request was approved."),
        "issuedAt": dict(RFC3339, description="When the token was issued."),
        "expiresAt": dict(RFC3339, description="When the token expires (its exp claim)."),
        "tokenId": s("The token's jti."),
        "username": s("The grant's Kubernetes username, breakglass:<namespace>:<name>:<uid>; never reused."),
        "keyId": s("kid of the signing key."),
        "secretRef": obj(
            "Where the token Secret is (while Active).",
            {"namespace": s("Namespace of the Secret."), "name": s("Name of the Secret.")},
            nullable=True,
        ),
        "usage": obj(
            "What the grant identity did (kube-apiserver audit events, via the operator's audit sink).",
            {
                "requests": {"type": "integer", "description": "API requests made."},
                "denied": {"type": "integer", "description": "Of which answered 403."},
                "writes": {"type": "integer", "description": "Successful create/update/patch/delete requests."},
                "firstUsedAt": dict(RFC3339, description="First use."),
                "lastUsedAt": dict(RFC3339, description="Last use."),
                "limits": limits("The grant's effective use limits (fixed at issue)."),
                "trail": arr(
                    "The most recent actions (at most 50), oldest first; the audit log (event used) has all.",
                    obj(
                        "One action.",
                        {
                            "seq": {"type": "integer", "description": "Position among all the grant's requests."},
                            "time": dict(RFC3339, description="kube-apiserver's stageTimestamp."),
                            "verb": s("The request verb."),
                            "resource": s("Resource (empty for non-resource requests)."),
                            "subresource": s("Subresource."),
                            "namespace": s("Namespace of the object."),
                            "name": s("Name of the object."),
                            "uri": s("Request URI of a non-resource request."),
                            "code": {"type": "integer", "description": "HTTP status answered."},
                            "auditID": s("kube-apiserver's auditID (find the event in its own audit log)."),
                        },
                    ),
                    maxItems=50,
                ),
                "trailTotal": {"type": "integer", "description": "Actions in total (the trail shows the last 50)."},
            },
        ),
        "extensions": arr(
            "Extensions the operator decided (BreakGlassExtension), in order.",
            obj(
                "One extension.",
                {
                    "name": s("The BreakGlassExtension."),
                    "by": s("How much longer it asked for."),
                    "state": s("Applied or Refused.", enum=["Applied", "Refused"]),
                    "approvedBy": arr("Who approved it.", s("An approver.")),
                    "at": dict(RFC3339, description="When it was decided."),
                    "expiresAt": dict(RFC3339, description="The grant's exp after it (Applied)."),
                    "message": s("Why it was refused."),
                },
            ),
        ),
        "approval": obj(
            "Set when an alert approved the grant (reason AlertFiring): which alert.",
            {
                "reason": s("How the grant was approved."),
                "alert": obj(
                    "The firing alert that approved it.",
                    {
                        "fingerprint": s("Alertmanager's fingerprint of the alert."),
                        "labels": {
                            "type": "object",
                            "description": "The alert's labels.",
                            "additionalProperties": {"type": "string"},
                        },
                        "startsAt": s("When the alert started firing."),
                    },
                ),
            },
        ),
        "review": obj(
            "Post-hoc review of emergency access.",
            {
                "required": {"type": "boolean", "description": "Whether a review is required."},
                "dueAt": dict(RFC3339, description="When the review is due."),
                "reviewer": s("Who reviewed."),
                "reviewedAt": dict(RFC3339, description="When it was reviewed."),
            },
        ),
    },
)

APPROVAL_SPEC = obj(
    "An approver's decision on one request in the same namespace. Immutable.",
    {
        "request": dict(NAME, description="Name of the BreakGlassRequest in this namespace."),
        "decision": s("Approve, Deny, or Review (closes an emergency review).", enum=["Approve", "Deny", "Review"]),
        "comment": s("Free text for the audit trail.", maxLength=1024),
        "requestUID": s(
            "Written by admission: metadata.uid of the request instance approved (a client-given different "
            "value is refused). Only approvals carrying the request's current uid, created after it, count.",
            maxLength=128,
        ),
        "approver": s("Written by admission from the authenticated user; never chosen by the client.", maxLength=253),
        "approverGroups": arr(
            "Written by admission from the authenticated user's groups.",
            s("A group name.", maxLength=253),
            maxItems=256,
        ),
        "extension": dict(
            NAME, description="Answer a BreakGlassExtension of the request (Approve or Deny) instead of the request."
        ),
        "extensionUID": s(
            "Written by admission: metadata.uid of the extension answered (a client-given different value is refused).",
            maxLength=128,
        ),
    },
    required=["request", "decision"],
)

EXTENSION_SPEC = obj(
    "The requester asks for more time on their Active grant. Immutable.",
    {
        "request": dict(NAME, description="Name of the BreakGlassRequest in this namespace."),
        "by": d("How much longer (<n>h<n>m<n>s)."),
        "reason": s("Why (10-1024 characters).", minLength=10, maxLength=1024),
        "requestUID": s("Written by admission: metadata.uid of the request instance extended.", maxLength=128),
        "requester": s("Written by admission from the authenticated user; must be the request's requester."),
        "requesterGroups": arr(
            "Written by admission from the authenticated user's groups.", s("A group name.", maxLength=253)
        ),
    },
    required=["request", "by", "reason"],
)

DRILL_SPEC = obj(
    "A scheduled end-to-end exercise of the break-glass path.",
    {
        "schedule": s("Interval like 6h, or a 5-field cron expression.", maxLength=128),
        "policy": dict(NAME, description="Policy the synthetic request is filed under."),
        "namespaces": arr("Namespaces for the drill grant.", dict(NAME, description="A namespace."), maxItems=16),
        "clusterRoles": arr("ClusterRoles for the drill grant.", s("A ClusterRole name."), maxItems=16),
        "scopes": arr(
            "Scopes for the drill grant.", dict(SCOPE, description="One scope (no whitespace)."), maxItems=16
        ),
        "duration": d("Duration of the drill grant.", "5m"),
        "verifyWithCluster": {
            "type": "boolean",
            "default": False,
            "description": "Also check the token through TokenReview and a SelfSubjectAccessReview.",
        },
        "runNow": {"type": "integer", "description": "Bump to run the drill immediately."},
    },
    required=["schedule", "policy"],
)

DRILL_STATUS = obj(
    "Results of the latest drill runs.",
    {
        "lastRun": dict(RFC3339, description="When the last run started."),
        "lastSuccess": dict(RFC3339, description="When a run last succeeded."),
        "lastResult": s("Succeeded or Failed.", enum=["Succeeded", "Failed", "Running"]),
        "durationSeconds": {"type": "number", "description": "How long the last run took."},
        "failureReason": s("The failing step and why."),
        "steps": arr(
            "Per-step results of the last run.",
            obj(
                "One step.",
                {
                    "name": s("Step name."),
                    "ok": {"type": "boolean", "description": "Whether it passed."},
                    "message": s("What happened."),
                },
            ),
        ),
        "handledRunNow": {"type": "integer", "description": "Last spec.runNow value acted on."},
        "conditions": conditions(),
    },
)


def crd(kind, plural, short, scope, spec, status, columns):
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.breakglass.dev",
            "labels": {"app.kubernetes.io/name": "breakglass-operator", "app.kubernetes.io/part-of": "breakglass"},
        },
        "spec": {
            "group": "breakglass.dev",
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["breakglass"],
            },
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": obj(
                            f"{kind} (breakglass.dev/v1alpha1).",
                            {
                                "apiVersion": s("APIVersion of this object."),
                                "kind": s("Kind of this object."),
                                "metadata": {"type": "object"},
                                "spec": copy.deepcopy(spec),
                                "status": copy.deepcopy(status),
                            },
                            required=["spec"],
                        )
                    },
                }
            ],
        },
    }


AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
CRDS = {
    "breakglass.dev_breakglasspolicies.yaml": crd(
        "BreakGlassPolicy",
        "breakglasspolicies",
        "bgp",
        "Cluster",
        POLICY_SPEC,
        POLICY_STATUS,
        [
            {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            {"name": "Approvals", "type": "integer", "jsonPath": ".spec.requiredApprovals"},
            {"name": "Max", "type": "string", "jsonPath": ".spec.maxDuration"},
            {
                "name": "Reason",
                "type": "string",
                "priority": 1,
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            },
            AGE,
        ],
    ),
    "breakglass.dev_breakglassrequests.yaml": crd(
        "BreakGlassRequest",
        "breakglassrequests",
        "bgr",
        "Namespaced",
        REQUEST_SPEC,
        REQUEST_STATUS,
        [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Requester", "type": "string", "jsonPath": ".spec.requester"},
            {"name": "Policy", "type": "string", "jsonPath": ".spec.policy"},
            {"name": "Starts", "type": "string", "priority": 1, "jsonPath": ".spec.startAt"},
            {"name": "Expires", "type": "string", "jsonPath": ".status.expiresAt"},
            {"name": "Token", "type": "string", "priority": 1, "jsonPath": ".status.tokenId"},
            {"name": "Message", "type": "string", "priority": 1, "jsonPath": ".status.message"},
            AGE,
        ],
    ),
    "breakglass.dev_breakglassapprovals.yaml": crd(
        "BreakGlassApproval",
        "breakglassapprovals",
        "bga",
        "Namespaced",
        APPROVAL_SPEC,
        {
            "type": "object",
            "description": "Unused; approvals are immutable records.",
            "x-kubernetes-preserve-unknown-fields": True,
        },
        [
            {"name": "Request", "type": "string", "jsonPath": ".spec.request"},
            {"name": "Decision", "type": "string", "jsonPath": ".spec.decision"},
            {"name": "Approver", "type": "string", "jsonPath": ".spec.approver"},
            AGE,
        ],
    ),
    "breakglass.dev_breakglassextensions.yaml": crd(
        "BreakGlassExtension",
        "breakglassextensions",
        "bgx",
        "Namespaced",
        EXTENSION_SPEC,
        {
            "type": "object",
            "description": "Unused; the request's status.extensions[] says what was decided.",
            "x-kubernetes-preserve-unknown-fields": True,
        },
        [
            {"name": "Request", "type": "string", "jsonPath": ".spec.request"},
            {"name": "By", "type": "string", "jsonPath": ".spec.by"},
            {"name": "Requester", "type": "string", "jsonPath": ".spec.requester"},
            AGE,
        ],
    ),
    "breakglass.dev_breakglassdrills.yaml": crd(
        "BreakGlassDrill",
        "breakglassdrills",
        "bgd",
        "Namespaced",
        DRILL_SPEC,
        DRILL_STATUS,
        [
            {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
            {"name": "Result", "type": "string", "jsonPath": ".status.lastResult"},
            {"name": "Last-Success", "type": "date", "jsonPath": ".status.lastSuccess"},
            {"name": "Failure", "type": "string", "priority": 1, "jsonPath": ".status.failureReason"},
            AGE,
        ],
    ),
}


def render() -> dict[str, str]:
    header = "# Generated by hack/gen_crds.py; do not edit by hand (make crds).\n"
    return {name: header + yaml.safe_dump(body, sort_keys=False, width=120) for name, body in CRDS.items()}


def main(argv) -> int:
    targets = [ROOT / "crds", ROOT / "charts" / "breakglass-operator" / "crds"]
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in render().items():
            (target / name).write_text(text)
    print(f"wrote {len(CRDS)} CRDs to " + ", ".join(str(t.relative_to(ROOT)) for t in targets))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
