"""What a reconcile pass records once it knows the new status: audit records first (fail closed: a
record that cannot be written stops the pass before the status write), then Events (best effort, in
order, off the issue path) and metrics. Driven by `domain.status.changes(old, new)`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from . import api, metrics
from .audit import AuditLog
from .domain.durations import parse_rfc3339, to_rfc3339
from .domain.policy import RequestView
from .domain.status import changes
from .event_poster import EventPoster
from .k8s import builders
from .k8s.client import Kube

AUTO_OR_APPROVED = ("Approved", "AutoApproved", "NoApprovalRequired", "AlertFiring")  # an Approved Event


class Recorder:
    def __init__(self, *, kube: Kube, audit: AuditLog, clock: Callable[[], dt.datetime]):
        self.kube, self.audit, self.clock = kube, audit, clock
        # A small pool, in order per request (one shard per request uid), bounded.
        self._events = EventPoster(self.kube.create_event)
        self.on_review: Callable[[str, bool], None] | None = None  # overdue / reviewed, for the gauge
        # notify.Notifier (policy spec.notify): records its outbox entries before the status is written.
        self.notifier = None

    def publish(self, req, view, old, new, entry, tally, outcome, now) -> None:
        """Audit first (fail closed: a record that cannot be written stops the pass), then Events."""
        ignored = {n: (who, why) for n, who, why in (tally.ignored if tally else [])}
        drill = api.is_drill(req)
        for change in changes(old, new):
            kind, _, rest = change.partition(":")
            if kind == "requested":
                self.audit_record("requested", req, view, outcome="pending")
                self.event(
                    req,
                    "Normal",
                    "Requested",
                    f"{view.requester} requested {_grant_text(view)} under "
                    f"policy {view.policy!r} for {view.duration or 'the default duration'}: {view.reason}",
                )
            elif kind == "approval":
                approver, _, decision = rest.rpartition(":")
                self.audit_record(
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
                self.audit_record(
                    "approval", req, view, key=f"ignored:{rest}", approval=rest, approver=who, counted=False, why=why
                )
                self.event(req, "Warning", "ApprovalIgnored", f"approval {rest} by {who or '?'} ignored: {why}")
            elif kind == "phase" and new["phase"] == api.SCHEDULED:
                self.publish_scheduled(req, view, new, outcome, now)
            elif kind == "phase":
                self.publish_phase(req, view, new, entry, drill, outcome.reason, now, was=old.get("phase"))
            elif kind in ("reviewed", "overdue") and self.on_review is not None:
                self.on_review(req["metadata"]["uid"], kind == "overdue")
            if kind == "reviewed":
                reviewer = new["review"]["reviewer"]
                self.audit_record("review", req, view, key="reviewed", reviewer=reviewer, outcome="reviewed")
                self.event(req, "Normal", "Reviewed", f"emergency access reviewed by {reviewer}")
            elif kind == "overdue":
                self.audit_record("review", req, view, key="overdue", outcome="overdue")
                self.event(
                    req,
                    "Warning",
                    "ReviewOverdue",
                    f"emergency access review was due at {new['review']['dueAt']} and has not been filed",
                )

    def issued(self, req, view, entry) -> None:
        """The `issued` record, once per request uid (its key), written before the token is delivered."""
        approval = entry.get("approval") or {}
        self.audit_record(
            "issued",
            req,
            view,
            approvers=approval.get("approvers", []),
            outcome="issued",
            emergency=bool(approval.get("emergency")),
            jti=entry["jti"],
            kid=entry["kid"],
            expiresAt=entry["expiresAt"],
            **({"approval": approval.get("reason"), "alert": approval["alert"]} if approval.get("alert") else {}),
        )

    def publish_scheduled(self, req, view, new, outcome, now) -> None:
        """Approved before spec.startAt: recorded now; `issued` follows at startAt."""
        self.audit_record(
            "scheduled",
            req,
            view,
            outcome="scheduled",
            startAt=view.start_at,
            approval=outcome.approval_reason,
            approvers=[a["approver"] for a in new.get("approvals") or [] if a.get("decision") == "Approve"],
        )
        if outcome.approval_reason in AUTO_OR_APPROVED:
            self.event(req, "Normal", "Approved", outcome.approval_message)
        self.event(req, "Normal", "Scheduled", f"{_grant_text(view)} will be issued at {view.start_at} (spec.startAt)")
        if outcome.approval_reason == "Approved":
            created = parse_rfc3339(req["metadata"]["creationTimestamp"])
            metrics.time_to_approval.observe(max(0.0, (now - created).total_seconds()))

    def publish_phase(self, req, view, new, entry, drill, reason, now, was=None) -> None:
        phase, cond_msg = new["phase"], new.get("message", "")
        scheduled = was == api.SCHEDULED  # approval already published; the wait is not time-to-issue
        grant_fields = {"jti": entry["jti"], "kid": entry["kid"], "expiresAt": entry["expiresAt"]} if entry else {}
        if phase == api.ACTIVE:
            approval = entry.get("approval") or {}
            self.issued(req, view, entry)  # already recorded before delivery: the key makes this a no-op
            if approval.get("reason") in AUTO_OR_APPROVED and not scheduled:
                self.event(req, "Normal", "Approved", approval.get("message", ""))
            self.event(
                req,
                "Normal",
                "Issued",
                f"token Secret {entry['secret']['namespace']}/"
                f"{entry['secret']['name']} issued (jti {entry['jti']}, kid {entry['kid']}) for "
                f"{_grant_text(view)}; expires {entry['expiresAt']}",
                expiresAt=entry["expiresAt"],
            )
            if approval.get("emergency"):
                self.event(
                    req,
                    "Warning",
                    "ReviewRequired",
                    f"emergency access issued without approval: an "
                    f"approver of policy {view.policy!r} must file a Review by {approval.get('reviewDueAt')}",
                )
            created = parse_rfc3339(req["metadata"]["creationTimestamp"])
            if not scheduled:
                metrics.time_to_issue.observe(max(0.0, (now - created).total_seconds()))
            if approval.get("reason") == "Approved" and not scheduled:
                metrics.time_to_approval.observe(max(0.0, (now - created).total_seconds()))
            if not drill:
                metrics.requests_total.labels(view.policy, "issued").inc()
            return
        if phase == api.EXPIRED:
            self.audit_record("expired", req, view, outcome="expired", **grant_fields)
            self.event(
                req,
                "Normal",
                "Expired",
                f"access expired at {entry['expiresAt'] if entry else '?'}; token Secret and RoleBindings deleted",
            )
            if entry:
                metrics.expiry_lag.observe(max(0.0, (now - parse_rfc3339(entry["expiresAt"])).total_seconds()))
        elif phase == api.REVOKED:
            self.audit_record("revoked", req, view, reason=reason, outcome="revoked", **grant_fields)
            if reason == "SigningKeyLost":  # the keyring alarm, on every affected grant
                self.event(req, "Warning", "SigningKeyLost", cond_msg)
            else:
                suffix = f" (jti {entry['jti']} no longer authenticates)" if entry else ""
                self.event(req, "Normal", "Revoked", cond_msg + suffix)
            if entry:
                metrics.revocations_total.labels(reason).inc()
        else:  # Denied / Failed
            self.audit_record(
                "denied" if phase == api.DENIED else "failed",
                req,
                view,
                reason=reason,
                message=cond_msg,
                outcome=phase.lower(),
                **grant_fields,
            )
            self.event(req, "Warning", "Denied" if phase == api.DENIED else "Failed", f"{phase}: {cond_msg}")
        if not drill:
            metrics.requests_total.labels(view.policy, phase.lower()).inc()

    def event(self, req, type_, reason, message, **facts) -> None:
        """Events are best effort (the audit log is the record): posted off the issue path. The
        notifications an Event stands for are recorded first (durable outbox; raises if it cannot)."""
        if self.notifier is not None:
            self.notifier.emit(reason, req, message, facts)
        body = builders.build_event(
            involved={**req, "kind": api.KIND_REQUEST, "apiVersion": api.API_VERSION},
            type_=type_,
            reason=reason,
            message=message,
            now=self.clock(),
        )
        self._events.submit(req["metadata"].get("uid", ""), body)

    def audit_record(self, event: str, req, view: RequestView, key: str | None = None, **fields) -> None:
        """One record per (request uid, transition): `key` defaults to the event for phase-like events."""
        meta = req["metadata"]

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
