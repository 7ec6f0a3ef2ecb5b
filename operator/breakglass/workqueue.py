"""A level-triggered work queue: deduplicated keys, one worker per key at a time, delayed re-adds.

kopf watches deliver events; this queue turns them into "reconcile this request now (or at T)",
so bursts of events collapse into one reconcile and expiry is scheduled for the exact moment.

Semantics (those of client-go's workqueue + delaying queue):
- `add(key)`: the key is *dirty* (needs a pass). A dirty key is in the ready list at most once; a
  key added while a worker processes it is not handed to a second worker, it is processed once
  more after the current pass ends (any number of adds during a pass collapse into one re-run).
- `add_at(key, when)`: a delayed add. Each key has at most one pending due time and the earliest
  wins: a later `add_at` of a key already waiting is dropped, an earlier one replaces it. The
  delay is independent of whether the key is also ready or processing now; when it falls due it
  is an `add` (so, if the key is processing then, it runs again afterwards).
- the handler returns the next due time (a datetime) or None; an exception is retried with
  exponential backoff (retry_seconds * 2**(n-1), at most 30 s), reset by a success.

Workers and the delay timer wait on *separate* conditions over one lock, so an `add()` can only
ever wake a worker (the old single condition let `notify()` wake the timer instead, and the new
key then sat in the ready list until some unrelated event woke a worker).
"""

from __future__ import annotations

import collections
import datetime as dt
import heapq
import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
# The timer re-reads the clock at least this often, so a wall-clock step (NTP) is noticed.
_MAX_TIMER_SLEEP = 1.0


class WorkQueue:
    def __init__(
        self,
        handler: Callable[[Hashable], dt.datetime | None],
        workers: int = 8,
        clock: Callable[[], float] = time.time,
        retry_seconds: float = 1.0,
    ):
        self.handler, self.clock, self.retry_seconds = handler, clock, retry_seconds
        self._lock = threading.Lock()
        self._work_cv = threading.Condition(self._lock)  # workers wait here: "a key is ready"
        self._timer_cv = threading.Condition(self._lock)  # the timer waits here: "the earliest due time moved"
        self._ready: collections.deque[Hashable] = collections.deque()
        self._dirty: set[Hashable] = set()  # keys that need a pass (ready, or re-run after processing)
        self._processing: set[Hashable] = set()  # keys a worker is handling right now
        self._due: dict[Hashable, float] = {}  # key -> its one pending delayed due time
        self._heap: list[tuple[float, int, Hashable]] = []  # (due, seq, key); stale entries skipped
        self._failures: dict[Hashable, int] = {}
        self._seq = 0
        self._started = False
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True) for i in range(workers)
        ]
        self._timer = threading.Thread(target=self._tick, name="reconcile-timer", daemon=True)

    def start(self) -> None:
        with self._lock:
            if self._started or self._stopped:
                return
            self._started = True
        for t in self._threads:
            t.start()
        self._timer.start()

    def stop(self, timeout: float = 0.5) -> None:
        """Stop taking work and wake every thread; wait up to `timeout` seconds in total for them
        to end (an in-flight handler finishes its pass in the background, nothing new starts).
        Keys still ready or delayed are dropped: the next start's sweep and watches re-derive them."""
        with self._lock:
            self._stopped = True
            self._work_cv.notify_all()
            self._timer_cv.notify_all()
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        for t in [*self._threads, self._timer]:
            if t is me or t.ident is None:  # called from a handler, or never started
                continue
            t.join(max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._threads if t.is_alive() and t is not me]
        if busy:
            log.warning("work queue stopped with %d handler(s) still running: %s", len(busy), busy)

    def add(self, key: Hashable) -> None:
        with self._lock:
            self._add_locked(key)

    def add_at(self, key: Hashable, when: float) -> None:
        with self._lock:
            if self._stopped:
                return
            if when <= self.clock():
                self._add_locked(key)
                return
            current = self._due.get(key)
            if current is not None and current <= when:
                return  # the earlier due time wins
            self._due[key] = when
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, key))
            if self._heap[0][1] == self._seq:
                self._timer_cv.notify()  # the earliest due time moved earlier: re-arm the timer

    def queued(self, key: Hashable) -> bool:
        """Waiting for a pass or being processed (a resync need not add or warn about it)."""
        with self._lock:
            return key in self._dirty or key in self._processing

    def idle(self) -> bool:
        with self._lock:
            return not (self._ready or self._processing)

    # -- internals (call with self._lock held) ------------------------------------------------------

    def _add_locked(self, key: Hashable) -> None:
        if self._stopped or key in self._dirty:
            return  # already waiting for a pass (ready, or a re-run after the current one)
        self._dirty.add(key)
        if key in self._processing:
            return  # _done() queues it when the current pass ends
        self._ready.append(key)
        self._work_cv.notify()  # only workers wait on this condition, so one wake-up suffices

    def _next_due_locked(self) -> float | None:
        while self._heap:
            when, _, key = self._heap[0]
            if self._due.get(key) == when:
                return when
            heapq.heappop(self._heap)  # superseded by an earlier add_at of the same key
        return None

    def _done_locked(self, key: Hashable) -> None:
        self._processing.discard(key)
        if key in self._dirty and not self._stopped:
            self._ready.append(key)
            self._work_cv.notify()

    # -- threads -----------------------------------------------------------------------------------

    def _tick(self) -> None:
        with self._lock:
            while not self._stopped:
                now = self.clock()
                nxt = self._next_due_locked()
                while nxt is not None and nxt <= now:
                    _, _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    self._add_locked(key)
                    nxt = self._next_due_locked()
                wait = _MAX_TIMER_SLEEP if nxt is None else min(nxt - now, _MAX_TIMER_SLEEP)
                self._timer_cv.wait(timeout=max(0.0, wait))

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._ready and not self._stopped:
                    self._work_cv.wait()
                if self._stopped:
                    return
                key = self._ready.popleft()
                self._dirty.discard(key)
                self._processing.add(key)
            requeue_at: float | None = None
            started = time.monotonic()
            try:
                when = self.handler(key)
                requeue_at = when.timestamp() if when is not None else None
                with self._lock:
                    self._failures.pop(key, None)
            except Exception:
                with self._lock:
                    n = self._failures[key] = self._failures.get(key, 0) + 1
                backoff = min(self.retry_seconds * (2 ** (n - 1)), MAX_BACKOFF_SECONDS)
                log.exception("reconcile of %s failed (attempt %d); retrying in %.1fs", key, n, backoff)
                requeue_at = self.clock() + backoff
            took = time.monotonic() - started
            if took > 10:
                log.warning("reconcile of %s took %.1fs", key, took)
            with self._lock:
                self._done_locked(key)
            if requeue_at is not None:
                self.add_at(key, requeue_at)
