"""A large audit batch (a grant's own ~1 MB request URIs) is parsed from a spooled file event by event,
with the same result as the in-memory parse, and the same all-or-nothing refusals."""

from __future__ import annotations

import io
import json

import pytest
from test_usage_sink import UID, audit_event, event_list

from breakglass.audit_events import BadBatch, parse_batch, parse_batch_file


def huge_event(n: int) -> dict:
    event = audit_event(n)
    del event["objectRef"]  # a non-resource request: the URI is what the trail keeps (capped)
    event["requestURI"] = "/api/" + "<" * 1_000_000  # escapes to 6 MB as Go's JSON writes it
    return event


@pytest.mark.parametrize(
    "body",
    [
        event_list(audit_event(1), audit_event(2, stage="RequestReceived"), audit_event(3)),
        event_list(huge_event(1), audit_event(2)),
        event_list(),
    ],
    ids=["an ordinary batch", "a batch with a huge request URI", "an empty batch"],
)
def test_a_spooled_batch_parses_exactly_like_one_in_memory(body):
    assert parse_batch_file(io.BytesIO(body)) == parse_batch(body)


def test_a_huge_request_uri_is_kept_capped_in_the_action():
    actions, ignored, _ = parse_batch_file(io.BytesIO(event_list(huge_event(7))))
    assert ignored == 0 and actions[0].uid == UID
    assert actions[0].uri.startswith("/api/<") and len(json.dumps(actions[0].uri)) <= 130


@pytest.mark.parametrize(
    "body,why",
    [
        (b"not json at all", "not JSON"),
        (b'{"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [{"broken": ', "not JSON"),
        (event_list(audit_event(1), kind="PodList"), "not an audit.k8s.io EventList"),
        (event_list(audit_event(1), api_version="v1"), "is not audit.k8s.io/v1"),
        (b'{"kind": "EventList", "apiVersion": "audit.k8s.io/v1"}', "not an audit.k8s.io EventList"),
        (event_list(audit_event(1), {"stage": "ResponseComplete"}), r"items\[1\]"),
    ],
    ids=[
        "not JSON",
        "cut off in the middle of an event",
        "another kind",
        "another API group",
        "no items",
        "one malformed event refuses the whole batch",
    ],
)
def test_a_spooled_batch_that_is_not_kube_apiservers_is_refused_whole(body, why):
    with pytest.raises(BadBatch, match=why):
        parse_batch_file(io.BytesIO(body))
