"""The leader's half of the usage trail (usage_records.py): what the sinks folded into the ledger
becomes `used` audit records (record first, then move the ledger's `audited` mark), the leaked-token
alarm (`token-reuse` record and a Warning Event at most once a minute), and a `used-unrecorded` record
when the ledger's ring lost actions before the leader got to them."""

from __future__ import annotations

import copy
import datetime as dt
import io
import itertools
import json

import pytest
from fake_kube import OPERATOR_NS, FakeKube

from breakglass import api
from breakglass.audit import AuditLog
from breakglass.audit_batch import MAX_BATCH_RECORDS, GroupCommit, Pending
from breakglass.audit_chain import verify_lines
from breakglass.domain.durations import to_rfc3339
from breakglass.domain.usage import Action, fold
from breakglass.k8s.client import Conflict
from breakglass.ledger import Ledger, summarize
from breakglass.usage_records import MARK_ATTEMPTS, UsageRecords

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(minutes=10)
UID = "6f1c3a9e-0000-4000-8000-000000000001"
USERNAME = api.grant_username("team-a", "r1", UID)
REQ = {"metadata": {"namespace": "team-a", "name": "r1", "uid": UID}, "spec": {"policy": "prod"}}


def at(seconds: float) -> str:
    return to_rfc3339(T0 + dt.timedelta(seconds=seconds))


class FakeLedger:
    """`update` guarded by resourceVersion (Conflict when it moved), `fetch` from the stored copy."""

    def __init__(self, entry: dict):
        self._rv = itertools.count(10)
        self.stored = dict(copy.deepcopy(entry), resourceVersion=str(next(self._rv)))
        self.writes: list[dict] = []
        self.conflicts = 0

    def entry(self) -> dict:
        return copy.deepcopy(self.stored)

    def move(self, **changes) -> None:
        self.stored = dict(copy.deepcopy(self.stored), **changes, resourceVersion=str(next(self._rv)))

    def fetch(self, uid: str) -> dict | None:
        assert uid == UID
        return copy.deepcopy(self.stored)

    def update(self, entry: dict, **changes) -> dict:
        if entry.get("resourceVersion") != self.stored["resourceVersion"]:
            self.conflicts += 1
            raise Conflict("ledger entry changed meanwhile")
        self.writes.append(copy.deepcopy(changes))
        self.move(**changes)
        return copy.deepcopy(self.stored)


class FakeRecorder:
    def __init__(self):
        self.events: list[tuple[str, str, str, str]] = []

    def event(self, req, type_, reason, message) -> None:
        self.events.append((req["metadata"]["name"], type_, reason, message))


def action(n: int, verb: str = "get", code: int = 200, uri: str = "") -> Action:
    if uri:  # a non-resource request
        return Action(UID, USERNAME, verb, "", "", "", "", uri, code, at(n), f"audit-{n}", f"key-{n}")
    return Action(UID, USERNAME, verb, "pods", "", "team-a", f"p{n}", "", code, at(n), f"audit-{n}", f"key-{n}")


def grant(usage=None, reuse=None) -> dict:
    entry = {
        "request": {"uid": UID, "namespace": "team-a", "name": "r1"},
        "username": USERNAME,
        "policy": "prod",
        "state": "Revoked",
        "jti": "jti-1",
        "activatedAt": at(0),
        "expiresAt": at(3600),
    }
    if usage is not None:
        entry["usage"] = usage
    if reuse is not None:
        entry["reuse"] = reuse
    return entry


class MovingLedger(FakeLedger):
    """Someone writes the entry between every read and our write."""

    def fetch(self, uid: str) -> dict | None:
        got = super().fetch(uid)
        self.move()
        return got


