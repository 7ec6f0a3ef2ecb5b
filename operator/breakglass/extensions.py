"""Extending an active grant (effects). The rules are pure, in domain/extensions.py.

Record before act, always in this order:

1. the ledger gets the new jti, exp, claims and kid, the previous jti in `previousJtis`, the decided
   extension in `extensions[]`, and `deliveredJti` still naming the old jti. From this write on,
   TokenReview authenticates only the new jti (its allow-list is the ledger): the old token is dead.
2. the old jti goes onto the published revocation view; the `extended` audit record is written.
3. the token Secret (same name, same uid) is replaced with a token minted from the ledger's claims.
4. the ledger says `deliveredJti` = the new jti.

A crash between 1 and 4 leaves `deliveredJti` != `jti`: the next pass re-delivers the ledger's token
(same jti, same claims) and never mints a third jti, because the extension is already decided in the
ledger. A refusal is recorded the same way (ledger first), so it is reported once.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from . import metrics
from .domain.approvals import ApprovalView
from .domain.claims import new_token_id
from .domain.durations import parse_rfc3339, to_rfc3339
from .domain.extensions import APPLIED, REFUSE, REFUSED, WAIT, ExtensionView, judge_extension, undecided
from .domain.policy import Policy, RequestView
from .grants import Grants
from .k8s.client import Kube
from .ledger import Ledger
from .recording import Recorder
from .settings import Settings

log = logging.getLogger(__name__)


def pending_delivery(entry: dict[str, Any]) -> bool:
    """The ledger holds a token the Secret does not carry yet (an extension was interrupted)."""
    return entry.get("deliveredJti", entry["jti"]) != entry["jti"]


class Extender:
    def __init__(
        self,
        *,
        kube: Kube,
        ledger: Ledger,
        grants: Grants,
        recorder: Recorder,
        settings: Settings,
        clock: Callable[[], dt.datetime],
    ):
        self.kube, self.ledger, self.grants, self.recorder = kube, ledger, grants, recorder
        self.settings, self.clock = settings, clock

    def step(self, req, view: RequestView, policy: Policy | None, entry: dict[str, Any], now: dt.datetime):
        """One pass over an Active grant: finish an interrupted delivery, then decide the extensions
        the ledger has not decided yet. Returns the (possibly new) ledger entry."""
        if pending_delivery(entry):  # an extension recorded, its delivery interrupted: finish it
            last = next((e for e in reversed(entry.get("extensions") or []) if e.get("jti") == entry["jti"]), None)
            entry = self._finish(req, view, entry, last, now) if last else self.deliver(entry)
        if policy is None or not policy.extension_allowed or view.revoked:
            return entry  # no LIST for policies without extensions (most grants)
        meta = req["metadata"]
        decided = {e.get("uid") for e in entry.get("extensions") or []}
        found = [ExtensionView.from_resource(x) for x in self.kube.list_extensions(view.namespace, view.name)]
        todo = undecided(
            found, decided, request_uid=meta["uid"], request_created=parse_rfc3339(meta["creationTimestamp"])
        )
        if not todo:
            return entry
        approvals = [ApprovalView.from_resource(a) for a in self.kube.list_approvals(view.namespace, view.name)]
        for ext in todo:
            decision = judge_extension(
                ext,
                approvals,
                policy=policy,
                requester=view.requester,
                request_uid=meta["uid"],
                issued_at=dt.datetime.fromtimestamp(entry["claims"]["iat"], dt.UTC),
                expires_at=parse_rfc3339(entry["expiresAt"]),
                ceiling=self.settings.max_token_lifetime,
                now=now,
            )
            if decision.action == WAIT:
                continue
            if decision.action == REFUSE:
                entry = self._refuse(req, view, entry, ext, decision, now)
                continue
            entry = self._extend(req, view, entry, ext, decision, now)
        return entry

    # ---------------------------------------------------------------- effects
    def _refuse(self, req, view, entry, ext: ExtensionView, decision, now) -> dict[str, Any]:
        record = {
            "uid": ext.uid,
            "name": ext.name,
            "by": ext.by,
            "state": REFUSED,
            "reason": decision.reason,
            "message": decision.message,
            "at": to_rfc3339(now),
        }
        entry = self.ledger.update(entry, extensions=list(entry.get("extensions") or []) + [record])
        self.recorder.audit_record(
            "extension",
            req,
            view,
            key=f"extension:{ext.uid}",
            extension=ext.name,
            by=ext.by,
            outcome="refused",
            reason=decision.reason,
            message=decision.message,
        )
        self.recorder.event(req, "Warning", "ExtensionRefused", f"extension {ext.name} refused: {decision.message}")
        metrics.extensions_total.labels(view.policy, "refused").inc()
        return entry

    def _extend(self, req, view, entry, ext: ExtensionView, decision, now) -> dict[str, Any]:
        old_jti, old_exp = entry["jti"], entry["expiresAt"]
        jti, new_exp = new_token_id(), decision.expires_at
        claims = dict(entry["claims"], jti=jti, exp=int(new_exp.timestamp()))
        record = {
            "uid": ext.uid,
            "name": ext.name,
            "by": ext.by,
            "state": APPLIED,
            "approvedBy": list(decision.approvers),
            "at": to_rfc3339(now),
            "jti": jti,
            "previousJti": old_jti,
            "previousExpiresAt": old_exp,
            "expiresAt": to_rfc3339(new_exp),
        }
        entry = self.ledger.update(  # 1. record: from here on only the new jti authenticates
            entry,
            jti=jti,
            claims=claims,
            kid=self.grants.keys.current().active.kid,
            expiresAt=to_rfc3339(new_exp),
            previousJtis=list(entry.get("previousJtis") or []) + [old_jti],
            extensions=list(entry.get("extensions") or []) + [record],
            deliveredJti=old_jti,
        )
        return self._finish(req, view, entry, record, now)

    def _finish(self, req, view, entry, record: dict[str, Any], now) -> dict[str, Any]:
        """Steps 2-4 of an extension the ledger records (repeatable: the audit key and the jti make a
        second run after a crash change nothing but the token's signature)."""
        old_jti, jti = record["previousJti"], record["jti"]
        old_exp = parse_rfc3339(record["previousExpiresAt"])
        if old_exp > now:
            self.grants.revocations.publish(  # 2. the old token, for offline verifiers
                jti=old_jti,
                exp=int(old_exp.timestamp()),
                request=f"{view.namespace}/{view.name}",
                reason="Extended",
                now=now,
            )
        self.recorder.audit_record(
            "extended",
            req,
            view,
            key=f"extension:{record['uid']}",
            extension=record["name"],
            by=record["by"],
            approvers=list(record.get("approvedBy") or []),
            previousJti=old_jti,
            jti=jti,
            kid=entry["kid"],
            expiresAt=record["expiresAt"],
            outcome="extended",
        )
        entry = self.deliver(entry)  # 3 + 4
        who = ", ".join(record.get("approvedBy") or []) or "no approval required"
        self.recorder.event(
            req,
            "Normal",
            "Extended",
            f"extension {record['name']}: extended by {record['by']} ({who}) until {record['expiresAt']}; "
            f"new token jti {jti} in Secret {entry['secret']['namespace']}/{entry['secret']['name']}, "
            f"jti {old_jti} no longer authenticates",
            expiresAt=record["expiresAt"],
            previousExpiresAt=record["previousExpiresAt"],
        )
        metrics.extensions_total.labels(view.policy, "applied").inc()
        return entry

    def deliver(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Put the ledger's token into the grant's own Secret (by uid), then record that it did.
        A missing or foreign Secret is left alone: the reconciler revokes the grant (SecretDeleted)."""
        ref = entry["secret"]
        found = self.kube.read("Secret", ref["namespace"], ref["name"])
        if not found or found["metadata"].get("uid") != ref.get("uid"):
            log.warning(
                "token Secret %s/%s of an extended grant is gone; not re-created", ref["namespace"], ref["name"]
            )
            return entry
        body = self.grants._manifest({"kind": "Secret", **ref}, entry, with_token=True)
        body["metadata"]["resourceVersion"] = found["metadata"]["resourceVersion"]
        body["metadata"]["uid"] = ref["uid"]
        self.kube.replace_secret(body)  # Conflict if someone wrote it meanwhile: the next pass retries
        del body
        return self.ledger.update(entry, deliveredJti=entry["jti"])


__all__ = ["Extender", "pending_delivery"]
