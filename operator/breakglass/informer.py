"""List once, then watch: the loop behind the ledger view and the request index.

One paged LIST (plain JSON pages: memory bounded at any scale), then a watch from that version;
BOOKMARK events keep the version fresh while idle, so a reconnect resumes instead of relisting. Only
410 Gone (the version was compacted away) relists, and keeps `synced`; any other failure clears
`synced` (readers fail closed) and relists after a backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import metrics
from .k8s.client import error_text

log = logging.getLogger(__name__)

Pages = Iterator[tuple[list[dict[str, Any]], str]]  # (items, list resourceVersion) per page


class Listing:
    """The pages of one LIST; `resource_version` (the list's version) is known once iterated. A
    consumer merges it with what the watch applied meanwhile: an object newer than the list, or
    deleted after it, wins over the list's snapshot (a relist may run beside the watch)."""

    def __init__(self, pages: Pages):
        self._pages, self.resource_version = pages, ""

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        for items, rv in self._pages:
            self.resource_version = rv
            yield items


def version_of(value: str | None) -> int:
    """etcd resourceVersions are integers; comparing them orders a list against watch events."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


class Informer:
    def __init__(
        self,
        name: str,
        list_pages: Callable[[], Pages],
        watch: Callable[[str], Iterable[tuple[str, dict[str, Any]]]],
        on_list: Callable[[Iterator[list[dict[str, Any]]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
    ):
        self.name, self.list_pages, self.watch = name, list_pages, watch
        self.on_list, self.on_event = on_list, on_event
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def relist(self) -> str:
        listing = Listing(self.list_pages())
        self.on_list(listing)
        self.synced.set()
        return listing.resource_version

    def _run(self) -> None:
        backoff = 0.5
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self.relist()
                for type_, obj in self.watch(rv):
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if type_ != "BOOKMARK":
                        self.on_event(type_, obj)
                    if self._stop.is_set():
                        return
                backoff = 0.5
            except Exception as exc:  # 410 Gone, connection loss: list again
                if getattr(exc, "status", None) != 410:  # a routine 410 relists at once and keeps readiness
                    self.synced.clear()  # a stale view must not be trusted: fail closed until relisted
                    metrics.errors_total.labels(f"{self.name}-watch").inc()
                    log.warning("%s watch failed (%s); listing again", self.name, error_text(exc))
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                rv = None