class Setup:
    def __init__(self, tmp_path, entry: dict, ledger_cls: type[FakeLedger] = FakeLedger):
        self.path = tmp_path / "audit.log"
        self.ledger, self.recorder = ledger_cls(entry), FakeRecorder()
        self.audit = AuditLog(str(self.path), b"k" * 32, stream=io.StringIO())
        self.records = UsageRecords(ledger=self.ledger, audit=self.audit, recorder=self.recorder)

    def settle(self, now: dt.datetime = NOW, entry: dict | None = None) -> dict:
        return self.records.settle(REQ, entry if entry is not None else self.ledger.entry(), now)

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def logged(self, event: str | None = None) -> list[dict]:
        recs = [json.loads(line) for line in self.lines()]
        return [r for r in recs if event is None or r["event"] == event]


@pytest.fixture
def setup(tmp_path):
    return lambda entry, **kw: Setup(tmp_path, entry, **kw)


# ------------------------------------------------------------------------------------ used records
def test_unaudited_actions_are_recorded_as_used_with_their_use_seq_and_then_marked_audited(setup):
    usage = dict(fold(None, [action(1), action(2, "create", 201), action(3, "get", 200, uri="/healthz")]), audited=1)
    s = setup(grant(usage))

    stored = s.settle()

    used = s.logged("used")
    assert [r["useSeq"] for r in used] == [2, 3]
    assert {k: used[0][k] for k in ("verb", "resource", "namespace", "name", "code", "time", "uid", "policy")} == {
        "verb": "create",
        "resource": "pods",
        "namespace": "team-a",
        "name": "p2",
        "code": 201,
        "time": at(2),
        "uid": UID,
        "policy": "prod",
    }
    assert used[0]["request"] == {"uid": UID, "namespace": "team-a", "name": "r1"}
    assert used[1]["uri"] == "/healthz" and used[1]["resource"] == "" and "uri" not in used[0]
    assert stored["usage"]["audited"] == 3 and s.ledger.stored["usage"]["audited"] == 3
    assert s.ledger.writes == [{"usage": dict(usage, audited=3)}], "one write: the mark, nothing else"
    assert s.recorder.events == []
    assert verify_lines(s.lines(), b"k" * 32) == (2, None)


@pytest.mark.parametrize(
    "entry",
    [
        grant(),
        grant(usage=dict(fold(None, [action(1), action(2)]), audited=2)),
        grant(usage=fold(None, [])),
        grant(reuse={"counts": {"revoked": 2}, "seen": 2, "reported": 2, "eventAt": at(60)}),
    ],
    ids=["no usage at all", "every action audited", "an empty usage", "every reuse reported"],
)
def test_nothing_to_record_writes_nothing(setup, entry):
    s = setup(entry)
    before = s.ledger.entry()
    assert s.settle(entry=before) is before
    assert s.ledger.writes == [] and s.lines() == [] and s.recorder.events == []


def test_a_second_settle_after_the_mark_records_nothing_again(setup):
    s = setup(grant(usage=fold(None, [action(1), action(2)])))
    s.settle()
    s.settle()
    assert [r["useSeq"] for r in s.logged("used")] == [1, 2]
    assert len(s.ledger.writes) == 1


def test_actions_lost_to_the_ledgers_ring_are_recorded_once_as_used_unrecorded_with_their_count(setup):
    usage = fold(None, [action(n) for n in range(1, 11)])
    usage = dict(usage, audited=2, trail=usage["trail"][-4:])  # a ring cut before the leader caught up
    s = setup(grant(usage))

    s.settle()

    (lost,) = s.logged("used-unrecorded")
    assert (lost["count"], lost["uid"], lost["time"]) == (4, UID, to_rfc3339(NOW))
    assert [r["useSeq"] for r in s.logged("used")] == [7, 8, 9, 10]
    assert [r["event"] for r in s.logged()][0] == "used-unrecorded", "the gap is recorded before what follows it"
    assert s.ledger.stored["usage"]["audited"] == 10


