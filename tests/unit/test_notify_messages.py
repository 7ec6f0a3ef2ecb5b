"""Notifications, the pure parts: targets, ids, payloads, Slack bodies, signatures, backoff, verdicts."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from breakglass.notify import messages as M
from breakglass.notify import signing as S

KEY = b"k3y-material"
BODY = b'{"id":"abc"}'
REQ = {
    "metadata": {"name": "outage", "namespace": "team-a", "uid": "uid-1"},
    "spec": {
        "policy": "prod",
        "requester": "alice",
        "reason": "database primary down",
        "ticket": "INC-7",
        "namespaces": ["team-a"],
        "clusterRoles": ["view"],
        "duration": "10m",
    },
}
POLICY = {"approvers": {"users": ["bob"], "groups": ["sre-leads"]}}


@pytest.mark.parametrize(
    "header, now, ok",
    [
        (S.sign(KEY, 1000, BODY), 1000, True),
        (S.sign(KEY, 1000, BODY), 1000 + S.DEFAULT_TOLERANCE, True),
        (S.sign(KEY, 1000, BODY), 1001 + S.DEFAULT_TOLERANCE, False),
        (S.sign(b"another key", 1000, BODY), 1000, False),
        (S.sign(KEY, 1000, BODY + b" "), 1000, False),
        (S.sign(KEY, 999, BODY).replace("t=999", "t=1000"), 1000, False),
        ("v1=deadbeef", 1000, False),
        ("garbage", 1000, False),
    ],
    ids=[
        "a signature made with the key over the body verifies",
        "a signature at the edge of the tolerance still verifies",
        "a signature older than the tolerance is refused (replay)",
        "a signature made with another key is refused",
        "a changed body is refused",
        "a changed timestamp is refused",
        "a header without t= is refused",
        "a header that is not key=value pairs is refused",
    ],
)
def test_signature_verification(header, now, ok):
    assert S.verify(KEY, header, BODY, now) is ok


def test_the_signature_header_is_t_and_v1_hex_hmac_sha256_of_t_dot_body():
    import hashlib
    import hmac

    assert S.sign(KEY, 42, BODY) == "t=42,v1=" + hmac.new(KEY, b"42." + BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "attempts, cap, seconds",
    [(0, 300, 0), (1, 300, 1), (2, 300, 2), (5, 300, 16), (9, 300, 256), (10, 300, 300), (500, 300, 300), (3, 2, 2)],
    ids=lambda v: str(v),
)
def test_backoff_doubles_from_one_second_up_to_the_cap(attempts, cap, seconds):
    assert S.backoff_seconds(attempts, cap=cap) == seconds


@pytest.mark.parametrize(
    "status, verdict",
    [
        (200, S.DELIVERED),
        (204, S.DELIVERED),
        (None, S.RETRY),
        (500, S.RETRY),
        (503, S.RETRY),
        (429, S.RETRY),
        (408, S.RETRY),
        (400, S.DEAD),
        (404, S.DEAD),
        (301, S.DEAD),
    ],
    ids=[
        "200 is delivered",
        "204 is delivered",
        "no answer is retried",
        "500 is retried",
        "503 is retried",
        "429 too many requests is retried",
        "408 timeout is retried",
        "400 will not get better: dead letter",
        "404 will not get better: dead letter",
        "a redirect is not followed: dead letter",
    ],
)
def test_what_an_http_answer_means(status, verdict):
    assert S.verdict(status) == verdict


@pytest.mark.parametrize(
    "attempts, age, gives_up",
    [(1, 0, False), (49, 86399, False), (50, 0, True), (1, 86400, True)],
    ids=["a first failure is retried", "just under both limits is retried", "max attempts", "max age"],
)
def test_when_a_notification_is_dead_lettered(attempts, age, gives_up):
    assert S.give_up(attempts=attempts, age=age, max_attempts=50, max_age=86400) is gives_up


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({}, []),
        (
            {"notify": [{"webhook": "https://hooks.example/x"}]},
            [M.Target("https://hooks.example/x")],
        ),
        (
            {
                "notify": [
                    {
                        "webhook": "http://10.0.0.1/h",
                        "format": "slack",
                        "secretRef": {"name": "hmac", "key": "k"},
                        "events": ["Requested", "Bogus"],
                        "expiringLead": "10m",
                    }
                ]
            },
            [M.Target("http://10.0.0.1/h", "slack", "hmac", "k", ("Requested",), dt.timedelta(minutes=10))],
        ),
        ({"notify": [{"webhook": "file:///etc/passwd"}, {"webhook": "https://a", "format": "xml"}]}, []),
        ({"notify": [{"webhook": "https://a", "expiringLead": "soon"}]}, []),
    ],
    ids=[
        "a policy without notify has no targets",
        "a bare webhook gets json, every event and a 5m lead",
        "every field is read and unknown events are ignored",
        "non-http URLs and unknown formats are skipped",
        "a malformed lead is skipped",
    ],
)
def test_targets_from_a_policy_spec(spec, expected):
    assert M.targets_from_spec(spec) == expected


def test_a_notification_id_is_stable_per_request_event_and_target_and_differs_otherwise():
    t = M.Target("https://a")
    same = M.notification_id("uid-1", "Issued", t, 0)
    assert same == M.notification_id("uid-1", "Issued", t, 0)
    others = {
        M.notification_id("uid-2", "Issued", t, 0),
        M.notification_id("uid-1", "Requested", t, 0),
        M.notification_id("uid-1", "Issued", t, 1),
        M.notification_id("uid-1", "Issued", M.Target("https://b"), 0),
    }
    assert same not in others and len(others) == 4


@pytest.mark.parametrize(
    "kind, who, command",
    [
        ("Requested", {"users": ["bob"], "groups": ["sre-leads"]}, "kubectl breakglass approve outage -n team-a"),
        ("ReviewOverdue", {"users": ["bob"], "groups": ["sre-leads"]}, "kubectl breakglass review outage -n team-a"),
        (
            "Issued",
            {"users": ["alice"], "groups": []},
            "kubectl breakglass token outage -n team-a --kubeconfig-out ./breakglass.kubeconfig",
        ),
        ("Denied", {"users": ["alice"], "groups": []}, "kubectl breakglass status outage -n team-a"),
        ("Expiring", {"users": ["alice"], "groups": []}, "kubectl breakglass status outage -n team-a"),
    ],
    ids=[
        "Requested asks the approvers to approve",
        "ReviewOverdue asks the approvers to review",
        "Issued tells the requester how to get the kubeconfig",
        "Denied points the requester at the status",
        "Expiring points the requester at the status",
    ],
)
def test_each_event_names_who_must_act_and_the_exact_command(kind, who, command):
    payload = M.build_payload(nid="n1", kind=kind, time="t", req=REQ, policy_spec=POLICY, message="m", facts={})
    assert payload["action"] == {"who": who, "command": command}
    slack = M.slack_body(payload)
    rendered = json.dumps(slack)
    assert command in rendered and who["users"][0] in rendered
    assert slack["text"].startswith(f"[breakglass] {kind}:") and slack["blocks"]


def test_the_json_payload_describes_the_request_and_carries_its_id():
    payload = M.build_payload(
        nid="n1", kind="Issued", time="T", req=REQ, policy_spec=POLICY, message="m", facts={"expiresAt": "E"}
    )
    assert payload["id"] == "n1" and payload["event"] == "Issued" and payload["time"] == "T"
    assert payload["request"]["requester"] == "alice" and payload["request"]["expiresAt"] == "E"
    assert json.loads(M.render(payload, "json")) == payload
    assert "blocks" in json.loads(M.render(payload, "slack"))
