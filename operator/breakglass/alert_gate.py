"""The alert gate's moving parts: a small poller thread on the leader asks Alertmanager (API v2) about
the gates live requests use, keeps the answers as an in-memory snapshot, and wakes the affected
requests through the work queue when an answer changes. Reconciles read the snapshot only: they never
wait for HTTP. The rules themselves are pure (domain/alert_gate.py).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from . import api, metrics
from .domain import alert_gate as G
from .domain import decisions as D
from .domain.conditions import set_condition
from .domain.durations import utcnow
from .domain.policy import Policy

log = logging.getLogger(__name__)

QUERY_TIMEOUT = 3.0  # seconds per Alertmanager query; an answer slower than this is an error
WANTED_FOR = 600.0  # a gate a reconcile asked about is polled this long even if the index lags
LIVE = ("", api.PENDING, api.SCHEDULED, api.ACTIVE)


def query_alertmanager(url: str, matchers: tuple[tuple[str, str], ...], timeout: float = QUERY_TIMEOUT) -> Any:
    """GET /api/v2/alerts for firing (not silenced, not inhibited) alerts; the parsed JSON body."""
    params = [("active", "true"), ("silenced", "false"), ("inhibited", "false"), *G.filter_params(matchers)]
    req = urllib.request.Request(
        f"{url}/api/v2/alerts?{urllib.parse.urlencode(params)}", headers={"Accept": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (the URL is admin configuration)
        return json.loads(resp.read(8 * 1024 * 1024))


class AlertGates:
    def __init__(
        self,
        *,
        default_url: str | None,
        interval: float,
        policy_body: Callable[[str], dict[str, Any] | None],
        requests: Callable[[], Iterable[Any]],
        enqueue: Callable[[str, str], None],
        clock: Callable[[], dt.datetime] = utcnow,
        fetch: Callable[..., Any] = query_alertmanager,
    ):
        self.default_url, self.interval = default_url, interval
        self.policy_body, self.requests, self.enqueue = policy_body, requests, enqueue
        self.clock, self.fetch = clock, fetch
        self._lock = threading.Lock()
        self._states: dict[G.GateKey, G.GateState] = {}
        self._wanted: dict[G.GateKey, float] = {}
        self._kick, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- reconcile side (memory only)
    def state(self, gate: G.Gate) -> tuple[G.GateKey | None, G.GateState | None]:
        key = gate.key(self.default_url)
        if key is None:
            return None, None
        with self._lock:
            st = self._states.get(key)
            self._wanted[key] = time.monotonic()
        if st is None:
            self._kick.set()  # first time anyone asks: poll now, not at the next tick
        return key, st

    def firing(self, policy: Policy | None) -> G.Alert | None:
        if policy is None or policy.alert_gate is None:
            return None
        return G.firing_alert(self.state(policy.alert_gate)[1])

    def on_active(self, decision: D.Decision, policy: Policy | None, entry: dict | None, now) -> D.Decision:
        """A live grant an alert approved: revoke it once the incident resolved (revokeOnResolve)."""
        if decision.action != D.ACTIVE or policy is None or policy.alert_gate is None:
            return decision
        if not ((entry or {}).get("approval") or {}).get("alert"):
            return decision
        revoke, due, why = G.resolve_check(policy.alert_gate, self.state(policy.alert_gate)[1], now)
        if revoke:
            return D.Decision(D.REVOKE, G.INCIDENT_RESOLVED, why)
        if due is not None and (decision.requeue_at is None or due < decision.requeue_at):
            return D.Decision(decision.action, decision.reason, decision.message, requeue_at=due)
        return decision

    def annotate(self, new: dict, policy: Policy | None, generation, now) -> dict:
        """Condition AlertGate on a live request under a gated policy (Pending: why it is not auto-approved)."""
        if policy is None or policy.alert_gate is None or new.get("phase") not in LIVE:
            return new
        if new.get("phase") == api.ACTIVE and not policy.alert_gate.revoke_on_resolve:
            return new  # nothing left for the gate to decide
        key, st = self.state(policy.alert_gate)
        status, reason, message = G.gate_condition(policy.alert_gate, key, st)
        conds = set_condition(
            new.get("conditions"),
            type=G.COND_ALERT_GATE,
            status=status,
            reason=reason,
            message=message,
            now=now,
            observed_generation=generation,
        )
        return dict(new, conditions=conds)

    # ---------------------------------------------------------------------- poller side
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alert-gate", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # never let the poller die; the next round tries again
                log.exception("alert gate poll failed")
            self._kick.wait(self.interval)
            self._kick.clear()

    def _gate(self, policy_name: str) -> G.Gate | None:
        body = self.policy_body(policy_name)
        return Policy.from_resource(policy_name, body.get("spec")).alert_gate if body else None

    def gates_in_use(self) -> set[G.GateKey]:
        """The gates some live request needs: Pending/Scheduled ones (approval), Active ones under
        revokeOnResolve; plus the gates reconciles asked about lately (should the index lag)."""
        out: set[G.GateKey] = set()
        seen: dict[str, G.Gate | None] = {}
        for req in self.requests():
            if req.phase not in LIVE or req.deleting:
                continue
            if req.policy not in seen:
                seen[req.policy] = self._gate(req.policy)
            gate = seen[req.policy]
            if gate is None or (req.phase == api.ACTIVE and not gate.revoke_on_resolve):
                continue
            key = gate.key(self.default_url)
            if key is not None:
                out.add(key)
        cutoff = time.monotonic() - WANTED_FOR
        with self._lock:
            for key, asked in list(self._wanted.items()):
                if asked < cutoff:
                    del self._wanted[key]
                else:
                    out.add(key)
        return out

    def poll_once(self) -> list[G.GateKey]:
        """Ask Alertmanager about every gate in use; wake the requests of the gates whose answer changed."""
        gates = self.gates_in_use()
        changed, all_ok = [], True
        for key in sorted(gates):
            url, matchers = key
            now = self.clock()
            try:
                alerts = G.parse_alerts(matchers, self.fetch(url, matchers))
                ok, error = True, ""
                metrics.alertmanager_queries_total.labels("ok").inc()
            except Exception as exc:  # unreachable, timeout, HTTP error, bad body: not firing, not resolved
                alerts, ok, error = (), False, _error_text(exc)
                metrics.alertmanager_queries_total.labels("error").inc()
                all_ok = False
            with self._lock:
                prev = self._states.get(key)
                new = G.next_state(prev, ok=ok, alerts=alerts, error=error, now=now)
                self._states[key] = new
            if prev is None or _visible(prev) != _visible(new):
                changed.append(key)
                if prev is None or prev.ok != new.ok:
                    level = logging.INFO if ok else logging.WARNING
                    log.log(level, "alert gate %s at %s: %s", dict(matchers), url, "answering" if ok else error)
        if gates:
            metrics.alertmanager_up.set(1 if all_ok else 0)
        with self._lock:  # forget gates nobody uses any more
            for key in set(self._states) - gates:
                del self._states[key]
        if changed:
            self._wake(set(changed))
        return changed

    def _wake(self, changed: set[G.GateKey]) -> None:
        seen: dict[str, G.GateKey | None] = {}
        for req in self.requests():
            if req.phase not in LIVE or req.deleting:
                continue
            if req.policy not in seen:
                gate = self._gate(req.policy)
                seen[req.policy] = gate.key(self.default_url) if gate else None
            if seen[req.policy] in changed:
                self.enqueue(*req.key)


def _visible(st: G.GateState) -> tuple:
    return st.ok, tuple(a.fingerprint for a in st.alerts), st.resolved_since, st.error


def _error_text(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable: {getattr(exc.reason, 'strerror', None) or exc.reason}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {QUERY_TIMEOUT:g}s"
    return type(exc).__name__ + (f": {exc}" if isinstance(exc, ValueError) else "")
