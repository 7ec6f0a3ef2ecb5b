"""Reconcile one BreakGlassRequest: decide (pure), then issue / expire / revoke / deny (I/O).

Crash safety: the token Secret (`<request>-token`, created create-if-absent) is the source of
truth for jti, kid and exp. Status is written only after the Secret exists, and every step is
idempotent, so a SIGKILL at any point is repaired by the next reconcile: never two tokens, never
a status pointing to no Secret for longer than one reconcile.
"""
from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import api, metrics
from .audit import AuditLog
from .domain import decisions as D
from .domain.approvals import ApprovalView, tally_approvals
from .domain.claims import build_claims, new_token_id
from .domain.conditions import get_condition, set_condition
from .domain.durations import parse_duration, parse_rfc3339, to_rfc3339
from .domain.policy import Policy, RequestView, effective_duration
from .k8s import builders
from .k8s.client import Kube
from .settings import Settings
from .stores import KeyStore, RevocationStore
from .tokens.jwt_tokens import mint

log = logging.getLogger(__name__)


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



@dataclass
class TokenState:
    jti: str
    kid: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    secret_name: str
    secret_uid: str = ""


def token_state_from_secret(secret: dict[str, Any] | None, request_uid: str) -> TokenState | None:
    if not secret:
        return None
    ann = (secret.get("metadata") or {}).get("annotations") or {}
    if ann.get(api.REQUEST_UID_ANNOTATION) != request_uid:
        return None
    return TokenState(jti=ann[api.TOKEN_ID_ANNOTATION], kid=ann.get(api.KEY_ID_ANNOTATION, ""),
                      issued_at=parse_rfc3339(ann[api.ISSUED_AT_ANNOTATION]),
                      expires_at=parse_rfc3339(ann[api.EXPIRES_AT_ANNOTATION]),
                      secret_name=secret["metadata"]["name"], secret_uid=secret["metadata"].get("uid", ""))


