"""Findings of the review of the Scale change (request informer + index, catch-up routing through
needs_reconcile, compact ledger view, expiry without a record first).

Each test names the promise it checks; each failed before its fix (F1-F5 in the commit history).
"""

from __future__ import annotations

import datetime as dt
import threading
import time as real_time
from types import SimpleNamespace

import pytest
from fake_kube import REQUEST, UID, World
from kubernetes.client.rest import ApiException

from breakglass import api
from breakglass import runtime as runtime_mod
from breakglass.informer import Informer
from breakglass.ledger import is_live
from breakglass.runtime import Runtime
from breakglass.sweeper import Sweeper

UID2 = "6f1c3a9e-0000-4000-8000-000000000002"


# --------------------------------------------------------------------------------------- helpers
class RecordingQueue:
    """The parts of WorkQueue the runtime calls; remembers what was queued (now, or at a time)."""

    def __init__(self):
        self.added: list[tuple[str, str]] = []
        self.at: list[tuple[tuple[str, str], float]] = []

    def add(self, key):
        self.added.append(key)

    def add_at(self, key, when):
        self.at.append((key, when))

    def queued(self, key):
        return key in self.added


class RecordingExpiry:
    def __init__(self):
        self.scheduled: list[tuple] = []

    def schedule(self, key, namespace, secret, uid, exp):
        self.scheduled.append((key, namespace, secret, uid, exp))


def runtime_for(world: World, *, leading: bool = True, keys=None) -> Runtime:
    """A Runtime wired to a fake world: routing, index and ledger are real; queues only record."""
    rt = Runtime(
        settings=world.settings,
        kube=world.kube,
        keys=keys or world.keys,
        revocations=world.revocations,
        audit=world.audit,
        reconciler=world.reconciler,
        queue=RecordingQueue(),
        sweeper=SimpleNamespace(run_step=lambda step, fn: None, refresh_gauges=lambda: None),
        endpoints=None,
        tls=None,
        drills=None,
        drill_queue=None,
        expiry=RecordingExpiry(),
        ledger=world.ledger,
        grants=world.grants,
        operator_username="system:serviceaccount:breakglass-system:breakglass",
    )
    rt.elector = SimpleNamespace(leading=threading.Event())
    if leading:
        rt.elector.leading.set()
    return rt


@pytest.fixture
def world_clock(monkeypatch):
    """Routing reads time.time(); make it the fake world's clock."""
    holder: dict[str, World] = {}
    fake = SimpleNamespace(time=lambda: holder["world"].now.timestamp(), monotonic=real_time.monotonic)
    monkeypatch.setattr(runtime_mod, "time", fake)
    return holder


def issue(world: World, name: str, uid: str) -> dict:
    """A request filed, approved by bob and issued (Active) at CREATED+1m; exp at +11m."""
    world.request(name=name, uid=uid)
    world.approve("bob", request=name, request_uid=uid)
    world.at(1).reconcile(name)
    assert world.stored_entry(uid)["state"] == "Active"
    return world.kube.get(REQUEST, "team-a", name)


# ============================================================================ F1: resync vs watch
# Runtime.resync() (the 10-minute safety resync, run from the housekeeping executor thread) calls
# request_informer.relist() -> on_request_list -> RequestIndex.replace_all while the informer thread
# keeps applying watch events. replace_all installs the LIST snapshot wholesale, so every event the
# watch applied after the snapshot was taken is rolled back: a request created meanwhile vanishes
# from the index (by key and by uid), a request deleted meanwhile comes back.
def test_a_safety_resync_never_rolls_the_index_back_behind_events_the_watch_already_applied(world_clock):
    world = World()
    world_clock["world"] = world
    world.policy()
    old = issue(world, "r1", UID)
    new = issue(world, "r2", UID2)
    rt = runtime_for(world)
    rt.on_request_list(iter([[old]]))  # the informer's first list: r1 only
    deleted_r1 = dict(
        old, metadata=dict(old["metadata"], resourceVersion=str(int(new["metadata"]["resourceVersion"]) + 1))
    )

    def pages():
        snapshot = [old]  # the resync's LIST snapshot, taken before r2 existed and while r1 did
        # ... while it pages, the informer thread applies newer watch events:
        rt.on_request_event("ADDED", new)
        rt.on_request_event("DELETED", deleted_r1)
        yield snapshot, old["metadata"]["resourceVersion"]

    rt.request_informer = Informer("requests", pages, lambda rv: iter(()), rt.on_request_list, rt.on_request_event)
    rt.resync()
    assert rt.requests.by_uid(UID2) is not None, "a request the watch showed after the snapshot vanished"
    assert rt.requests.get("team-a", "r2") is not None
    assert rt.requests.by_uid(UID) is None, "a request the watch saw deleted came back from the old snapshot"


