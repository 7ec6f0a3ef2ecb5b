"""Notifications (policy spec.notify) against a real control plane and a real HTTP receiver: signed,
delivered at least once across an operator restart, retried then dead-lettered when nobody answers."""

from __future__ import annotations

import base64
import http.server
import json
import re
import threading
import time

import pytest
from harness import free_port, wait_for

from breakglass.notify import signing as S

from .scenario import approve, policy, request, unique, wait_phase

OPERATOR_NS = "breakglass-system"
HMAC_KEY = b"e2e-notify-hmac-key-0123456789"
SHORT = {"BREAKGLASS_NOTIFY_MAX_AGE": "8s", "BREAKGLASS_NOTIFY_BACKOFF_CAP": "1s"}


class Receiver:
    """An HTTP receiver on 127.0.0.1: verifies every signature, answers what `status` says, keeps
    what it was sent (deliveries: answered 2xx; deduplicated by notification id like a real one)."""

    def __init__(self):
        self.status, self.calls, self.lock = 200, [], threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = S.verify(HMAC_KEY, self.headers.get(S.SIGNATURE_HEADER, ""), body, time.time())
                with outer.lock:
                    answer = outer.status
                    outer.calls.append(
                        {"at": time.monotonic(), "answer": answer, "verified": ok, "body": json.loads(body)}
                    )
                self.send_response(answer if ok else 401)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self, request_name: str) -> dict[str, dict]:
        """event -> first delivered payload for that request (ids deduplicated)."""
        out, seen = {}, set()
        with self.lock:
            for c in self.calls:
                b = c["body"]
                mine = b["request"]["name"] == request_name
                if c["answer"] == 200 and c["verified"] and mine and b["id"] not in seen:
                    seen.add(b["id"])
                    out.setdefault(b["event"], {**b, "_at": c["at"]})
        return out

    def attempts(self, name: str, event: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if (c["body"]["request"]["name"], c["body"]["event"]) == (name, event)]


@pytest.fixture
def receiver():
    rx = Receiver()
    yield rx
    rx.server.shutdown()


@pytest.fixture
def notifying_operator(cluster, operator):
    """The shared operator restarted with a short max age and backoff cap; restored afterwards."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "notify-hmac", "namespace": OPERATOR_NS},
        "data": {"key": base64.b64encode(HMAC_KEY).decode()},
    }
    cluster.apply(secret)
    operator.stop()
    saved = dict(operator.extra_env)
    operator.extra_env.update(SHORT)
    operator.start()
    yield operator
    operator.stop()
    operator.extra_env.clear()
    operator.extra_env.update(saved)
    operator.start()


def notify_policy(name: str, url: str, **target) -> dict:
    return policy(name, notify=[{"webhook": url, "secretRef": {"name": "notify-hmac", "key": "key"}, **target}])


def metric(op, result: str) -> float:
    m = re.search(rf'^breakglass_notifications_total{{result="{result}"}} (\S+)$', op.metrics_text() or "", re.M)
    return float(m.group(1)) if m else 0.0


def outbox(cluster) -> list[dict]:
    return cluster.list("configmap", OPERATOR_NS, selector="breakglass.dev/outbox=notification")


def test_a_request_and_its_approval_send_signed_requested_approved_issued_and_expiring(
    cluster, notifying_operator, receiver
):
    ns, pol = cluster.new_namespace(), unique("notify")
    cluster.apply(notify_policy(pol, receiver.url, expiringLead="55s"))
    cluster.apply(request("outage", ns, pol, duration="1m"), user="alice", verb="create")
    requested = wait_for(lambda: receiver.delivered("outage").get("Requested"), 10, "Requested notification")
    assert requested["action"]["command"] == f"kubectl breakglass approve outage -n {ns}"
    assert requested["action"]["who"]["groups"] == ["sre-leads"] and requested["request"]["requester"] == "alice"
    approved_at = time.monotonic()
    approve(cluster, "bob", "outage", ns)
    issued = wait_for(lambda: receiver.delivered("outage").get("Issued"), 10, "Issued notification", interval=0.02)
    latency = issued["_at"] - approved_at
    print(f"approval -> Issued notification delivered in {latency:.3f}s")
    assert latency < 3
    obj = wait_phase(cluster, "outage", ns, "Active")
    assert issued["request"]["expiresAt"] == obj["status"]["expiresAt"]
    assert "Approved" in receiver.delivered("outage")
    expiring = wait_for(lambda: receiver.delivered("outage").get("Expiring"), 20, "Expiring notice 55s before exp")
    assert expiring["request"]["expiresAt"] == obj["status"]["expiresAt"]
    # Never the token: no delivered body holds it.
    secret = cluster.get("secret", obj["status"]["secretRef"]["name"], OPERATOR_NS)
    token = base64.b64decode(secret["data"]["token"]).decode()
    with receiver.lock:
        assert all(token not in json.dumps(c["body"]) for c in receiver.calls)
        assert all(c["verified"] for c in receiver.calls)
    wait_for(lambda: not outbox(cluster), 10, "the outbox to be empty again")


def test_notifications_pending_when_the_operator_is_killed_are_delivered_after_it_restarts(
    cluster, notifying_operator, receiver
):
    ns, pol = cluster.new_namespace(), unique("notify-restart")
    cluster.apply(notify_policy(pol, receiver.url, events=["Requested", "Approved", "Issued"]))
    receiver.status = 503
    cluster.apply(request("restart", ns, pol), user="alice", verb="create")
    wait_for(lambda: receiver.attempts("restart", "Requested"), 10, "a first (refused) Requested attempt")
    notifying_operator.kill9()
    pending = outbox(cluster)
    assert [json.loads(cm["data"]["notification.json"])["kind"] for cm in pending] == ["Requested"]
    receiver.status = 200
    notifying_operator.start()
    wait_for(lambda: receiver.delivered("restart").get("Requested"), 30, "Requested delivered after the restart")
    approve(cluster, "bob", "restart", ns)
    wait_for(lambda: receiver.delivered("restart").get("Issued"), 15, "Issued after the restart")
    ids = {c["body"]["id"] for c in receiver.attempts("restart", "Requested")}
    assert len(ids) == 1  # every attempt of it carried the same idempotency id
    assert pending[0]["metadata"]["name"].endswith(ids.pop())
    wait_for(lambda: not outbox(cluster), 10, "the outbox to be empty again")


def test_a_receiver_that_stays_down_is_retried_then_dead_lettered_and_counted(cluster, notifying_operator):
    ns, pol = cluster.new_namespace(), unique("notify-down")
    nobody = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    cluster.apply(notify_policy(pol, nobody, events=["Requested"]))
    retried, dead = metric(notifying_operator, "retried"), metric(notifying_operator, "dead_letter")
    cluster.apply(request("down", ns, pol), user="alice", verb="create")
    wait_phase(cluster, "down", ns, "Pending")
    wait_for(lambda: outbox(cluster), 10, "the notification in the outbox")
    wait_for(lambda: metric(notifying_operator, "dead_letter") > dead, 30, "the dead letter (max age 8s)")
    assert metric(notifying_operator, "retried") - retried >= 3
    wait_for(lambda: not outbox(cluster), 5, "the dead letter removed from the outbox")
    assert "breakglass_notification_outbox_depth 0.0" in (notifying_operator.metrics_text() or "")
