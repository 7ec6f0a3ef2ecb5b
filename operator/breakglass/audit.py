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
import itertools
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from .audit_batch import SEAL_OVERHEAD_BYTES, GroupCommit, Pending
from .audit_chain import GENESIS, head_records, parse_head, refuse_credentials, seal
from .audit_file import hash_at, last_line, recent_keys
from .audit_head import RECENT_KEYS, ChainForked

OnAppend = Callable[[int, str], None]


class AuditLog:
    """Thread-safe appender. Writes to `stream` (stdout) and, when configured, a file (fsync'd).

    Appends are group-committed (`audit_batch`): concurrent `record` calls are chained in the order
    they were made and committed together. Order of one commit, under the chain lock: seal the batch
    (contiguous seqs), store it in the cluster head with one write (`on_seal(records, recent keys,
    writer)`, e.g. `AuditHead.seal_batch`), write + fsync the file once, write the stream, advance the
    chain. Each caller then returns its own record, and, outside the lock, calls `on_append(seq,
    hash)` (e.g. `AuditHead.publish`). Every failure raises to every caller of the batch, which must
    not go on with its transition (fail closed): records that cannot be written, or whose head cannot
    be sealed in the cluster. A batch whose head write failed is not written and the chain does not
    advance (if the write was stored after all, its answer lost, the next commit finds the records in
    the head and writes them, see ChainForked). After a publish failure the record is still in the
    file and the chain has advanced past it; the next successful publish covers it (the head lags by
    at most the failed records meanwhile).

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
        # on_seal(records, recent keys, writer): AuditHead.seal_batch — the head, with the batch of
        # records, is stored before they are written.
        self.on_seal = on_seal
        # Who writes this copy of the chain (host + file): a head sealed by another writer (a replica
        # that led meanwhile) explains a file that stops short; one sealed by us does not.
        self.writer = writer
        self.stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()  # the chain: one commit (or follow_head) at a time
        self._commits = GroupCommit(self._commit)
        self._prev, self._seq = GENESIS, 0
        self.discrepancy: str | None = None
        self.read_head: Callable[[], dict[str, Any] | None] = lambda: None
        # Transition keys already recorded (request uid + transition): a retried or resumed pass
        # after a crash never writes a second record for the same transition. Seeded from the file.
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._last_written: str | None = None  # hash of the last record this log wrote (or its file ends with)
        file_last = None
        if path and os.path.exists(path):
            for key in recent_keys(path):
                self._remember(key)
            last = last_line(path)
            if last:
                rec = json.loads(last)
                file_last = (rec["seq"], rec["hash"])
                self._prev, self._seq = rec["hash"], rec["seq"] + 1
                self._last_written = rec["hash"]
        if head is not None:
            unwritten = _after(head_records(head) if isinstance(head, dict) else [], file_last)
            if unwritten:
                # Sealed in the cluster, then the process died before writing (all of) them: write now.
                self._write_lines([_line(rec) for rec in unwritten])
                last = unwritten[-1]
                file_last = (last["seq"], last["hash"])
                self._prev, self._seq = last["hash"], last["seq"] + 1
                self._last_written = last["hash"]
            for key in (head.get("keys") or []) if isinstance(head, dict) else []:
                self._remember(key)
            sealed_by = head.get("writer") if isinstance(head, dict) else None
            self._resume(file_last, parse_head(head), other_writer=bool(sealed_by) and sealed_by != writer)

    def _resume(self, file_last: tuple[int, str] | None, head: dict[str, Any], other_writer: bool = False) -> None:
        hseq, hhash = head["seq"], head["hash"]
        if file_last is not None:
            fseq, fhash = file_last
            at = fhash if fseq == hseq else (hash_at(self.path, hseq) if fseq > hseq else None)
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
        it re-emits the records of the last sealed batch (which that leader may have died before
        writing; identical duplicates otherwise) and remembers its recent transition keys."""
        with self._lock:
            self._follow_locked(head)

    def _follow_locked(self, head: dict[str, Any] | None) -> None:
        if head is None:
            return
        parsed = parse_head(head)
        if parsed["seq"] + 1 < self._seq:
            return
        batch = head_records(head)
        hashes = [rec["hash"] for rec in batch]
        if self._last_written in hashes:
            batch = batch[hashes.index(self._last_written) + 1 :]  # what we wrote ourselves is not repeated
        if batch:
            self._write_lines([_line(rec) for rec in batch])
            self._last_written = batch[-1]["hash"]
        for key in head.get("keys") or []:
            self._remember(key)
        self._prev, self._seq = parsed["hash"], parsed["seq"] + 1

    def _write_lines(self, lines: list[str]) -> None:
        text = "".join(line + "\n" for line in lines)
        if self.path:
            # Fail closed: records we cannot persist raise, and their callers do not proceed.
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # noqa: BLE001 — stdout is a copy; the file and the head are the record
            pass

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        while len(self._seen) > SEEN_KEYS:
            self._seen.popitem(last=False)

    def record(self, event: str, key: str | None = None, **fields: Any) -> dict[str, Any] | None:
        """Append one record; with `key`, at most once per key (None when it was already recorded).

        Returns once this record is sealed in the cluster head and written; concurrent calls share
        that work (group commit). Raises whatever stopped its batch."""
        if key is not None:
            if key in self._seen:
                return None  # recorded before (keys are only ever added, or forgotten when very old)
            fields["key"] = key
        body = {"kind": "breakglass.audit", "event": event, **fields}
        # Checked here, not in the batch: a bad record fails its own caller only.
        refuse_credentials(body)
        size = len(json.dumps(body, sort_keys=True, separators=(",", ":"))) + SEAL_OVERHEAD_BYTES
        rec = self._commits.submit(Pending(body, key, size)).record
        if rec is not None and self.on_append is not None:
            # Outside the lock: a slow API call does not serialize every append; AuditHead groups them.
            self.on_append(rec["seq"], rec["hash"])
        return rec

    def record_many(self, event: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append one `event` record per item (no keys), committed in as few batches as fit; returns
        the sealed records. Raises whatever stopped a batch (earlier batches stay recorded)."""
        pendings = []
        for fields in items:
            body = {"kind": "breakglass.audit", "event": event, **fields}
            refuse_credentials(body)
            size = len(json.dumps(body, sort_keys=True, separators=(",", ":"))) + SEAL_OVERHEAD_BYTES
            pendings.append(Pending(body, None, size))
        records = [p.record for p in self._commits.submit_many(pendings) if p.record is not None]
        if records and self.on_append is not None:
            self.on_append(records[-1]["seq"], records[-1]["hash"])
        return records

    def _commit(self, batch: list[Pending]) -> None:
        """Seal `batch` in order, store it in the head with one write, write it with one fsync."""
        with self._lock:
            records = self._seal_in_order(batch)
            if records and self.on_seal is not None:
                try:
                    self.on_seal(records, self._head_keys(batch), self.writer)
                except ChainForked:
                    # Another leader sealed these seqs: continue after its head and seal the batch once
                    # more — without the transitions the head shows were already recorded.
                    self._follow_locked(self.read_head())
                    records = self._seal_in_order(batch)
                    if records:
                        self.on_seal(records, self._head_keys(batch), self.writer)
            if not records:
                return
            self._write_lines([_line(rec) for rec in records])
            last = records[-1]
            self._last_written = last["hash"]
            self._prev, self._seq = last["hash"], last["seq"] + 1
            for pending in batch:
                if pending.record is not None and pending.key is not None:
                    self._remember(pending.key)

    def _seal_in_order(self, batch: list[Pending]) -> list[dict[str, Any]]:
        """Seal every Pending after the chain's end, contiguously; a key recorded before, or earlier
        in the batch, gets no record (None)."""
        prev, seq, batch_keys, records = self._prev, self._seq, set(), []
        for pending in batch:
            if pending.key is not None and (pending.key in self._seen or pending.key in batch_keys):
                pending.record = None
                continue
            pending.record = rec = seal(pending.body, prev, seq, self.hmac_key)
            records.append(rec)
            prev, seq = rec["hash"], seq + 1
            if pending.key is not None:
                batch_keys.add(pending.key)
        return records

    def _head_keys(self, batch: list[Pending]) -> list[str]:
        """The recent transition keys the head carries, this batch's last, so a new leader skips them."""
        recent = list(itertools.islice(reversed(self._seen), RECENT_KEYS))[::-1]
        sealed = [p.key for p in batch if p.record is not None and p.key is not None]
        return (recent + sealed)[-RECENT_KEYS:]


def _line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _after(sealed: list[dict[str, Any]], file_last: tuple[int, str] | None) -> list[dict[str, Any]]:
    """The sealed records that follow the file's last one (the rest of a batch a crash cut short)."""
    if file_last is None:
        return []
    for i, rec in enumerate(sealed):
        if rec.get("prev") == file_last[1] and rec.get("seq") == file_last[0] + 1:
            return sealed[i:]
    return []


SEEN_KEYS = 200_000
