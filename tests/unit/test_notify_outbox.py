"""Notifications with the in-memory API server: the outbox (record before act, bounded, guarded
writes, survives a restart), delivery attempts, and the hook in the reconciler."""

from __future__ import annotations

import base64
import json

import pytest
from fake_kube import CREATED, OPERATOR_NS, UID, FakeKube, World

from breakglass import api
from breakglass.k8s.client import Conflict
from breakglass.notify import signing as S
from breakglass.notify.notifier import Notifier
from breakglass.notify.outbox import DATA_KEY, PREFIX, Outbox, notifications_total

HMAC = b"s3cret-hmac-key-never-sent"
NOTIFY = [
    {"webhook": "https://hooks.test/bg", "secretRef": {"name": "notify-hmac", "key": "k"}, "expiringLead": "3m"},
    {"webhook": "https://chat.test/x", "format": "slack", "events": ["Requested"]},
]


def item(nid: str, created: float = 0.0, **extra) -> dict:
    return {
        "id": nid,
        "kind": "Requested",
        "requestUid": "u",
        "target": {"webhook": "https://hooks.test/bg", "format": "json", "secretName": "notify-hmac", "secretKey": "k"},
        "payload": {"id": nid, "event": "Requested"},
        "createdAt": created,
        "notBefore": created,
        "attempts": 0,
        "nextAttemptAt": 0.0,
        **extra,
    }


def count(result: str) -> float:
    return notifications_total.labels(result)._value.get()


def outbox_items(kube: FakeKube) -> list[dict]:
    return [
        json.loads(cm["data"][DATA_KEY])
        for cm in kube.of_kind("ConfigMap", OPERATOR_NS)
        if cm["metadata"]["name"].startswith(PREFIX)
    ]


class Receiver:
    def __init__(self, *answers):
        self.answers, self.got = list(answers), []

    def __call__(self, url, body, headers):
        self.got.append((url, body, headers))
        return self.answers.pop(0) if self.answers else 200


def notifier(kube, post=None, now=1000.0, live=True, **kw) -> Notifier:
    clock = {"now": now}
    n = Notifier(kube=kube, namespace=OPERATOR_NS, policy=lambda name: None, is_live=lambda uid: live, post=post, **kw)
    n.clock = lambda: clock["now"]
    n.set_now = lambda t: clock.__setitem__("now", t)
    return n


def with_secret(kube: FakeKube) -> FakeKube:
    kube.put(
        "Secret",
        {"metadata": {"name": "notify-hmac", "namespace": OPERATOR_NS}, "data": {"k": base64.b64encode(HMAC).decode()}},
    )
    return kube


# ------------------------------------------------------------------------------------------ outbox
def test_an_added_notification_is_a_labelled_configmap_and_adding_the_same_id_again_changes_nothing():
    kube = FakeKube()
    box = Outbox(kube, OPERATOR_NS)
    assert box.add(item("a")) is True
    assert box.add(item("a")) is False
    assert [c.name for c in kube.writes()] == [PREFIX + "a"]
    cm = kube.get("ConfigMap", OPERATOR_NS, PREFIX + "a")
    assert cm["metadata"]["labels"]["breakglass.dev/outbox"] == "notification"
    assert box.depth() == 1


def test_a_full_outbox_drops_the_oldest_and_counts_it_instead_of_growing():
    kube, before = FakeKube(), count("dropped")
    box = Outbox(kube, OPERATOR_NS, capacity=3)
    for i, created in enumerate([5.0, 1.0, 3.0, 9.0, 7.0]):
        box.add(item(f"n{i}", created))
    assert box.depth() == 3 and count("dropped") - before == 2
    assert sorted(i["id"] for i in outbox_items(kube)) == ["n0", "n3", "n4"]  # created 5, 9, 7 survive


