"""Events are posted off the reconcile path: in order per request, bounded, failures counted."""

from __future__ import annotations

import threading

from breakglass.event_poster import EventPoster, events_dropped_total


def test_events_of_one_request_are_posted_in_the_order_they_were_emitted():
    posted = []
    poster = EventPoster(posted.append, shards=4)
    for i in range(50):
        poster.submit("uid-a", {"reason": f"a{i}"})
        poster.submit("uid-b", {"reason": f"b{i}"})
    poster.flush()
    assert [e["reason"] for e in posted if e["reason"][0] == "a"] == [f"a{i}" for i in range(50)]
    assert [e["reason"] for e in posted if e["reason"][0] == "b"] == [f"b{i}" for i in range(50)]


def test_a_full_queue_drops_events_and_counts_them_instead_of_growing():
    gate = threading.Event()
    poster = EventPoster(lambda body: gate.wait(5), shards=1, capacity=3)
    before = events_dropped_total.labels("queue_full")._value.get()
    for i in range(10):  # one in flight, three queued, the rest dropped
        poster.submit("uid", {"reason": str(i)})
    dropped = events_dropped_total.labels("queue_full")._value.get() - before
    gate.set()
    poster.flush()
    assert 6 <= dropped <= 7 and poster.pending() == 0


def test_an_api_error_is_counted_and_never_raised():
    def refuse(body):
        raise RuntimeError("apiserver down")

    poster = EventPoster(refuse, shards=1)
    before = events_dropped_total.labels("api_error")._value.get()
    poster.submit("uid", {"reason": "Issued"})
    poster.flush()
    assert events_dropped_total.labels("api_error")._value.get() - before == 1
