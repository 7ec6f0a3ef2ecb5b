"""Tamper-evident audit log: one JSON object per transition, SHA-256 hash-chained, optional HMAC.

Each record has `seq`, `prev` (hash of the previous record) and `hash` (SHA-256 over the
canonical JSON of the record without `hash`/`hmac`). Editing, deleting, inserting or reordering
any line breaks the chain at that record. The chain continues across restarts by reading the
last record of the file. Tokens are never recorded (`build_record` refuses the key).
"""
from __future__ import annotations

import hashlib
import hmac as hmac_mod
import json
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, IO, Iterable

GENESIS = "0" * 64
_FORBIDDEN_KEYS = {"token", "kubeconfig", "privateKeyPem"}


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


def verify_lines(lines: Iterable[str], hmac_key: bytes | None = None) -> tuple[int, ChainBreak | None]:
    """Return (records verified, first break or None)."""
    prev, expected_seq, count = GENESIS, 0, 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            return count, ChainBreak(lineno, None, f"line is not JSON ({exc.msg})")
        seq = rec.get("seq")
        if hashlib.sha256(canonical(rec)).hexdigest() != rec.get("hash"):
            return count, ChainBreak(lineno, seq, "record content does not match its hash (edited)")
        if hmac_key is not None:
            want = hmac_mod.new(hmac_key, canonical(rec), hashlib.sha256).hexdigest()
            if not hmac_mod.compare_digest(want, rec.get("hmac", "")):
                return count, ChainBreak(lineno, seq, "HMAC does not verify (forged or wrong key)")
        if rec.get("prev") != prev:
            return count, ChainBreak(lineno, seq, "previous-hash link broken (record deleted, inserted or reordered)")
        if seq != expected_seq:
            return count, ChainBreak(lineno, seq, f"sequence {seq} where {expected_seq} was expected")
        prev, expected_seq, count = rec["hash"], expected_seq + 1, count + 1
    return count, None


class AuditLog:
    """Thread-safe appender. Writes to stdout and, when configured, a file (fsync'd)."""

    def __init__(self, path: str | None = None, hmac_key: bytes | None = None, stream: IO[str] | None = None):
        self.path, self.hmac_key = path, hmac_key
        self.stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self._prev, self._seq = GENESIS, 0
        if path and os.path.exists(path):
            last = _last_line(path)
            if last:
                rec = json.loads(last)
                self._prev, self._seq = rec["hash"], rec["seq"] + 1

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
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
            return rec


def _last_line(path: str) -> str | None:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        block = min(size, 65536)
        fh.seek(size - block)
        lines = [ln for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else None
