"""The audit sink: kube-apiserver's audit webhook backend posts grant identities' requests here.

Every replica serves `POST /audit` (kube-apiserver reaches whichever the Service picks) and does the
same thing: parse the batch (all or nothing), queue its grant actions in bounded memory, answer at
once. A flusher thread folds the queued actions into each grant's ledger entry (`usage`: counters and
a bounded trail with per-grant sequence numbers) with a resourceVersion-guarded write, retried on
conflict, so replicas never lose each other's counts. The leader sees the ledger change and does the
rest (`usage_records.py`): audit records, status.usage, limits. TokenReview's sightings of revoked or
expired tokens travel the same way (`reuse`).

A grant that has just reached a count limit is refused by this replica's TokenReview at once
(`exhausted`), before the leader's revocation lands: the overshoot is the audit batch window.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import metrics
from .domain.durations import parse_rfc3339, to_rfc3339, utcnow
from .domain.usage import Action, MalformedEvent, fold, limit_crossed, parse_event
from .k8s.client import Conflict, error_text
from .ledger import Ledger

log = logging.getLogger(__name__)

MAX_PENDING = 20_000  # queued actions (≈300 B each): beyond this a batch is dropped, and counted
MAX_BODY = 16 * 1024 * 1024
WRITE_ATTEMPTS = 5


class BadBatch(ValueError):
    """Not an audit.k8s.io EventList: answered 400, nothing recorded."""


def parse_batch(body: bytes) -> tuple[list[Action], int, float | None]:
    """(grant actions, events ignored, oldest stageTimestamp as POSIX seconds) of one EventList.
    All or nothing: any malformed event rejects the whole batch."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadBatch(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "EventList" or not isinstance(doc.get("items"), list):
        raise BadBatch("body is not an audit.k8s.io EventList (kind EventList with items)")
    if not str(doc.get("apiVersion", "")).startswith("audit.k8s.io/"):
        raise BadBatch(f"apiVersion {doc.get('apiVersion')!r} is not audit.k8s.io/v1")
    actions, ignored, oldest = [], 0, None
    for index, event in enumerate(doc["items"]):
        try:
            action = parse_event(event)
        except MalformedEvent as exc:
            raise BadBatch(f"items[{index}]: {exc}") from None
        if action is None:
            ignored += 1
            continue
        actions.append(action)
        stamp = parse_rfc3339(action.time).timestamp()
        oldest = stamp if oldest is None else min(oldest, stamp)
    return actions, ignored, oldest


