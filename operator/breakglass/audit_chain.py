"""The audit chain's format and its verification: canonical JSON, SHA-256 links, HMACs, and the
comparison of a file with the head the operator publishes (a truncated tail or a re-sealed rewrite).
Pure: no I/O beyond the lines handed in."""

from __future__ import annotations

import hashlib
import hmac as hmac_mod
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
_FORBIDDEN_KEYS = {"token", "kubeconfig", "privateKeyPem"}


def canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k not in ("hash", "hmac")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def refuse_credentials(record: dict[str, Any]) -> None:
    if _FORBIDDEN_KEYS & set(record):
        raise ValueError("audit records never carry credentials")


def seal(record: dict[str, Any], prev_hash: str, seq: int, hmac_key: bytes | None) -> dict[str, Any]:
    refuse_credentials(record)
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


def head_records(head: dict[str, Any]) -> list[dict[str, Any]]:
    """The records sealed by a head's last write, oldest first, ending with the head's own record.

    A group commit seals a batch of contiguous records in one write: `records` holds the batch and
    `record` its last one. A head written one record at a time has only `record`. Anything that does
    not chain up to the head's seq and hash is ignored ([] when nothing usable is there)."""
    try:
        parsed = parse_head(head)
    except ValueError:
        return []
    last = head.get("record")
    if not _ends_at(last, parsed):
        return []
    batch = head.get("records")
    if isinstance(batch, list) and batch and all(isinstance(r, dict) for r in batch) and batch[-1] == last:
        if all(_links(earlier, later) for earlier, later in zip(batch, batch[1:], strict=False)):
            return batch
    return [last]


def _ends_at(record: Any, parsed: dict[str, Any]) -> bool:
    return isinstance(record, dict) and record.get("seq") == parsed["seq"] and record.get("hash") == parsed["hash"]


def _links(earlier: dict[str, Any], later: dict[str, Any]) -> bool:
    seq = earlier.get("seq")
    return isinstance(seq, int) and later.get("seq") == seq + 1 and later.get("prev") == earlier.get("hash")