def test_after_a_resync_race_the_sweeper_still_hands_an_expired_live_grant_to_the_reconciler(world_clock):
    world = World()
    world_clock["world"] = world
    world.policy()
    old = issue(world, "r1", UID)
    new = issue(world, "r2", UID2)
    rt = runtime_for(world)
    rt.on_request_list(iter([[old]]))

    def pages():
        snapshot = [old]
        rt.on_request_event("ADDED", new)
        yield snapshot, old["metadata"]["resourceVersion"]

    rt.request_informer = Informer("requests", pages, lambda rv: iter(()), rt.on_request_list, rt.on_request_event)
    rt.resync()
    enqueued: list[tuple[str, str]] = []
    sweeper = Sweeper(
        world.kube,
        world.ledger,
        world.grants,
        world.keys,
        world.revocations,
        world.audit,
        lambda ns, n: enqueued.append((ns, n)),
        world.clock,
        index=rt.requests,
    )
    world.at(12)  # both grants are past their exp (11m); suppose r2's in-memory timer was lost
    sweeper.sweep_ledger()
    assert ("team-a", "r2") in enqueued


# ======================================================================= F2: ledger relist rollback
# Ledger._replace installs a relist's snapshot wholesale. A write the operator itself made while the
# LIST was paging (a revocation: ledger first, "the token stops authenticating") is rolled back in
# the view until the resumed watch replays it: TokenReview (by_jti) sees the grant Active again.
def test_a_ledger_relist_never_resurrects_a_revocation_the_operator_wrote_while_it_listed():
    world = World()
    world.policy()
    issue(world, "r1", UID)
    jti = world.ledger.get(UID)["jti"]
    list_pages = world.kube.iter_configmap_pages

    def racing_pages(namespace, selector, limit=500):
        snapshot = list(list_pages(namespace, selector, limit))  # LIST at rv N: the grant is Active
        # a reconcile revokes it meanwhile (spec.revoked): ledger first, then cleanup
        world.grants.end(world.ledger.get(UID), "Revoked", "Revoked", "revoked by an approver")
        assert world.ledger.by_jti(jti)["state"] == "Revoked"
        yield from snapshot

    world.kube.iter_configmap_pages = racing_pages
    world.at(2)
    world.ledger._relist()  # a relist after a watch failure / 410
    assert world.stored_entry(UID)["state"] == "Revoked"
    entry = world.ledger.by_jti(jti)
    assert entry["state"] == "Revoked" and not is_live(entry, world.now), "revoked token live again in the view"


# ======================================================================= F3: Secret deleted
# README lifecycle: Active --"revoked / deleted / Secret deleted"--> Revoked (decisions.py SecretDeleted).
# Before the Scale change every non-terminal request was reconciled at start-up (resync_all), so a token
# Secret deleted while the operator was down revoked the grant on restart. Now catch-up routes a settled
# Active grant through needs_reconcile, which never looks at the Secret: the token keeps authenticating.
def test_a_token_secret_deleted_while_the_operator_was_down_revokes_the_grant_after_restart(world_clock):
    world = World()
    world_clock["world"] = world
    world.policy()
    issue(world, "r1", UID)
    ref = world.stored_entry(UID)["secret"]
    world.kube.remove("Secret", ref["namespace"], ref["name"])  # deleted while no operator ran
    world.at(3)
    rt = runtime_for(world, leading=False)
    rt.on_request_list(iter([world.kube.of_kind(REQUEST)]))  # the new process lists before leading
    rt.elector.leading.set()
    rt.catch_up()
    for key in list(rt.queue.added):
        world.reconcile(key[1], key[0])
    entry = world.stored_entry(UID)
    assert (entry["state"], entry.get("reason")) == ("Revoked", "SecretDeleted")


