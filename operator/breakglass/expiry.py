"""Expiry fast path: at a token's exp, delete its Secret with one API call, then let the full
reconcile tidy up (RoleBindings, status, Event, audit).

The Secret is deleted with a uid precondition, so only the exact Secret that carried the token is
removed. A missed firing (crash) is caught by the reconcile's own requeue and the start-up sweep.
"""
from __future__ import annotations

import concurrent.futures
import heapq
import logging
import threading
import time
from typing import Callable, Hashable

from . import metrics

log = logging.getLogger(__name__)


class ExpiryTimer:
    def __init__(self, delete_secret: Callable[[str, str, str], bool], after: Callable[[Hashable], None],
                 workers: int = 8, clock: Callable[[], float] = time.time):
        self.delete_secret, self.after, self.clock = delete_secret, after, clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, Hashable]] = []
        self._entries: dict[Hashable, tuple[float, str, str, str]] = {}
        self._stopped = False
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="expiry")
        self._thread = threading.Thread(target=self._run, name="expiry-timer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def schedule(self, key: Hashable, namespace: str, secret: str, uid: str, exp: float) -> None:
        with self._cond:
            if self._entries.get(key) == (exp, namespace, secret, uid):
                return
            self._entries[key] = (exp, namespace, secret, uid)
            heapq.heappush(self._heap, (exp, key))
            self._cond.notify()

    def cancel(self, key: Hashable) -> None:
        with self._cond:
            self._entries.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = self.clock()
                due = []
                while self._heap and self._heap[0][0] <= now:
                    exp, key = heapq.heappop(self._heap)
                    entry = self._entries.get(key)
                    if entry and entry[0] == exp:
                        del self._entries[key]
                        due.append((key, entry))
                wait = (self._heap[0][0] - now) if self._heap else 1.0
            for key, entry in due:
                self._pool.submit(self._fire, key, entry)
            with self._cond:
                if not self._stopped:
                    self._cond.wait(timeout=max(0.0, min(wait, 1.0)))

    def _fire(self, key: Hashable, entry: tuple[float, str, str, str]) -> None:
        exp, namespace, secret, uid = entry
        try:
            if self.delete_secret(namespace, secret, uid):
                metrics.expiry_lag.observe(max(0.0, self.clock() - exp))
        except Exception as exc:  # the reconcile below retries the deletion
            log.warning("expiry fast path for %s/%s failed: %s", namespace, secret, type(exc).__name__)
        finally:
            self.after(key)
