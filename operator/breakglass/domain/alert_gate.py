"""Incident-gated auto-approval (policy `spec.autoApprove.whenAlertFiring`) as pure rules over plain data.

The poller (`breakglass/alert_gate.py`) keeps, per gate, what Alertmanager last answered (`GateState`);
reconciles ask these functions with that snapshot and an injected `now`, never the network.

Security: the matchers come only from the cluster-scoped, admin-owned policy (a request can name no
alert); labels are compared exactly (no regex); an error or an unanswered query is never "firing",
and never "resolved" either: only a successful answer may approve or revoke.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from .durations import DurationError, parse_duration, to_rfc3339

ALERT_FIRING = "AlertFiring"  # condition Approved reason, and AlertGate=True
INCIDENT_RESOLVED = "IncidentResolved"  # revocation reason
COND_ALERT_GATE = "AlertGate"
NOT_FIRING, UNREACHABLE, NOT_QUERIED, NOT_CONFIGURED = (
    "AlertNotFiring",
    "AlertmanagerUnreachable",
    "AlertmanagerNotQueried",
    "AlertmanagerNotConfigured",
)
LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_MATCHERS = 16

GateKey = tuple[str, tuple[tuple[str, str], ...]]  # (Alertmanager URL, sorted exact matchers)


@dataclass(frozen=True)
class Gate:
    matchers: tuple[tuple[str, str], ...]
    url: str = ""  # empty: the operator's --alertmanager-url
    revoke_on_resolve: bool = False
    resolve_grace: str = ""  # empty: revoke at the first answer that shows the incident resolved

    @classmethod
    def from_spec(cls, auto_approve: dict[str, Any] | None) -> Gate | None:
        when = (auto_approve or {}).get("whenAlertFiring")
        if when is None:
            return None
        matchers = (when or {}).get("matchers") or {}
        return cls(
            matchers=tuple(sorted((str(k), str(v)) for k, v in matchers.items())),
            url=(when or {}).get("alertmanagerURL") or "",
            revoke_on_resolve=bool(auto_approve.get("revokeOnResolve", False)),
            resolve_grace=auto_approve.get("resolveGrace") or "",
        )

    def key(self, default_url: str | None) -> GateKey | None:
        url = (self.url or default_url or "").rstrip("/")
        return (url, self.matchers) if url else None

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.matchers)


@dataclass(frozen=True)
class Alert:
    fingerprint: str
    labels: tuple[tuple[str, str], ...]
    starts_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "labels": dict(self.labels), "startsAt": self.starts_at}


@dataclass(frozen=True)
class GateState:
    """What the last query of one gate answered. `ok` False: the query failed (unreachable, an error
    status, an unreadable body). `resolved_since`: the first successful answer showing no matching
    alert after the last that showed one (the resolve grace runs from it; errors leave it alone)."""

    ok: bool
    alerts: tuple[Alert, ...] = ()
    error: str = ""
    checked_at: dt.datetime | None = None
    resolved_since: dt.datetime | None = None

    @property
    def firing(self) -> bool:
        return self.ok and bool(self.alerts)


def grace(gate: Gate) -> dt.timedelta:
    return parse_duration(gate.resolve_grace) if gate.resolve_grace else dt.timedelta(0)


def validate_gate(gate: Gate | None) -> list[tuple[str, str]]:
    """(reason, message) problems that make the policy unusable; a gate with no matchers would match
    every alert, so it is refused."""
    if gate is None:
        return []
    problems = []
    if not gate.matchers:
        problems.append(("InvalidAlertGate", "spec.autoApprove.whenAlertFiring.matchers must name at least one label"))
    if len(gate.matchers) > MAX_MATCHERS:
        problems.append(("InvalidAlertGate", f"spec.autoApprove.whenAlertFiring.matchers: at most {MAX_MATCHERS}"))
    bad = [k for k, _ in gate.matchers if not LABEL_NAME.match(k)]
    if bad:
        problems.append(("InvalidAlertGate", f"spec.autoApprove.whenAlertFiring.matchers: invalid label names {bad}"))
    if gate.url and not re.match(r"^https?://[^\s]+$", gate.url):
        problems.append(("InvalidAlertGate", "spec.autoApprove.whenAlertFiring.alertmanagerURL must be http(s)://"))
    try:
        grace(gate)
    except DurationError as exc:
        problems.append(("InvalidDuration", f"spec.autoApprove.resolveGrace: {exc}"))
    return problems


def matches(matchers: tuple[tuple[str, str], ...], labels: dict[str, Any]) -> bool:
    """Every matcher's label present with exactly that value."""
    return bool(matchers) and all(labels.get(k) == v for k, v in matchers)


