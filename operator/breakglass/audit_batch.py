"""Group commit for the audit log: concurrent appends share one head write and one fsync.

Leader/follower, without a thread of its own: a caller queues its record; the first caller that
finds no commit in flight becomes the committer, takes the queued records (bounded in count and
bytes, so the head stays well under the 1 MiB ConfigMap limit), commits them as one batch and wakes
the others. Records that arrived meanwhile form the next batch, committed by one of their callers.
Every caller returns only once its own batch is committed, and gets the batch's error if it failed.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

MAX_BATCH_RECORDS = 128  # a grant in heavy use is audited at ~1,000+ `used` records/s (bench/audit.py)
# The head holds the batch plus its last record again (`record`) and recent keys: <= ~520 KiB.
MAX_BATCH_BYTES = 256 * 1024
# What sealing adds to a record's body: seq, prev, hash and hmac (three 64-hex digests), as JSON.
SEAL_OVERHEAD_BYTES = 300


class Pending:
    """One append waiting for its batch: the unsealed body, its size in the head and, once its batch
    is committed, its sealed record (None: a transition already recorded) or the batch's error."""

    __slots__ = ("body", "key", "size", "record", "error", "done")

    def __init__(self, body: dict[str, Any], key: str | None, size: int):
        self.body, self.key, self.size = body, key, size
        self.record: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit:
    """`submit` queues a Pending and returns it once committed; `commit(batch)` does the work (seal,
    store, write) for a contiguous run of queued Pendings, in the order they were submitted, and sets
    each one's `record`; whatever it raises is raised to every caller of that batch (fail closed)."""

    def __init__(
        self,
        commit: Callable[[list[Pending]], None],
        max_records: int = MAX_BATCH_RECORDS,
        max_bytes: int = MAX_BATCH_BYTES,
    ):
        self._commit = commit
        self.max_records, self.max_bytes = max_records, max_bytes
        self._cond = threading.Condition()
        self._queue: collections.deque[Pending] = collections.deque()
        self._committing = False

    def submit(self, pending: Pending) -> Pending:
        return self.submit_many([pending])[0]

    def submit_many(self, pendings: list[Pending]) -> list[Pending]:
        """Queue several appends at once (in order) and return once all are committed: a caller with
        many records shares batches with itself instead of one commit per record."""
        with self._cond:
            self._queue.extend(pendings)
        try:
            for pending in pendings:
                self._await(pending)
        except BaseException:
            with self._cond:  # a failed batch fails the call: its other records are not committed later
                for pending in pendings:
                    if not pending.done and pending in self._queue:
                        self._queue.remove(pending)
            raise
        return pendings

    def _await(self, pending: Pending) -> Pending:
        while True:
            with self._cond:
                while self._committing and not pending.done:
                    self._cond.wait()
                if pending.done:
                    if pending.error is not None:
                        raise pending.error
                    return pending
                self._committing = True
                batch = self._take()
            # Outside the lock: callers arriving during the slow commit queue up for the next batch.
            error: BaseException | None = None
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001 — handed to every caller of the batch below
                error = exc
            self._finish(batch, error)
            if error is not None and not isinstance(error, Exception):
                raise error  # KeyboardInterrupt, SystemExit: this thread stops too, its batch was told

    def _take(self) -> list[Pending]:
        """The oldest queued Pendings that fit in one batch (always at least one: a single large
        record is committed alone, as it would be without batching)."""
        batch, size = [], 0
        while self._queue and len(batch) < self.max_records:
            nxt = self._queue[0]
            if batch and size + nxt.size > self.max_bytes:
                break
            batch.append(self._queue.popleft())
            size += nxt.size
        return batch

    def _finish(self, batch: list[Pending], error: BaseException | None) -> None:
        with self._cond:
            for pending in batch:
                if error is not None:
                    pending.record, pending.error = None, error
                pending.done = True
            self._committing = False
            self._cond.notify_all()
