"""Attacker findings against the #14 features (alert gate, notifications, extensions, scheduled start):
each test states the secure behaviour; each failed before its fix.

Acting identities as in fake_kube: alice requests (group sre), bob/carol approve (sre-leads)."""

from __future__ import annotations

import datetime as dt
import json

from fake_kube import OPERATOR_NS, UID, FakeKube
from test_alert_gate import FIRING, gated_world
from test_extend_reconciler import approve_extension, file_extension
from test_extend_reconciler import world as extendable_world
from test_notify_outbox import NOTIFY, item, outbox_items, with_secret

from breakglass.domain.conditions import get_condition
from breakglass.notify import messages as M
from breakglass.notify.notifier import Notifier
from breakglass.notify.outbox import Outbox


# ----------------------------------------------------------------------------------- alert gate
def test_a_firing_alert_never_approves_a_request_past_its_approval_timeout():
    world, am, gates, _ = gated_world()  # policy approvalTimeout 30m, requiredApprovals 1
    world.at(1).reconcile()
    assert world.status()["phase"] == "Pending"
    # No reconcile ran at the 30 m deadline (operator down / a new leader catching up). At 45 m an
    # incident alert fires: a request filed 45 minutes ago and never approved must not be issued.
    am.answer = FIRING
    world.at(45)
    gates.poll_once()
    world.reconcile()
    st = world.status()
    assert st["phase"] == "Denied", st["phase"]
    assert get_condition(st["conditions"], "Approved")["reason"] == "ApprovalTimeout"
    assert world.stored_entry() is None


# -------------------------------------------------------------------------------- notifications
def _payload(reason: str, ticket: str = "") -> dict:
    req = {
        "metadata": {"namespace": "team-a", "name": "r1", "uid": UID},
        "spec": {"policy": "prod", "requester": "alice", "reason": reason, "ticket": ticket,
                 "namespaces": ["team-a"], "clusterRoles": ["view"]},
    }  # fmt: skip
    spec = {"approvers": {"groups": ["sre-leads"]}}
    return M.build_payload(nid="n1", kind=M.REQUESTED, time="t", req=req, policy_spec=spec, message="m", facts={})


def test_a_slack_notification_escapes_what_the_requester_wrote():
    evil = "db down\n*Next:* group sre-leads: <https://evil.example/approve|kubectl breakglass approve r1> <!channel>"
    body = M.render(_payload(evil, ticket="<!here>"), "slack")
    text = json.dumps(json.loads(body)["blocks"])
    # Slack's own escaping: & < > as entities; then no link, mention or forged line is rendered.
    assert "<https://evil.example" not in text and "<!channel>" not in text and "<!here>" not in text
    assert "\\n*Next:*" not in text.split("*Reason:*", 1)[1].split("*Grant:*", 1)[0]


def test_one_requesters_flood_of_requests_cannot_evict_another_grants_pending_review_overdue_notice():
    kube = FakeKube()
    box = Outbox(kube, OPERATOR_NS, capacity=10)
    # the victim's emergency grant is overdue for review; the receiver is down, so it waits for retry
    box.add(item("victim-overdue", created=1.0, kind="ReviewOverdue", requestUid="victim-uid"))
    # the attacker (any requester) files requests: each records a Requested notification
    for i in range(10):
        box.add(item(f"attacker-{i}", created=2.0 + i, kind="Requested", requestUid=f"attacker-uid-{i}"))
    assert "victim-overdue" in {i["id"] for i in outbox_items(kube)}


def test_an_extension_re_times_the_expiring_notice_to_the_new_exp():
    w = extendable_world()  # Active, exp = 1 m + 10 m
    w.policy(extension={"allowed": True, "requiredApprovals": 1, "maxTotal": "1h"}, notify=NOTIFY)
    with_secret(w.kube)
    live = w.ledger.summary
    w.notifier = Notifier(
        kube=w.kube,
        namespace=OPERATOR_NS,
        policy=w.reconciler.policies.get,
        is_live=lambda uid: (g := live(uid)) is not None and g.state == "Active",
        clock=lambda: w.now.timestamp(),
        post=lambda *a: 200,
    )
    w.reconciler.recorder.notifier = w.notifier
    # record the Issued + Expiring pair as the issue would have (the world issued before the notifier)
    req = w.kube.get_request("team-a", "r1")
    w.notifier.emit("Issued", req, "issued", {"expiresAt": w.stored_entry()["expiresAt"]})
    file_extension(w, by="30m")
    approve_extension(w)
    w.at(3).reconcile()
    new_exp = w.stored_entry()["expiresAt"]
    expiring = [i for i in outbox_items(w.kube) if i["kind"] == "Expiring"]
    assert expiring and all(i["payload"]["request"]["expiresAt"] == new_exp for i in expiring)
    lead = dt.timedelta(minutes=3).total_seconds()
    assert all(i["notBefore"] == dt.datetime.fromisoformat(new_exp.replace("Z", "+00:00")).timestamp() - lead
               for i in expiring)  # fmt: skip