def test_a_token_secret_deleted_is_revoked_by_a_reconcile_control():
    """Control for F3: the reconcile itself still revokes on a missing Secret (so F3 is routing only)."""
    world = World()
    world.policy()
    issue(world, "r1", UID)
    ref = world.stored_entry(UID)["secret"]
    world.kube.remove("Secret", ref["namespace"], ref["name"])
    world.at(3).reconcile("r1")
    entry = world.stored_entry(UID)
    assert (entry["state"], entry.get("reason")) == ("Revoked", "SecretDeleted")


# ======================================================================= F4: stale index trusted
# informer.py: "any other failure clears `synced` (readers fail closed)". The request index's readers
# (sweeper.housekeeping, the new leader's start gate) read RequestIndex.synced, which replace_all sets
# and nothing ever clears: after the request watch fails (and the relist fails too), they go on
# trusting a stale index.
def test_a_failed_request_watch_makes_the_request_index_readers_fail_closed():
    world = World()
    rt = runtime_for(world, leading=False)
    lists = {"n": 0}

    def pages():
        lists["n"] += 1
        if lists["n"] > 1:
            raise ApiException(status=503, reason="apiserver unavailable")
        yield [], "100"

    def watch(rv):
        raise ApiException(status=500, reason="watch broken")

    informer = Informer("requests", pages, watch, rt.on_request_list, rt.on_request_event)
    rt.attach_request_informer(informer)  # as wiring.build wires it
    informer.start()
    try:
        deadline = real_time.monotonic() + 5
        while real_time.monotonic() < deadline and lists["n"] < 2:
            real_time.sleep(0.02)
        assert lists["n"] >= 2 and not informer.synced.is_set()  # the informer knows its view is stale
        assert not rt.requests.synced.is_set(), "the index still says synced: its readers trust a stale view"
    finally:
        informer.stop()
        informer._thread.join(15)  # no log line from this thread may land in a later test's capture


# ======================================================================= F5: catch-up aborts
# Runtime.catch_up routes every request in one loop; on_started_leading catches an exception from it
# and leaves the rest to the safety resync (10 minutes). One failing route (keys.has_kid re-reading the
# keyring while the API server hiccups) leaves every later request unrouted: a Scheduled request is
# issued up to --resync-interval late, and settled grants get no expiry timer.
class FlakyKeys:
    def __init__(self, keys):
        self.keys, self.failures = keys, 1

    def current(self):
        return self.keys.current()

    def has_kid(self, kid):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("keyring read failed (API server unavailable)")
        return self.keys.has_kid(kid)


def test_one_request_failing_to_route_does_not_leave_the_others_without_their_timers(world_clock):
    world = World()
    world_clock["world"] = world
    world.policy()
    issue(world, "r1", UID)
    start = world.now + dt.timedelta(hours=2)
    world.request(name="r2", uid=UID2, startAt=start.strftime("%Y-%m-%dT%H:%M:%SZ"))
    world.approve("bob", request="r2", request_uid=UID2)
    world.reconcile("r2")
    assert world.status("r2")["phase"] == api.SCHEDULED
    rt = runtime_for(world, leading=False, keys=FlakyKeys(world.keys))
    rt.on_request_list(iter([world.kube.of_kind(REQUEST)]))  # r1 first, then r2
    rt.elector.leading.set()
    try:
        rt.catch_up()
    except Exception:  # noqa: BLE001 — what on_started_leading does
        pass
    armed = {key for key, _ in rt.queue.at} | set(rt.queue.added)
    assert ("team-a", "r2") in armed, "the Scheduled request's start was never armed"