def test_a_sink_writing_meanwhile_makes_the_mark_retry_with_the_fresh_entry_and_nothing_is_lost(setup):
    s = setup(grant(usage=fold(None, [action(1), action(2)])))
    stale = s.ledger.entry()
    s.ledger.move(usage=fold(s.ledger.stored["usage"], [action(3)]))  # a sink folded one more

    stored = s.settle(entry=stale)

    assert s.ledger.conflicts == 1
    assert stored["usage"]["audited"] == 3 and stored["usage"]["requests"] == 3
    assert {r["useSeq"] for r in s.logged("used")} == {1, 2, 3}
    assert verify_lines(s.lines(), b"k" * 32)[1] is None


def test_an_entry_that_keeps_changing_raises_after_a_bounded_number_of_attempts_recording_each_action_once(setup):
    s = setup(grant(usage=fold(None, [action(1)])), ledger_cls=MovingLedger)
    with pytest.raises(Conflict):
        s.settle(entry=dict(s.ledger.entry(), resourceVersion="1"))
    assert s.ledger.conflicts == MARK_ATTEMPTS
    assert [r["useSeq"] for r in s.logged("used")] == [1], "retries write only the mark, never the records again"


class GrowingLedger(FakeLedger):
    """A sink folds two more actions and one more token reuse in right after our first read."""

    grown = False

    def fetch(self, uid: str) -> dict | None:
        if not self.grown:
            self.grown = True
            stored = self.entry()
            more = fold(stored.get("usage"), [action(2), action(3)])
            reuse = dict(stored["reuse"], counts={"revoked": 4}, seen=4)
            self.move(usage=more, reuse=reuse)
        return super().fetch(uid)


def test_a_mark_lost_to_a_sinks_write_is_retried_recording_only_the_new_actions_and_no_second_event(setup):
    s = setup(grant(usage=fold(None, [action(1)]), reuse=dict(REUSED)), ledger_cls=GrowingLedger)
    stale = dict(s.ledger.entry(), resourceVersion="1")  # the view lagged: the first mark write conflicts

    stored = s.settle(entry=stale)

    assert [r["useSeq"] for r in s.logged("used")] == [1, 2, 3]
    assert stored["usage"]["audited"] == 3
    assert len(s.logged("token-reuse")) == 1 and len(s.recorder.events) == 1, "one Event a minute"
    assert stored["reuse"]["reported"] == 3 and stored["reuse"]["eventAt"] == to_rfc3339(NOW)
    assert UsageRecords.reuse_due(stored) == NOW + dt.timedelta(minutes=1), "the 4th is reported after the minute"


def test_an_entry_purged_meanwhile_ends_the_settle_quietly(setup):
    s = setup(grant(usage=fold(None, [action(1)])))
    s.ledger.fetch = lambda uid: None
    entry = dict(s.ledger.entry(), resourceVersion="1")
    assert s.settle(entry=entry) is entry


# ------------------------------------------------------------------------------------ token reuse
REUSED = {"counts": {"revoked": 3}, "seen": 3, "reported": 0, "lastSeenAt": at(500)}


def test_a_token_reuse_is_recorded_once_with_a_warning_event_and_marked_reported(setup):
    s = setup(grant(reuse=REUSED))

    stored = s.settle()

    (rec,) = s.logged("token-reuse")
    assert {k: rec[k] for k in ("uid", "policy", "jti", "state", "count", "counts", "lastSeenAt", "time")} == {
        "uid": UID,
        "policy": "prod",
        "jti": "jti-1",
        "state": "revoked",
        "count": 3,
        "counts": {"revoked": 3},
        "lastSeenAt": at(500),
        "time": to_rfc3339(NOW),
    }
    ((name, type_, reason, message),) = s.recorder.events
    assert (name, type_, reason) == ("r1", "Warning", "RevokedTokenUsed")
    assert "jti jti-1" in message and "3 more time(s)" in message and "leaked" in message
    assert stored["reuse"] == dict(REUSED, reported=3, eventAt=to_rfc3339(NOW))


