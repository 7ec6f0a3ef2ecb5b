"""Seal-before-write: the audit head (with the record) is stored in the cluster before the record is
written, so a writer that dies in between loses nothing and two writers never fork the chain."""

from __future__ import annotations

import io
import json

from breakglass.audit import AuditLog
from breakglass.audit_chain import verify_lines
from breakglass.audit_head import AuditHead

KEY = b"k" * 32


class ConfigMaps:
    def __init__(self):
        self.data = {}

    def get(self, namespace, name):
        return {"data": dict(self.data)} if self.data else None

    def update(self, namespace, name, mutate):
        self.data = mutate(dict(self.data))
        return self.data


def _log(cms, path=None, **kw):
    head = AuditHead("ns", cms.get, cms.update)
    log = AuditLog(
        str(path) if path else None, KEY, stream=io.StringIO(), on_seal=head.seal_batch, head=head.read_full(), **kw
    )
    log.read_head = head.read_full
    return log


def _lines(*logs):
    """All records of several writers, merged by seq, identical duplicates once."""
    recs = {}
    for log in logs:
        for line in log.stream.getvalue().splitlines():
            rec = json.loads(line)
            assert recs.setdefault(rec["seq"], rec) == rec, f"fork at seq {rec['seq']}"
    return [json.dumps(recs[s]) for s in sorted(recs)]


def test_a_record_sealed_but_not_written_before_a_crash_is_written_at_restart(tmp_path):
    cms, path = ConfigMaps(), tmp_path / "audit.log"
    first = _log(cms, path)
    first.record("requested", key="u:requested")
    # The crash: the head holds seq 1, the file stops at seq 0.
    sealed = first.record("issued", key="u:issued")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    again = _log(cms, path)
    assert again.discrepancy is None
    assert [json.loads(x)["hash"] for x in path.read_text().splitlines()] == [
        json.loads(lines[0])["hash"],
        sealed["hash"],
    ]
    assert again.record("issued", key="u:issued") is None  # its key came back with the head
    again.record("expired", key="u:expired")
    assert verify_lines(path.read_text().splitlines(), KEY)[1] is None


def test_two_writers_never_fork_the_chain_the_second_continues_after_the_first():
    cms = ConfigMaps()
    old_leader, new_leader = _log(cms), _log(cms)
    old_leader.record("requested", key="a:requested")
    new_leader.record("requested", key="b:requested")  # stale position: ChainForked, then catches up
    old_leader.record("issued", key="a:issued")
    merged = _lines(old_leader, new_leader)
    assert [json.loads(x)["seq"] for x in merged] == [0, 1, 2]
    assert verify_lines(merged, KEY)[1] is None


def test_a_new_leader_re_emits_the_last_sealed_record_and_does_not_repeat_its_transitions():
    cms = ConfigMaps()
    dead = _log(cms)
    dead.record("issued", key="u:issued")
    successor = _log(cms)  # started after the seal, before the dead leader could write it
    dead.stream = io.StringIO()  # ... and indeed it never did
    successor.follow_head(successor.read_head())
    assert successor.record("issued", key="u:issued") is None
    successor.record("expired", key="u:expired")
    merged = _lines(dead, successor)
    assert [json.loads(x)["event"] for x in merged] == ["issued", "expired"]
    assert verify_lines(merged, KEY)[1] is None


def test_a_file_that_stops_short_because_another_replica_led_is_no_discrepancy_but_our_own_gap_is(tmp_path):
    cms = ConfigMaps()
    mine, theirs = tmp_path / "a.log", tmp_path / "b.log"
    head = AuditHead("ns", cms.get, cms.update)

    def log(path, writer):
        out = AuditLog(
            str(path), KEY, stream=io.StringIO(), on_seal=head.seal_batch, head=head.read_full(), writer=writer
        )
        out.read_head = head.read_full
        return out

    log(mine, "a").record("requested", key="u:requested")
    log(theirs, "b").record("issued", key="u:issued")  # replica b led meanwhile
    assert log(mine, "a").discrepancy is None
    lines = theirs.read_text().splitlines()
    theirs.write_text("")  # b's own file lost its record: that is a discrepancy
    assert lines and log(theirs, "b").discrepancy is not None


def test_a_seal_whose_answer_was_lost_is_not_recorded_twice_on_retry():
    cms = ConfigMaps()
    log = _log(cms)
    real_update = cms.update
    calls = []

    def lossy_update(namespace, name, mutate):
        out = real_update(namespace, name, mutate)
        if not calls:
            calls.append(1)
            raise TimeoutError("the head was stored, but the answer never came back")
        return out

    log.on_seal.__self__._update = lossy_update
    try:
        log.record("issued", key="u:issued", jti="j1")
    except TimeoutError:
        pass
    assert log.record("issued", key="u:issued", jti="j1") is None  # the retried pass
    log.record("expired", key="u:expired")
    merged = _lines(log)
    assert [json.loads(x)["event"] for x in merged] == ["issued", "expired"]
    assert verify_lines(merged, KEY)[1] is None
