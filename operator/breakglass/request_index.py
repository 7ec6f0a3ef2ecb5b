"""Every BreakGlassRequest as a small summary, fed by the request watch (kopf's events) and by one
paged LIST at start-up and in the slow safety resync. Housekeeping reads this instead of listing
requests: idle costs nothing, whatever the number of grants."""

from __future__ import annotations

import threading

from .domain.catchup import RequestSummary, summarize_request
from .informer import version_of

TOMBSTONES = 100_000  # deletions remembered between two lists (bounded)


class RequestIndex:
    def __init__(self):
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str], RequestSummary] = {}
        self._by_uid: dict[str, RequestSummary] = {}
        self._deleted: dict[tuple[str, str], tuple[str, int]] = {}  # key -> (uid, version of the delete)
        self.synced = threading.Event()  # set after a full list; the informer clears it when it fails

    def observe(self, event_type: str | None, body: dict) -> RequestSummary:
        """One watch event. Returns the summary (of the deleted object for DELETED)."""
        summary = summarize_request(body)
        with self._lock:
            if event_type == "DELETED":
                self._drop_locked(summary.key, summary.uid)
                if len(self._deleted) < TOMBSTONES:
                    self._deleted[summary.key] = (summary.uid, _rv(summary))
            else:
                self._put_locked(summary)
        return summary

    def replace_all(self, bodies, list_version=lambda: "") -> tuple[list[RequestSummary], set[tuple[str, str]]]:
        """A full list: the new index, and the keys the watch had not shown at that version (new,
        changed or never seen: a missed watch event, or one still on its way). The list may run beside
        the watch: what the watch applied after the list's version (newer objects, deletions) wins.
        `list_version()` is asked once `bodies` is consumed (a paged list knows it at the end)."""
        fresh = {s.key: s for s in (summarize_request(b) for b in bodies)}
        listed = version_of(list_version())
        with self._lock:
            behind = {k for k, s in fresh.items() if (old := self._by_key.get(k)) is None or _rv(old) < _rv(s)}
            for key, old in self._by_key.items():
                new = fresh.get(key)
                if (new is None and listed and _rv(old) > listed) or (new is not None and _rv(old) > _rv(new)):
                    fresh[key] = old  # the watch is ahead of the list
            for key, (uid, deleted_at) in self._deleted.items():
                new = fresh.get(key)
                if new is not None and new.uid == uid and _rv(new) <= deleted_at:
                    del fresh[key]  # deleted after the list was taken
            self._deleted = {k: v for k, v in self._deleted.items() if listed and v[1] > listed}
            self._by_key = fresh
            self._by_uid = {s.uid: s for s in fresh.values()}
        self.synced.set()
        return list(fresh.values()), behind

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
    return version_of(summary.resource_version)
