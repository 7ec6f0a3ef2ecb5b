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

import collections
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from .audit_chain import GENESIS, parse_head, seal
from .audit_head import ChainForked

OnAppend = Callable[[int, str], None]


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
        on_seal: Callable[..., None] | None = None,
        writer: str = "",
    ):
        self.path, self.hmac_key, self.on_append = path, hmac_key, on_append
        # on_seal(record, recent keys): AuditHead.seal_record — the head is stored before the write.
        self.on_seal = on_seal
        # Who writes this copy of the chain (host + file): a head sealed by another writer (a replica
        # that led meanwhile) explains a file that stops short; one sealed by us does not.
        self.writer = writer
        self.stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self._prev, self._seq = GENESIS, 0
        self.discrepancy: str | None = None
        self.read_head: Callable[[], dict[str, Any] | None] = lambda: None
        # Transition keys already recorded (request uid + transition): a retried or resumed pass
        # after a crash never writes a second record for the same transition. Seeded from the file.
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._last_written: str | None = None  # hash of the last record this log wrote (or its file ends with)
        file_last = None
        if path and os.path.exists(path):
            for key in _recent_keys(path):
                self._remember(key)
            last = _last_line(path)
            if last:
                rec = json.loads(last)
                file_last = (rec["seq"], rec["hash"])
                self._prev, self._seq = rec["hash"], rec["seq"] + 1
                self._last_written = rec["hash"]
        if head is not None:
            sealed = head.get("record") if isinstance(head, dict) else None
            if file_last and _is_next(sealed, head, file_last[1]):
                # Sealed in the cluster, then the process died before writing it: write it now.
                self._write_line(json.dumps(sealed, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
                file_last = (sealed["seq"], sealed["hash"])
                self._prev, self._seq = sealed["hash"], sealed["seq"] + 1
                self._last_written = sealed["hash"]
            for key in (head.get("keys") or []) if isinstance(head, dict) else []:
                self._remember(key)
            sealed_by = head.get("writer") if isinstance(head, dict) else None
            self._resume(file_last, parse_head(head), other_writer=bool(sealed_by) and sealed_by != writer)

    def _resume(self, file_last: tuple[int, str] | None, head: dict[str, Any], other_writer: bool = False) -> None:
        hseq, hhash = head["seq"], head["hash"]
        if file_last is not None:
            fseq, fhash = file_last
            at = fhash if fseq == hseq else (_hash_at(self.path, hseq) if fseq > hseq else None)
            if at == hhash:
                return  # the file holds the sealed head (and maybe records whose publish failed): go on
            if fseq < hseq and other_writer:
                self._prev, self._seq = hhash, hseq + 1  # another replica led meanwhile: its records are its own
                return
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
        """A replica that becomes leader continues the one chain where the previous leader left it:
        it re-emits the last sealed record (which that leader may have died before writing; an
        identical duplicate otherwise) and remembers its recent transition keys."""
        with self._lock:
            self._follow_locked(head)

    def _follow_locked(self, head: dict[str, Any] | None) -> None:
        if head is None:
            return
        parsed = parse_head(head)
        if parsed["seq"] + 1 < self._seq:
            return
        sealed = head.get("record")
        if (
            isinstance(sealed, dict)
            and sealed.get("seq") == parsed["seq"]
            and sealed.get("hash") == parsed["hash"]
            and sealed["hash"] != self._last_written
        ):
            self._write_line(json.dumps(sealed, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
            self._last_written = sealed["hash"]
        for key in head.get("keys") or []:
            self._remember(key)
        self._prev, self._seq = parsed["hash"], parsed["seq"] + 1

    def _write_line(self, line: str) -> None:
        if self.path:
            # Fail closed: a record we cannot persist raises, and the caller does not proceed.
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001 — stdout is a copy; the file and the head are the record
            pass

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
            body = {"kind": "breakglass.audit", "event": event, **fields}
            rec = seal(body, self._prev, self._seq, self.hmac_key)
            if self.on_seal is not None:
                keys = list(self._seen)[-64:] + ([key] if key else [])
                try:
                    self.on_seal(rec, keys, self.writer)
                except ChainForked:
                    # Another leader sealed this seq: continue after its head and seal once more —
                    # unless the head shows this very transition was already recorded.
                    self._follow_locked(self.read_head())
                    if key is not None and key in self._seen:
                        return None
                    rec = seal(body, self._prev, self._seq, self.hmac_key)
                    self.on_seal(rec, keys, self.writer)
            self._write_line(json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
            self._last_written = rec["hash"]
            self._prev, self._seq = rec["hash"], self._seq + 1
            if key is not None:
                self._remember(key)
        if self.on_append is not None:
            # Outside the lock: a slow API call does not serialize every append; AuditHead groups them.
            self.on_append(rec["seq"], rec["hash"])
        return rec


def _is_next(sealed: Any, head: dict[str, Any], last_hash: str) -> bool:
    return (
        isinstance(sealed, dict)
        and sealed.get("prev") == last_hash
        and sealed.get("seq") == head.get("seq")
        and sealed.get("hash") == head.get("hash")
    )


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
