"""Kubernetes Events are best effort (the audit log is the record): posted off the reconcile path by
a small pool, in order per request (one shard per request uid), from bounded queues. A burst of
thousands of grants neither waits for its Events nor grows memory without limit: when a shard's
queue is full the Event is dropped and counted (`breakglass_events_dropped_total`)."""

from __future__ import annotations

import logging
import queue
import threading
import zlib
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from . import metrics

log = logging.getLogger(__name__)

events_dropped_total = Counter(
    "breakglass_events_dropped_total",
    "Kubernetes Events not posted (queue full or API error); the audit log still has the record",
    ["cause"],
    registry=metrics.REGISTRY,
)


class EventPoster:
    def __init__(self, post: Callable[[dict[str, Any]], None], shards: int = 4, capacity: int = 2000):
        self.post = post
        self._queues = [queue.Queue(maxsize=capacity) for _ in range(shards)]
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name=f"events-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for t in self._threads:
            t.start()

    def submit(self, uid: str, body: dict[str, Any]) -> None:
        shard = self._queues[zlib.crc32(uid.encode()) % len(self._queues)]
        try:
            shard.put_nowait(body)
        except queue.Full:
            events_dropped_total.labels("queue_full").inc()

    def pending(self) -> int:
        return sum(q.qsize() for q in self._queues)

    def flush(self) -> None:
        """Wait until every Event submitted so far was posted (or dropped)."""
        for q in self._queues:
            q.join()

    def _run(self, q: queue.Queue) -> None:
        while True:
            body = q.get()
            try:
                self.post(body)
            except Exception as exc:  # best effort: counted and logged, never raised into a reconcile
                events_dropped_total.labels("api_error").inc()
                log.debug("Event %s not posted: %s", body.get("reason"), type(exc).__name__)
            finally:
                q.task_done()
