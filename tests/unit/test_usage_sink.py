"""The audit sink (usage_sink.py): a kube-apiserver EventList is parsed all or nothing, its grant
actions are folded into each grant's ledger entry with resourceVersion-guarded writes (retried on
conflict, repeats recognised by auditID), batches in flight are bounded, a grant past its count limit
is refused at once, and TokenReview's sightings of ended tokens are flushed into the entry."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import json
import threading
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from breakglass import api, metrics, usage_sink
from breakglass.domain.durations import to_rfc3339
from breakglass.domain.usage import Action, fold
from breakglass.endpoints import Endpoints, reuse_state
from breakglass.k8s.client import Conflict
from breakglass.tokens.jwt_tokens import VerifyResult
from breakglass.usage_sink import BadBatch, UsageSink, add_reuse, parse_batch

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
UID, OTHER = "6f1c3a9e-0000-4000-8000-000000000001", "6f1c3a9e-0000-4000-8000-000000000002"


def username(uid: str, name: str = "r1") -> str:
    return api.grant_username("team-a", name, uid)


def at(seconds: float) -> str:
    return to_rfc3339(T0 + dt.timedelta(seconds=seconds))


class FakeLedger:
    """The part of `Ledger` the sink uses. `stored` is the API server's copy; `view` is the watch-fed
    copy `get` answers from (it may lag: `move` changes only the stored copy, as another replica's
    write the watch has not delivered yet). `update` conflicts when the resourceVersion moved."""

    def __init__(self, *entries: dict):
        self.stored: dict[str, dict] = {}
        self.view: dict[str, dict] = {}
        self.conflicts = self.fetches = 0
        self.writes: list[tuple[str, dict]] = []
        self.fail_next: list[BaseException] = []  # raised by the next updates, in order
        self._rv = itertools.count(10)
        for entry in entries:
            self.put(entry)

    def put(self, entry: dict) -> dict:
        stored = dict(copy.deepcopy(entry), resourceVersion=str(next(self._rv)))
        uid = stored["request"]["uid"]
        self.stored[uid], self.view[uid] = stored, copy.deepcopy(stored)
        return copy.deepcopy(stored)

    def move(self, uid: str, **changes) -> None:
        self.stored[uid] = dict(copy.deepcopy(self.stored[uid]), **changes, resourceVersion=str(next(self._rv)))

    def get(self, uid: str) -> dict | None:
        return copy.deepcopy(self.view.get(uid))

    def fetch(self, uid: str) -> dict | None:
        self.fetches += 1
        return copy.deepcopy(self.stored.get(uid))

    def update(self, entry: dict, **changes) -> dict:
        if self.fail_next:
            raise self.fail_next.pop(0)
        uid = entry["request"]["uid"]
        current = self.stored.get(uid)
        if current is None or current["resourceVersion"] != entry.get("resourceVersion"):
            self.conflicts += 1
            raise Conflict(f"ledger entry of {uid} changed meanwhile")
        self.writes.append((uid, copy.deepcopy(changes)))
        return self.put(dict(entry, **changes))


def ledger_entry(uid: str = UID, name: str = "r1", state: str = "Active", limits=None, usage=None) -> dict:
    entry = {
        "request": {"uid": uid, "namespace": "team-a", "name": name},
        "username": username(uid, name),
        "policy": "prod",
        "state": state,
        "jti": f"jti-{uid[-1]}",
        "activatedAt": at(0),
        "expiresAt": at(3600),
    }
    if limits is not None:
        entry["limits"] = limits
    if usage is not None:
        entry["usage"] = usage
    return entry


def action(n: int, uid: str = UID, verb: str = "get", code: int = 200, name: str = "r1") -> Action:
    return Action(
        uid,
        username(uid, name),
        verb,
        "pods",
        "",
        "team-a",
        f"p{n}",
        "",
        code,
        at(n),
        f"audit-{uid[-1]}-{n}",
        f"key-{uid[-1]}-{n}",
    )


def audit_event(n: int, uid: str = UID, stage: str = "ResponseComplete", user: dict | None = None) -> dict:
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": f"audit-{uid[-1]}-{n}",
        "stage": stage,
        "requestURI": f"/api/v1/namespaces/team-a/pods/p{n}",
        "verb": "get",
        "user": user or {"username": username(uid), "groups": api.grant_groups("prod")},
        "objectRef": {"resource": "pods", "namespace": "team-a", "name": f"p{n}"},
        "responseStatus": {"code": 200},
        "stageTimestamp": at(n),
    }


def event_list(*items, kind="EventList", api_version="audit.k8s.io/v1") -> bytes:
    return json.dumps({"kind": kind, "apiVersion": api_version, "items": list(items)}).encode()


@pytest.fixture
def sinks():
    made: list[UsageSink] = []

    def make(ledger: FakeLedger, **kw) -> UsageSink:
        sink = UsageSink(ledger, clock=lambda: T0 + dt.timedelta(minutes=5), **kw)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.stop()


def trail_ids(entry: dict) -> list[str]:
    return [i["auditID"] for i in entry["usage"]["trail"]]


# ------------------------------------------------------------------------------------ parse_batch
def test_a_valid_event_list_gives_its_grant_actions_and_counts_the_rest_as_ignored():
    body = event_list(
        audit_event(1),
        audit_event(2, stage="RequestReceived"),
        audit_event(3, user={"username": "alice", "groups": ["system:authenticated"]}),
        audit_event(4, uid=OTHER),
    )
    actions, ignored, oldest = parse_batch(body)
    assert [(a.uid, a.name) for a in actions] == [(UID, "p1"), (OTHER, "p4")]
    assert ignored == 2
    assert oldest == (T0 + dt.timedelta(seconds=1)).timestamp()


def test_an_event_list_without_grant_actions_has_no_oldest_time():
    assert parse_batch(event_list()) == ([], 0, None)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        event_list(kind="Event"),
        json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1"}).encode(),
        json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": {}}).encode(),
        event_list(api_version="v1"),
        json.dumps({"kind": "EventList", "items": []}).encode(),
        event_list(audit_event(1), {"stage": "ResponseComplete"}, audit_event(2)),
        event_list(audit_event(1), dict(audit_event(2), stageTimestamp="yesterday")),
    ],
    ids=[
        "not JSON",
        "not text",
        "a JSON array",
        "another kind",
        "no items",
        "items that are not a list",
        "another apiVersion",
        "no apiVersion",
        "one event without user or verb among good ones",
        "one grant event with an unreadable time",
    ],
)
def test_a_bad_batch_is_refused_whole(body):
    with pytest.raises(BadBatch):
        parse_batch(body)


def test_the_sink_answers_400_to_a_bad_batch_and_records_nothing(sinks):
    ledger = FakeLedger(ledger_entry())
    sink = sinks(ledger)
    status, message, actions = sink.parse(event_list(audit_event(1), {"user": {}}))
    assert (status, actions) == (400, []) and "items[1]" in message
    assert ledger.writes == []


def test_the_sink_answers_200_with_the_actions_of_a_good_batch(sinks):
    status, _, actions = sinks(FakeLedger()).parse(event_list(audit_event(1), audit_event(2)))
    assert status == 200 and [a.name for a in actions] == ["p1", "p2"]


# ------------------------------------------------------------------------------------ record
def test_a_batch_is_folded_into_each_grants_entry(sinks):
    ledger = FakeLedger(ledger_entry(UID), ledger_entry(OTHER))
    sinks(ledger).record([action(1), action(2, OTHER, "create", 201), action(3)])
    mine, other = ledger.stored[UID]["usage"], ledger.stored[OTHER]["usage"]
    assert (mine["requests"], mine["writes"], [i["seq"] for i in mine["trail"]]) == (2, 0, [1, 2])
    assert (other["requests"], other["writes"], other["lastUsedAt"]) == (1, 1, at(2))
    assert len(ledger.writes) == 2, "one guarded write per grant of the batch"


def test_a_conflict_is_retried_with_the_fetched_entry_and_nothing_is_lost(sinks):
    ledger = FakeLedger(ledger_entry())
    sink = sinks(ledger)
    sink.record([action(1)])
    other_replica = fold(ledger.stored[UID]["usage"], [action(2)])
    ledger.move(UID, usage=other_replica)  # another replica's write our view has not seen yet

    sink.record([action(3, verb="delete")])

    stored = ledger.stored[UID]
    assert ledger.conflicts == 1
    assert stored["usage"]["requests"] == 3 and stored["usage"]["writes"] == 1
    assert trail_ids(stored) == ["audit-1-1", "audit-1-2", "audit-1-3"]
    assert [i["seq"] for i in stored["usage"]["trail"]] == [1, 2, 3]


def test_the_same_batch_recorded_twice_counts_once_and_the_repeat_writes_nothing(sinks):
    ledger = FakeLedger(ledger_entry())
    sink = sinks(ledger)
    batch = [action(1, verb="create", code=201), action(2)]
    sink.record(batch)
    writes = len(ledger.writes)
    sink.record(batch)  # kube-apiserver's resend after a lost 200
    assert ledger.stored[UID]["usage"]["requests"] == 2 and ledger.stored[UID]["usage"]["writes"] == 1
    assert len(ledger.writes) == writes


def test_a_resent_batch_with_one_new_action_adds_only_that_one(sinks):
    ledger = FakeLedger(ledger_entry())
    sink = sinks(ledger)
    sink.record([action(1), action(2)])
    sink.record([action(1), action(2), action(3)])
    assert trail_ids(ledger.stored[UID]) == ["audit-1-1", "audit-1-2", "audit-1-3"]


def test_actions_of_a_grant_the_ledger_does_not_hold_are_ignored(sinks):
    ledger = FakeLedger(ledger_entry(UID))
    ignored = metrics.audit_events_total.labels("ignored")
    before = ignored._value.get()
    sinks(ledger).record([action(1, OTHER), action(2, OTHER)])
    assert ledger.writes == [] and OTHER not in ledger.stored
    assert ignored._value.get() == before + 2


def test_actions_whose_username_differs_from_the_grants_are_ignored(sinks):
    ledger = FakeLedger(ledger_entry(UID, name="r1"))
    sinks(ledger).record([action(1, UID, name="someone-else")])  # same uid, another name: not our identity
    assert ledger.writes == [] and "usage" not in ledger.stored[UID]


def test_an_entry_that_keeps_changing_fails_the_batch_but_the_other_grants_are_stored(sinks):
    class Moving(FakeLedger):
        def fetch(self, uid):
            got = super().fetch(uid)
            if uid == UID:
                self.move(uid)  # someone writes it between every read and our write
            return got

    ledger = Moving(ledger_entry(UID), ledger_entry(OTHER))
    ledger.move(UID)  # the view is stale from the start
    with pytest.raises(Conflict):
        sinks(ledger).record([action(1, UID), action(2, OTHER)])
    assert ledger.conflicts == usage_sink.WRITE_ATTEMPTS
    assert "usage" not in ledger.stored[UID]
    assert ledger.stored[OTHER]["usage"]["requests"] == 1


def test_a_write_error_is_raised_so_the_batch_is_not_acknowledged(sinks):
    ledger = FakeLedger(ledger_entry())
    ledger.fail_next.append(ConnectionResetError("API server gone"))
    sink = sinks(ledger)
    with pytest.raises(ConnectionResetError):
        sink.record([action(1)])
    sink.record([action(1)])  # kube-apiserver sends it again
    assert ledger.stored[UID]["usage"]["requests"] == 1


# ------------------------------------------------------------------------------------ admission and exhaustion
def test_admit_refuses_batches_beyond_max_inflight_and_counts_their_events_as_dropped(sinks):
    sink = sinks(FakeLedger(), max_inflight=2)
    dropped = metrics.audit_events_total.labels("dropped")
    before = dropped._value.get()
    assert [sink.admit(3), sink.admit(3), sink.admit(5)] == [True, True, False]
    assert dropped._value.get() == before + 5
    sink.release()
    assert sink.admit(1) is True and sink.admit(1) is False


@pytest.mark.parametrize(
    "state,limits,uses,exhausted",
    [
        ("Active", {"maxRequests": 2}, 1, False),
        ("Active", {"maxRequests": 2}, 2, True),
        ("Active", {"maxWrites": 1}, 2, False),
        ("Active", {"idleTimeout": "10s"}, 2, False),
        ("Revoked", {"maxRequests": 2}, 2, False),
        ("Active", None, 50, False),
    ],
    ids=[
        "under maxRequests: still allowed",
        "maxRequests reached on an active grant: refused at once",
        "reads do not exhaust maxWrites",
        "idleness is the leader's to enforce, not an exhaustion",
        "a grant no longer active is not marked",
        "no limits: never",
    ],
)
def test_exhausted_after_crossing_a_count_limit_on_an_active_grant(sinks, state, limits, uses, exhausted):
    ledger = FakeLedger(ledger_entry(state=state, limits=limits))
    sink = sinks(ledger)
    sink.record([action(n) for n in range(1, uses + 1)])
    assert sink.exhausted(UID) is exhausted
    assert sink.exhausted(OTHER) is False


def test_a_write_past_max_writes_exhausts_the_grant(sinks):
    ledger = FakeLedger(ledger_entry(limits={"maxWrites": 1}))
    sink = sinks(ledger)
    sink.record([action(1, verb="delete", code=403)])
    assert not sink.exhausted(UID), "a denied write is not a write"
    sink.record([action(2, verb="delete", code=200)])
    assert sink.exhausted(UID)


# ------------------------------------------------------------------------------------ token reuse
def test_note_reuse_accumulates_sightings_per_grant_and_state(sinks):
    sink = sinks(FakeLedger())
    for state in ("revoked", "revoked", "expired"):
        sink.note_reuse(UID, state)
    sink.note_reuse(OTHER, "expired")
    assert sink._reuse == {UID: {"revoked": 2, "expired": 1}, OTHER: {"expired": 1}}


def test_the_reuse_flush_writes_counts_total_and_when_last_seen_into_the_entry(sinks):
    ledger = FakeLedger(ledger_entry(state="Revoked", usage=fold(None, [action(1)])))
    sink = sinks(ledger)
    sink._write(UID, [], {"revoked": 2})
    sink._write(UID, [], {"expired": 1, "revoked": 1})
    reuse = ledger.stored[UID]["reuse"]
    assert reuse == {
        "counts": {"revoked": 3, "expired": 1},
        "seen": 4,
        "reported": 0,
        "lastSeenAt": to_rfc3339(T0 + dt.timedelta(minutes=5)),
    }
    assert ledger.stored[UID]["usage"]["requests"] == 1, "a reuse write leaves the usage alone"


def test_a_reuse_of_a_purged_grant_writes_nothing(sinks):
    ledger = FakeLedger()
    sinks(ledger)._write(UID, [], {"revoked": 1})
    assert ledger.writes == []


def test_the_reuse_flusher_thread_stores_sightings_and_requeues_a_failed_write(sinks, monkeypatch):
    monkeypatch.setattr(usage_sink, "REUSE_COALESCE", 0.0)
    ledger = FakeLedger(ledger_entry(state="Revoked"))
    ledger.fail_next.append(ConnectionResetError("API server gone"))
    sink = sinks(ledger)
    sink.start()
    sink.note_reuse(UID, "revoked")
    sink.note_reuse(UID, "revoked")
    deadline = time.monotonic() + 3
    while (ledger.stored[UID].get("reuse") or {}).get("seen") != 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    sink.stop()
    sink._thread.join(2)
    assert ledger.fail_next == [], "the first flush failed"
    assert ledger.stored[UID]["reuse"]["counts"] == {"revoked": 2}, "the failed flush was put back, nothing lost"
    assert not sink._thread.is_alive()


@pytest.mark.parametrize(
    "old,seen,counts,total,reported",
    [
        (None, {"revoked": 1}, {"revoked": 1}, 1, 0),
        ({"counts": {"revoked": 2}, "seen": 2, "reported": 2}, {"revoked": 1}, {"revoked": 3}, 3, 2),
        ({"counts": {"expired": 1}, "seen": 1}, {"revoked": 2}, {"expired": 1, "revoked": 2}, 3, 0),
    ],
    ids=["the first sighting", "more of one state keeps what was reported", "another state adds up"],
)
def test_add_reuse(old, seen, counts, total, reported):
    reuse = add_reuse(old, seen, "2026-01-01T12:05:00Z")
    assert (reuse["counts"], reuse["seen"], reuse["reported"], reuse["lastSeenAt"]) == (
        counts,
        total,
        reported,
        "2026-01-01T12:05:00Z",
    )


def test_concurrent_batches_of_one_grant_lose_nothing(sinks):
    """Two sink workers write the same entry; the guarded write makes one of them retry."""

    class Racing(FakeLedger):
        def __init__(self, *entries):
            super().__init__(*entries)
            self.lock = threading.Lock()

        def update(self, entry, **changes):
            with self.lock:
                return super().update(entry, **changes)

    ledger = Racing(ledger_entry())
    sink = sinks(ledger)
    batches = [[action(10 * b + n) for n in range(5)] for b in range(4)]
    threads = [threading.Thread(target=sink.record, args=(batch,)) for batch in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    usage = ledger.stored[UID]["usage"]
    assert usage["requests"] == 20 and sorted(trail_ids(ledger.stored[UID])) == sorted(
        f"audit-1-{10 * b + n}" for b in range(4) for n in range(5)
    )
    assert [i["seq"] for i in usage["trail"]] == list(range(1, 21))


# ------------------------------------------------------------------------------------ TokenReview sightings
CLAIMS = {"jti": "jti-1", "sub": "alice", "exp": 1_800_000_000}


def result(ok: bool = True, reason: str = "Valid", claims: dict | None = CLAIMS) -> VerifyResult:
    return VerifyResult(ok, reason, "", dict(claims) if claims is not None else None, "k1")


def signed_entry(state: str, claims: dict | None = CLAIMS) -> dict:
    return dict(ledger_entry(state=state), claims=dict(claims) if claims is not None else None)


@pytest.mark.parametrize(
    "verified,entry,state",
    [
        (result(), signed_entry("Revoked"), "revoked"),
        (result(), signed_entry("Failed"), "revoked"),
        (result(False, "Expired"), signed_entry("Revoked"), "expired"),
        (result(False, "Expired"), signed_entry("Active"), "expired"),
        (result(), signed_entry("Expired"), "expired"),
        (result(), signed_entry("Active"), None),
        (result(), signed_entry("Issuing"), None),
        (result(), signed_entry("Revoked", {**CLAIMS, "sub": "mallory"}), None),
        (result(), signed_entry("Revoked", None), None),
        (result(), None, None),
        (result(claims=None), signed_entry("Revoked"), None),
        (result(False, "BadSignature"), signed_entry("Revoked"), None),
        (result(False, "Revoked"), signed_entry("Revoked"), None),
        (result(False, "Expired", {**CLAIMS, "breakglass": {"policy": "prod"}}), None, "expired"),
        (result(False, "Expired"), None, None),
        (
            result(claims={**CLAIMS, "jti": "jti-old", "breakglass": {"uid": UID}}),
            dict(signed_entry("Active"), previousJtis=["jti-old"]),
            "superseded",
        ),
        (
            result(claims={**CLAIMS, "jti": "jti-old", "breakglass": {"uid": "another-request"}}),
            dict(signed_entry("Active"), previousJtis=["jti-old"]),
            None,
        ),
    ],
    ids=[
        "a verified token of a revoked grant: revoked",
        "a verified token of a failed grant: revoked",
        "an expired token of a revoked grant: expired",
        "an expired token the ledger still holds as active: expired",
        "a verified token the ledger holds as expired: expired",
        "a live grant's token is no reuse",
        "a grant still being issued is no reuse",
        "claims that differ from the ledger's are no token of ours",
        "a ledger entry without claims proves nothing",
        "no ledger entry: nothing to attribute",
        "a result without claims: nothing to attribute",
        "a bad signature is no token of ours",
        "a token refused for another reason is not counted",
        "an expired token of ours whose ledger entry was purged: expired, by the policy it names",
        "an expired token naming no policy: nothing to attribute",
        "a token an extension replaced, presented again: superseded",
        "a replaced jti naming another request is no token of this grant",
    ],
)
def test_a_token_presented_after_its_grant_ended_is_classified_as_reuse(verified, entry, state):
    assert reuse_state(verified, entry) == state


# ------------------------------------------------------------------------------------ POST /audit
def post_audit(ep: Endpoints, body: bytes) -> tuple[int, dict]:
    async def go():
        async with TestClient(TestServer(ep.app())) as client:
            resp = await client.post("/audit", data=body, headers={"Content-Type": "application/json"})
            return resp.status, await resp.json()

    return asyncio.run(go())


def audit_endpoint(sink: UsageSink | None, ledger: FakeLedger, ca: str | None = "/ca.pem") -> Endpoints:
    return Endpoints(
        keys=None,
        revocations=None,
        ledger=ledger,
        issuer="https://issuer.test",
        audiences=["bg"],
        client_ca_file=ca,
        usage=sink,
    )


@pytest.mark.parametrize(
    "case,status,stored",
    [
        ("stored", 200, 1),
        ("no grant actions", 200, 0),
        ("bad batch", 400, 0),
        ("busy", 503, 0),
        ("write fails", 503, 0),
        ("no sink", 503, 0),
        ("no client certificate", 401, 0),
        ("no client CA configured", 401, 0),
    ],
)
def test_the_audit_endpoint_acknowledges_a_batch_only_once_it_is_stored(sinks, monkeypatch, case, status, stored):
    monkeypatch.setattr(Endpoints, "_has_client_cert", staticmethod(lambda request: case != "no client certificate"))
    ledger = FakeLedger(ledger_entry())
    sink = None if case == "no sink" else sinks(ledger, max_inflight=1)
    body = event_list(audit_event(1))
    if case == "no grant actions":
        body = event_list(audit_event(1, stage="RequestReceived"))
    elif case == "bad batch":
        body = b"{"
    elif case == "busy":
        assert sink.admit(1)  # the one batch allowed is in flight
    elif case == "write fails":
        ledger.fail_next.append(ConnectionResetError("API server gone"))
    ep = audit_endpoint(sink, ledger, ca=None if case == "no client CA configured" else "/ca.pem")

    got, _answer = post_audit(ep, body)

    assert got == status
    assert (ledger.stored[UID].get("usage") or {}).get("requests", 0) == stored
    if sink is not None and case != "busy":
        assert sink._inflight == 0, "every admitted batch is released"


def test_use_after_the_grant_ended_is_token_reuse_counted_once_even_when_the_batch_is_resent(sinks):
    ledger = FakeLedger(dict(ledger_entry(state="Revoked"), endedAt=at(5)))
    sink = sinks(ledger)
    batch = [action(1), action(20), action(30)]  # received at 1 s (in flight at the end), 20 s, 30 s
    sink.record(batch)
    sink.record(batch)  # kube-apiserver resent it (our answer was lost)
    stored = ledger.get(UID)
    assert stored["usage"]["requests"] == 3
    assert stored["reuse"]["counts"] == {"revoked": 2} and stored["reuse"]["seen"] == 2
