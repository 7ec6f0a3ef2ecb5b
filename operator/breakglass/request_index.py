"""Every BreakGlassRequest as a small summary, fed by the request watch (kopf's events) and by one
paged LIST at start-up and in the slow safety resync. Housekeeping reads this instead of listing
requests: idle costs nothing, whatever the number of grants."""

from __future__ import annotations

import threading

from .domain.catchup import RequestSummary, summarize_request


class RequestIndex:
    def __init__(self):
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str], RequestSummary] = {}
        self._by_uid: dict[str, RequestSummary] = {}
        self.synced = threading.Event()  # set after the first full list

    def observe(self, event_type: str | None, body: dict) -> RequestSummary:
        """One watch event. Returns the summary (of the deleted object for DELETED)."""
        summary = summarize_request(body)
        with self._lock:
            if event_type == "DELETED":
                self._drop_locked(summary.key, summary.uid)
            else:
                self._put_locked(summary)
        return summary

    def replace_all(self, bodies) -> tuple[list[RequestSummary], set[tuple[str, str]]]:
        """A full list: the new index, and the keys the watch had not shown at that version
        (new, changed or never seen: a missed watch event, or one still on its way)."""
        fresh = [summarize_request(b) for b in bodies]
        with self._lock:
            behind = {s.key for s in fresh if (old := self._by_key.get(s.key)) is None or _rv(old) < _rv(s)}
            self._by_key = {s.key: s for s in fresh}
            self._by_uid = {s.uid: s for s in fresh}
        self.synced.set()
        return fresh, behind

    def get(self, namespace: str, name: str) -> RequestSummary | None:
        with self._lock:
            return self._by_key.get((namespace, name))

    def by_uid(self, uid: str) -> RequestSummary | None:
        with self._lock:
            return self._by_uid.get(uid)

    def all(self) -> list[RequestSummary]:
        with self._lock:
            return list(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def _put_locked(self, summary: RequestSummary) -> None:
        old = self._by_key.get(summary.key)
        if old is not None and _rv(old) > _rv(summary):
            return  # an older event arriving late
        if old is not None and old.uid != summary.uid:
            self._by_uid.pop(old.uid, None)
        self._by_key[summary.key] = summary
        self._by_uid[summary.uid] = summary

    def _drop_locked(self, key: tuple[str, str], uid: str) -> None:
        old = self._by_key.get(key)
        if old is not None and old.uid == uid:
            del self._by_key[key]
        self._by_uid.pop(uid, None)


def _rv(summary: RequestSummary) -> int:
    try:
        return int(summary.resource_version or 0)
    except ValueError:
        return 0
