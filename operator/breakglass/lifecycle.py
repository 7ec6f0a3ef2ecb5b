"""Reconcile one BreakGlassRequest: read, decide (pure), apply effects, compute status (pure), write once.

Every pass is safe to interrupt: the ledger (grants.py) is written before anything is delivered and
names everything created, Events and audit records follow the status diff, and the status write is
guarded by resourceVersion. A crash or a second replica between any two writes is repaired by the
next pass; a request uid never gets a second jti.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import api, metrics
from .audit import AuditLog
from .domain import decisions as D
from .domain.approvals import ApprovalView, tally_approvals
from .domain.durations import parse_rfc3339
from .domain.policy import Policy, RequestView
from .domain.status import Outcome, changes, next_status, review_due
from .grants import ACTIVE, EXPIRED, FAILED, REVOKED, CleanupIncomplete, Grants, IssueFailed
from .k8s import builders
from .k8s.client import Kube
from .ledger import Ledger
from .settings import Settings

log = logging.getLogger(__name__)

PHASE_OF_STATE = {REVOKED: api.REVOKED, EXPIRED: api.EXPIRED, FAILED: api.FAILED}


class PolicyCache:
    """Policies as last seen by the watch, falling back to a GET on a miss (never 'not found' from
    an unfilled cache). Entries expire after `ttl` seconds as a guard against a missed event."""

    def __init__(self, kube: Kube, ttl: float = 30.0):
        self.kube, self.ttl = kube, ttl
        self._lock = threading.Lock()
        self._items: dict[str, tuple[float, dict[str, Any]]] = {}

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._items.get(name)
            if hit and time.monotonic() - hit[0] < self.ttl:
                return hit[1]
        body = self.kube.get_policy(name)
        if body is not None:
            self.put(body)
        return body

    def put(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._items[body["metadata"]["name"]] = (time.monotonic(), body)

    def forget(self, name: str) -> None:
        with self._lock:
            self._items.pop(name, None)


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
        self.on_review: Callable[[str, bool], None] | None = None  # overdue / reviewed, for the gauge
        # One thread keeps Events in the order they were emitted.
        self._events = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="events")
        self._own_versions: dict[tuple[str, str], list[str]] = {}
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
        if meta.get("deletionTimestamp"):
            self._on_delete(req, view, entry, old)
            return None
        policy_body = self.policies.get(view.policy)
        policy = Policy.from_resource(view.policy, policy_body.get("spec")) if policy_body else None
        created = parse_rfc3339(meta["creationTimestamp"])
        tally = self._tally(req, view, policy, entry, old, created)
        grant = D.Grant(entry["state"], parse_rfc3339(entry["expiresAt"]), entry.get("reason", "")) if entry else None
        secret_present = self.grants.secret_present(entry) if entry and entry["state"] == ACTIVE else True
        decision = D.decide(
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
        if decision.action in (D.ISSUE, D.WAIT) and api.FINALIZER not in (meta.get("finalizers") or []):
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
        outcome, entry = self._apply(decision, req, view, policy, entry, old, now)
        new = next_status(old, generation=meta.get("generation"), outcome=outcome, grant=entry, tally=tally, now=now)
        self._publish(req, view, old, new, entry, tally, outcome, now)
        if new != old:
            self._write_status(req, new, old)
        if new["phase"] in api.TERMINAL_PHASES and (entry is None or entry.get("cleaned")):
            self._remove_finalizer(req)
        if entry and entry["state"] == ACTIVE and self.schedule_expiry:
            self.schedule_expiry(
                (namespace, name),
                entry["secret"]["namespace"],
                entry["secret"]["name"],
                entry["secret"]["uid"],
                parse_rfc3339(entry["expiresAt"]).timestamp(),
            )
        times = [decision.requeue_at, review_due(new)]
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
        if action in (D.DENY, D.FAIL):
            return Outcome(api.DENIED if action == D.DENY else api.FAILED, decision.reason, decision.message), None
        if action == D.ISSUE:
            if entry is None:
                entry, _ = self.ledger.create(self.grants.plan(req, view, policy, decision, now))
            try:
                entry = self.grants.issue(entry)
            except IssueFailed as failed:
                return Outcome(api.FAILED, failed.reason, failed.message), failed.entry
        if action in (D.ISSUE, D.ACTIVE):
            if entry["state"] != ACTIVE:  # another writer ended it meanwhile: settle next pass
                return self._settled(entry), entry
            return Outcome(api.ACTIVE, "TokenIssued", f"access granted until {entry['expiresAt']}"), entry
        if action == D.EXPIRE:
            entry = self.grants.end(entry, EXPIRED, "DurationElapsed", f"expired at {entry['expiresAt']}")
            return self._settled(entry), entry
        if action == D.REVOKE:
            if entry is None:
                return Outcome(api.REVOKED, decision.reason, decision.message), None
            entry = self.grants.end(entry, REVOKED, decision.reason, decision.message)
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
                self._audit("revoked", req, view, jti=entry["jti"], reason="RequestDeleted", outcome="revoked")
        elif entry and not entry.get("cleaned"):
            self.grants.cleanup(entry)
            self.ledger.update(entry, cleaned=True)
        elif old.get("phase") not in api.TERMINAL_PHASES:
            self._audit("revoked", req, view, reason="RequestDeleted", outcome="revoked")
        self._remove_finalizer(req)

    # ------------------------------------------------------- events & audit
    def _publish(self, req, view, old, new, entry, tally, outcome, now) -> None:
        """Audit first (fail closed: a record that cannot be written stops the pass), then Events."""
        ignored = {n: (who, why) for n, who, why in (tally.ignored if tally else [])}
        drill = api.is_drill(req)
        for change in changes(old, new):
            kind, _, rest = change.partition(":")
            if kind == "requested":
                self._audit("requested", req, view, outcome="pending")
                self._event(
                    req,
                    "Normal",
                    "Requested",
                    f"{view.requester} requested {_grant_text(view)} under "
                    f"policy {view.policy!r} for {view.duration or 'the default duration'}: {view.reason}",
                )
            elif kind == "approval":
                approver, _, decision = rest.rpartition(":")
                self._audit(
                    "approval",
                    req,
                    view,
                    key=f"approval:{approver}:{decision}",
                    approver=approver,
                    decision=decision,
                    counted=True,
                )
                metrics.approvals_total.labels(decision).inc()
            elif kind == "ignored":
                who, why = ignored.get(rest, ("?", "not counted"))
                self._audit(
                    "approval", req, view, key=f"ignored:{rest}", approval=rest, approver=who, counted=False, why=why
                )
                self._event(req, "Warning", "ApprovalIgnored", f"approval {rest} by {who or '?'} ignored: {why}")
            elif kind == "phase":
                self._publish_phase(req, view, new, entry, drill, outcome.reason, now)
            elif kind in ("reviewed", "overdue") and self.on_review is not None:
                self.on_review(req["metadata"]["uid"], kind == "overdue")
            if kind == "reviewed":
                reviewer = new["review"]["reviewer"]
                self._audit("review", req, view, key="reviewed", reviewer=reviewer, outcome="reviewed")
                self._event(req, "Normal", "Reviewed", f"emergency access reviewed by {reviewer}")
            elif kind == "overdue":
                self._audit("review", req, view, key="overdue", outcome="overdue")
                self._event(
                    req,
                    "Warning",
                    "ReviewOverdue",
                    f"emergency access review was due at {new['review']['dueAt']} and has not been filed",
                )

    def _publish_phase(self, req, view, new, entry, drill, reason, now) -> None:
        phase, cond_msg = new["phase"], new.get("message", "")
        grant_fields = {"jti": entry["jti"], "kid": entry["kid"], "expiresAt": entry["expiresAt"]} if entry else {}
        if phase == api.ACTIVE:
            approval = entry.get("approval") or {}
            self._audit(
                "issued",
                req,
                view,
                approvers=approval.get("approvers", []),
                outcome="issued",
                emergency=bool(approval.get("emergency")),
                **grant_fields,
            )
            if approval.get("reason") in ("Approved", "AutoApproved", "NoApprovalRequired"):
                self._event(req, "Normal", "Approved", approval.get("message", ""))
            self._event(
                req,
                "Normal",
                "Issued",
                f"token Secret {entry['secret']['namespace']}/"
                f"{entry['secret']['name']} issued (jti {entry['jti']}, kid {entry['kid']}) for "
                f"{_grant_text(view)}; expires {entry['expiresAt']}",
            )
            if approval.get("emergency"):
                self._event(
                    req,
                    "Warning",
                    "ReviewRequired",
                    f"emergency access issued without approval: an "
                    f"approver of policy {view.policy!r} must file a Review by {approval.get('reviewDueAt')}",
                )
            created = parse_rfc3339(req["metadata"]["creationTimestamp"])
            metrics.time_to_issue.observe(max(0.0, (now - created).total_seconds()))
            if approval.get("reason") == "Approved":
                metrics.time_to_approval.observe(max(0.0, (now - created).total_seconds()))
            if not drill:
                metrics.requests_total.labels(view.policy, "issued").inc()
            return
        if phase == api.EXPIRED:
            self._audit("expired", req, view, outcome="expired", **grant_fields)
            self._event(
                req,
                "Normal",
                "Expired",
                f"access expired at {entry['expiresAt'] if entry else '?'}; token Secret and RoleBindings deleted",
            )
            if entry:
                metrics.expiry_lag.observe(max(0.0, (now - parse_rfc3339(entry["expiresAt"])).total_seconds()))
        elif phase == api.REVOKED:
            self._audit("revoked", req, view, reason=reason, outcome="revoked", **grant_fields)
            self._event(
                req, "Normal", "Revoked", cond_msg + (f" (jti {entry['jti']} no longer authenticates)" if entry else "")
            )
            if entry:
                metrics.revocations_total.labels(reason).inc()
        else:  # Denied / Failed
            self._audit(
                "denied" if phase == api.DENIED else "failed",
                req,
                view,
                reason=reason,
                message=cond_msg,
                outcome=phase.lower(),
                **grant_fields,
            )
            self._event(req, "Warning", "Denied" if phase == api.DENIED else "Failed", f"{phase}: {cond_msg}")
        if not drill:
            metrics.requests_total.labels(view.policy, phase.lower()).inc()

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
            recent = self._own_versions.setdefault((meta.get("namespace"), meta.get("name")), [])
            recent.append(meta.get("resourceVersion"))
            del recent[:-4]

    def is_own_write(self, namespace: str, name: str, resource_version: str | None) -> bool:
        """True when this watch event only echoes our own last write (nothing new to decide)."""
        with self._own_lock:
            return resource_version is not None and resource_version in self._own_versions.get((namespace, name), ())

    def _event(self, req, type_, reason, message) -> None:
        """Events are best effort (the audit log is the record): posted off the issue path."""
        body = builders.build_event(
            involved={**req, "kind": api.KIND_REQUEST, "apiVersion": api.API_VERSION},
            type_=type_,
            reason=reason,
            message=message,
            now=self.clock(),
        )
        self._events.submit(self.kube.create_event, body)

    def _audit(self, event: str, req, view: RequestView, key: str | None = None, **fields) -> None:
        """One record per (request uid, transition): `key` defaults to the event for phase-like events."""
        meta = req["metadata"]
        from .domain.durations import to_rfc3339

        self.audit.record(
            event,
            key=f"{meta['uid']}:{key or event}",
            time=to_rfc3339(self.clock()),
            request={"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
            policy=view.policy,
            requester=view.requester,
            namespaces=list(view.namespaces),
            clusterRoles=list(view.cluster_roles),
            scopes=list(view.scopes),
            ticket=view.ticket or "",
            drill=api.is_drill(req),
            **fields,
        )


def _grant_text(view: RequestView) -> str:
    parts = []
    if view.cluster_roles:
        parts.append(f"ClusterRoles {list(view.cluster_roles)} in {list(view.namespaces)}")
    if view.scopes:
        parts.append(f"scopes {list(view.scopes)}")
    return " and ".join(parts) or "nothing"


__all__ = ["Reconciler", "PolicyCache", "CleanupIncomplete"]