def filter_params(matchers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """Alertmanager API v2 `filter` parameters (equality matchers, values quoted and escaped). The
    answer is matched exactly again on our side: the server-side filter only narrows the answer."""

    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return [("filter", f"{k}={quote(v)}") for k, v in matchers]


def parse_alerts(matchers: tuple[tuple[str, str], ...], body: Any) -> tuple[Alert, ...]:
    """The active alerts of an API v2 `GET /api/v2/alerts` answer that match exactly, oldest first.
    Raises ValueError on an answer that is not a list of alerts (treated as an error, never as 'none')."""
    if not isinstance(body, list):
        raise ValueError("the answer is not a list of alerts")
    out = []
    for item in body:
        if not isinstance(item, dict) or not isinstance(item.get("labels"), dict):
            raise ValueError("an alert without labels")
        if (item.get("status") or {}).get("state") != "active":
            continue
        labels = {str(k): str(v) for k, v in item["labels"].items()}
        if matches(matchers, labels):
            fingerprint = str(item.get("fingerprint") or "")
            out.append(Alert(fingerprint, tuple(sorted(labels.items())), str(item.get("startsAt") or "")))
    return tuple(sorted(out, key=lambda a: (a.starts_at, a.fingerprint)))


def next_state(
    prev: GateState | None, *, ok: bool, alerts: tuple[Alert, ...] = (), error: str = "", now: dt.datetime
) -> GateState:
    since = prev.resolved_since if prev is not None else None
    if ok:
        since = None if alerts else (since or now)
    return GateState(ok=ok, alerts=alerts if ok else (), error=error, checked_at=now, resolved_since=since)


def firing_alert(state: GateState | None) -> Alert | None:
    return state.alerts[0] if state is not None and state.firing else None


def gate_condition(gate: Gate, key: GateKey | None, state: GateState | None) -> tuple[str, str, str]:
    """(status, reason, message) of the request condition AlertGate."""
    if key is None:
        return "False", NOT_CONFIGURED, "no Alertmanager URL: set the policy's alertmanagerURL or --alertmanager-url"
    if state is None:
        return "Unknown", NOT_QUERIED, f"Alertmanager {key[0]} not asked yet for an alert with {gate.describe()}"
    if not state.ok:
        return (
            "False",
            UNREACHABLE,
            (
                f"Alertmanager {key[0]} could not be queried ({state.error}): treated as not firing; "
                "a human approval still works"
            ),
        )
    alert = firing_alert(state)
    if alert is not None:
        return "True", ALERT_FIRING, f"alert {dict(alert.labels).get('alertname', '?')} ({alert.fingerprint}) is firing"
    return "False", NOT_FIRING, f"no alert with {gate.describe()} is firing in Alertmanager {key[0]}"


def approval_message(alert: Alert, policy_name: str) -> str:
    name = dict(alert.labels).get("alertname", "?")
    return f"auto-approved by policy {policy_name!r}: alert {name} (fingerprint {alert.fingerprint}) is firing"


def resolve_check(gate: Gate | None, state: GateState | None, now: dt.datetime) -> tuple[bool, dt.datetime | None, str]:
    """For a live grant an alert approved: (revoke now?, when to look again, why). The incident is
    resolved once a successful answer shows no alert matching the gate (the approving fingerprint or
    any other); it is revoked `resolveGrace` after that first answer. No answer, or an error: keep."""
    if gate is None or not gate.revoke_on_resolve or state is None or not state.ok or state.alerts:
        return False, None, ""
    since = state.resolved_since or now
    try:
        due = since + grace(gate)
    except DurationError:
        return False, None, ""
    if now >= due:
        return (
            True,
            None,
            (
                f"the alert that approved this grant resolved (no alert with {gate.describe()} firing since "
                f"{to_rfc3339(since)}; resolveGrace {gate.resolve_grace or 'none'}): access is revoked"
            ),
        )
    return False, due, ""
