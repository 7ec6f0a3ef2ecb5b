"""Policies as the watch last showed them (the reconciler reads one per pass)."""

from __future__ import annotations

import threading
import time
from typing import Any

from .k8s.client import Kube


class PolicyCache:
    """Policies as last seen by the watch, falling back to a GET on a miss (never 'not found' from
    an unfilled cache). Entries expire after `ttl` seconds as a guard against a missed event."""

    def __init__(self, kube: Kube, ttl: float = 30.0):
        self.kube, self.ttl = kube, ttl
        self._lock = threading.Lock()
        self._items: dict[str, tuple[float, dict[str, Any]]] = {}

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._items.get(name)
            if hit and time.monotonic() - hit[0] < self.ttl:
                return hit[1]
        body = self.kube.get_policy(name)
        if body is not None:
            self.put(body)
        return body

    def put(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._items[body["metadata"]["name"]] = (time.monotonic(), body)

    def names(self) -> list[str]:
        """Every policy the watch has shown (the gauges list each, even with no grants)."""
        with self._lock:
            return list(self._items)

    def forget(self, name: str) -> None:
        with self._lock:
            self._items.pop(name, None)