@pytest.mark.parametrize(
    "counts,reason,state",
    [
        ({"revoked": 1}, "RevokedTokenUsed", "revoked"),
        ({"expired": 2}, "ExpiredTokenUsed", "expired"),
        ({"revoked": 1, "expired": 4}, "ExpiredTokenUsed", "expired"),
        ({"revoked": 4, "expired": 1}, "RevokedTokenUsed", "revoked"),
        ({}, "RevokedTokenUsed", "revoked"),
    ],
    ids=["revoked", "expired", "mostly expired", "mostly revoked", "no per-state counts"],
)
def test_the_reuse_event_names_the_state_seen_most(setup, counts, reason, state):
    s = setup(grant(reuse={"counts": counts, "seen": 5, "reported": 0, "lastSeenAt": at(1)}))
    s.settle()
    assert s.recorder.events[0][2] == reason and s.logged("token-reuse")[0]["state"] == state


def test_a_second_reuse_within_a_minute_waits_and_is_raised_when_the_minute_is_over(setup):
    s = setup(grant(reuse=REUSED))
    s.settle()
    s.ledger.move(reuse=dict(s.ledger.stored["reuse"], seen=5, counts={"revoked": 5}))  # two more sightings

    s.settle(NOW + dt.timedelta(seconds=30))

    assert len(s.recorder.events) == 1 and len(s.logged("token-reuse")) == 1
    assert len(s.ledger.writes) == 1, "nothing written while rate-limited"
    assert UsageRecords.reuse_due(s.ledger.stored) == NOW + dt.timedelta(minutes=1)

    stored = s.settle(NOW + dt.timedelta(minutes=1))

    assert len(s.recorder.events) == 2 and "2 more time(s)" in s.recorder.events[1][3]
    assert s.logged("token-reuse")[1]["count"] == 2
    assert stored["reuse"]["reported"] == 5 and stored["reuse"]["eventAt"] == to_rfc3339(NOW + dt.timedelta(minutes=1))
    assert UsageRecords.reuse_due(stored) is None


def test_a_rate_limited_reuse_still_lets_the_used_records_through(setup):
    reuse = dict(REUSED, reported=1, eventAt=to_rfc3339(NOW - dt.timedelta(seconds=10)))
    s = setup(grant(usage=fold(None, [action(1)]), reuse=reuse))
    stored = s.settle()
    assert [r["useSeq"] for r in s.logged("used")] == [1] and s.logged("token-reuse") == []
    assert stored["usage"]["audited"] == 1 and stored["reuse"]["reported"] == 1


@pytest.mark.parametrize(
    "entry,due",
    [
        (None, None),
        (grant(), None),
        (grant(reuse={"seen": 2, "reported": 2, "eventAt": at(0)}), None),
        (grant(reuse={"seen": 3, "reported": 2}), None),
        (grant(reuse={"seen": 3, "reported": 2, "eventAt": at(0)}), at(60)),
    ],
    ids=[
        "no entry",
        "no reuse",
        "every reuse reported",
        "unreported but never raised: settle raises it now, nothing to wait for",
        "unreported after an event: a minute after that event",
    ],
)
def test_reuse_due(entry, due):
    got = UsageRecords.reuse_due(entry)
    assert (to_rfc3339(got) if got else None) == due


def test_used_records_and_a_reuse_alarm_in_one_settle_share_one_ledger_write(setup):
    s = setup(grant(usage=fold(None, [action(1), action(2)]), reuse=REUSED))
    stored = s.settle()
    assert [r["event"] for r in s.logged()] == ["used", "used", "token-reuse"]
    assert len(s.ledger.writes) == 1 and set(s.ledger.writes[0]) == {"usage", "reuse"}
    assert (stored["usage"]["audited"], stored["reuse"]["reported"]) == (2, 3)


# ------------------------------------------------------------------------------------ the ledger's Summary
def summary_entry(state="Active", usage=None, reuse=None, limits=None) -> dict:
    entry = grant(usage, reuse)
    entry["state"] = state
    if limits is not None:
        entry["limits"] = limits
    return entry


USED = {"requests": 5, "audited": 3, "lastUsedAt": at(300)}
SEEN = {"counts": {"revoked": 2}, "seen": 2, "reported": 1}


