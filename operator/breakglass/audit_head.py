"""The audit chain anchored in the cluster: its head published to ConfigMap `breakglass-audit-head`
after every append (`AuditHead`), and the HMAC key kept in Secret `breakglass-audit-hmac`, generated
on first start when none is given (`ensure_hmac_key`), so HMAC is on by default."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
from collections.abc import Callable
from typing import Any

from . import api
from .audit_chain import parse_head

HEAD_KEY = "head.json"
HMAC_KEY = "hmac"
RECENT_KEYS = 64  # transition keys carried in the head, so a new leader does not repeat a record


class ChainForked(Exception):
    """Another writer (a leader that took over) sealed this seq first: catch up and seal again."""


class AuditHead:
    """Publishes the chain head to ConfigMap `breakglass-audit-head` (data `head.json`) and reads it.

    `publish(seq, hash)` is the `AuditLog` `on_append` hook. It RAISES when the head cannot be
    written: an append the cluster has not sealed must stop the transition that wrote it (fail
    closed), like a record that cannot be written to the file. The head never moves backwards (a
    publish for an older seq than the stored one is a no-op), and concurrent publishers are grouped:
    one write covers every record appended before it, so N concurrent appends cost ~2 API writes,
    not N. A caller returns only once a head >= its own seq is stored.

    `update_configmap(namespace, name, mutate)` is `Kube.update_configmap` (mutate gets the data dict
    and returns the new one); `get_configmap(namespace, name)` is `Kube.get_configmap` (None if absent).
    """

    def __init__(
        self,
        namespace: str,
        get_configmap: Callable[[str, str], dict[str, Any] | None],
        update_configmap: Callable[[str, str, Callable[[dict[str, str]], dict[str, str]]], Any],
        clock: Callable[[], dt.datetime] | None = None,
        name: str = api.AUDIT_HEAD_CONFIGMAP,
    ):
        self.namespace, self.name = namespace, name
        self._get, self._update = get_configmap, update_configmap
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._cond = threading.Condition()
        self._wanted: tuple[int, str] | None = None  # newest (seq, hash) any caller asked for
        self._published = -1  # highest seq known stored
        self._busy = False

    def read(self) -> dict[str, Any] | None:
        """The stored head, or None when none was ever published. ValueError if it is malformed."""
        cm = self._get(self.namespace, self.name)
        if cm is None:
            return None
        raw = (cm.get("data") or {}).get(HEAD_KEY)
        if raw is None:
            return None
        return parse_head(raw)

    def read_full(self) -> dict[str, Any] | None:
        """The stored head with the last sealed record(s) and recent keys (None when never published)."""
        cm = self._get(self.namespace, self.name)
        raw = ((cm or {}).get("data") or {}).get(HEAD_KEY)
        if raw is None:
            return None
        full = json.loads(raw)
        parse_head(full)  # validates; ValueError when malformed
        return full

    def seal_record(self, rec: dict[str, Any], keys: list[str], writer: str = "") -> None:
        """`seal_batch` of one record."""
        self.seal_batch([rec], keys, writer)

    def seal_batch(self, records: list[dict[str, Any]], keys: list[str], writer: str = "") -> None:
        """Seal-before-write: the head (with the records themselves) is stored *before* the records
        are written anywhere, and only if nobody sealed their seqs yet (compare-and-swap). So a writer
        that dies after sealing loses nothing (the next leader re-emits the records from the head)
        and two writers can never fork the chain (the second gets ChainForked).

        `records` are contiguous (a group commit); `record` stays the last one, so readers of a
        one-record head keep working, and `records` holds the whole batch when it has more than one
        (`audit_chain.head_records` reads both). The caller bounds the batch in count and bytes."""
        first, last = records[0], records[-1]
        stamp = self._clock().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        head = {
            "seq": last["seq"],
            "hash": last["hash"],
            "time": stamp,
            "record": last,
            "keys": keys[-RECENT_KEYS:],
            "writer": writer,
        }
        if len(records) > 1:
            head["records"] = records
        body = json.dumps(head, sort_keys=True, separators=(",", ":"))

        def mutate(data: dict[str, str]) -> dict[str, str]:
            try:
                current = parse_head(data[HEAD_KEY]) if HEAD_KEY in data else None
            except ValueError:
                current = None  # a malformed head is overwritten by a good one
            if current is not None and current["seq"] >= first["seq"]:
                raise ChainForked(f"audit seq {first['seq']} was already sealed (head is seq {current['seq']})")
            return dict(data, **{HEAD_KEY: body})

        self._update(self.namespace, self.name, mutate)
        with self._cond:
            self._published = max(self._published, last["seq"])

    def publish(self, seq: int, digest: str) -> None:
        with self._cond:
            if self._wanted is None or seq > self._wanted[0]:
                self._wanted = (seq, digest)
            while self._published < seq and self._busy:
                self._cond.wait()
            if self._published >= seq:
                return
            self._busy = True
            target = self._wanted
        try:
            self._write(*target)
        except BaseException:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
            raise
        with self._cond:
            self._published = max(self._published, target[0])
            self._busy = False
            self._cond.notify_all()

    def _write(self, seq: int, digest: str) -> None:
        stamp = self._clock().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = json.dumps({"seq": seq, "hash": digest, "time": stamp}, sort_keys=True, separators=(",", ":"))

        def mutate(data: dict[str, str]) -> dict[str, str]:
            try:
                current = parse_head(data[HEAD_KEY]) if HEAD_KEY in data else None
            except ValueError:
                current = None  # a malformed head is overwritten by a good one
            if current is not None and current["seq"] >= seq:
                return data  # someone (another replica, an earlier write) already stored a later head
            return dict(data, **{HEAD_KEY: body})

        self._update(self.namespace, self.name, mutate)


# ---------------------------------------------------------------- the HMAC key
def ensure_hmac_key(
    namespace: str,
    get_secret: Callable[[str, str], dict[str, Any] | None],
    create_secret_if_absent: Callable[[dict[str, Any]], tuple[dict[str, Any], bool]],
    name: str = api.AUDIT_HMAC_SECRET,
) -> bytes:
    """Read the audit HMAC key from Secret `name` (key `hmac`), creating it on first start.

    The key is the Secret's decoded `hmac` value, exactly as for a user-provided Secret mounted
    through the chart's env variable. A generated value is the URL-safe base64 text of 32 random
    bytes (256 bits): printable, so `kubectl get secret ... | base64 -d` can be passed straight to
    `kubectl breakglass audit verify --hmac-secret`. On a create race the Secret that won is used.
    Raises ValueError when the Secret exists without a usable `hmac` value: the operator must not
    silently run without HMAC.
    """
    secret = get_secret(namespace, name)
    if secret is None:
        value = secrets.token_urlsafe(32).encode()
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": {api.MANAGED_BY_LABEL: api.MANAGED_BY}},
            "data": {HMAC_KEY: base64.b64encode(value).decode()},
        }
        secret, _created = create_secret_if_absent(body)
    return hmac_key_from_secret(secret, f"{namespace}/{name}")


def hmac_key_from_secret(secret: dict[str, Any], where: str = "") -> bytes:
    raw = (secret.get("data") or {}).get(HMAC_KEY)
    if not raw:
        raise ValueError(f"audit HMAC Secret {where} has no `{HMAC_KEY}` key")
    try:
        key = base64.b64decode(raw, validate=True)
    except (ValueError, TypeError):
        raise ValueError(f"audit HMAC Secret {where}: `{HMAC_KEY}` is not base64") from None
    if len(key) < 16:
        raise ValueError(f"audit HMAC Secret {where}: `{HMAC_KEY}` is shorter than 16 bytes")
    return key


# ---------------------------------------------------------------- the log
