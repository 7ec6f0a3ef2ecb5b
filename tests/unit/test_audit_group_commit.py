"""Group commit: concurrent audit appends share one head write and one fsync, and keep every guarantee
of seal-before-write (each caller returns only once its record is sealed and written, failures raise
in every caller of the batch, a crash between the head write and the file write loses nothing).

Real files on disk; the head ConfigMap is an in-memory fake whose writes can be held at a gate (so
callers queue up behind an in-flight commit, deterministically) or made to fail."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from breakglass.audit import AuditLog
from breakglass.audit_batch import MAX_BATCH_RECORDS, GroupCommit, Pending
from breakglass.audit_chain import head_records, verify_against_head, verify_lines
from breakglass.audit_head import AuditHead

KEY = b"k" * 32


class ApiDown(Exception):
    pass


class Crash(Exception):
    """Stands for the process dying right after the head write."""


class GatedConfigMap:
    """get/update_configmap with Kube's signatures. `hold(n)` stops the n-th write attempt (0-based)
    before it is applied until `release(n)`; `fail(n)` makes the n-th attempt raise ApiDown."""

    def __init__(self, delay: float = 0.0):
        self.data: dict[str, str] = {}
        self.delay, self.attempts, self.heads = delay, 0, []
        self._gates: dict[int, tuple[threading.Event, threading.Event]] = {}
        self._failing: set[int] = set()
        self._lock = threading.Lock()

    def hold(self, attempt: int) -> None:
        self._gates[attempt] = (threading.Event(), threading.Event())

    def wait_held(self, attempt: int) -> None:
        assert self._gates[attempt][0].wait(5), f"write {attempt} never came"

    def release(self, attempt: int) -> None:
        self._gates[attempt][1].set()

    def fail(self, attempt: int) -> None:
        self._failing.add(attempt)

    def get(self, namespace, name):
        with self._lock:
            return {"data": dict(self.data)} if self.data else None

    def update(self, namespace, name, mutate):
        with self._lock:
            attempt, self.attempts = self.attempts, self.attempts + 1
        if attempt in self._gates:
            arrived, go = self._gates[attempt]
            arrived.set()
            assert go.wait(5), f"write {attempt} was never released"
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            if attempt in self._failing:
                raise ApiDown("apiserver unavailable")
            self.data = mutate(dict(self.data))
            self.heads.append(self.data["head.json"])
            return self.data

    def head(self) -> dict:
        return json.loads(self.data["head.json"])


def _log(cms: GatedConfigMap, path=None, writer="a", on_seal=None) -> AuditLog:
    head = AuditHead("ns", cms.get, cms.update)
    log = AuditLog(
        str(path) if path else None,
        KEY,
        stream=io.StringIO(),
        on_seal=on_seal or head.seal_batch,
        head=head.read_full(),
        writer=writer,
    )
    log.read_head = head.read_full
    return log


def _wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


class Callers:
    """Threads calling `log.record`, started one at a time and queued in that order; each one's
    outcome (its record, None, or the exception it got) is kept under its name."""

    def __init__(self, log: AuditLog):
        self.log, self.outcome, self.threads = log, {}, []

    def start(self, name: str, key: str | None = None, queued: bool = True, **fields) -> None:
        before = len(self.log._commits._queue)

        def call():
            try:
                self.outcome[name] = self.log.record("issued", key=key, caller=name, **fields)
            except Exception as exc:  # noqa: BLE001 — the test looks at it
                self.outcome[name] = exc

        thread = threading.Thread(target=call)
        self.threads.append(thread)
        thread.start()
        if queued:  # waiting behind the commit in flight, in submission order
            _wait_until(lambda: len(self.log._commits._queue) > before, f"{name} is queued")

    def join(self) -> dict:
        for thread in self.threads:
            thread.join(5)
            assert not thread.is_alive()
        return self.outcome


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_concurrent_records_share_few_head_writes_and_form_one_contiguous_verified_chain(tmp_path):
    cms, path = GatedConfigMap(delay=0.005), tmp_path / "audit.log"
    log = _log(cms, path)
    results = {}

    def call(n):
        results[n] = log.record("issued", key=f"u{n}:issued", n=n)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[n]["n"] == n for n in range(64)), "every caller got its own record"
    assert sorted(rec["seq"] for rec in results.values()) == list(range(64))
    assert cms.attempts < 32, f"{cms.attempts} head writes for 64 records: commits were not grouped"
    lines = _lines(path)
    assert [json.loads(line)["seq"] for line in lines] == list(range(64))
    assert verify_against_head(lines, cms.head(), KEY) == (64, None)
    assert all(json.loads(line) == results[json.loads(line)["n"]] for line in lines)


def test_a_failed_head_write_raises_in_every_caller_of_its_batch_and_the_retry_loses_nothing(tmp_path):
    cms, path = GatedConfigMap(), tmp_path / "audit.log"
    log = _log(cms, path)
    cms.hold(0)
    cms.fail(1)
    callers = Callers(log)
    callers.start("first", key="first:issued", queued=False)
    cms.wait_held(0)
    for name in ("b", "c", "d", "e"):
        callers.start(name, key=f"{name}:issued")
    cms.release(0)
    outcome = callers.join()
    assert outcome["first"]["seq"] == 0
    assert all(isinstance(outcome[name], ApiDown) for name in "bcde"), outcome
    assert len(_lines(path)) == 1, "no record of the failed batch is written"
    assert cms.head()["seq"] == 0

    retried = [log.record("issued", key=f"{name}:issued", caller=name) for name in "bcde"]
    assert [rec["seq"] for rec in retried] == [1, 2, 3, 4]
    lines = _lines(path)
    assert [json.loads(line)["caller"] for line in lines] == ["first", "b", "c", "d", "e"]
    assert verify_against_head(lines, cms.head(), KEY) == (5, None)


@pytest.mark.parametrize("written", [0, 2], ids=["none of the batch was written", "part of the batch was written"])
def test_a_crash_after_the_head_write_is_recovered_at_restart_with_every_record_of_the_batch(tmp_path, written):
    cms, path = GatedConfigMap(), tmp_path / "audit.log"
    head = AuditHead("ns", cms.get, cms.update)
    crash = threading.Event()

    def seal_then_crash(records, keys, writer):
        head.seal_batch(records, keys, writer)
        if crash.is_set():
            raise Crash("died after the head write, before the file write")

    log = _log(cms, path, on_seal=seal_then_crash)
    log.record("requested", key="u:requested")
    cms.hold(1)
    callers = Callers(log)
    callers.start("first", key="a:issued", queued=False)
    cms.wait_held(1)
    for name in ("b", "c", "d"):
        callers.start(name, key=f"{name}:issued")
    crash.set()
    cms.release(1)
    callers.join()
    sealed = head_records(cms.head())
    assert [rec["caller"] for rec in sealed] == ["b", "c", "d"], "the head carries the whole batch"
    assert cms.head()["record"] == sealed[-1], "and still its last record where readers expect it"
    with path.open("a") as fh:  # the crash cut the batch's write short
        fh.writelines(json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n" for rec in sealed[:written])

    again = _log(cms, path)
    assert again.discrepancy is None
    lines = _lines(path)
    assert [json.loads(line).get("caller") for line in lines] == [None, "first", "b", "c", "d"]
    assert verify_against_head(lines, cms.head(), KEY) == (5, None)
    assert again.record("issued", key="c:issued") is None, "the batch's keys came back with the head"


def test_a_new_leader_re_emits_every_record_of_the_last_batch():
    cms = GatedConfigMap()
    dead = _log(cms, writer="dead")
    cms.hold(0)
    callers = Callers(dead)
    callers.start("first", key="a:issued", queued=False)
    cms.wait_held(0)
    for name in ("b", "c"):
        callers.start(name, key=f"{name}:issued")
    cms.release(0)
    callers.join()
    successor = _log(cms, writer="successor")
    successor.follow_head(successor.read_head())
    assert [json.loads(line)["caller"] for line in successor.stream.getvalue().splitlines()] == ["b", "c"]
    assert successor.record("issued", key="b:issued") is None


def test_a_key_repeated_within_one_batch_is_recorded_once_and_the_repeat_gets_none(tmp_path):
    cms, path = GatedConfigMap(), tmp_path / "audit.log"
    log = _log(cms, path)
    cms.hold(0)
    callers = Callers(log)
    callers.start("first", key="a:issued", queued=False)
    cms.wait_held(0)
    callers.start("b", key="b:issued")
    callers.start("b again", key="b:issued")
    callers.start("a again", key="a:issued")
    callers.start("c", key="c:issued")
    cms.release(0)
    outcome = callers.join()
    assert outcome["b again"] is None and outcome["a again"] is None
    assert [outcome[name]["seq"] for name in ("first", "b", "c")] == [0, 1, 2]
    assert cms.attempts == 2
    assert verify_against_head(_lines(path), cms.head(), KEY) == (3, None)


def test_a_batch_that_finds_the_chain_forked_follows_the_head_and_reseals_the_whole_batch(tmp_path):
    cms, path = GatedConfigMap(), tmp_path / "stale.log"
    stale, other = _log(cms, path, writer="stale"), _log(cms, writer="other")
    cms.hold(0)
    cms.hold(1)
    callers = Callers(stale)
    callers.start("first", key="a:issued", queued=False)
    cms.wait_held(0)
    for name in ("b", "x", "c"):
        callers.start(name, key=f"{name}:issued")
    cms.release(0)
    cms.wait_held(1)  # the batch b, x, c is sealed at seqs 1..3 and its head write is in flight
    other.follow_head(other.read_head())  # meanwhile another leader takes over and records two
    other.record("issued", key="x:issued", caller="x by the other leader")
    other.record("issued", key="y:issued", caller="y")
    cms.release(1)
    outcome = callers.join()
    assert outcome["x"] is None, "the other leader recorded that transition"
    assert [outcome[name]["seq"] for name in ("first", "b", "c")] == [0, 3, 4]
    assert cms.head()["seq"] == 4 and [r["caller"] for r in head_records(cms.head())] == ["b", "c"]
    # The stale leader's file re-emits the head it followed (y); merged by seq the two form one chain.
    stale_lines = _lines(path)
    assert [json.loads(line)["caller"] for line in stale_lines] == ["first", "y", "b", "c"]
    merged = {}
    for line in stale_lines + other.stream.getvalue().splitlines():
        rec = json.loads(line)
        assert merged.setdefault(rec["seq"], rec) == rec, f"fork at seq {rec['seq']}"
    lines = [json.dumps(merged[seq]) for seq in sorted(merged)]
    assert verify_against_head(lines, cms.head(), KEY) == (5, None)


def test_a_batch_holds_at_most_max_batch_records_records(tmp_path):
    cms, path = GatedConfigMap(), tmp_path / "audit.log"
    log = _log(cms, path)
    cms.hold(0)
    callers = Callers(log)
    callers.start("first", queued=False)
    cms.wait_held(0)
    for n in range(MAX_BATCH_RECORDS + 8):
        callers.start(f"r{n}")
    cms.release(0)
    callers.join()
    assert [len(head_records(json.loads(raw))) for raw in cms.heads] == [1, MAX_BATCH_RECORDS, 8]
    assert verify_against_head(_lines(path), cms.head(), KEY) == (MAX_BATCH_RECORDS + 9, None)


def test_large_records_are_split_into_batches_that_keep_the_head_well_under_one_mebibyte(tmp_path):
    cms, path = GatedConfigMap(), tmp_path / "audit.log"
    log = _log(cms, path)
    cms.hold(0)
    callers = Callers(log)
    callers.start("first", queued=False)
    cms.wait_held(0)
    for n in range(6):
        callers.start(f"big{n}", reason="x" * 100_000)
    cms.release(0)
    callers.join()
    assert max(len(raw) for raw in cms.heads) < 600 * 1024
    assert [len(head_records(json.loads(raw))) for raw in cms.heads] == [1, 2, 2, 2]
    assert verify_lines(_lines(path), KEY) == (7, None)


def test_a_record_that_cannot_be_sealed_fails_its_own_caller_only(tmp_path):
    log = _log(GatedConfigMap(), tmp_path / "audit.log")
    with pytest.raises(ValueError, match="credentials"):
        log.record("issued", token="eyJ...")
    with pytest.raises(TypeError):
        log.record("issued", when=object())
    assert log.record("issued", key="u:issued")["seq"] == 0


def test_a_head_with_only_its_last_record_is_still_read():
    cms = GatedConfigMap()
    _log(cms).record("issued", key="u:issued")
    old_style = cms.head()
    assert "records" not in old_style, "a batch of one is stored as before"
    assert head_records(old_style) == [old_style["record"]]
    assert head_records(dict(old_style, records=[{"seq": 7}])) == [old_style["record"]], "a bad batch is ignored"


def test_an_interrupted_committer_still_releases_its_batch_and_the_next_caller_commits():
    calls = []

    def commit(batch):
        calls.append([p.body["n"] for p in batch])
        if len(calls) == 1:
            raise KeyboardInterrupt

    group = GroupCommit(commit)
    with pytest.raises(KeyboardInterrupt):
        group.submit(Pending({"n": 0}, None, 1))
    assert group.submit(Pending({"n": 1}, None, 1)).error is None
    assert calls == [[0], [1]]