@pytest.mark.parametrize(
    "entry,fields",
    [
        (summary_entry(), (0, 0, 0, 0, None, False)),
        (
            summary_entry(usage=USED, reuse=SEEN, limits={"maxRequests": 10, "idleTimeout": "15m"}),
            (5, 3, 2, 1, 300 + 900, True),
        ),
        (
            summary_entry("Revoked", usage=USED, reuse=SEEN, limits={"maxRequests": 10, "idleTimeout": "15m"}),
            (5, 3, 2, 1, None, True),
        ),
        (summary_entry(limits={"idleTimeout": "15m"}), (0, 0, 0, 0, 900, False)),
        (summary_entry(limits={"maxWrites": 1}), (0, 0, 0, 0, None, True)),
        (summary_entry(usage=USED), (5, 3, 0, 0, None, False)),
        (summary_entry(reuse=SEEN), (0, 0, 2, 1, None, False)),
    ],
    ids=[
        "no use, reuse or limits: zeros",
        "an active grant with all of them",
        "a revoked grant has no idle deadline",
        "never used: idle after activation; an idleTimeout alone is not a count limit",
        "maxWrites is a count limit",
        "usage without limits",
        "reuse alone",
    ],
)
def test_summarize_fills_the_usage_fields(entry, fields):
    got = summarize(entry)
    idle = 0.0 if fields[4] is None else (T0 + dt.timedelta(seconds=fields[4])).timestamp()
    uses, audited, reuses, reported, _, limited = fields
    assert (got.uses, got.audited, got.reuses, got.reported) == (uses, audited, reuses, reported)
    assert (got.idle_deadline, got.limited) == (idle, limited)


@pytest.mark.parametrize(
    "usage,reuse,settled",
    [
        (None, None, True),
        ({"requests": 2, "audited": 2}, None, True),
        ({"requests": 2, "audited": 1}, None, False),
        (None, {"seen": 1, "reported": 0}, False),
        ({"requests": 2, "audited": 2}, {"seen": 3, "reported": 3}, True),
    ],
    ids=["nothing used", "every use audited", "a use not audited", "a reuse not reported", "all of it recorded"],
)
def test_usage_settled(usage, reuse, settled):
    assert summarize(summary_entry(usage=usage, reuse=reuse)).usage_settled is settled


def test_the_on_usage_hook_fires_when_use_changes_and_not_for_unrelated_changes_of_a_settled_entry():
    kube = FakeKube()
    ledger = Ledger(kube, OPERATOR_NS)
    ledger._relist()
    seen: list[tuple[int | None, int, int]] = []
    ledger.on_usage = lambda old, new: seen.append((old.uses if old else None, new.uses, new.audited))

    def step(**changes) -> list:
        seen.clear()
        ledger.update(ledger.get(UID), **changes)
        return list(seen)

    ledger.create(summary_entry())
    assert seen == [], "no use, no reuse, no idle deadline: nothing for the leader"
    assert step(usage={"requests": 2, "audited": 0}) == [(0, 2, 0)]
    assert step(usage={"requests": 2, "audited": 2}) == [], "the leader's own mark settles it"
    assert step(cleaned=True) == [], "an unrelated field of a settled entry"
    assert step(usage={"requests": 3, "audited": 2}) == [(2, 3, 2)]
    assert step(cleaned=False) == [(3, 3, 2)], "an unsettled entry is handed over whatever changed"
    assert step(usage={"requests": 3, "audited": 3}) == [], "settled again"
    assert step(state="Revoked") == [(3, 3, 3)], "a state change of a used grant"
    assert step(reuse={"counts": {"revoked": 1}, "seen": 1, "reported": 0}) == [(3, 3, 3)]


def test_the_on_usage_hook_fires_for_an_idle_deadline_alone():
    ledger = Ledger(FakeKube(), OPERATOR_NS)
    ledger._relist()
    seen = []
    ledger.on_usage = lambda old, new: seen.append(new.idle_deadline)
    ledger.create(summary_entry(limits={"idleTimeout": "15m"}))
    assert seen == [(T0 + dt.timedelta(minutes=15)).timestamp()]


