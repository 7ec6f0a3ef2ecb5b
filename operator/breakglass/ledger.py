"""The grant ledger: the operator's own record of every token it issued and every object it created.

One ConfigMap per request uid (`breakglass-grant-<uid>`) in the operator namespace, writable only by
the operator's ServiceAccount. It is written *before* anything is delivered, created only if absent
(so a request uid gets one jti, whatever crashes or replicas do), updated with a resourceVersion
guard, and is the only source of truth for "issued". Nothing in a tenant namespace is ever taken as
proof of anything; the operator deletes only objects listed here (by uid, or by the grant's nonce).

A watch keeps an in-memory view for the TokenReview allow-list, key pinning and the sweeper; the
process's own writes update it at once. The view is compact (memory per grant is what bounds an
operator with 10,000 live grants): each entry is kept as its stored JSON, compressed (≈2 KB → 0.7
KB), plus a small `Summary` of the fields housekeeping scans; it is parsed into a dict only when a
caller needs the whole entry.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from . import api, metrics
from .domain.durations import parse_rfc3339
from .informer import Informer, version_of
from .k8s.client import Conflict, Kube
from .ledger_summary import Summary, summarize

log = logging.getLogger(__name__)

ISSUING, ACTIVE, FAILED, REVOKED, EXPIRED = "Issuing", "Active", "Failed", "Revoked", "Expired"
LIVE_STATES = frozenset({ISSUING, ACTIVE})
SELECTOR = f"{api.MANAGED_BY_LABEL}={api.MANAGED_BY},{api.LEDGER_LABEL}=grant"


def entry_from_configmap(cm: dict[str, Any]) -> dict[str, Any] | None:
    try:
        entry = json.loads((cm.get("data") or {})[api.LEDGER_KEY])
        entry["request"]["uid"], entry["expiresAt"]  # noqa: B018 — a valid entry names both
    except (KeyError, TypeError, json.JSONDecodeError):
        return None
    entry["resourceVersion"] = cm["metadata"].get("resourceVersion")
    return entry


def configmap_for(namespace: str, entry: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in entry.items() if k != "resourceVersion"}
    meta: dict[str, Any] = {
        "name": api.ledger_name(entry["request"]["uid"]),
        "namespace": namespace,
        "labels": {api.MANAGED_BY_LABEL: api.MANAGED_BY, api.LEDGER_LABEL: "grant"},
    }
    if entry.get("resourceVersion"):
        meta["resourceVersion"] = entry["resourceVersion"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {api.LEDGER_KEY: json.dumps(body, sort_keys=True)},
    }


USE_FIELDS = frozenset({"usage", "reuse"})  # written by the audit sinks of every replica
USE_RETRIES = 10


def _beyond_use(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in USE_FIELDS and k != "resourceVersion"}


def is_live(entry: dict[str, Any] | None, now) -> bool:
    """Active and not past exp: the only tokens TokenReview authenticates."""
    return bool(entry) and entry.get("state") == ACTIVE and parse_rfc3339(entry["expiresAt"]) > now


PARSED_CACHE = 1024


def _pack(entry: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(entry, separators=(",", ":")).encode(), 1)


def _unpack(packed: bytes) -> dict[str, Any]:
    return json.loads(zlib.decompress(packed))


def _rv(value: str | None) -> int:
    return version_of(value)


class Ledger:
    def __init__(self, kube: Kube, namespace: str):
        self.kube, self.namespace = kube, namespace
        self._lock = threading.Lock()
        self._text: dict[str, bytes] = {}  # uid -> the entry as stored (compressed JSON, with resourceVersion)
        self._summary: dict[str, Summary] = {}
        self._by_jti: dict[str, str] = {}
        self._parsed: OrderedDict[str, dict[str, Any]] = OrderedDict()  # a few hot entries (TokenReview)
        self._deleted: dict[str, int] = {}  # uid -> version at deletion, until a list covers it
        self.informer = Informer(
            "ledger",
            lambda: self.kube.iter_configmap_pages(self.namespace, SELECTOR),
            lambda rv: self.kube.watch_configmaps(self.namespace, SELECTOR, rv, timeout=60),
            self._replace,
            self._on_event,
        )
        self.synced = self.informer.synced
        # Called with (old, new) when a grant's use, reuse or idle deadline changed (the leader then
        # records it, writes status.usage and enforces the limits).
        self.on_usage: Callable[[Summary | None, Summary], None] | None = None

    # ------------------------------------------------------------ reads
    def get(self, uid: str) -> dict[str, Any] | None:
        """From the watch-fed view once synced; before that, from the API server (never a false miss)."""
        if self.synced.is_set():
            with self._lock:
                text = self._text.get(uid)
            return _unpack(text) if text else None
        return self.fetch(uid)

    def fetch(self, uid: str) -> dict[str, Any] | None:
        """Straight from the API server (for decisions that must not trust a lagging view)."""
        cm = self.kube.read("ConfigMap", self.namespace, api.ledger_name(uid))
        return entry_from_configmap(cm) if cm else None

    def by_jti(self, jti: str) -> dict[str, Any] | None:
        """The entry of a jti without its use fields (usage, reuse: up to ~100 KB parsed, which a
        cache of 1,024 hot entries must not hold) — for TokenReview; read-only, never written back."""
        with self._lock:
            uid = self._by_jti.get(jti)
            text = self._text.get(uid) if uid else None
            if text is None:
                return None
            hit = self._parsed.get(uid)
            if hit is not None and hit.get("resourceVersion") == self._summary[uid].resource_version:
                self._parsed.move_to_end(uid)
                return hit
        entry = {k: v for k, v in _unpack(text).items() if k not in USE_FIELDS}
        with self._lock:
            self._parsed[uid] = entry
            while len(self._parsed) > PARSED_CACHE:
                self._parsed.popitem(last=False)
        return entry

    def summary(self, uid: str) -> Summary | None:
        with self._lock:
            return self._summary.get(uid)

    def summaries(self) -> list[Summary]:
        """Every grant's summary (cheap: no copies, no parsing)."""
        with self._lock:
            return list(self._summary.values())

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, parsed (costly at scale: housekeeping uses `summaries`)."""
        with self._lock:
            texts = list(self._text.values())
        return [_unpack(t) for t in texts]

    def __len__(self) -> int:
        return len(self._summary)

    # ------------------------------------------------------------ writes
    def create(self, entry: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create-if-absent by request uid. (entry as stored, created?) — an existing entry wins."""
        cm, created = self.kube.create_if_absent("ConfigMap", configmap_for(self.namespace, entry))
        stored = entry_from_configmap(cm)
        if stored is None:
            raise Conflict(f"ledger entry {cm['metadata']['name']} is unreadable")
        self._remember(stored)
        return stored, created

    def update(self, entry: dict[str, Any], *, use_sensitive: bool = False, **changes: Any) -> dict[str, Any]:
        """Write `changes` guarded by the entry's resourceVersion (Conflict if it moved). A move of
        the use fields alone (an audit sink of any replica folding actions in) is no conflict for a
        write that does not touch them — unless it was decided from the use (`use_sensitive`: an
        idle timeout): it is made again on the fresh entry, keeping its use."""
        for _attempt in range(USE_RETRIES):
            try:
                cm = self.kube.replace_configmap(configmap_for(self.namespace, dict(entry, **changes)))
            except Conflict:
                if use_sensitive or USE_FIELDS & changes.keys():
                    raise  # the caller merges use itself (usage_sink, usage_records)
                fresh = self.fetch(entry["request"]["uid"])
                if fresh is None or _beyond_use(fresh) != _beyond_use(entry):
                    raise  # something else changed the grant: the caller decides again
                entry = fresh
                continue
            stored = entry_from_configmap(cm)
            self._remember(stored)
            return stored
        raise Conflict(f"ledger entry {api.ledger_name(entry['request']['uid'])} kept changing its use")

    def delete(self, entry: dict[str, Any]) -> None:
        cm = self.kube.read("ConfigMap", self.namespace, api.ledger_name(entry["request"]["uid"]))
        if cm and cm["metadata"].get("resourceVersion") == entry.get("resourceVersion"):
            self.kube.delete_exact("ConfigMap", self.namespace, cm["metadata"]["name"], cm["metadata"]["uid"])
        self._forget(entry["request"]["uid"])

    # ------------------------------------------------------------ the view
    def _remember(self, entry: dict[str, Any]) -> None:
        summary, text = summarize(entry), _pack(entry)
        with self._lock:
            old = self._summary.get(summary.uid)
            if old and _rv(old.resource_version) > _rv(summary.resource_version):
                return  # a stale watch event must not roll back our own newer write
            self._put_locked(summary, text)
        self._gauge()
        self._usage_changed(old, summary)

    def _usage_changed(self, old: Summary | None, new: Summary) -> None:
        hook = self.on_usage
        if hook is None or not (new.uses or new.reuses or new.idle_deadline):
            return
        if (
            old is None
            or (old.uses, old.reuses, old.idle_deadline, old.state)
            != (
                new.uses,
                new.reuses,
                new.idle_deadline,
                new.state,
            )
            or not new.usage_settled
        ):
            hook(old, new)

    def _put_locked(self, summary: Summary, text: bytes) -> None:
        old = self._summary.get(summary.uid)
        if old:
            for jti in {old.jti, *old.previous_jtis} - {summary.jti, *summary.previous_jtis, ""}:
                self._by_jti.pop(jti, None)
        self._summary[summary.uid], self._text[summary.uid] = summary, text
        self._parsed.pop(summary.uid, None)
        for jti in (summary.jti, *summary.previous_jtis):  # replaced tokens too: their reuse is named
            if jti:
                self._by_jti[jti] = summary.uid

    def _forget(self, uid: str, version: str | None = None) -> None:
        with self._lock:
            old = self._summary.pop(uid, None)
            deleted_at = _rv(version) or (_rv(old.resource_version) if old else 0)
            if deleted_at and len(self._deleted) < 100_000:  # a relist racing this delete must not revive it
                self._deleted[uid] = deleted_at
            self._text.pop(uid, None)
            self._parsed.pop(uid, None)
            for jti in (old.jti, *old.previous_jtis) if old else ():
                self._by_jti.pop(jti, None)
        self._gauge()

    def _gauge(self) -> None:
        metrics.ledger_entries.set(len(self._summary))

    def start(self) -> None:
        self.informer.start()

    def stop(self) -> None:
        self.informer.stop()

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

    def _relist(self) -> str:
        return self.informer.relist()

    def _replace(self, pages: Iterator[list[dict[str, Any]]]) -> None:
        """A full list. It may run while this process writes (a relist after a watch failure): an
        entry the view holds at a newer version than the list (our own write, or a watch event),
        one created after the list, or one deleted after it, wins over the list's snapshot."""
        summaries: dict[str, Summary] = {}
        texts: dict[str, bytes] = {}
        for items in pages:
            for cm in items:
                entry = entry_from_configmap(cm)
                if entry:
                    summary = summarize(entry)
                    summaries[summary.uid], texts[summary.uid] = summary, _pack(entry)
        listed = version_of(getattr(pages, "resource_version", ""))
        with self._lock:
            for uid, old in self._summary.items():
                new = summaries.get(uid)
                newer = _rv(old.resource_version) > (_rv(new.resource_version) if new else listed)
                if newer and (new is not None or listed):
                    summaries[uid], texts[uid] = old, self._text[uid]
            for uid, deleted_at in self._deleted.items():
                if uid in summaries and _rv(summaries[uid].resource_version) <= deleted_at:
                    del summaries[uid], texts[uid]
            self._deleted = {u: v for u, v in self._deleted.items() if listed and v > listed}
            self._summary, self._text, self._parsed = summaries, texts, OrderedDict()
            self._by_jti = {j: uid for uid, s in summaries.items() for j in (s.jti, *s.previous_jtis) if j}
        self._gauge()

    def _on_event(self, type_: str, cm: dict[str, Any]) -> None:
        if type_ == "DELETED":
            self._forget(
                cm["metadata"]["name"].removeprefix("breakglass-grant-"), cm["metadata"].get("resourceVersion")
            )
            return
        entry = entry_from_configmap(cm)
        if entry:
            self._remember(entry)