class UsageSink:
    def __init__(
        self,
        ledger: Ledger,
        *,
        flush_interval: float = 2.0,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], dt.datetime] = utcnow,
    ):
        self.ledger, self.flush_interval, self.max_pending, self.clock = ledger, flush_interval, max_pending, clock
        self._lock = threading.Lock()
        self._pending: collections.deque[Action] = collections.deque()
        self._reuse: dict[str, dict[str, int]] = {}  # uid -> {state: count} seen by TokenReview
        self._wake = threading.Event()
        self._urgent = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exhausted: dict[str, float] = {}  # uid -> exp: count limit reached, refused by TokenReview
        self._recorded = metrics.audit_events_total.labels("recorded")
        self._ignored = metrics.audit_events_total.labels("ignored")
        self._dropped = metrics.audit_events_total.labels("dropped")

    # ------------------------------------------------------------ receiving (event loop)
    def accept(self, body: bytes) -> tuple[int, str]:
        """One POST body: (HTTP status, message). Never blocks on the API server."""
        try:
            actions, ignored, oldest = parse_batch(body)
        except BadBatch as exc:
            metrics.audit_events_total.labels("malformed").inc()
            return 400, str(exc)
        self._ignored.inc(ignored)
        if oldest is not None:
            metrics.audit_sink_lag_seconds.set(max(0.0, time.time() - oldest))
        if not actions:
            return 200, "ok"
        urgent = False
        with self._lock:
            if len(self._pending) + len(actions) > self.max_pending:
                self._dropped.inc(len(actions))
                log.warning("audit sink full: %d grant action(s) dropped (counted)", len(actions))
                return 200, "dropped"  # a retry would only make the flood worse
            self._pending.extend(actions)
            for action in actions:
                summary = self.ledger.summary(action.uid)
                urgent = urgent or bool(summary and summary.limited)
            self._urgent = self._urgent or urgent
        self._wake.set()
        return 200, "ok"

    def note_reuse(self, uid: str, state: str) -> None:
        """TokenReview saw a revoked or expired token of grant `uid` (the metric is counted there)."""
        with self._lock:
            seen = self._reuse.setdefault(uid, {})
            seen[state] = seen.get(state, 0) + 1
            self._urgent = True
        self._wake.set()

    def exhausted(self, uid: str) -> bool:
        return uid in self._exhausted

    # ------------------------------------------------------------ flushing (own thread)
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="usage-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            with self._lock:
                urgent, self._urgent = self._urgent, False
            if not urgent:  # coalesce: one ledger write per grant per interval at most
                self._stop.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 — a pass failing must not end the thread
                metrics.errors_total.labels("usage").inc()
                log.warning("usage flush failed: %s", error_text(exc))

    def flush(self) -> int:
        """Fold everything queued into the ledger; returns how many grants were written."""
        with self._lock:
            actions, self._pending = list(self._pending), collections.deque()
            reuse, self._reuse = self._reuse, {}
        by_uid: dict[str, list[Action]] = {}
        for action in actions:
            by_uid.setdefault(action.uid, []).append(action)
        written = 0
        for uid in by_uid.keys() | reuse.keys():
            written += self._write(uid, by_uid.get(uid, []), reuse.get(uid, {}))
        now = time.time()
        self._exhausted = {u: exp for u, exp in self._exhausted.items() if exp > now}
        return written

    def _write(self, uid: str, actions: list[Action], reuse: dict[str, int]) -> int:
        entry = self.ledger.get(uid) or self.ledger.fetch(uid)
        for _attempt in range(WRITE_ATTEMPTS):
            if entry is None or (actions and entry.get("username") != actions[0].username):
                self._ignored.inc(len(actions))  # no grant of ours (a purged ledger entry): nothing to count
                return 0
            changes: dict[str, Any] = {}
            if actions:
                changes["usage"] = fold(entry.get("usage"), actions)
            if reuse:
                changes["reuse"] = add_reuse(entry.get("reuse"), reuse, to_rfc3339(self.clock()))
            try:
                stored = self.ledger.update(entry, **changes)
            except Conflict:
                entry = self.ledger.fetch(uid)
                continue
            except Exception as exc:  # noqa: BLE001 — the API server is away: keep them for the next pass
                self._requeue(actions, reuse, uid, exc)
                return 0
            self._recorded.inc(len(actions))
            for action in actions:
                metrics.grant_requests_total.labels(entry.get("policy", ""), action.verb_class).inc()
            crossed = limit_crossed(stored, self.clock())
            if crossed and crossed[0] == "UseLimitReached" and stored.get("state") == "Active":
                self._exhausted[uid] = parse_rfc3339(stored["expiresAt"]).timestamp()
            return 1
        self._requeue(actions, reuse, uid, Conflict("ledger entry kept changing"))
        return 0

    def _requeue(self, actions: list[Action], reuse: dict[str, int], uid: str, exc: Exception) -> None:
        metrics.errors_total.labels("usage").inc()
        log.warning("usage of grant %s not written yet (%s): retried next pass", uid, error_text(exc))
        with self._lock:
            room = self.max_pending - len(self._pending)
            kept = actions[:room] if room > 0 else []
            self._dropped.inc(len(actions) - len(kept))
            self._pending.extendleft(reversed(kept))
            for state, count in reuse.items():
                self._reuse.setdefault(uid, {})[state] = self._reuse.get(uid, {}).get(state, 0) + count


def add_reuse(old: dict[str, Any] | None, seen: dict[str, int], now: str) -> dict[str, Any]:
    """The grant's `reuse` record after more sightings: per-state counts, total, last seen."""
    reuse = dict(old or {})
    counts = dict(reuse.get("counts") or {})
    for state, count in seen.items():
        counts[state] = int(counts.get(state, 0)) + count
    reuse["counts"] = counts
    reuse["seen"] = sum(counts.values())
    reuse["lastSeenAt"] = now
    reuse.setdefault("reported", 0)
    return reuse
