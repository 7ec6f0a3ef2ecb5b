"""Tamper-evident audit log: one JSON object per transition, SHA-256 hash-chained, HMAC'd, anchored.

Each record has `seq`, `prev` (hash of the previous record) and `hash` (SHA-256 over the
canonical JSON of the record without `hash`/`hmac`). Editing, deleting, inserting or reordering
any line breaks the chain at that record. The chain continues across restarts from the last record
of the file when that holds the head published in the cluster, else from the head (see `AuditLog`).
Tokens are never recorded (`seal` refuses the key).

Two things a hash chain alone cannot show, and what closes them (issue 9, invariant 10):

- a truncated tail, and a rewrite that re-seals every hash after the edit. After every append the
  chain's head `{seq, hash, time}` is published to ConfigMap `breakglass-audit-head` (data
  `head.json`) in the operator namespace, which only the operator may write (`AuditHead`);
  `verify_against_head` compares a file against it.
- a forger who recomputes the hashes. Every record carries an HMAC under a key kept in a Secret
  only the operator (and whoever may read Secrets in its namespace) can read; when none is given
  the operator generates one on first start (`ensure_hmac_key`), so HMAC is on by default.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import hashlib
import hmac as hmac_mod
import json
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from . import api

GENESIS = "0" * 64
_FORBIDDEN_KEYS = {"token", "kubeconfig", "privateKeyPem"}
HEAD_KEY = "head.json"
HMAC_KEY = "hmac"

OnAppend = Callable[[int, str], None]


def canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k not in ("hash", "hmac")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def seal(record: dict[str, Any], prev_hash: str, seq: int, hmac_key: bytes | None) -> dict[str, Any]:
    if _FORBIDDEN_KEYS & set(record):
        raise ValueError("audit records never carry credentials")
    out = dict(record, seq=seq, prev=prev_hash)
    digest = hashlib.sha256(canonical(out)).hexdigest()
    out["hash"] = digest
    if hmac_key:
        out["hmac"] = hmac_mod.new(hmac_key, canonical(out), hashlib.sha256).hexdigest()
    return out


@dataclass
class ChainBreak:
    line: int
    seq: int | None
    problem: str


@dataclass
class ChainReport:
    """What a walk over a file found: enough for `compare_head` and for a human report."""

    count: int
    broken: ChainBreak | None
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    last_line: int = 0
    at_seq: int | None = None  # the seq asked about (the published head's)
    at_seq_hash: str | None = None  # hash of the record with that seq, if the file has it
    at_seq_line: int | None = None


def chain_report(
    lines: Iterable[str], hmac_key: bytes | None = None, at_seq: int | None = None, segment: bool = False
) -> ChainReport:
    """Walk the chain from genesis; stop at the first break. Remembers the record with `at_seq`.

    `segment`: the file is a piece of a longer chain (a rotated log, one container's stdout after a
    restart): its first record may continue an earlier one (its `seq`/`prev` are taken as given and
    reported as `first_seq`); everything else is checked as usual.
    """
    prev, expected_seq, count = GENESIS, 0, 0
    rep = ChainReport(0, None, at_seq=at_seq)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            rep.broken = ChainBreak(lineno, None, f"line is not JSON ({exc.msg})")
            break
        if not isinstance(rec, dict):
            rep.broken = ChainBreak(lineno, None, "line is not a JSON object")
            break
        seq = rec.get("seq")
        if rep.first_seq is None:
            rep.first_seq = seq
            if segment and isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
                prev, expected_seq = rec.get("prev"), seq
        if hashlib.sha256(canonical(rec)).hexdigest() != rec.get("hash"):
            rep.broken = ChainBreak(lineno, seq, "record content does not match its hash (edited)")
            break
        if hmac_key is not None:
            want = hmac_mod.new(hmac_key, canonical(rec), hashlib.sha256).hexdigest()
            got = rec.get("hmac")
            if not isinstance(got, str) or not hmac_mod.compare_digest(want, got):
                rep.broken = ChainBreak(lineno, seq, "HMAC does not verify (forged or wrong key)")
                break
        if rec.get("prev") != prev:
            rep.broken = ChainBreak(lineno, seq, "previous-hash link broken (record deleted, inserted or reordered)")
            break
        if seq != expected_seq:
            rep.broken = ChainBreak(lineno, seq, f"sequence {seq} where {expected_seq} was expected")
            break
        if at_seq is not None and seq == at_seq:
            rep.at_seq_hash, rep.at_seq_line = rec["hash"], lineno
        prev, expected_seq, count = rec["hash"], expected_seq + 1, count + 1
        rep.last_seq, rep.last_hash, rep.last_line = seq, rec["hash"], lineno
    rep.count = count
    return rep


def verify_lines(
    lines: Iterable[str], hmac_key: bytes | None = None, segment: bool = False
) -> tuple[int, ChainBreak | None]:
    """Return (records verified, first break or None)."""
    rep = chain_report(lines, hmac_key, segment=segment)
    return rep.count, rep.broken


def compare_head(rep: ChainReport, head: dict[str, Any]) -> ChainBreak | None:
    """The break a published head reveals in an otherwise intact chain, or None.

    - the file ends before the head's seq: records were cut off the tail (truncated);
    - the file's record at the head's seq has another hash: the chain was rewritten and re-sealed.
    Records after the head's seq are not a break (the head may lag the file when publishing failed,
    or the file was read after the head): the caller reports them as not covered.
    """
    if rep.broken is not None:
        return rep.broken
    seq, want = head["seq"], head["hash"]
    if rep.last_seq is None or rep.last_seq < seq:
        have = -1 if rep.last_seq is None else rep.last_seq
        return ChainBreak(
            rep.last_line + 1,
            have + 1,
            f"file ends at seq {rep.last_seq if rep.last_seq is not None else '(none)'} but the "
            f"cluster's published head is seq {seq}: {seq - have} record(s) missing from the tail "
            "(truncated)",
        )
    if rep.first_seq is not None and seq < rep.first_seq:
        return None  # a segment that starts after the head: nothing here for the head to vouch for
    if rep.at_seq_hash != want:
        return ChainBreak(
            rep.at_seq_line or 0,
            seq,
            f"record seq {seq} has hash {rep.at_seq_hash} but the cluster's published head says "
            f"{want} (chain rewritten and re-sealed)",
        )
    return None


def verify_against_head(
    lines: Iterable[str], head: dict[str, Any] | str, hmac_key: bytes | None = None, segment: bool = False
) -> tuple[int, ChainBreak | None]:
    """`verify_lines`, plus the truncation / re-seal check against a published head (`parse_head`).

    Read the head BEFORE the file when the file is live: the operator writes the file before it
    publishes, so a file read after its head is never behind it unless records were cut.
    """
    head = parse_head(head)
    rep = chain_report(lines, hmac_key, at_seq=head["seq"], segment=segment)
    return rep.count, compare_head(rep, head)


# ---------------------------------------------------------------- the published head
def parse_head(raw: dict[str, Any] | str) -> dict[str, Any]:
    """Validate a head (`head.json` text or its dict): {"seq": int >= 0, "hash": 64 hex, "time": str}."""
    obj = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(obj, dict):
        raise ValueError("audit head is not a JSON object")
    seq, digest = obj.get("seq"), obj.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError(f"audit head seq {seq!r} is not a non-negative integer")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("audit head hash is not a SHA-256 hex digest")
    return {"seq": seq, "hash": digest, "time": obj.get("time")}


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
class AuditLog:
    """Thread-safe appender. Writes to `stream` (stdout) and, when configured, a file (fsync'd).

    Order of one append, under the lock: seal, write + fsync the file, write the stream, advance the
    chain. Then, outside the lock, `on_append(seq, hash)` (e.g. `AuditHead.publish`). Every failure
    raises to the caller, which must not go on with the transition (fail closed): a record that
    cannot be written, or whose head cannot be sealed in the cluster. After a publish failure the
    record is still in the file and the chain has advanced past it; the next successful publish
    covers it (the head lags by at most the failed records meanwhile).

    `head` (the published head, from `AuditHead.read()`) resumes the chain where the cluster says it
    is when that is further on than the file: without a file (stdout only) or with a lost or
    truncated one, the next record still links to the last sealed one, so the head never moves
    backwards and the stdout stream across restarts stays one chain. When the file does not hold the
    sealed head record, `discrepancy` says how (the runtime should log it and record it) and the
    chain continues from the head, so the file keeps showing the break instead of a new head
    vouching for a rewritten file.
    """

    def __init__(
        self,
        path: str | None = None,
        hmac_key: bytes | None = None,
        stream: IO[str] | None = None,
        on_append: OnAppend | None = None,
        head: dict[str, Any] | None = None,
    ):
        self.path, self.hmac_key, self.on_append = path, hmac_key, on_append
        self.stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self._prev, self._seq = GENESIS, 0
        self.discrepancy: str | None = None
        self.read_head: Callable[[], dict[str, Any] | None] = lambda: None
        # Transition keys already recorded (request uid + transition): a retried or resumed pass
        # after a crash never writes a second record for the same transition. Seeded from the file.
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        file_last = None
        if path and os.path.exists(path):
            for key in _recent_keys(path):
                self._remember(key)
            last = _last_line(path)
            if last:
                rec = json.loads(last)
                file_last = (rec["seq"], rec["hash"])
                self._prev, self._seq = rec["hash"], rec["seq"] + 1
        if head is not None:
            head = parse_head(head)
            self._resume(file_last, head)

    def _resume(self, file_last: tuple[int, str] | None, head: dict[str, Any]) -> None:
        hseq, hhash = head["seq"], head["hash"]
        if file_last is not None:
            fseq, fhash = file_last
            at = fhash if fseq == hseq else (_hash_at(self.path, hseq) if fseq > hseq else None)
            if at == hhash:
                return  # the file holds the sealed head (and maybe records whose publish failed): go on
            if fseq < hseq:
                self.discrepancy = (
                    f"audit file {self.path} ends at seq {fseq} but the cluster's head is seq "
                    f"{hseq}: the file lost {hseq - fseq} record(s)"
                )
            else:
                self.discrepancy = (
                    f"audit file {self.path} record seq {hseq} differs from the cluster's head (file rewritten)"
                )
            self.discrepancy += f"; continuing the chain from the head at seq {hseq + 1}"
        elif self.path:
            self.discrepancy = (
                f"audit file {self.path} has no records but the cluster's head is seq {hseq}; "
                f"continuing the chain from the head at seq {hseq + 1}"
            )
        # Never continue from a file that disagrees with the sealed head: that would launder a rewrite
        # (the next head would vouch for it). Linking to the head leaves the break visible in the file.
        self._prev, self._seq = hhash, hseq + 1

    def follow_head(self, head: dict[str, Any] | None) -> None:
        """A replica that becomes leader continues the one chain where the previous leader left it
        (its own file then holds only its own leadership segments; `audit verify --segment`)."""
        if head is None:
            return
        head = parse_head(head)
        with self._lock:
            if head["seq"] + 1 > self._seq:
                self._prev, self._seq = head["hash"], head["seq"] + 1

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        while len(self._seen) > SEEN_KEYS:
            self._seen.popitem(last=False)

    def record(self, event: str, key: str | None = None, **fields: Any) -> dict[str, Any] | None:
        """Append one record; with `key`, at most once per key (None when it was already recorded)."""
        with self._lock:
            if key is not None:
                if key in self._seen:
                    return None
                fields["key"] = key
            rec = seal({"kind": "breakglass.audit", "event": event, **fields}, self._prev, self._seq, self.hmac_key)
            line = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            if self.path:
                # Fail closed: a record we cannot persist raises, and the caller does not proceed.
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except Exception:
                pass
            self._prev, self._seq = rec["hash"], self._seq + 1
            if key is not None:
                self._remember(key)
        if self.on_append is not None:
            # Outside the lock: a slow API call does not serialize every append; AuditHead groups them.
            self.on_append(rec["seq"], rec["hash"])
        return rec


SEEN_KEYS = 200_000
_TAIL_BYTES = 32 * 1024 * 1024


def _recent_keys(path: str) -> list[str]:
    """Transition keys of the file's last records (its tail, bounded)."""
    keys = []
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - _TAIL_BYTES))
        for raw in fh:
            if b'"key":' not in raw:
                continue
            try:
                key = json.loads(raw).get("key")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                continue
            if isinstance(key, str):
                keys.append(key)
    return keys


def _last_line(path: str) -> str | None:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        block = min(size, 65536)
        fh.seek(size - block)
        lines = [ln for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else None


def _hash_at(path: str, seq: int) -> str | None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if f'"seq":{seq},' not in line and f'"seq":{seq}}}' not in line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("seq") == seq:
                return rec.get("hash")
    return None