def test_a_new_leader_loads_what_the_previous_one_left_pending():
    kube = FakeKube()
    Outbox(kube, OPERATOR_NS).add(item("left-behind"))
    restarted = Outbox(kube, OPERATOR_NS)
    assert restarted.load() == 1 and [n for n, _ in restarted.due(10.0)] == [PREFIX + "left-behind"]


def test_an_update_from_a_stale_version_is_refused_and_the_index_reread():
    kube = FakeKube()
    box = Outbox(kube, OPERATOR_NS)
    box.add(item("a"))
    kube.fail("replace", "ConfigMap", exc=Conflict("changed"))
    assert box.update(PREFIX + "a", item("a", attempts=1)) is False
    assert box.update(PREFIX + "a", item("a", attempts=2)) is True
    assert outbox_items(kube)[0]["attempts"] == 2


def test_an_outbox_write_that_fails_raises_so_the_notification_is_never_counted_as_emitted():
    kube = FakeKube()
    kube.fail("create", "ConfigMap")
    with pytest.raises(RuntimeError):
        Outbox(kube, OPERATOR_NS).add(item("a"))


# ------------------------------------------------------------------------------------------ attempts
def test_a_delivered_notification_is_signed_with_the_secret_key_and_removed_from_the_outbox():
    kube, rx = with_secret(FakeKube()), Receiver(200)
    n = notifier(kube, rx)
    n.outbox.add(item("a"))
    assert n.attempt(PREFIX + "a", item("a")) == "delivered"
    url, body, headers = rx.got[0]
    assert S.verify(HMAC, headers[S.SIGNATURE_HEADER], body, 1000.0)
    assert headers[S.ID_HEADER] == "a" and headers[S.EVENT_HEADER] == "Requested"
    assert HMAC not in body and outbox_items(kube) == [] and n.outbox.depth() == 0


def test_a_failed_attempt_is_written_back_with_exponential_backoff():
    kube, rx = with_secret(FakeKube()), Receiver(503, 503)
    n = notifier(kube, rx)
    n.outbox.add(item("a"))
    before = count("retried")
    assert n.attempt(PREFIX + "a", item("a")) == "retried"
    stored = outbox_items(kube)[0]
    assert stored["attempts"] == 1 and stored["nextAttemptAt"] == 1001.0 and stored["lastError"] == "HTTP 503"
    n.set_now(1001.0)
    assert n.attempt(PREFIX + "a", stored) == "retried"
    assert outbox_items(kube)[0]["nextAttemptAt"] == 1003.0 and count("retried") - before == 2


@pytest.mark.parametrize(
    "answers, secret, age, expected",
    [
        ([503], True, 100.0, "dead_letter"),
        ([404], True, 0.0, "dead_letter"),
        ([], False, 0.0, "retried"),
        ([], False, 100.0, "dead_letter"),
    ],
    ids=[
        "a receiver still failing past the max age is dead-lettered",
        "a 404 is dead-lettered at once",
        "a missing HMAC Secret is retried (it may be created)",
        "a missing HMAC Secret past the max age is dead-lettered",
    ],
)
def test_when_delivery_gives_up(answers, secret, age, expected):
    kube, rx = FakeKube(), Receiver(*answers)
    if secret:
        with_secret(kube)
    n = notifier(kube, rx, now=1000.0 + age, max_age=60)
    n.outbox.add(item("a", 1000.0))
    before = count(expected)
    assert n.attempt(PREFIX + "a", item("a", 1000.0)) == expected
    assert count(expected) - before == 1
    assert (outbox_items(kube) == []) is (expected == "dead_letter")


def test_a_json_target_without_a_secret_ref_is_never_sent_unsigned():
    rx = Receiver()
    n = notifier(FakeKube(), rx)
    unsigned = item("a", target={"webhook": "https://x", "format": "json", "secretName": "", "secretKey": ""})
    n.outbox.add(unsigned)
    assert n.attempt(PREFIX + "a", unsigned) == "dead_letter" and rx.got == []


