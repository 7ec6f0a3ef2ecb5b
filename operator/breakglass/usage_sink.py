"""The audit sink: kube-apiserver's audit webhook backend posts grant identities' requests here.

Every replica serves `POST /audit` (kube-apiserver reaches whichever the Service picks) and does the
same: parse the batch (all or nothing), fold its grant actions into each grant's ledger entry
(`usage`: counters and a bounded trail with per-grant sequence numbers) with a resourceVersion-guarded
write retried on conflict, and only then answer 200. An acknowledged action is stored; anything else
is answered 503 and kube-apiserver sends the batch again (a repeat is recognised by auditID), so a
sink crash or a replica switch delays the count but loses nothing acknowledged. At most
`max_inflight` batches are handled at once (memory stays bounded; the rest are refused, counted).

The leader sees the ledger change and does the rest (`usage_records.py`): audit records,
status.usage, limits. TokenReview's sightings of revoked or expired tokens travel the same way
(`reuse`, written by a small flusher thread). A grant that has just reached a count limit is refused
by this replica's TokenReview at once (`exhausted`), before the leader's revocation lands.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from . import metrics
from .audit_events import BadBatch, parse_batch, parse_batch_file
from .domain.durations import parse_rfc3339, to_rfc3339, utcnow
from .domain.limits import limit_crossed
from .domain.usage import Action, fold, new_actions
from .k8s.client import Conflict, error_text
from .ledger import Ledger

log = logging.getLogger(__name__)

MAX_INFLIGHT = 8  # batches being written at once; beyond that 503 (kube-apiserver retries), counted
MAX_BODY = 2 * 1024 * 1024  # a batch read into memory (100 Metadata events ≈ 0.15 MB); larger: spooled
MAX_SPOOL = 768 * 1024**2  # a grant's own ~1 MB request URIs (escaped ×6) in 100 events; 413 beyond
MAX_SPOOLED = 2  # spooled batches at once (disk: the chart's /tmp emptyDir has a 2Gi sizeLimit)
WRITE_ATTEMPTS = 8
REUSE_COALESCE = 1.0
ENDED_SLACK = dt.timedelta(seconds=2)  # requests authenticated just before the grant ended


class UsageSink:
    def __init__(
        self,
        ledger: Ledger,
        *,
        max_inflight: int = MAX_INFLIGHT,
        clock: Callable[[], dt.datetime] = utcnow,
    ):
        self.ledger, self.max_inflight, self.clock = ledger, max_inflight, clock
        self.executor = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="audit-sink")
        self._lock = threading.Lock()
        self._inflight = 0
        self._spooled = 0
        self._reuse: dict[str, dict[str, int]] = {}  # uid -> {state: count} seen by TokenReview
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exhausted: dict[str, float] = {}  # uid -> exp: count limit reached, refused by TokenReview
        self._recorded = metrics.audit_events_total.labels("recorded")
        self._ignored = metrics.audit_events_total.labels("ignored")
        self._dropped = metrics.audit_events_total.labels("dropped")

    # ------------------------------------------------------------ receiving
    def parse(self, body: bytes | IO[bytes]) -> tuple[int, str, list[Action]]:
        """(HTTP status, message, grant actions) of one POST body (in memory, or spooled to a file
        when large); counts what it ignores."""
        try:
            actions, ignored, oldest = parse_batch(body) if isinstance(body, bytes) else parse_batch_file(body)
        except BadBatch as exc:
            metrics.audit_events_total.labels("malformed").inc()
            return 400, str(exc), []
        self._ignored.inc(ignored)
        if oldest is not None:
            metrics.audit_sink_lag_seconds.set(max(0.0, time.time() - oldest))
        return 200, "ok", actions

    def admit(self, count: int = 0) -> bool:
        """Room for one more batch in flight, asked before its body is read (memory stays bounded;
        kube-apiserver resends a refused batch). Counted as `busy` (batches), and its `count`
        events, when known, as `dropped`."""
        with self._lock:
            if self._inflight >= self.max_inflight:
                metrics.audit_events_total.labels("busy").inc()
                self._dropped.inc(count)
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1

    def admit_spool(self) -> bool:
        """Room for one more large (spooled) batch: disk stays bounded by MAX_SPOOLED × MAX_SPOOL."""
        with self._lock:
            if self._spooled >= MAX_SPOOLED:
                metrics.audit_events_total.labels("busy").inc()
                return False
            self._spooled += 1
            return True

    def release_spool(self) -> None:
        with self._lock:
            self._spooled -= 1

    def handle(self, body: bytes | IO[bytes]) -> tuple[int, str]:
        """One admitted POST body, off the event loop: (HTTP status, message). 200 only once every
        grant action in it is stored; 503 (kube-apiserver resends) when one could not be."""
        try:
            status, message, actions = self.parse(body)
        except Exception as exc:  # noqa: BLE001 — nothing kube-apiserver sends: 400, never a 500
            metrics.audit_events_total.labels("malformed").inc()
            return 400, f"body is not kube-apiserver's EventList: {type(exc).__name__}"
        finally:
            if not isinstance(body, bytes):
                body.close()  # a spooled body's temporary file
        if status != 200 or not actions:
            return status, message
        try:
            self.record(actions)
        except Exception as exc:  # noqa: BLE001 — not stored: kube-apiserver sends the batch again
            self._dropped.inc(len(actions))
            log.warning("audit batch not stored (%s); kube-apiserver will send it again", error_text(exc))
            return 503, "not stored: send again"
        return 200, "ok"

    def record(self, actions: list[Action]) -> None:
        """Fold one batch into the ledger, grant by grant (guarded writes, retried on conflict).
        Returns once every grant's actions are stored: only then is the batch acknowledged. Raises
        if one could not be written (the others are; kube-apiserver's retry is deduplicated by
        auditID)."""
        by_uid: dict[str, list[Action]] = {}
        for action in actions:
            by_uid.setdefault(action.uid, []).append(action)
        failed: Exception | None = None
        for uid, mine in by_uid.items():
            try:
                self._write(uid, mine, {})
            except Exception as exc:  # noqa: BLE001 — the others still go in
                failed = exc
        if failed is not None:
            metrics.errors_total.labels("usage").inc()
            raise failed

    def note_reuse(self, uid: str, state: str) -> None:
        """TokenReview saw a revoked or expired token of grant `uid` (the metric is counted there)."""
        with self._lock:
            seen = self._reuse.setdefault(uid, {})
            seen[state] = seen.get(state, 0) + 1
        self._wake.set()

    def exhausted(self, uid: str) -> bool:
        return uid in self._exhausted

    # ------------------------------------------------------------ token reuse (own thread)
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reuse-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._stop.wait(REUSE_COALESCE)  # a burst of presentations becomes one ledger write
            self._wake.clear()
            with self._lock:
                reuse, self._reuse = self._reuse, {}
            for uid, seen in reuse.items():
                try:
                    self._write(uid, [], seen)
                except Exception as exc:  # noqa: BLE001 — counted in the metric already; retried
                    log.warning("token reuse of grant %s not recorded yet: %s", uid, error_text(exc))
                    with self._lock:
                        for state, count in seen.items():
                            mine = self._reuse.setdefault(uid, {})
                            mine[state] = mine.get(state, 0) + count
                    self._wake.set()

    def _write(self, uid: str, actions: list[Action], reuse: dict[str, int]) -> None:
        entry = self.ledger.get(uid) or self.ledger.fetch(uid)
        if entry is not None:  # only actions of this grant's identity (the uid alone is not enough)
            mine = [a for a in actions if a.username == entry.get("username")]
            self._ignored.inc(len(actions) - len(mine))
            if actions and not mine and not reuse:
                return
            actions = mine
        for _attempt in range(WRITE_ATTEMPTS):
            if entry is None:
                self._ignored.inc(len(actions))  # no grant of ours (a purged ledger entry): nothing to count
                return
            changes: dict[str, Any] = {}
            usage = entry.get("usage") or {}
            before = int(usage.get("requests", 0))
            late = reuse_after_end(entry, new_actions(usage, actions))  # a resend is no second reuse
            if actions:
                changes["usage"] = fold(usage, actions)
                if changes["usage"] == usage and not reuse:
                    return  # every action already counted (kube-apiserver resent an acknowledged batch)
            if reuse or late:
                seen = {**reuse, **{k: reuse.get(k, 0) + v for k, v in late.items()}}
                changes["reuse"] = add_reuse(entry.get("reuse"), seen, to_rfc3339(self.clock()))
            try:
                stored = self.ledger.update(entry, **changes)
            except Conflict:
                entry = self.ledger.fetch(uid)
                continue
            if actions:
                self._counted(uid, stored, actions, int(stored["usage"]["requests"]) - before)
            for state, count in late.items():  # seen in audit events only (OIDC path, the 10 s cache)
                metrics.token_reuse_total.labels(entry.get("policy", ""), state).inc(count)
            return
        raise Conflict(f"ledger entry of grant {uid} kept changing")

    def _counted(self, uid: str, stored: dict[str, Any], actions: list[Action], new: int) -> None:
        self._recorded.inc(new)
        for action in actions[len(actions) - new :]:
            metrics.grant_requests_total.labels(stored.get("policy", ""), action.verb_class).inc()
        crossed = limit_crossed(stored, self.clock())
        if crossed and crossed[0] == "UseLimitReached" and stored.get("state") == "Active":
            now = time.time()
            with self._lock:
                if len(self._exhausted) > 1000:
                    self._exhausted = {u: exp for u, exp in self._exhausted.items() if exp > now}
                self._exhausted[uid] = parse_rfc3339(stored["expiresAt"]).timestamp()


def reuse_after_end(entry: dict[str, Any], actions: list[Action]) -> dict[str, int]:
    """Actions of a grant that had ended (beyond a short slack for requests in flight) are token
    reuse too: on the OIDC path and within kube-apiserver's own 10 s success cache TokenReview never
    sees them, the audit events do."""
    ended = entry.get("endedAt")
    if not ended or entry.get("state") not in ("Revoked", "Expired") or not actions:
        return {}
    cutoff = to_rfc3339(parse_rfc3339(ended) + ENDED_SLACK)
    late = sum(1 for a in actions if (a.received or a.time) > cutoff)  # received after: not in flight
    return {"revoked" if entry["state"] == "Revoked" else "expired": late} if late else {}


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
