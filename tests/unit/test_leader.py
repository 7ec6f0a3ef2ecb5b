"""Leader election: the pure lease rule and the elector against an in-memory Lease store."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from breakglass.k8s.client import Conflict
from breakglass.leader import LeaderElector, may_acquire

NOW = dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=dt.UTC)


def _spec(holder, renewed_seconds_ago, duration=10):
    stamp = (NOW - dt.timedelta(seconds=renewed_seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"holderIdentity": holder, "renewTime": stamp, "leaseDurationSeconds": duration}


@pytest.mark.parametrize(
    "spec,ok",
    [
        ({}, True),
        (_spec("me", 3), True),
        (_spec(None, 3), True),
        (_spec("other", 3), False),
        (_spec("other", 11), True),
        (_spec("other", 0.5, duration=1), False),
    ],
    ids=[
        "an absent holder may be taken",
        "our own lease is renewed",
        "a released lease may be taken",
        "another replica's fresh lease is respected",
        "another replica's expired lease may be taken",
        "a lease released with 1 s left is respected until then",
    ],
)
def test_a_lease_may_be_taken_only_when_free_ours_or_expired(spec, ok):
    assert may_acquire(spec, "me", NOW) is ok


class FakeLeases:
    """resourceVersion-guarded Lease store shared by several electors."""

    def __init__(self):
        self.lease = None
        self.rv = 0
        self.lock = threading.Lock()

    def get_lease(self, namespace, name):
        with self.lock:
            return None if self.lease is None else {**self.lease, "spec": dict(self.lease["spec"])}

    def create_lease(self, body):
        with self.lock:
            if self.lease is not None:
                raise Conflict("exists")
            self.rv += 1
            self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
            return self.lease

    def replace_lease(self, body):
        with self.lock:
            if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
                raise Conflict("changed")
            self.rv += 1
            self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
            return self.lease


def _elector(store, identity, clock, events):
    return LeaderElector(
        store,
        namespace="ns",
        name="lease",
        identity=identity,
        lease_seconds=10,
        renew_deadline=7,
        retry_period=1,
        clock=clock,
        on_started=lambda: events.append(("started", identity)),
        on_lost=lambda: events.append(("lost", identity)),
    )


def test_only_one_of_two_replicas_leads_and_a_released_lease_passes_over_at_once():
    store, events, now = FakeLeases(), [], [NOW]
    a, b = (_elector(store, who, lambda: now[0], events) for who in ("a", "b"))
    assert a._try_acquire_or_renew() is True and b._try_acquire_or_renew() is False
    a.leading.set()
    now[0] += dt.timedelta(seconds=5)
    assert a._try_acquire_or_renew() is True and b._try_acquire_or_renew() is False
    a.stop(release=True)
    assert store.lease["spec"]["holderIdentity"] is None
    assert b._try_acquire_or_renew() is True and store.lease["spec"]["holderIdentity"] == "b"


def test_a_dead_leaders_lease_is_taken_over_only_after_it_expires():
    store, events, now = FakeLeases(), [], [NOW]
    a, b = (_elector(store, who, lambda: now[0], events) for who in ("a", "b"))
    assert a._try_acquire_or_renew()
    now[0] += dt.timedelta(seconds=9)
    assert not b._try_acquire_or_renew()
    now[0] += dt.timedelta(seconds=2)
    assert b._try_acquire_or_renew() and store.lease["spec"]["leaseTransitions"] == 1
    assert not a._try_acquire_or_renew()  # the old leader finds the lease taken


def test_a_leader_that_cannot_start_its_work_steps_down_instead_of_holding_the_lease():
    store, events, now = FakeLeases(), [], [NOW]

    def broken_start():
        raise TimeoutError("apiserver slow")

    elector = LeaderElector(
        store,
        namespace="ns",
        name="lease",
        identity="a",
        lease_seconds=10,
        renew_deadline=7,
        retry_period=0.01,
        clock=lambda: now[0],
        on_started=broken_start,
        on_lost=lambda: events.append("lost"),
    )
    elector._run()  # returns once it stepped down
    assert events == ["lost"] and not elector.leading.is_set()


class CountingLeases(FakeLeases):
    def __init__(self):
        super().__init__()
        self.reads = 0

    def get_lease(self, namespace, name):
        self.reads += 1
        return super().get_lease(namespace, name)


def test_a_leader_renews_with_one_write_and_reads_again_only_when_someone_else_wrote():
    store, events, now = CountingLeases(), [], [NOW]
    a = _elector(store, "a", lambda: now[0], events)
    assert a._try_acquire_or_renew() is True
    a.leading.set()
    reads = store.reads
    for _ in range(3):
        now[0] += dt.timedelta(seconds=1)
        assert a._try_acquire_or_renew() is True
    assert store.reads == reads, "renewals are single guarded writes"
    # Another replica took the (expired-looking) lease meanwhile: the guarded write conflicts, we read.
    with store.lock:
        store.rv += 1
        store.lease = {
            **store.lease,
            "spec": _spec("b", 0),
            "metadata": {**store.lease["metadata"], "resourceVersion": str(store.rv)},
        }
    now[0] += dt.timedelta(seconds=1)
    assert a._try_acquire_or_renew() is False and store.reads == reads + 1
