"""Effects on a grant, always in this order: ledger → RBAC → delivery → ledger Active.

* `issue` records the whole plan (jti, exp, claims, every object name) in the ledger before the
  first object exists, creates each object create-if-absent, and adopts an existing object only
  if it carries the grant's nonce and exactly the content we would write. A refusal that a retry
  cannot fix rolls back what the ledger says we created and marks the grant Failed: never a
  working token without a record, never two tokens for one request uid.
* `end` (revoke) marks the ledger first (the token leaves the TokenReview allow-list), then deletes
  every object the ledger lists — even when that ledger write failed. Expiry past exp deletes first
  and writes the ledger once (the token is already dead at its exp).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from typing import Any

from . import api, metrics
from .domain.claims import build_claims, new_token_id
from .domain.decisions import Decision
from .domain.durations import parse_duration, parse_rfc3339, to_rfc3339
from .domain.limits import effective_limits
from .domain.policy import Policy, RequestView, effective_duration
from .k8s import builders
from .k8s.client import Conflict, Kube, PermanentError, error_text
from .ledger import ACTIVE, EXPIRED, FAILED, ISSUING, REVOKED, Ledger
from .settings import Settings
from .stores import KeyStore, RevocationStore
from .tokens.jwt_tokens import mint

__all__ = ["Grants", "IssueFailed", "ACTIVE", "EXPIRED", "FAILED", "ISSUING", "REVOKED"]

REQUEST_NAMESPACE_DELIVERY = "RequestNamespace"


class CleanupIncomplete(Exception):
    """Some objects of an ended grant could not be deleted yet; the caller retries."""


class IssueFailed(Exception):
    def __init__(self, entry: dict[str, Any], reason: str, message: str):
        super().__init__(message)
        self.entry, self.reason, self.message = entry, reason, message


class Grants:
    def __init__(
        self,
        *,
        kube: Kube,
        ledger: Ledger,
        keys: KeyStore,
        revocations: RevocationStore,
        settings: Settings,
        clock: Callable[[], dt.datetime],
        cluster_ca_b64: str | None = None,
    ):
        self.kube, self.ledger, self.keys, self.revocations = kube, ledger, keys, revocations
        self.settings, self.clock, self.cluster_ca_b64 = settings, clock, cluster_ca_b64

    # ------------------------------------------------------------------ plan
    def plan(
        self, req: dict[str, Any], view: RequestView, policy: Policy, decision: Decision, now: dt.datetime
    ) -> dict[str, Any]:
        """The ledger entry for a new grant: everything decided before anything is created."""
        meta = req["metadata"]
        uid, jti = meta["uid"], new_token_id()
        claims = build_claims(
            request=view,
            policy=policy,
            request_uid=uid,
            issuer=self.settings.issuer,
            approvers=decision.approvers,
            issued_at=decision.starts_at or now,  # a scheduled grant: iat = nbf = startAt, exp = startAt + duration
            duration=effective_duration(view, policy),
            jti=jti,
            emergency=decision.emergency,
            drill=api.is_drill(req),
        )
        token_ns = (
            view.namespace if policy.token_delivery == REQUEST_NAMESPACE_DELIVERY else self.settings.tokens_namespace
        )
        approval = {
            "reason": decision.reason,
            "message": decision.message,
            "approvers": list(decision.approvers),
            "emergency": decision.emergency,
        }
        if decision.alert:
            approval["alert"] = decision.alert
        if decision.emergency:
            approval["reviewDueAt"] = to_rfc3339(now + parse_duration(policy.emergency_review_within))
        entry = {
            "request": {"namespace": view.namespace, "name": view.name, "uid": uid},
            "policy": policy.name,
            "requester": view.requester,
            "username": api.grant_username(view.namespace, view.name, uid),
            "state": ISSUING,
            "jti": jti,
            "kid": self.keys.current().active.kid,
            "issuedAt": to_rfc3339(dt.datetime.fromtimestamp(claims["iat"], dt.UTC)),
            "expiresAt": to_rfc3339(dt.datetime.fromtimestamp(claims["exp"], dt.UTC)),
            "nonce": secrets.token_hex(16),
            "claims": claims,
            "clusterRoles": list(view.cluster_roles),
            "secret": {"namespace": token_ns, "name": api.token_secret_name(uid), "uid": ""},
            "approval": approval,
            "drill": api.is_drill(req),
        }
        limits = effective_limits(policy.limits, view.limits).as_dict()
        if limits:
            entry["limits"] = limits
        entry["objects"] = builders.planned_objects(entry, view.namespaces, view.cluster_roles, token_ns)
        return entry

    # ----------------------------------------------------------------- issue
    def issue(
        self,
        entry: dict[str, Any],
        before_delivery: Callable[[dict[str, Any]], None] | None = None,
        just_created: bool = False,
    ) -> dict[str, Any]:
        """Create every planned object, then mark the grant Active. Raises IssueFailed after a rollback.
        `before_delivery(entry)` runs right before the token Secret is created (the `issued` audit
        record: recorded before the token exists anywhere a user can read it). `just_created`: this
        pass created the entry (it is the stored version; no re-read needed)."""
        if entry["state"] != ISSUING:
            return entry
        if not just_created:  # never re-create objects of a grant that ended (the view may lag)
            fresh = self.ledger.fetch(entry["request"]["uid"])
            if fresh is None or fresh["state"] != ISSUING:
                return fresh or entry
            entry = fresh
        objects = [dict(ref) for ref in entry["objects"]]
        for ref in objects:
            if ref.get("uid"):
                continue
            if ref["kind"] == "Secret" and before_delivery is not None:
                before_delivery(entry)
            try:
                wanted = self._manifest(ref, entry, with_token=True)
                found, created = self.kube.create_if_absent(ref["kind"], wanted)
            except PermanentError as exc:
                self._rollback(
                    entry,
                    objects,
                    "IssueFailed",
                    f"could not create {ref['kind']} {ref['namespace']}/{ref['name']}: {exc}",
                )
            if not created and not builders.is_ours(found, wanted):
                self._rollback(
                    entry,
                    objects,
                    "NameTaken",
                    f"{ref['kind']} {ref['namespace']}/{ref['name']} exists and was not created by "
                    "the operator; it is left untouched",
                )
            ref["uid"] = found["metadata"]["uid"]
        secret = next(r for r in objects if r["kind"] == "Secret")
        try:
            return self.ledger.update(
                entry,
                objects=objects,
                state=ACTIVE,
                activatedAt=to_rfc3339(self.clock()),
                secret=dict(entry["secret"], uid=secret["uid"]),
            )
        except Conflict:
            # Someone ended the grant while we were creating (a revoke, the sweeper, another replica):
            # what we created after their cleanup is known only here, so delete it now, by uid.
            fresh = self.ledger.fetch(entry["request"]["uid"])
            if fresh is None or fresh["state"] != ISSUING:
                self.cleanup(dict(entry, objects=objects))
            raise

    def _manifest(self, ref: dict[str, Any], entry: dict[str, Any], with_token: bool = False) -> dict[str, Any]:
        if ref["kind"] != "Secret" or not with_token:
            return builders.build_object(ref, entry)
        key = next((k for k in self.keys.current().keys if k.kid == entry["kid"]), None)
        if key is None:  # the ledger pins its kid, so this means the keyring was replaced
            raise PermanentError(500, f"signing key {entry['kid']} of this grant is no longer in the keyring")
        token = mint(entry["claims"], key)
        kubeconfig = None
        if self.settings.cluster_server:
            kubeconfig = builders.build_kubeconfig(
                server=self.settings.cluster_server,
                ca_data_b64=self.cluster_ca_b64,
                user=entry["username"],
                token=token,
            )
        body = builders.build_object(ref, entry, token=token, kubeconfig=kubeconfig)
        del token, kubeconfig
        return body

    def _rollback(self, entry, objects, reason: str, message: str):
        """Never Active: the ledger says Failed first, then what we created goes."""
        metrics.issue_rollbacks_total.labels(reason).inc()
        failed = self.ledger.update(
            entry, objects=objects, state=FAILED, reason=reason, message=message, endedAt=to_rfc3339(self.clock())
        )
        self.cleanup(failed)
        failed = self.ledger.update(failed, cleaned=True)
        raise IssueFailed(failed, reason, message)

    # ------------------------------------------------------------------- end
    def end(
        self, entry: dict[str, Any], state: str, reason: str, message: str, use_sensitive: bool = False
    ) -> dict[str, Any]:
        """Revoke or expire: ledger first, then cleanup — cleanup happens even if the ledger write fails,
        except for a decision taken from the grant's use (`use_sensitive`) that a newer use overtook:
        then nothing is done and the next pass decides again."""
        now = self.clock()
        if state == EXPIRED and entry["state"] == ACTIVE and parse_rfc3339(entry["expiresAt"]) <= now:
            return self._expire(entry, reason, message, now)
        failure: Exception | None = None
        ended = entry
        if entry["state"] in (ISSUING, ACTIVE):
            try:
                ended = self.ledger.update(
                    entry,
                    use_sensitive=use_sensitive,
                    state=state,
                    reason=reason,
                    message=message,
                    endedAt=to_rfc3339(now),
                )
            except Conflict:
                if use_sensitive:
                    raise  # used meanwhile: not idle after all (decided again on the fresh entry)
                failure = Conflict("ledger entry changed meanwhile")
            except Exception as exc:  # noqa: BLE001 — re-raised after the cleanup below
                failure = exc
        if state == REVOKED and failure is None and parse_rfc3339(entry["expiresAt"]) > now:
            self.revocations.publish(
                jti=entry["jti"],
                exp=int(parse_rfc3339(entry["expiresAt"]).timestamp()),
                request=f"{entry['request']['namespace']}/{entry['request']['name']}",
                reason=reason,
                now=now,
            )
        self.cleanup(ended)
        if failure is not None:
            raise failure
        return self.ledger.update(ended, cleaned=True)

    def _expire(self, entry: dict[str, Any], reason: str, message: str, now: dt.datetime) -> dict[str, Any]:
        """Past its exp the token is already dead (TokenReview and kube-apiserver both check exp), so
        expiry needs no record before it acts: delete, then one ledger write. A crash in between
        leaves an Active entry past its exp, which the next pass expires again (deletes by uid are
        idempotent)."""
        try:
            self.cleanup(entry)
        except CleanupIncomplete:  # recorded as ended but not cleaned: the sweeper finishes it
            self.ledger.update(entry, state=EXPIRED, reason=reason, message=message, endedAt=to_rfc3339(now))
            raise
        return self.ledger.update(
            entry, state=EXPIRED, reason=reason, message=message, endedAt=to_rfc3339(now), cleaned=True
        )

    def cleanup(self, entry: dict[str, Any]) -> int:
        """Delete exactly what the ledger says we created: by uid, or (uid not yet recorded) only
        an object carrying this grant's nonce and content."""
        deleted, errors = 0, []
        for ref in reversed(entry.get("objects") or []):
            try:  # one object failing must not keep the others alive
                if ref.get("uid"):
                    deleted += self.kube.delete_exact(ref["kind"], ref["namespace"], ref["name"], ref["uid"])
                    continue
                found = self.kube.read(ref["kind"], ref["namespace"], ref["name"])
                if found and builders.is_ours(found, self._manifest(ref, entry)):
                    deleted += self.kube.delete_exact(
                        ref["kind"], ref["namespace"], ref["name"], found["metadata"]["uid"]
                    )
            except Exception as exc:  # noqa: BLE001 — reported, and raised once all were tried
                metrics.errors_total.labels("cleanup").inc()
                errors.append(f"{ref['kind']} {ref['namespace']}/{ref['name']}: {error_text(exc)}")
        if errors:
            raise CleanupIncomplete("; ".join(errors))
        return deleted

    def secret_present(self, entry: dict[str, Any]) -> bool:
        ref = entry["secret"]
        found = self.kube.read("Secret", ref["namespace"], ref["name"])
        return bool(found) and found["metadata"].get("uid") == ref.get("uid")
