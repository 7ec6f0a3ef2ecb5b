"""Emit (record in the outbox) and deliver notifications.

`emit` runs inside a reconcile pass, next to the Events (recording.py): it writes one outbox entry
per subscribed target *before* the pass writes the status, so a crash or an API error retries the
pass and the notification is recorded again under the same id. An Issued grant also records its
Expiring notice, due `expiringLead` before exp (durable like the rest: a restart does not lose it).

The delivery loop runs on the leader: due entries are POSTed by a small pool (signed with the HMAC
key of the target's Secret in the operator namespace), deleted on 2xx, otherwise retried with
exponential backoff until `max_attempts` or `max_age`, then dead-lettered (removed and counted)."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import api
from ..domain.durations import parse_rfc3339, to_rfc3339
from ..k8s.client import error_text
from . import messages as M
from . import signing as S
from .outbox import PREFIX, Outbox, delivery_seconds, notifications_total

log = logging.getLogger(__name__)
EXTENDED = "Extended"  # an extension: no notice of its own, it re-times the Expiring notice


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 5.0) -> int | None:
    """POST without following redirects; the status, or None when nothing answered."""
    parts = urllib.parse.urlsplit(url)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, parts.port, timeout=timeout)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read(65536)
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Notifier:
    def __init__(
        self,
        *,
        kube,
        namespace: str,
        policy: Callable[[str], dict[str, Any] | None],
        is_live: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
        max_age: float = 86400.0,
        max_attempts: int = 50,
        capacity: int = 1000,
        backoff_cap: float = 300.0,
        workers: int = 4,
        post: Callable[..., int | None] = http_post,
    ):
        self.kube, self.namespace, self.policy, self.is_live, self.clock = kube, namespace, policy, is_live, clock
        self.max_age, self.max_attempts, self.backoff_cap, self.post = max_age, max_attempts, backoff_cap, post
        self.outbox = Outbox(kube, namespace, capacity)
        self._cv = threading.Condition()
        self._inflight: set[str] = set()
        self._stopped = threading.Event()
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ emit
    def emit(self, reason: str, req: dict[str, Any], message: str, facts: dict[str, Any] | None = None) -> int:
        """Record the notifications an Event reason stands for; returns how many were recorded."""
        kind = M.EVENT_REASONS.get(reason)
        if reason == "Extended" and not api.is_drill(req):
            kind = EXTENDED  # no notice of its own: it re-times the Expiring notice
        if kind is None or api.is_drill(req):
            return 0
        policy_name = (req.get("spec") or {}).get("policy") or ""
        body = self.policy(policy_name) if policy_name else None
        spec = (body or {}).get("spec") or {}
        targets = M.targets_from_spec(spec)
        if not targets:
            return 0
        facts, now = dict(facts or {}), self.clock()
        uid = req["metadata"]["uid"]
        recorded = 0
        for index, target in enumerate(targets):
            if kind in target.events:
                recorded += self._record(kind, req, spec, message, facts, target, index, now, now)
            if kind in (M.ISSUED, EXTENDED) and M.EXPIRING in target.events and facts.get("expiresAt"):
                if facts.get("previousExpiresAt"):  # the notice for the old exp is void
                    old_id = M.notification_id(uid, f"{M.EXPIRING}@{facts['previousExpiresAt']}", target, index)
                    self.outbox.remove(PREFIX + old_id)
                exp = parse_rfc3339(facts["expiresAt"]).timestamp()
                lead = target.expiring_lead.total_seconds()
                notice = f"access of {uid} expires at {facts['expiresAt']} (in {int(lead)}s at the latest)"
                recorded += self._record(
                    M.EXPIRING, req, spec, notice, facts, target, index, now, max(now, exp - lead), facts["expiresAt"]
                )
        if recorded:
            with self._cv:
                self._cv.notify_all()
        return recorded

    def _record(self, kind, req, spec, message, facts, target: M.Target, index, now, not_before, exp="") -> int:
        # An Expiring notice is one per exp (an extension moves it: a new notice, the old one removed).
        nid = M.notification_id(req["metadata"]["uid"], f"{kind}@{exp}" if exp else kind, target, index)
        payload = M.build_payload(
            nid=nid, kind=kind, time=to_rfc3339_ts(now), req=req, policy_spec=spec, message=message, facts=facts
        )
        item = {
            "id": nid,
            "kind": kind,
            "requestUid": req["metadata"]["uid"],
            "target": target.to_dict(),
            "payload": payload,
            "createdAt": now,
            "notBefore": not_before,
            "attempts": 0,
            "nextAttemptAt": 0.0,
        }
        return int(self.outbox.add(item))

    # ------------------------------------------------------------------ delivery loop (leader)
    def start(self) -> None:
        if self._thread is not None:
            return
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="notify")
        self._thread = threading.Thread(target=self._run, name="notify-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        with self._cv:
            self._cv.notify_all()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stopped.is_set():
            if not self.outbox.loaded:
                try:
                    log.info("notification outbox: %d pending from before", self.outbox.load())
                except Exception as exc:
                    log.warning("notification outbox not loaded (retrying): %s", error_text(exc))
                    self._stopped.wait(5.0)
                    continue
            with self._cv:
                skip = set(self._inflight)
            for name, item in self.outbox.due(self.clock(), skip):
                with self._cv:
                    self._inflight.add(name)
                try:
                    self._pool.submit(self._attempt_safely, name, item)
                except RuntimeError:  # shut down
                    return
            with self._cv:
                nxt = self.outbox.next_due(self._inflight)
                wait = 1.0 if nxt is None else min(1.0, max(0.0, nxt - self.clock()))
                if wait > 0:
                    self._cv.wait(wait)

    def _attempt_safely(self, name: str, item: dict[str, Any]) -> None:
        try:
            self.attempt(name, item)
        except Exception as exc:  # the entry stays; the next round tries again
            log.warning("notification %s: %s", name, error_text(exc))
            self._stopped.wait(1.0)
        finally:
            with self._cv:
                self._inflight.discard(name)
                self._cv.notify_all()

    def attempt(self, name: str, item: dict[str, Any]) -> str:
        """One delivery attempt; returns the result counted (delivered, retried, dead_letter, cancelled)."""
        target, now = item["target"], self.clock()
        if item["kind"] == M.EXPIRING and not self.is_live(item["requestUid"]):
            return self._finish(name, "cancelled")
        key, problem = self._key(target)
        if problem == "unsigned":
            log.warning("notification %s: json target without secretRef: never sent unsigned", name)
            return self._finish(name, "dead_letter")
        status = None
        if problem is None:
            body = M.render(item["payload"], target["format"])
            headers = {"Content-Type": "application/json", S.ID_HEADER: item["id"], S.EVENT_HEADER: item["kind"]}
            if key is not None:
                headers[S.SIGNATURE_HEADER] = S.sign(key, int(now), body)
            status = self.post(target["webhook"], body, headers)
            verdict = S.verdict(status)
            if verdict == S.DELIVERED:
                delivery_seconds.observe(max(0.0, self.clock() - max(item["createdAt"], item["notBefore"])))
                return self._finish(name, "delivered")
            if verdict == S.DEAD:
                log.warning("notification %s: %s answered %s; dead-lettered", name, target["webhook"], status)
                return self._finish(name, "dead_letter")
        attempts = item["attempts"] + 1
        age = now - max(item["createdAt"], item["notBefore"])
        if S.give_up(attempts=attempts, age=age, max_attempts=self.max_attempts, max_age=self.max_age):
            log.warning("notification %s to %s dead-lettered after %d attempt(s)", name, target["webhook"], attempts)
            return self._finish(name, "dead_letter")
        item.update(
            attempts=attempts,
            nextAttemptAt=now + S.backoff_seconds(attempts, cap=self.backoff_cap),
            lastError=problem or (f"HTTP {status}" if status else "no answer"),
        )
        self.outbox.update(name, item)
        notifications_total.labels("retried").inc()
        return "retried"

    def _finish(self, name: str, result: str) -> str:
        self.outbox.remove(name)
        notifications_total.labels(result).inc()
        return result

    def _key(self, target: dict[str, Any]) -> tuple[bytes | None, str | None]:
        """(HMAC key, None) | (None, None) unsigned slack | (None, problem)."""
        if not target.get("secretName"):
            return None, ("unsigned" if target["format"] == "json" else None)
        secret = self.kube.get_secret(self.namespace, target["secretName"])
        value = ((secret or {}).get("data") or {}).get(target.get("secretKey") or "")
        if not value:
            return None, f"Secret {target['secretName']} (key {target.get('secretKey')!r}) missing"
        return base64.b64decode(value), None


def to_rfc3339_ts(ts: float) -> str:
    return to_rfc3339(dt.datetime.fromtimestamp(ts, dt.UTC))
