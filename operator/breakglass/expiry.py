"""Expiry fast path: at a token's exp, delete its Secret with one API call, then let the full
reconcile tidy up (RoleBindings, status, Event, audit).

The Secret is deleted with a uid precondition, so only the exact Secret that carried the token is
removed. A missed firing (crash) is caught by the reconcile's own requeue and the start-up sweep.
Timing is the shared `WorkQueue`'s delayed add; this module only remembers what to delete.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Hashable

from . import metrics
from .workqueue import WorkQueue

log = logging.getLogger(__name__)


class ExpiryTimer:
    def __init__(
        self,
        delete_secret: Callable[[str, str, str], bool],
        after: Callable[[Hashable], None],
        workers: int = 8,
        clock: Callable[[], float] = time.time,
    ):
        self.delete_secret, self.after, self.clock = delete_secret, after, clock
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[float, str, str, str]] = {}
        self._queue = WorkQueue(self._fire, workers=workers, clock=clock)

    def start(self) -> None:
        self._queue.start()

    def stop(self) -> None:
        self._queue.stop()

    def schedule(self, key: Hashable, namespace: str, secret: str, uid: str, exp: float) -> None:
        with self._lock:
            if self._entries.get(key) == (exp, namespace, secret, uid):
                return
            self._entries[key] = (exp, namespace, secret, uid)
        self._queue.add_at(key, exp)

    def cancel(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def _fire(self, key: Hashable) -> dt.datetime | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None  # cancelled, or already fired for a duplicate schedule
            if entry[0] > self.clock():
                # exp moved later since this firing was scheduled; the queue keeps only the earliest
                # due time per key, so ask it to run this key again at the new exp.
                return dt.datetime.fromtimestamp(entry[0], dt.UTC)
            del self._entries[key]
        exp, namespace, secret, uid = entry
        try:
            if self.delete_secret(namespace, secret, uid):
                metrics.expiry_lag.observe(max(0.0, self.clock() - exp))
        except Exception as exc:  # the reconcile below retries the deletion
            log.warning("expiry fast path for %s/%s failed: %s", namespace, secret, type(exc).__name__)
        finally:
            self.after(key)
        return None
