"""Admission asks whether each requested namespace exists (a clear error for a typo). At thousands of
requests a second that is one GET per request; a namespace seen to exist is remembered for a few
seconds. Only positive answers are kept: a missing namespace is asked again every time, and a
namespace deleted meanwhile is caught where it matters, at issue (the grant fails and rolls back)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class SeenNamespaces:
    def __init__(self, exists: Callable[[str], bool], ttl: float = 10.0, capacity: int = 4096):
        self.exists, self.ttl, self.capacity = exists, ttl, capacity
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}

    def __call__(self, name: str) -> bool:
        now = time.monotonic()
        with self._lock:
            at = self._seen.get(name)
            if at is not None and now - at < self.ttl:
                return True
        found = self.exists(name)
        with self._lock:
            if found:
                if len(self._seen) >= self.capacity:
                    self._seen.clear()  # bounded; the next requests refill it
                self._seen[name] = now
            else:
                self._seen.pop(name, None)
        return found