class Reconciler:
    def __init__(self, *, kube: Kube, keys: KeyStore, revocations: RevocationStore, audit: AuditLog,
                 settings: Settings, clock: Callable[[], dt.datetime], policies: "PolicyCache | None" = None,
                 schedule_expiry: Callable[..., None] | None = None):
        self.kube, self.keys, self.revocations, self.audit = kube, keys, revocations, audit
        self.policies = policies or PolicyCache(kube)
        self.schedule_expiry = schedule_expiry
        # One thread keeps Events in the order they were emitted.
        self._events = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="events")
        # resourceVersions produced by our own writes: their watch events need no reconcile.
        self._own_versions: dict[tuple[str, str], list[str]] = {}
        self._own_lock = threading.Lock()
        self.settings, self.clock = settings, clock
        self._cluster_ca_b64: str | None = None
        if settings.cluster_ca_file:
            with open(settings.cluster_ca_file, "rb") as fh:
                self._cluster_ca_b64 = base64.b64encode(fh.read()).decode()

    # ------------------------------------------------------------------ entry
    def reconcile(self, namespace: str, name: str) -> dt.datetime | None:
        """Returns when to look again (expiry, approval timeout, review due), or None."""
        req = self.kube.get_request(namespace, name)
        if req is None:
            return None
        now = self.clock()
        meta, status = req["metadata"], dict(req.get("status") or {})
        view = RequestView.from_resource(req)
        secret = self.kube.get_secret(namespace, api.token_secret_name(name))
        token = token_state_from_secret(secret, meta["uid"])
        if secret is not None and token is None:
            # A Secret left over from an earlier request with the same name: it is not ours to keep.
            self._revoke_stale_secret(secret, now)
            secret = None

        if meta.get("deletionTimestamp"):
            if status.get("phase") not in api.TERMINAL_PHASES or token:
                self._revoke(req, status, token, now, reason="RequestDeleted",
                             message="the request was deleted; its token is revoked")
            self._remove_finalizer(req)
            return None

        phase = status.get("phase")
        if phase not in api.TERMINAL_PHASES and api.FINALIZER not in (meta.get("finalizers") or []):
            self._remember_own_write(self.kube.patch_request(
                namespace, name, {"metadata": {"finalizers": (meta.get("finalizers") or []) + [api.FINALIZER]}}))

        policy_body = self.policies.get(view.policy)
        policy = Policy.from_resource(view.policy, policy_body.get("spec")) if policy_body else None
        created = parse_rfc3339(meta["creationTimestamp"])
        approvals = [ApprovalView.from_resource(a) for a in self.kube.list_approvals(namespace, name)]
        tally = None
        if policy is not None:
            tally = tally_approvals(approvals, requester=view.requester, policy=policy,
                                    deadline=D.approval_deadline(created, policy))

        if not status.get("phase"):
            self._event(req, "Normal", "Requested",
                        f"{view.requester} requested {self._grant_text(view)} under policy {view.policy!r} "
                        f"for {view.duration or 'the default duration'}: {view.reason}")
            self._audit("requested", req, view, outcome="pending")
            status["phase"] = api.PENDING

        # Known token: from the Secret, or (Secret gone) from status.
        expires_at = token.expires_at if token else None
        secret_missing = False
        if token is None and status.get("tokenId") and status.get("expiresAt") and phase == api.ACTIVE:
            expires_at = parse_rfc3339(status["expiresAt"])
            secret_missing = True

        decision = D.decide(request=view, phase=phase, policy=policy, tally=tally,
                            created=created, expires_at=expires_at, now=now,
                            ceiling=self.settings.max_token_lifetime)
        if decision.action == D.WAIT and secret_missing:
            decision = D.Decision(D.REVOKE, "SecretDeleted",
                                  "the token Secret was deleted before expiry; the token is revoked")

        status = self._note_review(req, view, status, tally, now)
        status = self._note_ignored(req, status, tally)
        status = self._note_counted(req, status, tally)
        if self.check_review_overdue(req, now):
            status = dict(req.get("status") or status)

        action = decision.action
        if action == D.ISSUE:
            return self._issue(req, view, policy, status, decision, created, now)
        if action == D.WAIT and token is not None:
            return self._ensure_active(req, view, policy, status, token, decision, created, now)
        if action == D.WAIT:
            return self._pending(req, view, policy, status, tally, decision, now)
        if action == D.DENY:
            return self._finish(req, view, status, api.DENIED, decision, now, approved=False)
        if action == D.FAIL:
            return self._finish(req, view, status, api.FAILED, decision, now, approved=None)
        if action == D.EXPIRE:
            return self._expire(req, view, status, token, expires_at, now)
        if action == D.REVOKE:
            reason = decision.reason if decision.reason != "RevokedBySpec" else "Revoked"
            self._revoke(req, status, token, now, reason=reason, message=decision.message, expires_at=expires_at)
            return None
        # Terminal: make sure nothing is left behind, then let go of the finalizer.
        if token is not None:
            self._cleanup(req, token)
        self._write_status_if_changed(req, status)
        self._remove_finalizer(req)
        return self._review_due(status)

    # ---------------------------------------------------------------- actions
    def _issue(self, req, view: RequestView, policy: Policy, status, decision: D.Decision,
               created: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        meta = req["metadata"]
        duration = effective_duration(view, policy)
        ring = self.keys.current()
        key = ring.active
        jti = new_token_id()
        is_drill = api.is_drill(req)
        claims = build_claims(request=view, policy=policy, request_uid=meta["uid"], issuer=self.settings.issuer,
                              approvers=decision.approvers, issued_at=now, duration=duration, jti=jti,
                              emergency=decision.emergency, drill=is_drill)
        expires_at = dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc)
        token = mint(claims, key)
        kubeconfig = None
        if self.settings.cluster_server:
            kubeconfig = builders.build_kubeconfig(server=self.settings.cluster_server, ca_data_b64=self._cluster_ca_b64,
                                                   user=api.grant_username(view.namespace, view.name), token=token)
        body = builders.build_token_secret(request=req, token=token, jti=jti, kid=key.kid,
                                           issued_at=now, expires_at=expires_at, kubeconfig=kubeconfig)
        secret, created_now = self.kube.create_secret_if_absent(body)
        del token, kubeconfig, body
        state = token_state_from_secret(secret, meta["uid"])
        if state is None:
            raise RuntimeError(f"token Secret {secret['metadata']['name']} belongs to another request")
        if created_now:
            if decision.reason == "Approved":
                metrics.time_to_approval.observe((now - created).total_seconds())
            metrics.time_to_issue.observe((now - created).total_seconds())
            if not is_drill:
                metrics.requests_total.labels(policy.name, "issued").inc()
        return self._ensure_active(req, view, policy, status, state, decision, created, now, just_issued=created_now)

    def _apply_rbac(self, req, state: TokenState) -> None:
        self.kube.apply_role(builders.build_reader_role(req, state.expires_at))
        self.kube.apply_rolebinding(builders.build_reader_rolebinding(req, state.expires_at))
        for rb in builders.build_grant_rolebindings(req, state.expires_at):
            self.kube.apply_rolebinding(rb)

    def _ensure_active(self, req, view, policy, status, state: TokenState, decision: D.Decision,
                       created, now, just_issued: bool = False) -> dt.datetime | None:
        meta = req["metadata"]
        gen = meta.get("generation")
        new = dict(status)
        was_active = status.get("phase") == api.ACTIVE
        if not was_active:
            # First time (or after a crash between Secret and status): fill everything in.
            self._apply_rbac(req, state)
            approved_reason = decision.reason if decision.action == D.ISSUE else "Approved"
            approved_msg = decision.message if decision.action == D.ISSUE else "approved before a restart"
            new["conditions"] = set_condition(new.get("conditions"), type=api.COND_APPROVED, status=True,
                                              reason=approved_reason, message=approved_msg, now=now,
                                              observed_generation=gen)
            new["conditions"] = set_condition(new["conditions"], type=api.COND_ISSUED, status=True, reason="TokenIssued",
                                              message=f"token {state.jti} valid until {to_rfc3339(state.expires_at)}",
                                              now=now, observed_generation=gen)
            new.update({
                "phase": api.ACTIVE, "approvedAt": new.get("approvedAt") or to_rfc3339(state.issued_at),
                "issuedAt": to_rfc3339(state.issued_at), "expiresAt": to_rfc3339(state.expires_at),
                "tokenId": state.jti, "keyId": state.kid,
                "secretRef": {"namespace": meta["namespace"], "name": state.secret_name},
                "message": f"access granted until {to_rfc3339(state.expires_at)}",
            })
            if decision.emergency or (view.emergency and policy and policy.emergency_allowed):
                due = state.issued_at + parse_duration(policy.emergency_review_within)
                review = dict(new.get("review") or {})
                review.setdefault("required", True)
                review.setdefault("dueAt", to_rfc3339(due))
                new["review"] = review
            if decision.reason in ("Approved", "AutoApproved", "NoApprovalRequired"):
                self._event(req, "Normal", "Approved", decision.message)
            self._write_status(req, new)
            self._event(req, "Normal", "Issued",
                        f"token Secret {state.secret_name} issued (jti {state.jti}, kid {state.kid}) for "
                        f"{self._grant_text(view)}; expires {to_rfc3339(state.expires_at)}")
            if new.get("review", {}).get("required") and not new["review"].get("reviewedAt"):
                self._event(req, "Warning", "ReviewRequired",
                            f"emergency access issued without approval: an approver of policy {view.policy!r} must "
                            f"file a Review by {new['review']['dueAt']}")
            self._audit("issued", req, view, jti=state.jti, kid=state.kid, expiresAt=to_rfc3339(state.expires_at),
                        approvers=list(decision.approvers), outcome="issued",
                        emergency=bool(new.get("review")))
        else:
            self._write_status_if_changed(req, new)
        if self.schedule_expiry and state.secret_uid:
            self.schedule_expiry((meta["namespace"], meta["name"]), meta["namespace"], state.secret_name,
                                 state.secret_uid, state.expires_at.timestamp())
        due = self._review_due(new)
        return min([t for t in (state.expires_at, due) if t is not None])

    def _pending(self, req, view, policy, status, tally, decision: D.Decision, now) -> dt.datetime | None:
        new = dict(status)
        new["phase"] = api.PENDING
        new["conditions"] = set_condition(new.get("conditions"), type=api.COND_APPROVED, status=False,
                                          reason=decision.reason, message=decision.message, now=now,
                                          observed_generation=req["metadata"].get("generation"))
        new["message"] = decision.message
        self._write_status_if_changed(req, new)
        return decision.requeue_at

    def _finish(self, req, view, status, phase: str, decision: D.Decision, now, approved: bool | None):
        new = dict(status)
        new["phase"] = phase
        gen = req["metadata"].get("generation")
        new["conditions"] = set_condition(new.get("conditions"), type=api.COND_APPROVED,
                                          status=False if approved is False else "Unknown" if approved is None else True,
                                          reason=decision.reason, message=decision.message, now=now,
                                          observed_generation=gen)
        new["message"] = decision.message
        self._write_status(req, new)
        reason = "Denied" if phase == api.DENIED else "Failed"
        self._event(req, "Warning", reason, f"{phase}: {decision.message}")
        self._audit("denied" if phase == api.DENIED else "failed", req, view, reason=decision.reason,
                    message=decision.message, outcome=phase.lower())
        if not api.is_drill(req):
            metrics.requests_total.labels(view.policy, phase.lower()).inc()
        self._remove_finalizer(req)
        return None

    def _expire(self, req, view, status, token: TokenState | None, expires_at, now):
        if token is not None:
            self._cleanup(req, token)
            metrics.expiry_lag.observe(max(0.0, (self.clock() - token.expires_at).total_seconds()))
        else:  # the expiry fast path already deleted the Secret
            self.kube.delete_managed_rbac(view.namespace, view.name)
        new = dict(status)
        gen = req["metadata"].get("generation")
        new["phase"] = api.EXPIRED
        new.pop("secretRef", None)
        new["conditions"] = set_condition(new.get("conditions"), type=api.COND_ISSUED, status=False,
                                          reason="TokenExpired", message="token Secret deleted at expiry",
                                          now=now, observed_generation=gen)
        new["conditions"] = set_condition(new["conditions"], type=api.COND_EXPIRED, status=True,
                                          reason="DurationElapsed",
                                          message=f"expired at {to_rfc3339(expires_at)}", now=now,
                                          observed_generation=gen)
        new["message"] = f"expired at {to_rfc3339(expires_at)}"
        self._write_status(req, new, clear=["secretRef"])
        self._event(req, "Normal", "Expired", f"access expired at {to_rfc3339(expires_at)}; token Secret and "
                                              "RoleBindings deleted")
        self._audit("expired", req, view, jti=status.get("tokenId") or (token.jti if token else None),
                    expiresAt=to_rfc3339(expires_at), outcome="expired")
        if not api.is_drill(req):
            metrics.requests_total.labels(view.policy, "expired").inc()
        self._remove_finalizer(req)
        return self._review_due(new)

    def _revoke(self, req, status, token: TokenState | None, now, *, reason: str, message: str,
                expires_at: dt.datetime | None = None) -> None:
        view = RequestView.from_resource(req)
        jti = token.jti if token else status.get("tokenId")
        exp = token.expires_at if token else (expires_at or (parse_rfc3339(status["expiresAt"])
                                                             if status.get("expiresAt") else None))
        if jti and exp and exp > now:
            # Record first: if this fails we retry before claiming the token is revoked.
            self.revocations.add(jti=jti, exp=int(exp.timestamp()), request=f"{view.namespace}/{view.name}",
                                 reason=reason, now=now)
        if token is not None:
            self._cleanup(req, token)
        else:
            self.kube.delete_managed_rbac(view.namespace, view.name)
        had_token = bool(jti)
        if req["metadata"].get("deletionTimestamp"):
            if had_token:
                metrics.revocations_total.labels(reason).inc()
            self._audit("revoked", req, view, jti=jti, reason=reason, outcome="revoked")
            return
        new = dict(status)
        gen = req["metadata"].get("generation")
        new["phase"] = api.REVOKED
        new.pop("secretRef", None)
        if had_token:
            new["conditions"] = set_condition(new.get("conditions"), type=api.COND_ISSUED, status=False,
                                              reason="TokenRevoked", message="token Secret deleted on revocation",
                                              now=now, observed_generation=gen)
        new["conditions"] = set_condition(new.get("conditions"), type=api.COND_REVOKED, status=True, reason=reason,
                                          message=message, now=now, observed_generation=gen)
        new["message"] = message
        self._write_status(req, new, clear=["secretRef"])
        self._event(req, "Normal", "Revoked", f"{message}" + (f" (jti {jti} on the revocation list)" if had_token else ""))
        self._audit("revoked", req, view, jti=jti, reason=reason, outcome="revoked")
        if had_token:
            metrics.revocations_total.labels(reason).inc()
        if not api.is_drill(req):
            metrics.requests_total.labels(view.policy, "revoked").inc()
        self._remove_finalizer(req)

    def _cleanup(self, req, token: TokenState) -> None:
        meta = req["metadata"]
        self.kube.delete_secret(meta["namespace"], token.secret_name)
        self.kube.delete_managed_rbac(meta["namespace"], meta["name"])

    def _revoke_stale_secret(self, secret, now) -> None:
        ann = secret["metadata"].get("annotations") or {}
        if ann.get(api.TOKEN_ID_ANNOTATION) and ann.get(api.EXPIRES_AT_ANNOTATION):
            exp = parse_rfc3339(ann[api.EXPIRES_AT_ANNOTATION])
            if exp > now:
                self.revocations.add(jti=ann[api.TOKEN_ID_ANNOTATION], exp=int(exp.timestamp()),
                                     request=secret["metadata"]["namespace"] + "/" +
                                     secret["metadata"]["labels"].get(api.REQUEST_LABEL, "?"),
                                     reason="StaleSecret", now=now)
        self.kube.delete_secret(secret["metadata"]["namespace"], secret["metadata"]["name"])

    # ------------------------------------------------------------ review etc.
    def _note_review(self, req, view, status, tally, now):
        review = status.get("review") or {}
        if not review.get("required") or review.get("reviewedAt") or not tally or not tally.reviewed_by:
            return status
        reviewer = tally.reviewed_by[0]
        new = dict(status)
        new["review"] = dict(review, reviewer=reviewer, reviewedAt=to_rfc3339(now))
        new["conditions"] = set_condition(new.get("conditions"), type=api.COND_REVIEW_OVERDUE, status=False,
                                          reason="Reviewed", message=f"reviewed by {reviewer}", now=now,
                                          observed_generation=req["metadata"].get("generation"))
        self._write_status(req, new)
        self._event(req, "Normal", "Reviewed", f"emergency access reviewed by {reviewer}")
        self._audit("review", req, view, reviewer=reviewer, outcome="reviewed")
        return new

    def _note_ignored(self, req, status, tally):
        if not tally or not tally.ignored:
            return status
        reported = set(status.get("ignoredApprovals") or [])
        fresh = [(n, who, why) for n, who, why in tally.ignored if n not in reported]
        if not fresh:
            return status
        for name, who, why in fresh:
            self._event(req, "Warning", "ApprovalIgnored", f"approval {name} by {who or '?'} ignored: {why}")
        new = dict(status)
        new["ignoredApprovals"] = sorted(reported | {n for n, _, _ in fresh})
        self._write_status(req, new)
        return new

    def _note_counted(self, req, status, tally):
        """Record every counted decision once in status.approvals (and count it in metrics)."""
        if not tally or not tally.counted:
            return status
        seen = {(a.get("approver"), a.get("decision")) for a in status.get("approvals") or []}
        fresh = [a for a in tally.counted if (a.approver, a.decision) not in seen]
        if not fresh:
            return status
        for a in fresh:
            metrics.approvals_total.labels(a.decision).inc()
        new = dict(status)
        new["approvals"] = [self._approval_entry(a) for a in tally.counted]
        self._write_status(req, new)
        return new

    @staticmethod
    def _approval_entry(a: ApprovalView) -> dict[str, Any]:
        entry = {"approver": a.approver, "decision": a.decision}
        if a.created:
            entry["time"] = to_rfc3339(a.created)
        if a.comment:
            entry["comment"] = a.comment
        return entry

    def check_review_overdue(self, req, now) -> bool:
        status = req.get("status") or {}
        review = status.get("review") or {}
        if not review.get("required") or review.get("reviewedAt") or not review.get("dueAt"):
            return False
        if parse_rfc3339(review["dueAt"]) > now:
            return False
        cond = get_condition(status.get("conditions"), api.COND_REVIEW_OVERDUE)
        if cond is None or cond.get("status") != "True":
            new = dict(status)
            new["conditions"] = set_condition(status.get("conditions"), type=api.COND_REVIEW_OVERDUE, status=True,
                                              reason="ReviewOverdue",
                                              message=f"emergency review was due at {review['dueAt']}", now=now,
                                              observed_generation=req["metadata"].get("generation"))
            self._write_status(req, new)
            self._event(req, "Warning", "ReviewOverdue",
                        f"emergency access review was due at {review['dueAt']} and has not been filed")
            self._audit("review", req, RequestView.from_resource(req), outcome="overdue")
        return True

    @staticmethod
    def _review_due(status) -> dt.datetime | None:
        review = status.get("review") or {}
        if review.get("required") and not review.get("reviewedAt") and review.get("dueAt"):
            return parse_rfc3339(review["dueAt"])
        return None

    # ---------------------------------------------------------------- helpers
    def _write_status(self, req, status, clear: list[str] | None = None) -> None:
        meta = req["metadata"]
        patch = dict(status)
        for key in clear or []:
            patch[key] = None  # merge-patch null removes the field
        patch["observedGeneration"] = meta.get("generation")
        updated = self.kube.patch_request_status(meta["namespace"], meta["name"], patch)
        req["status"] = updated.get("status") or {}
        req["metadata"]["resourceVersion"] = updated["metadata"]["resourceVersion"]
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

    def _write_status_if_changed(self, req, status) -> None:
        if status != (req.get("status") or {}):
            self._write_status(req, status)

    def _remove_finalizer(self, req) -> None:
        fins = req["metadata"].get("finalizers") or []
        if api.FINALIZER in fins:
            # resourceVersion guards against dropping a finalizer someone added meanwhile; a
            # conflict raises, and the work queue retries with a fresh read.
            updated = self.kube.patch_request(req["metadata"]["namespace"], req["metadata"]["name"],
                                              {"metadata": {"finalizers": [f for f in fins if f != api.FINALIZER],
                                                            "resourceVersion": req["metadata"]["resourceVersion"]}})
            self._remember_own_write(updated)

    def _event(self, req, type_, reason, message) -> None:
        """Events are best effort (the audit log is the record): posted off the issue path."""
        body = builders.build_event(involved={**req, "kind": api.KIND_REQUEST, "apiVersion": api.API_VERSION},
                                    type_=type_, reason=reason, message=message, now=self.clock())
        self._events.submit(self.kube.create_event, body)

    def _audit(self, event: str, req, view: RequestView, **fields) -> None:
        meta = req["metadata"]
        self.audit.record(event, time=to_rfc3339(self.clock()),
                          request={"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                          policy=view.policy, requester=view.requester, namespaces=list(view.namespaces),
                          clusterRoles=list(view.cluster_roles), scopes=list(view.scopes),
                          ticket=view.ticket or "", drill=api.is_drill(req), **fields)

    @staticmethod
    def _grant_text(view: RequestView) -> str:
        parts = []
        if view.cluster_roles:
            parts.append(f"ClusterRoles {list(view.cluster_roles)} in {list(view.namespaces)}")
        if view.scopes:
            parts.append(f"scopes {list(view.scopes)}")
        return " and ".join(parts) or "nothing"
