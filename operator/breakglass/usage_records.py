"""The leader's half of the usage trail: what the audit sinks folded into the ledger becomes audit
records, the leaked-token alarm, and (through the reconcile) status.usage and use-limit revocations.

Record before marking: the `used` records of trail items past the ledger's `usage.audited` are
appended first, then `audited` moves in the ledger (guarded write). A crash between the two repeats
some `used` records on the next pass (each carries its per-grant `seq`, so a reader can tell), never
loses one. Reuse alarms work the same way with `reuse.reported`, and an Event at most once a minute.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from .audit import AuditLog
from .domain.durations import parse_rfc3339, to_rfc3339
from .domain.usage import unaudited
from .k8s.client import Conflict
from .ledger import Ledger
from .recording import Recorder

log = logging.getLogger(__name__)

REUSE_EVENT_EVERY = dt.timedelta(minutes=1)
REUSE_REASONS = {"revoked": "RevokedTokenUsed", "expired": "ExpiredTokenUsed"}


class UsageRecords:
    def __init__(self, *, ledger: Ledger, audit: AuditLog, recorder: Recorder):
        self.ledger, self.audit, self.recorder = ledger, audit, recorder

    def settle(self, req: dict[str, Any], entry: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
        """Audit what the ledger holds beyond its marks; returns the entry as stored afterwards.
        Conflict (a sink wrote meanwhile) is retried with the fresh entry a few times."""
        for _attempt in range(5):
            changes = self._record(req, entry, now)
            if not changes:
                return entry
            try:
                return self.ledger.update(entry, **changes)
            except Conflict:
                fresh = self.ledger.fetch(entry["request"]["uid"])
                if fresh is None:
                    return entry
                entry = fresh  # records already written are repeated at most (seq tells them apart)
        raise Conflict("ledger entry kept changing while recording its usage")

    def _record(self, req, entry, now) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        usage = entry.get("usage") or {}
        items, lost = unaudited(usage)
        if items or lost:
            base = {
                "request": dict(entry["request"]),
                "uid": entry["request"]["uid"],
                "policy": entry.get("policy", ""),
            }
            if lost:
                self.audit.record("used-unrecorded", **base, time=to_rfc3339(now), count=lost)
            self.audit.record_many("used", [{**base, **_used_fields(item)} for item in items])
            changes["usage"] = dict(usage, audited=int(usage.get("requests", 0)))
        reuse = entry.get("reuse") or {}
        fresh = int(reuse.get("seen", 0)) - int(reuse.get("reported", 0))
        if fresh > 0:
            last = reuse.get("eventAt")
            if last and now < parse_rfc3339(last) + REUSE_EVENT_EVERY:
                return changes  # rate-limited: the reconcile looks again when the minute is over
            counts = reuse.get("counts") or {}
            state = max(counts, key=lambda s: counts[s]) if counts else "revoked"
            reason = REUSE_REASONS.get(state, "RevokedTokenUsed")
            message = (
                f"a {state} token of this grant (jti {entry.get('jti')}) was presented {fresh} more time(s), "
                f"last at {reuse.get('lastSeenAt')}: treat it as leaked"
            )
            self.audit.record(
                "token-reuse",
                request=dict(entry["request"]),
                uid=entry["request"]["uid"],
                policy=entry.get("policy", ""),
                jti=entry.get("jti", ""),
                state=state,
                count=fresh,
                counts=dict(counts),
                lastSeenAt=reuse.get("lastSeenAt"),
                time=to_rfc3339(now),
            )
            self.recorder.event(req, "Warning", reason, message)
            changes["reuse"] = dict(reuse, reported=int(reuse.get("seen", 0)), eventAt=to_rfc3339(now))
        return changes

    @staticmethod
    def reuse_due(entry: dict[str, Any] | None) -> dt.datetime | None:
        """When a rate-limited reuse alarm may be raised (None: nothing waiting)."""
        reuse = (entry or {}).get("reuse") or {}
        if int(reuse.get("seen", 0)) <= int(reuse.get("reported", 0)) or not reuse.get("eventAt"):
            return None
        return parse_rfc3339(reuse["eventAt"]) + REUSE_EVENT_EVERY


def _used_fields(item: dict[str, Any]) -> dict[str, Any]:
    fields = {k: item.get(k, "") for k in ("verb", "resource", "subresource", "namespace", "name", "code")}
    fields["time"] = item.get("time", "")
    fields["useSeq"] = item.get("seq", 0)  # the grant's own count (`seq` is the chain's)
    if item.get("uri"):
        fields["uri"] = item["uri"]
    return fields