def test_an_expiring_notice_for_a_grant_that_already_ended_is_cancelled_unsent():
    rx = Receiver()
    n = notifier(with_secret(FakeKube()), rx, live=False)
    notice = item("a", kind="Expiring")
    n.outbox.add(notice)
    assert n.attempt(PREFIX + "a", notice) == "cancelled" and rx.got == []


def test_the_delivery_loop_loads_the_outbox_and_delivers_what_is_due():
    kube, rx = with_secret(FakeKube()), Receiver()
    Outbox(kube, OPERATOR_NS).add(item("old"))  # left by a previous leader
    n = notifier(kube, rx)
    n.start()
    try:
        import time

        deadline = time.monotonic() + 5
        while outbox_items(kube) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        n.stop()
    assert outbox_items(kube) == [] and [h[S.ID_HEADER] for _, _, h in rx.got] == ["old"]


# ------------------------------------------------------------------------------------------ the hook
def notifying_world() -> World:
    w = World()
    w.policy(notify=NOTIFY)
    with_secret(w.kube)
    live = w.ledger.summary
    w.notifier = Notifier(
        kube=w.kube,
        namespace=OPERATOR_NS,
        policy=w.reconciler.policies.get,
        is_live=lambda uid: (g := live(uid)) is not None and g.state == "Active",
        clock=lambda: w.now.timestamp(),
        post=Receiver(),
    )
    w.reconciler.recorder.notifier = w.notifier
    return w


def test_a_request_then_its_approval_record_requested_approved_issued_and_a_timed_expiring_notice():
    w = notifying_world()
    w.request(finalizers=[api.FINALIZER])
    w.reconcile()
    assert sorted((i["kind"], i["target"]["format"]) for i in outbox_items(w.kube)) == [
        ("Requested", "json"),
        ("Requested", "slack"),
    ]
    w.approve()
    w.at(1).reconcile()
    kinds = sorted(i["kind"] for i in outbox_items(w.kube))
    assert kinds == ["Approved", "Expiring", "Issued", "Requested", "Requested"]
    expiring = next(i for i in outbox_items(w.kube) if i["kind"] == "Expiring")
    exp = w.status()["expiresAt"]
    assert expiring["payload"]["request"]["expiresAt"] == exp
    assert expiring["notBefore"] == (CREATED.timestamp() + 60 + 600 - 180)  # exp - 3m lead
    assert {i["requestUid"] for i in outbox_items(w.kube)} == {UID}


def test_no_notification_carries_the_token_or_secret_data():
    w = notifying_world()
    w.request(finalizers=[api.FINALIZER])
    w.approve()
    w.reconcile()
    token = base64.b64decode(w.kube.get("Secret", OPERATOR_NS, api.token_secret_name(UID))["data"]["token"]).decode()
    rx = w.notifier.post
    for name, pending in w.notifier.outbox.due(float("inf")):
        w.notifier.attempt(name, pending)
    sent = b"".join(body for _, body, _ in rx.got) + json.dumps(outbox_items(w.kube)).encode()
    assert len(rx.got) == 5 and token.encode() not in sent and HMAC not in sent
    assert token.split(".")[2].encode() not in sent  # not even the signature part


def test_a_failed_outbox_write_fails_the_pass_before_the_status_and_the_retry_records_it():
    w = notifying_world()
    w.request(finalizers=[api.FINALIZER])
    w.kube.fail("create", "ConfigMap")
    with pytest.raises(RuntimeError):
        w.reconcile()
    assert w.status() == {} and outbox_items(w.kube) == []
    w.reconcile()
    assert w.status()["phase"] == "Pending" and len(outbox_items(w.kube)) == 2


def test_drill_requests_send_no_notifications():
    w = notifying_world()
    body = w.request(finalizers=[api.FINALIZER])
    w.kube.objects[("BreakGlassRequest", "team-a", "r1")]["metadata"]["labels"] = {api.DRILL_LABEL: "true"}
    assert body
    w.reconcile()
    assert outbox_items(w.kube) == []
