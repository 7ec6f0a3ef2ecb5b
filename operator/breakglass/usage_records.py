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
import threading
from collections import OrderedDict
from typing import Any

from .audit import AuditLog
from .domain.durations import parse_rfc3339, to_rfc3339
from .domain.usage import unaudited
from .k8s.client import Conflict
from .ledger import Ledger
from .recording import Recorder

log = logging.getLogger(__name__)

REUSE_EVENT_EVERY = dt.timedelta(minutes=1)
MARK_ATTEMPTS = 20  # a mark write is cheap; the sinks may write the same entry several times a second
REMEMBERED_GRANTS = 10_000
REUSE_REASONS = {"revoked": "RevokedTokenUsed", "superseded": "RevokedTokenUsed", "expired": "ExpiredTokenUsed"}


class UsageRecords:
    def __init__(self, *, ledger: Ledger, audit: AuditLog, recorder: Recorder):
        self.ledger, self.audit, self.recorder = ledger, audit, recorder
        # What this leader already recorded per grant uid (use seq, reuses reported), ahead of the
        # ledger's marks until a mark write wins against the sinks' writes: a retry records only
        # what is new and never repeats an Event. Bounded; a new leader starts from the marks.
        self._through: OrderedDict[str, tuple[int, int, str]] = OrderedDict()
        self._lock = threading.Lock()

    def _known(self, uid: str) -> tuple[int, int, str]:
        with self._lock:
            return self._through.get(uid, (0, 0, ""))

    def _remember(self, uid: str, used: int, reported: int, event_at: str = "") -> None:
        with self._lock:  # reconcile workers of different grants share it
            old = self._through.get(uid, (0, 0, ""))
            self._through[uid] = (max(old[0], used), max(old[1], reported), max(old[2], event_at))
            self._through.move_to_end(uid)
            while len(self._through) > REMEMBERED_GRANTS:
                self._through.popitem(last=False)

    def settle(self, req: dict[str, Any], entry: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
        """Audit what the ledger holds beyond its marks; returns the entry as stored afterwards.
        Conflict (a sink wrote meanwhile) is retried with the fresh entry: only the mark is written
        again (and records of actions that arrived meanwhile)."""
        for _attempt in range(MARK_ATTEMPTS):
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

    def settle_orphan(self, entry: dict[str, Any] | None, now: dt.datetime) -> None:
        """The same for a grant whose request is gone (the Events name the deleted request)."""
        if entry is not None:
            request = entry["request"]
            req = {"metadata": {"namespace": request["namespace"], "name": request["name"], "uid": request["uid"]}}
            self.settle(req, entry, now)

    def _record(self, req, entry, now) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        uid = entry["request"]["uid"]
        usage = entry.get("usage") or {}
        used_through, reported_through, evented_at = self._known(uid)
        items, lost = unaudited(dict(usage, audited=max(int(usage.get("audited", 0)), used_through)))
        if items or lost:
            base = {
                "request": dict(entry["request"]),
                "uid": entry["request"]["uid"],
                "policy": entry.get("policy", ""),
            }
            if lost:
                self.audit.record("used-unrecorded", **base, time=to_rfc3339(now), count=lost)
            self.audit.record_many("used", [{**base, **_used_fields(item)} for item in items])
            self._remember(uid, int(usage.get("requests", 0)), 0)
        if int(usage.get("audited", 0)) < int(usage.get("requests", 0)):
            changes["usage"] = dict(usage, audited=int(usage.get("requests", 0)))
        reuse = entry.get("reuse") or {}
        seen, marked = int(reuse.get("seen", 0)), int(reuse.get("reported", 0))
        done, last = max(marked, reported_through), max(reuse.get("eventAt") or "", evented_at)
        if seen > done and not (last and now < parse_rfc3339(last) + REUSE_EVENT_EVERY):  # else rate-limited:
            self._alarm(req, entry, reuse, seen - done, now)  # the reconcile looks again after the minute
            done, last = seen, to_rfc3339(now)
            self._remember(uid, 0, done, last)
        if done > marked:  # (an Event raised in an earlier attempt whose mark write lost: only the mark)
            changes["reuse"] = dict(reuse, reported=done, eventAt=last)
        return changes

    def _alarm(self, req, entry, reuse, fresh: int, now: dt.datetime) -> None:
        counts = reuse.get("counts") or {}
        state = max(counts, key=lambda s: counts[s]) if counts else "revoked"
        which = (
            "a token of this grant that an extension replaced"
            if state == "superseded"
            else f"a {state} token of this grant (jti {entry.get('jti')})"
        )
        message = f"{which} was presented {fresh} more time(s), last at {reuse.get('lastSeenAt')}: treat it as leaked"
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
        self.recorder.event(req, "Warning", REUSE_REASONS.get(state, "RevokedTokenUsed"), message)

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
