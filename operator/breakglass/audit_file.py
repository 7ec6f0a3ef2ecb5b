"""Reading an audit file at start: its last record and the transition keys of its tail (both bounded
reads), and the hash of the record with a given seq. Lines that are not JSON are skipped."""

from __future__ import annotations

import json
import os

_TAIL_BYTES = 32 * 1024 * 1024


def recent_keys(path: str) -> list[str]:
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


def last_line(path: str) -> str | None:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        block = min(size, 65536)
        fh.seek(size - block)
        lines = [ln for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else None


def hash_at(path: str, seq: int) -> str | None:
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