# ------------------------------------------------------------------------------------ batched appends
def test_record_many_chains_in_order_in_batches_of_at_most_max_batch_records_and_publishes_the_last(tmp_path):
    published: list[tuple[int, str]] = []
    log = AuditLog(
        str(tmp_path / "audit.log"), b"k" * 32, stream=io.StringIO(), on_append=lambda *a: published.append(a)
    )
    log.record("issued", uid=UID)
    sizes: list[int] = []
    commit = log._commits._commit

    def counted(batch):
        sizes.append(len(batch))
        commit(batch)

    log._commits._commit = counted
    count = 2 * MAX_BATCH_RECORDS + 6

    records = log.record_many("used", [{"uid": UID, "useSeq": n} for n in range(1, count + 1)])

    assert sizes == [MAX_BATCH_RECORDS, MAX_BATCH_RECORDS, 6]
    assert [r["useSeq"] for r in records] == list(range(1, count + 1))
    assert [r["seq"] for r in records] == list(range(1, count + 1))
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))
    assert published[-1] == (records[-1]["seq"], records[-1]["hash"]) and len(published) == 2
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert verify_lines(lines, b"k" * 32) == (count + 1, None)


def test_record_many_of_nothing_writes_and_publishes_nothing(tmp_path):
    published = []
    log = AuditLog(str(tmp_path / "audit.log"), stream=io.StringIO(), on_append=lambda *a: published.append(a))
    assert log.record_many("used", []) == [] and published == []
    assert not (tmp_path / "audit.log").exists()


def test_record_many_refuses_a_credential_before_anything_is_written(tmp_path):
    log = AuditLog(str(tmp_path / "audit.log"), stream=io.StringIO())
    with pytest.raises(ValueError, match="credentials"):
        log.record_many("used", [{"uid": UID}, {"uid": UID, "token": "eyJ..."}])
    assert not (tmp_path / "audit.log").exists()


def make_pendings(count: int, size: int = 10) -> list[Pending]:
    return [Pending({"n": n}, None, size) for n in range(count)]


@pytest.mark.parametrize(
    "count,size,max_bytes,batches",
    [
        (1, 10, 1000, [1]),
        (MAX_BATCH_RECORDS, 10, 10_000, [MAX_BATCH_RECORDS]),
        (MAX_BATCH_RECORDS + 1, 10, 10_000, [MAX_BATCH_RECORDS, 1]),
        (10, 100, 250, [2, 2, 2, 2, 2]),
        (3, 500, 250, [1, 1, 1]),
    ],
    ids=[
        "one record: one batch",
        "exactly a full batch",
        "one more than a batch: a second batch",
        "split by bytes",
        "a record larger than the byte bound goes alone",
    ],
)
def test_submit_many_commits_in_order_in_bounded_batches(count, size, max_bytes, batches):
    sizes, order = [], []

    def commit(batch):
        sizes.append(len(batch))
        for p in batch:
            order.append(p.body["n"])
            p.record = {"n": p.body["n"]}

    group = GroupCommit(commit, max_bytes=max_bytes)
    done = group.submit_many(make_pendings(count, size))
    assert sizes == batches and order == list(range(count))
    assert all(p.done and p.record == {"n": p.body["n"]} for p in done)


def test_submit_many_raises_the_error_of_a_failed_batch_and_the_earlier_batches_stay_committed():
    committed = []

    def commit(batch):
        if committed:
            raise OSError("disk full")
        committed.extend(p.body["n"] for p in batch)

    pendings = make_pendings(MAX_BATCH_RECORDS + 3)
    with pytest.raises(OSError, match="disk full"):
        GroupCommit(commit).submit_many(pendings)
    assert committed == list(range(MAX_BATCH_RECORDS))
    assert pendings[MAX_BATCH_RECORDS].error is not None and pendings[MAX_BATCH_RECORDS].record is None
