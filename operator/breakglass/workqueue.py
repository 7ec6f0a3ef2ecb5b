"""A level-triggered work queue: deduplicated keys, one worker per key at a time, delayed re-adds.

kopf watches deliver events; this queue turns them into "reconcile this request now (or at T)",
so bursts of events collapse into one reconcile and expiry is scheduled for the exact moment.
"""
from __future__ import annotations

import datetime as dt
import heapq
import logging
import threading
import time
from typing import Callable, Hashable

log = logging.getLogger(__name__)


class WorkQueue:
    def __init__(self, handler: Callable[[Hashable], dt.datetime | None], workers: int = 8,
                 clock: Callable[[], float] = time.time, retry_seconds: float = 1.0):
        self.handler, self.clock, self.retry_seconds = handler, clock, retry_seconds
        self._cond = threading.Condition()
        self._ready: list[Hashable] = []
        self._queued: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._failures: dict[Hashable, int] = {}
        self._seq = 0
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
                         for i in range(workers)]
        self._timer = threading.Thread(target=self._tick, name="reconcile-timer", daemon=True)

    def start(self) -> None:
        for t in self._threads:
            t.start()
        self._timer.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def add(self, key: Hashable) -> None:
        with self._cond:
            if key in self._processing:
                self._dirty.add(key)  # re-run once the current pass finishes
            elif key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
                self._cond.notify()

    def add_at(self, key: Hashable, when: float) -> None:
        if when <= self.clock():
            return self.add(key)
        with self._cond:
            self._seq += 1
            heapq.heappush(self._delayed, (when, self._seq, key))
            self._cond.notify_all()

    def idle(self) -> bool:
        with self._cond:
            return not (self._ready or self._processing)

    def _tick(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = self.clock()
                due = []
                while self._delayed and self._delayed[0][0] <= now:
                    due.append(heapq.heappop(self._delayed)[2])
                wait = (self._delayed[0][0] - now) if self._delayed else 1.0
            for key in due:
                self.add(key)
            with self._cond:
                if not self._stopped:
                    self._cond.wait(timeout=max(0.0, min(wait, 1.0)))

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                key = self._ready.pop(0)
                self._queued.discard(key)
                self._processing.add(key)
            requeue_at: float | None = None
            started = time.monotonic()
            try:
                when = self.handler(key)
                requeue_at = when.timestamp() if when is not None else None
                self._failures.pop(key, None)
            except Exception:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                backoff = min(self.retry_seconds * (2 ** (n - 1)), 30.0)
                log.exception("reconcile of %s failed (attempt %d); retrying in %.1fs", key, n, backoff)
                requeue_at = self.clock() + backoff
            took = time.monotonic() - started
            if took > 10:
                log.warning("reconcile of %s took %.1fs", key, took)
            with self._cond:
                self._processing.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    if key not in self._queued:
                        self._queued.add(key)
                        self._ready.append(key)
                        self._cond.notify()
            if requeue_at is not None:
                self.add_at(key, requeue_at)
