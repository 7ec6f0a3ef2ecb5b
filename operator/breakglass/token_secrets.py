"""Which token Secrets exist in the token namespace: uids only, from a metadata-only list and watch
(a few hundred bytes per grant, never the token).

A token Secret deleted by hand revokes its grant (`SecretDeleted`): the deletion event wakes the
grant's reconcile at once, and a restart compares the ledger with this set instead of reading every
Secret. The Secret's labels only say which request to look at; the reconcile decides from the
ledger and the API server, by uid.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from . import api
from .informer import Informer

SELECTOR = f"{api.MANAGED_BY_LABEL}={api.MANAGED_BY}"


class TokenSecrets:
    def __init__(self, kube, namespace: str, on_deleted: Callable[[str, str], None]):
        self.namespace, self.on_deleted = namespace, on_deleted
        self._lock = threading.Lock()
        self._uids: set[str] = set()
        self.informer = Informer(
            "token-secrets",
            lambda: kube.iter_secret_metadata_pages(namespace, SELECTOR),
            lambda rv: kube.watch_secret_metadata(namespace, SELECTOR, rv, timeout=300),
            self._replace,
            self._on_event,
        )
        self.synced = self.informer.synced

    def present(self, namespace: str, uid: str) -> bool | None:
        """True/False for a Secret in the token namespace once synced; None when this set cannot tell."""
        if namespace != self.namespace or not self.synced.is_set():
            return None
        with self._lock:
            return uid in self._uids

    def start(self) -> None:
        self.informer.start()

    def stop(self) -> None:
        self.informer.stop()

    def _replace(self, pages: Iterator[list[dict[str, Any]]]) -> None:
        uids = {(item.get("metadata") or {}).get("uid") for page in pages for item in page}
        with self._lock:
            self._uids = {u for u in uids if u}

    def _on_event(self, type_: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        with self._lock:
            (self._uids.discard if type_ == "DELETED" else self._uids.add)(uid)
        labels = meta.get("labels") or {}
        if type_ == "DELETED" and labels.get(api.REQUEST_NS_LABEL) and labels.get(api.REQUEST_LABEL):
            self.on_deleted(labels[api.REQUEST_NS_LABEL], labels[api.REQUEST_LABEL])
