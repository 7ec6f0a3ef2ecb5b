#!/usr/bin/env python3
"""Audit append throughput with a slow cluster head (not a test; a micro benchmark).

  N threads append audit records to one AuditLog (file + fsync, HMAC) sealed in an in-memory
  ConfigMap whose every write sleeps `--write-ms` (a compare-and-swap round trip to the apiserver).
  Reports records/s and how many head writes they cost.

Usage: .venv/bin/python bench/audit_commit.py [--threads 16] [--records 800] [--write-ms 5]
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from breakglass.audit import AuditLog  # noqa: E402
from breakglass.audit_chain import verify_lines  # noqa: E402
from breakglass.audit_head import AuditHead  # noqa: E402


class SlowConfigMap:
    """get/update_configmap with Kube's signatures; each write takes `delay` seconds, like an API call."""

    def __init__(self, delay: float):
        self.delay, self.data, self.writes = delay, {}, 0
        self._lock = threading.Lock()

    def get(self, namespace, name):
        with self._lock:
            return {"data": dict(self.data)} if self.data else None

    def update(self, namespace, name, mutate):
        time.sleep(self.delay)
        with self._lock:
            self.data = mutate(dict(self.data))
            self.writes += 1
            return self.data


def run(threads: int, records: int, write_ms: float) -> None:
    cms = SlowConfigMap(write_ms / 1000)
    head = AuditHead("ns", cms.get, cms.update)
    # Before group commit the hook sealed one record; after it, a batch (seal_batch).
    on_seal = getattr(head, "seal_batch", head.seal_record)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "audit.log"
        log = AuditLog(str(path), b"k" * 32, stream=io.StringIO(), on_seal=on_seal, head=head.read_full())
        per_thread = records // threads

        def append(worker: int) -> None:
            for i in range(per_thread):
                log.record("issued", key=f"{worker}-{i}:issued", request={"name": f"r{worker}-{i}"}, jti=f"j{i}")

        workers = [threading.Thread(target=append, args=(w,)) for w in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        count, broken = verify_lines(path.read_text().splitlines(), b"k" * 32)
    total = per_thread * threads
    assert broken is None and count == total, (count, broken)
    print(
        f"{threads} threads, {total} records, head write {write_ms:g} ms: "
        f"{total / elapsed:.0f} records/s, {cms.writes} head writes ({total / cms.writes:.1f} records/write)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--records", type=int, default=800)
    parser.add_argument("--write-ms", type=float, default=5.0)
    args = parser.parse_args()
    run(args.threads, args.records, args.write_ms)


if __name__ == "__main__":
    main()
