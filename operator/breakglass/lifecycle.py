"""Reconcile one BreakGlassRequest: read, decide (pure), apply effects, compute status (pure), write once.

Every pass is safe to interrupt: the ledger (grants.py) is written before anything is delivered and
names everything created, Events and audit records follow the status diff, and the status write is
guarded by resourceVersion. A crash or a second replica between any two writes is repaired by the
next pass; a request uid never gets a second jti.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import api, metrics
from .alert_gate import AlertGates
from .audit import AuditLog
from .domain import decisions as D
from .domain.approvals import ApprovalView, tally_approvals
from .domain.durations import parse_rfc3339
from .domain.limits import IDLE_TIMEOUT
from .domain.policy import Policy, RequestView
from .domain.status import Outcome, next_status, review_due
from .domain.usage import status_usage
from .extensions import Extender
from .grants import ACTIVE, EXPIRED, FAILED, REVOKED, CleanupIncomplete, Grants, IssueFailed
from .k8s.client import Kube, error_text
from .ledger import Ledger
from .policy_cache import PolicyCache
from .recording import Recorder
from .settings import Settings
from .usage_records import UsageRecords

log = logging.getLogger(__name__)

OWN_WRITES_REMEMBERED = 2048
PHASE_OF_STATE = {REVOKED: api.REVOKED, EXPIRED: api.EXPIRED, FAILED: api.FAILED}


class Reconciler:
    def __init__(
        self,
        *,
        kube: Kube,
        ledger: Ledger,
        grants: Grants,
        audit: AuditLog,
        settings: Settings,
        clock: Callable[[], dt.datetime],
        policies: PolicyCache | None = None,
        schedule_expiry: Callable[..., None] | None = None,
    ):
        self.kube, self.ledger, self.grants, self.audit = kube, ledger, grants, audit
        self.policies = policies or PolicyCache(kube)
        self.settings, self.clock, self.schedule_expiry = settings, clock, schedule_expiry
        self.on_orphans: Callable[[str, str], None] | None = None  # set by the runtime (the sweeper)
        self.alert_gates: AlertGates | None = None  # set by the runtime: the alert gate's snapshot
        self.recorder = Recorder(kube=kube, audit=audit, clock=clock)
        self.usage: UsageRecords | None = UsageRecords(ledger=ledger, audit=audit, recorder=self.recorder)
        self.extender = Extender(
            kube=kube, ledger=ledger, grants=grants, recorder=self.recorder, settings=settings, clock=clock
        )
        # Our recent writes per request (bounded, oldest forgotten: an echo not recognised only costs
        # an in-memory routing decision).
        self._own_versions: OrderedDict[tuple[str, str], list[str]] = OrderedDict()
        self._own_lock = threading.Lock()

    # ------------------------------------------------------------------ entry
    def reconcile(self, namespace: str, name: str) -> dt.datetime | None:
        """Returns when to look again (expiry, approval timeout, review due), or None."""
        req = self.kube.get_request(namespace, name)
        if req is None:  # gone (its finalizer bypassed): a live grant left behind is revoked now
            if self.on_orphans is not None:
                self.on_orphans(namespace, name)
            return None
        now = self.clock()
        meta, old = req["metadata"], dict(req.get("status") or {})
        view = RequestView.from_resource(req)
        entry = self.ledger.get(meta["uid"])
        if entry is None and old.get("phase") == api.ACTIVE:
            entry = self.ledger.fetch(meta["uid"])  # the view may lag another writer: never revoke on a lag
        if meta.get("deletionTimestamp"):
            self._on_delete(req, view, entry, old)
            return None
        policy_body = self.policies.get(view.policy)
        policy = Policy.from_resource(view.policy, policy_body.get("spec")) if policy_body else None
        created = parse_rfc3339(meta["creationTimestamp"])
        tally = self._tally(req, view, policy, entry, old, created)
        grant = D.Grant(entry["state"], parse_rfc3339(entry["expiresAt"]), entry.get("reason", "")) if entry else None
        live = entry and entry["state"] == ACTIVE and parse_rfc3339(entry["expiresAt"]) > now
        secret_present = self.grants.secret_present(entry) if live else True  # one GET, only when it matters
        gates = self.alert_gates
        gated = gates is not None and grant is None and old.get("phase") not in api.TERMINAL_PHASES
        decision = D.decide(
            gate_alert=gates.firing(policy) if gated else None,
            request=view,
            phase=old.get("phase"),
            policy=policy,
            tally=tally,
            created=created,
            grant=grant,
            now=now,
            secret_present=secret_present,
            ceiling=self.settings.max_token_lifetime,
            protected=tuple({self.settings.namespace, self.settings.tokens_namespace}),
        )
        if gates is not None:  # an alert-approved grant whose incident resolved (revokeOnResolve)
            decision = gates.on_active(decision, policy, entry, now)
        limited = D.within_use_limits(decision, entry, now)
        if limited.reason == IDLE_TIMEOUT:  # the view may lag a use another replica's sink just stored
            entry = self.ledger.fetch(meta["uid"]) or entry
            limited = D.within_use_limits(decision, entry, now)
        decision = limited
        if decision.action == D.ACTIVE and not self.grants.keys.has_kid(entry["kid"]):
            decision = D.Decision(
                D.REVOKE,
                "SigningKeyLost",
                f"signing key {entry['kid']} of this grant is no longer "
                "in the keyring (deleted or replaced): the token cannot authenticate; request again",
            )
        if grant is None and old.get("phase") == api.ACTIVE:
            # Active without a ledger entry: the record of this token is lost. Fail closed: the token
            # is not in the allow-list any more; never issue a second one.
            decision = D.Decision(
                D.REVOKE, "LedgerEntryMissing", "the grant ledger has no entry for this request; access is revoked"
            )
        if decision.action in (D.ISSUE, D.WAIT, D.SCHEDULE) and api.FINALIZER not in (meta.get("finalizers") or []):
            self._remember_own_write(
                self.kube.patch_request(
                    namespace,
                    name,
                    {
                        "metadata": {
                            "finalizers": (meta.get("finalizers") or []) + [api.FINALIZER],
                            "resourceVersion": meta["resourceVersion"],
                        }
                    },
                )
            )
            return self.reconcile(namespace, name)  # read again: the finalizer is in place before any grant
        recorded = old
        if decision.action == D.ISSUE and old.get("phase") in (None, api.PENDING):
            # Causal order in the audit log: `requested` and the approvals before `issued` (which the
            # issue records right before delivery).
            waiting = Outcome(api.PENDING, decision.reason, decision.message)
            recorded = next_status(
                old, generation=meta.get("generation"), outcome=waiting, grant=None, tally=tally, now=now
            )
            self.recorder.publish(req, view, old, recorded, None, tally, waiting, now)
        outcome, entry = self._apply(decision, req, view, policy, entry, old, now)
        usage_retry = None
        if entry is not None and self.usage is not None:  # what the audit sinks folded in (after a revoke:
            try:  # ending a grant never waits for its trail)
                entry = self.usage.settle(req, entry, now)
            except Exception as exc:  # noqa: BLE001 — the status still says what happened; retried soon
                metrics.errors_total.labels("usage").inc()
                log.warning("recording the use of %s/%s failed: %s", namespace, name, error_text(exc))
                usage_retry = now + dt.timedelta(seconds=1)
        new = next_status(old, generation=meta.get("generation"), outcome=outcome, grant=entry, tally=tally, now=now)
        if gates is not None:
            new = gates.annotate(new, policy, meta.get("generation"), now)
        usage = status_usage(entry)
        if usage is not None:
            new["usage"] = usage
        self.recorder.publish(req, view, recorded, new, entry, tally, outcome, now)
        if new != old:
            self._write_status(req, new, old)
        # The revoke-on-delete finalizer stays on ended requests and goes with their deletion
        # (`_on_delete`): ending a grant costs no extra write, and deleting needs the operator anyway
        # (its admission webhook is fail-closed).
        if entry and entry["state"] == ACTIVE and self.schedule_expiry:
            self.schedule_expiry(
                (namespace, name),
                entry["secret"]["namespace"],
                entry["secret"]["name"],
                entry["secret"]["uid"],
                parse_rfc3339(entry["expiresAt"]).timestamp(),
            )
        requeue = decision.requeue_at
        if decision.action == D.ACTIVE and grant is not None and requeue == grant.expires_at:
            requeue = None  # an extension may have moved exp: the entry's current exp is added below
        times = [requeue, review_due(new), UsageRecords.reuse_due(entry), usage_retry]
        if entry and entry["state"] == ACTIVE:
            times.append(parse_rfc3339(entry["expiresAt"]))
        return min([t for t in times if t is not None], default=None)

    def _tally(self, req, view, policy, entry, old, created):
        """Approvals matter before an issue and for an open emergency review; otherwise no LIST."""
        review = old.get("review") or {}
        open_review = review.get("required") and not review.get("reviewedAt")
        issuing = entry is None or entry["state"] == "Issuing"  # an interrupted issue still records its approvals
        if policy is None or not (
            (issuing and old.get("phase") not in api.TERMINAL_PHASES)
            or open_review
            or (entry and entry["state"] == ACTIVE and (entry.get("approval") or {}).get("emergency"))
        ):
            return None
        approvals = [ApprovalView.from_resource(a) for a in self.kube.list_approvals(view.namespace, view.name)]
        return tally_approvals(
            approvals,
            requester=view.requester,
            policy=policy,
            deadline=D.approval_deadline(created, policy),
            request_uid=req["metadata"]["uid"],
            request_created=created,
        )

    # ---------------------------------------------------------------- effects
    def _apply(self, decision: D.Decision, req, view, policy, entry, old, now) -> tuple[Outcome, dict | None]:
        action = decision.action
        if action == D.WAIT:
            return Outcome(api.PENDING, decision.reason, decision.message), None
        if action == D.SCHEDULE:  # approved; the token is minted at spec.startAt (decision.requeue_at)
            approval = (decision.approval_reason, decision.approval_message)
            return Outcome(api.SCHEDULED, decision.reason, decision.message, *approval), None
        if action in (D.DENY, D.FAIL):
            return Outcome(api.DENIED if action == D.DENY else api.FAILED, decision.reason, decision.message), None
        if action == D.ISSUE:
            created = False
            if entry is None:
                entry, created = self.ledger.create(self.grants.plan(req, view, policy, decision, now))
            try:
                entry = self.grants.issue(
                    entry, before_delivery=lambda e: self.recorder.issued(req, view, e), just_created=created
                )
            except IssueFailed as failed:
                return Outcome(api.FAILED, failed.reason, failed.message), failed.entry
        if action in (D.ISSUE, D.ACTIVE):
            if entry["state"] != ACTIVE:  # another writer ended it meanwhile: settle next pass
                return self._settled(entry), entry
            if action == D.ACTIVE:  # extensions: a new token in the same Secret (extensions.py)
                entry = self.extender.step(req, view, policy, entry, now)
            return Outcome(api.ACTIVE, "TokenIssued", f"access granted until {entry['expiresAt']}"), entry
        if action == D.EXPIRE:
            entry = self.grants.end(entry, EXPIRED, "DurationElapsed", f"expired at {entry['expiresAt']}")
            return self._settled(entry), entry
        if action == D.REVOKE:
            if entry is None:
                return Outcome(api.REVOKED, decision.reason, decision.message), None
            idle = decision.reason == IDLE_TIMEOUT  # decided from the use: a newer use cancels it
            entry = self.grants.end(entry, REVOKED, decision.reason, decision.message, use_sensitive=idle)
            return self._settled(entry), entry
        if action == D.SETTLE:
            if not entry.get("cleaned"):
                self.grants.cleanup(entry)
                entry = self.ledger.update(entry, cleaned=True)
            return self._settled(entry), entry
        return Outcome(old.get("phase") or api.PENDING, "", old.get("message", "")), None  # NOTHING

    @staticmethod
    def _settled(entry) -> Outcome:
        state = entry["state"]
        return Outcome(
            PHASE_OF_STATE.get(state, api.FAILED),
            entry.get("reason") or state,
            entry.get("message") or f"grant {state.lower()}",
        )

    def _on_delete(self, req, view, entry, old) -> None:
        """Deleting a request revokes it; only the operator removes the finalizer (admission)."""
        if entry and entry["state"] in (ACTIVE, "Issuing"):
            # Revoke first (an audit failure must never keep a token alive); audit even if cleanup fails.
            try:
                entry = self.grants.end(
                    entry, REVOKED, "RequestDeleted", "the request was deleted; its token is revoked"
                )
            finally:
                metrics.revocations_total.labels("RequestDeleted").inc()
                self.recorder.audit_record(
                    "revoked", req, view, jti=entry["jti"], reason="RequestDeleted", outcome="revoked"
                )
        elif entry and not entry.get("cleaned"):
            self.grants.cleanup(entry)
            self.ledger.update(entry, cleaned=True)
        elif old.get("phase") not in api.TERMINAL_PHASES:
            self.recorder.audit_record("revoked", req, view, reason="RequestDeleted", outcome="revoked")
            if old.get("phase") == api.SCHEDULED:
                self.recorder.event(
                    req,
                    "Normal",
                    "Revoked",
                    f"the request was deleted before its scheduled start at {view.start_at}; nothing was issued",
                )
        last = self.ledger.get(req["metadata"]["uid"])
        if last is not None and self.usage is not None:  # its trail is recorded before the request goes
            self.usage.settle(req, last, self.clock())
        self._remove_finalizer(req)

    # ------------------------------------------------------- events & audit

    # ---------------------------------------------------------------- writes
    def _write_status(self, req, new, old) -> None:
        meta = req["metadata"]
        patch: dict[str, Any] = {"status": dict(new), "metadata": {"resourceVersion": meta["resourceVersion"]}}
        for key in set(old) - set(new):
            patch["status"][key] = None  # merge-patch null removes the field
        updated = self.kube.patch_request_status(meta["namespace"], meta["name"], patch)
        req["status"] = updated.get("status") or {}
        meta["resourceVersion"] = updated["metadata"]["resourceVersion"]
        self._remember_own_write(updated)

    def _remove_finalizer(self, req) -> None:
        fins = req["metadata"].get("finalizers") or []
        if api.FINALIZER in fins:
            updated = self.kube.patch_request(
                req["metadata"]["namespace"],
                req["metadata"]["name"],
                {
                    "metadata": {
                        "finalizers": [f for f in fins if f != api.FINALIZER],
                        "resourceVersion": req["metadata"]["resourceVersion"],
                    }
                },
            )
            self._remember_own_write(updated)

    def _remember_own_write(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        with self._own_lock:
            key = (meta.get("namespace"), meta.get("name"))
            recent = self._own_versions.setdefault(key, [])
            self._own_versions.move_to_end(key)
            while len(self._own_versions) > OWN_WRITES_REMEMBERED:
                self._own_versions.popitem(last=False)
            recent.append(meta.get("resourceVersion"))
            del recent[:-4]

    def is_own_write(self, namespace: str, name: str, resource_version: str | None) -> bool:
        """True when this watch event only echoes our own last write (nothing new to decide)."""
        with self._own_lock:
            return resource_version is not None and resource_version in self._own_versions.get((namespace, name), ())


__all__ = ["Reconciler", "PolicyCache", "CleanupIncomplete"]
