"""Pure: which targets want which event, the idempotency id, and the bodies sent (JSON or Slack).

A notification never carries the token, a Secret's data or the HMAC key: only what the request's
Events already say (names, policy, requester, reason, grant scope, times) plus who must act next
and the exact `kubectl breakglass` command for it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..domain.durations import DurationError, parse_duration

REQUESTED, APPROVED, DENIED, ISSUED = "Requested", "Approved", "Denied", "Issued"
EXPIRING, REVOKED, REVIEW_OVERDUE = "Expiring", "Revoked", "ReviewOverdue"
EVENTS = (REQUESTED, APPROVED, DENIED, ISSUED, EXPIRING, REVOKED, REVIEW_OVERDUE)
FORMATS = ("json", "slack")
DEFAULT_EXPIRING_LEAD = "5m"
# Event reasons (recording.py) that are notifications, and the notification they are.
EVENT_REASONS = {
    "Requested": REQUESTED,
    "Approved": APPROVED,
    "Denied": DENIED,
    "Issued": ISSUED,
    "Revoked": REVOKED,
    "SigningKeyLost": REVOKED,
    "ReviewOverdue": REVIEW_OVERDUE,
}


@dataclass(frozen=True)
class Target:
    webhook: str
    format: str = "json"
    secret_name: str = ""
    secret_key: str = ""
    events: tuple[str, ...] = EVENTS
    expiring_lead: dt.timedelta = dt.timedelta(minutes=5)

    def to_dict(self) -> dict[str, Any]:
        return {
            "webhook": self.webhook,
            "format": self.format,
            "secretName": self.secret_name,
            "secretKey": self.secret_key,
        }


def targets_from_spec(spec: dict[str, Any] | None) -> list[Target]:
    """Targets of a policy spec; entries the CRD schema would refuse (bad URL, format, lead) are skipped."""
    out = []
    for raw in (spec or {}).get("notify") or []:
        url, fmt = str(raw.get("webhook") or ""), raw.get("format") or "json"
        if not url.startswith(("http://", "https://")) or fmt not in FORMATS:
            continue
        try:
            lead = parse_duration(raw.get("expiringLead") or DEFAULT_EXPIRING_LEAD)
        except DurationError:
            continue
        ref = raw.get("secretRef") or {}
        events = tuple(e for e in raw.get("events") or EVENTS if e in EVENTS)
        out.append(Target(url, fmt, ref.get("name") or "", ref.get("key") or "", events, lead))
    return out


def notification_id(request_uid: str, kind: str, target: Target, index: int) -> str:
    """Stable per (request uid, event, target): a re-emitted transition keeps its id (receivers dedupe)."""
    raw = f"{request_uid}\n{kind}\n{index}\n{target.webhook}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def _approvers(policy_spec: dict[str, Any]) -> dict[str, list[str]]:
    appr = policy_spec.get("approvers") or {}
    return {"users": list(appr.get("users") or []), "groups": list(appr.get("groups") or [])}


def next_step(kind: str, name: str, namespace: str, requester: str, policy_spec: dict[str, Any]) -> dict[str, Any]:
    """Who must act now and the exact command (approvers for Requested/ReviewOverdue, else the requester)."""
    where = f"{name} -n {namespace}"
    if kind == REQUESTED:
        return {"who": _approvers(policy_spec), "command": f"kubectl breakglass approve {where}"}
    if kind == REVIEW_OVERDUE:
        return {"who": _approvers(policy_spec), "command": f"kubectl breakglass review {where}"}
    if kind == ISSUED:
        return {
            "who": {"users": [requester], "groups": []},
            "command": f"kubectl breakglass token {where} --kubeconfig-out ./breakglass.kubeconfig",
        }
    return {"who": {"users": [requester], "groups": []}, "command": f"kubectl breakglass status {where}"}


def build_payload(
    *, nid: str, kind: str, time: str, req: dict[str, Any], policy_spec: dict[str, Any], message: str, facts: dict
) -> dict[str, Any]:
    """The JSON notification: the request as its Events describe it, never the token or Secret data."""
    meta, spec = req.get("metadata") or {}, req.get("spec") or {}
    request = {
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "policy": spec.get("policy", ""),
        "requester": spec.get("requester", ""),
        "reason": spec.get("reason", ""),
        "ticket": spec.get("ticket") or "",
        "duration": spec.get("duration") or "",
        "namespaces": list(spec.get("namespaces") or []),
        "clusterRoles": list(spec.get("clusterRoles") or []),
        "scopes": list(spec.get("scopes") or []),
        "emergency": bool(spec.get("emergency")),
    }
    if facts.get("expiresAt"):
        request["expiresAt"] = facts["expiresAt"]
    step = next_step(kind, request["name"], request["namespace"], request["requester"], policy_spec)
    return {
        "id": nid,
        "event": kind,
        "time": time,
        "message": message,
        "request": request,
        "action": step,
    }


_VERB = {
    REQUESTED: "requests break-glass access",
    APPROVED: "was approved",
    DENIED: "was denied",
    ISSUED: "was issued",
    EXPIRING: "expires soon",
    REVOKED: "was revoked",
    REVIEW_OVERDUE: "is overdue for its emergency review",
}


def slack_text(value: Any) -> str:
    """What a requester wrote, made inert for Slack mrkdwn: `&`, `<`, `>` as Slack's entities (no
    links, no @channel mentions) and one line (no forged `*Next:*` line)."""
    text = " ".join(str(value).split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(payload: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body: one line of text, a section naming who must act and the command.
    Every value is escaped (`slack_text`): the reason and ticket are the requester's words."""
    r = {k: (slack_text(v) if isinstance(v, str) else v) for k, v in payload["request"].items()}
    r["clusterRoles"] = [slack_text(x) for x in r.get("clusterRoles") or []]
    r["namespaces"] = [slack_text(x) for x in r.get("namespaces") or []]
    step, kind = payload["action"], payload["event"]
    who = ", ".join([*step["who"]["users"], *(f"group {g}" for g in step["who"]["groups"])]) or "nobody listed"
    subject = f"{r['requester']} {_VERB[kind]}" if kind == REQUESTED else f"{r['namespace']}/{r['name']} {_VERB[kind]}"
    text = f"[breakglass] {kind}: {subject} ({r['namespace']}/{r['name']}, policy {r['policy']})"
    grant = f"ClusterRoles {', '.join(r['clusterRoles']) or '-'} in {', '.join(r['namespaces']) or '-'}"
    details = f"*{kind}*: {subject}\n*Reason:* {r['reason']}\n*Grant:* {grant}"
    if r.get("ticket"):
        details += f"\n*Ticket:* {r['ticket']}"
    if r.get("expiresAt"):
        details += f"\n*Expires:* {r['expiresAt']}"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": details}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Next:* {who}: `{step['command']}`"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"id {payload['id']} · {payload['time']}"}]},
        ],
    }


def render(payload: dict[str, Any], fmt: str) -> bytes:
    """The exact bytes POSTed (and signed)."""
    body = slack_body(payload) if fmt == "slack" else payload
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
