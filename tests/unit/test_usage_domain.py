"""The usage trail's pure half (domain/usage.py) and where it meets the decisions: audit events become
actions, actions fold into a grant's ledger usage, use limits end a grant (decisions.within_use_limits),
a request may only lower its policy's limits (checks.check_limits), and the catch-up routing sends an
unaudited or idle grant to a reconcile."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from breakglass import api
from breakglass.domain import decisions as D
from breakglass.domain import limits as L
from breakglass.domain import usage as U
from breakglass.domain.catchup import needs_reconcile, summarize_request
from breakglass.domain.checks import evaluate_request, first_failure
from breakglass.domain.durations import to_rfc3339
from breakglass.domain.limits import Limits
from breakglass.domain.policy import Policy, RequestView
from breakglass.domain.usage import Action, MalformedEvent
from breakglass.ledger import Summary

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
UID = "6f1c3a9e-0000-4000-8000-000000000001"
USERNAME = api.grant_username("team-a", "r1", UID)
GRANT_GROUPS = [*api.grant_groups("prod"), "system:authenticated"]
DROP = object()  # a field left out of the event


def at(seconds: float) -> str:
    return to_rfc3339(T0 + dt.timedelta(seconds=seconds))


def event(**changes):
    """One kube-apiserver audit.k8s.io/v1 Event of the grant identity (Metadata level)."""
    body = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": "0b1c-audit-1",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/team-a/pods?limit=500",
        "verb": "list",
        "user": {"username": USERNAME, "uid": UID, "groups": list(GRANT_GROUPS)},
        "objectRef": {"resource": "pods", "namespace": "team-a", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": "2026-01-01T12:00:00.100000Z",
        "stageTimestamp": "2026-01-01T12:00:00.900000Z",
    }
    for key, value in changes.items():
        if value is DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def action(n: int, verb: str = "get", code: int = 200, seconds: float | None = None, audit_id: str | None = None):
    return Action(
        uid=UID,
        username=USERNAME,
        verb=verb,
        resource="pods",
        subresource="",
        namespace="team-a",
        name=f"p{n}",
        uri="",
        code=code,
        time=at(n if seconds is None else seconds),
        audit_id=f"audit-{n}" if audit_id is None else audit_id,
        key=f"key-{n}",
    )


# ------------------------------------------------------------------------------------ parse_event
def test_a_grant_identitys_completed_request_becomes_an_action_attributed_to_the_uid_in_its_username():
    got = U.parse_event(event())
    assert got == Action(
        uid=UID,
        username=USERNAME,
        verb="list",
        resource="pods",
        subresource="",
        namespace="team-a",
        name="",
        uri="",
        code=200,
        time="2026-01-01T12:00:00Z",
        audit_id="0b1c-audit-1",
        key=U.event_key(event()),
        received="2026-01-01T12:00:00Z",
    )


def test_the_event_key_is_not_the_client_chosen_audit_id_alone():
    """kube-apiserver copies a client's Audit-ID header into the event: two requests with the same
    auditID are still two keys; the same event resent is the same key."""
    first = event(auditID="chosen", requestReceivedTimestamp="2026-01-01T12:00:00.100000Z")
    second = event(auditID="chosen", requestReceivedTimestamp="2026-01-01T12:00:00.200000Z")
    assert U.event_key(first) != U.event_key(second)
    assert U.event_key(first) == U.event_key(dict(first))
    usage = U.fold(None, [U.parse_event(first), U.parse_event(second)])
    assert usage["requests"] == 2


@pytest.mark.parametrize(
    "stage,verb,subresource,code,counted",
    [
        ("ResponseStarted", "watch", "", 200, True),
        ("ResponseComplete", "watch", "", 200, False),
        ("ResponseStarted", "watch", "", 403, True),
        ("ResponseComplete", "watch", "", 403, False),
        ("ResponseStarted", "create", "exec", 101, True),
        ("ResponseComplete", "create", "exec", 101, False),
        ("ResponseComplete", "get", "log", 200, False),
        ("ResponseComplete", "list", "", 200, True),
    ],
    ids=[
        "a watch counts when its response starts",
        "and not again when it ends",
        "a refused watch counts at its ResponseStarted (kube-apiserver sends one whatever the code)",
        "and not again when it completes",
        "an exec session counts when it starts",
        "and not again when it ends",
        "logs are long-running too: counted at their start",
        "an ordinary request counts when it completes",
    ],
)
def test_a_long_running_request_counts_once_when_its_response_starts(stage, verb, subresource, code, counted):
    ref = {"resource": "pods", "namespace": "team-a", "name": "p", "subresource": subresource}
    got = U.parse_event(event(stage=stage, verb=verb, objectRef=ref, responseStatus={"code": code}))
    assert (got is not None) == counted


@pytest.mark.parametrize(
    "changes",
    [
        {"stage": "RequestReceived"},
        {"user": {"username": "alice", "groups": ["system:authenticated"]}},
        {"user": {"username": USERNAME, "groups": ["system:authenticated"]}},
        {"user": {"username": USERNAME}},
        {"user": {"username": "alice", "groups": GRANT_GROUPS}},
        {"user": {"username": "breakglass:team-a:r1", "groups": GRANT_GROUPS}},
        {"user": {"username": "breakglass:team-a:r1:" + UID + ":x", "groups": GRANT_GROUPS}},
        {"user": {"username": "breakglass:team-a::" + UID, "groups": GRANT_GROUPS}},
        {"user": {"username": "breakglass:", "groups": GRANT_GROUPS}},
        {"user": {"username": USERNAME, "groups": "breakglass:grant"}},
    ],
    ids=[
        "RequestReceived is not counted (only the completed or started response is)",
        "a user who is not a grant identity is ignored",
        "a grant-shaped username without the breakglass:grant group is ignored",
        "a grant-shaped username without any groups is ignored",
        "the grant group on a username that is not a grant's is ignored",
        "a username with the prefix but too few parts is ignored",
        "a username with the prefix but too many parts is ignored",
        "a username with the prefix and an empty part is ignored",
        "the bare prefix is ignored",
        "groups that are not a list are ignored",
    ],
)
def test_events_that_are_not_a_counted_use_by_a_grant_identity_are_no_action(changes):
    assert U.parse_event(event(**changes)) is None


@pytest.mark.parametrize(
    "raw",
    [
        "not an object",
        ["a", "list"],
        None,
        event(user=DROP),
        event(user="alice"),
        event(stage=DROP),
        event(stage=3),
        event(verb=DROP),
        event(verb=["get"]),
        event(stageTimestamp=DROP, requestReceivedTimestamp=DROP),
        event(stageTimestamp="yesterday"),
        event(responseStatus={"code": "200"}),
        event(responseStatus={"code": True}),
    ],
    ids=[
        "a string",
        "a list",
        "null",
        "no user",
        "a user that is not an object",
        "no stage",
        "a stage that is not a string",
        "no verb",
        "a verb that is not a string",
        "no timestamp at all",
        "an unreadable stageTimestamp",
        "a response code as text",
        "a response code that is a boolean",
    ],
)
def test_an_event_not_shaped_like_kube_apiservers_is_malformed(raw):
    with pytest.raises(MalformedEvent):
        U.parse_event(raw)


def test_a_non_resource_request_keeps_its_uri_and_has_no_resource():
    got = U.parse_event(event(objectRef=DROP, requestURI="/healthz", verb="get"))
    assert (got.uri, got.resource, got.namespace, got.verb) == ("/healthz", "", "", "get")


def test_a_resource_request_keeps_no_uri_so_query_strings_stay_out_of_the_trail():
    assert U.parse_event(event()).uri == ""


@pytest.mark.parametrize(
    "stage,status,code",
    [
        ("Panic", DROP, 500),
        ("Panic", {"code": 503}, 503),
        ("ResponseComplete", {"code": 201}, 201),
    ],
    ids=["a panic without a response status is a 500", "a panic keeps its code", "a completed request keeps its code"],
)
def test_the_response_code_of_an_action(stage, status, code):
    assert U.parse_event(event(stage=stage, responseStatus=status)).code == code


def test_a_missing_stage_timestamp_falls_back_to_when_the_request_was_received():
    got = U.parse_event(event(stageTimestamp=DROP, requestReceivedTimestamp="2026-01-01T12:05:00Z"))
    assert got.time == "2026-01-01T12:05:00Z"


def test_oversized_fields_are_cut_to_their_bounds():
    got = U.parse_event(
        event(verb="v" * 100, auditID="a" * 100, objectRef={"resource": "r" * 400, "name": 7, "namespace": None})
    )
    assert (len(got.verb), len(got.audit_id), len(got.resource), got.name, got.namespace) == (32, 40, 64, "", "")


def test_a_field_is_capped_by_its_bytes_as_json_whatever_the_characters():
    got = U.parse_event(event(objectRef={"resource": "pods", "namespace": "team-a", "name": "\U0001f600" * 200}))
    assert len(__import__("json").dumps(got.name)) <= 128 and got.name


# ------------------------------------------------------------------------------------ verb_class
@pytest.mark.parametrize(
    "verb,code,kind",
    [
        ("get", 200, U.READ),
        ("list", 200, U.READ),
        ("watch", 200, U.READ),
        ("get", 404, U.READ),
        ("create", 201, U.WRITE),
        ("update", 200, U.WRITE),
        ("patch", 200, U.WRITE),
        ("delete", 200, U.WRITE),
        ("deletecollection", 200, U.WRITE),
        ("delete", 404, U.WRITE),
        ("create", 403, U.DENIED),
        ("get", 403, U.DENIED),
    ],
)
def test_verb_class(verb, code, kind):
    assert U.verb_class(verb, code) == kind


# ------------------------------------------------------------------------------------ fold
@pytest.mark.parametrize(
    "verb,code,writes,denied",
    [
        ("get", 200, 0, 0),
        ("create", 201, 1, 0),
        ("patch", 200, 1, 0),
        ("delete", 302, 1, 0),
        ("delete", 404, 0, 0),
        ("update", 409, 0, 0),
        ("create", 500, 0, 0),
        ("create", 403, 0, 1),
        ("list", 403, 0, 1),
    ],
    ids=[
        "a read counts as a request only",
        "a 201 create counts as a write",
        "a 200 patch counts as a write",
        "a 3xx delete counts as a write",
        "a 404 delete is not a write",
        "a 409 update is not a write",
        "a 500 create is not a write",
        "a 403 counts as denied and not as a write",
        "a denied read counts as denied",
    ],
)
def test_what_one_action_adds_to_the_counters(verb, code, writes, denied):
    usage = U.fold(None, [action(1, verb, code)])
    assert (usage["requests"], usage["writes"], usage["denied"]) == (1, writes, denied)


def test_folding_nothing_into_nothing_gives_zeroed_counters():
    assert U.fold(None, []) == {"requests": 0, "denied": 0, "writes": 0, "audited": 0, "trail": []}


def test_first_and_last_use_are_the_earliest_and_latest_times_whatever_the_order():
    usage = U.fold(None, [action(1, seconds=30), action(2, seconds=10), action(3, seconds=20)])
    usage = U.fold(usage, [action(4, seconds=5), action(5, seconds=40)])
    assert (usage["firstUsedAt"], usage["lastUsedAt"]) == (at(5), at(40))


def test_sequence_numbers_continue_across_folds():
    usage = U.fold(None, [action(1), action(2)])
    usage = U.fold(usage, [action(3, "create", 201)])
    assert [i["seq"] for i in usage["trail"]] == [1, 2, 3]
    assert (usage["requests"], usage["writes"]) == (3, 1)


def test_the_trail_keeps_every_action_the_leader_has_not_audited_yet():
    usage = U.fold(None, [action(n) for n in range(1, U.LEDGER_TRAIL_MAX + 51)])
    assert usage["requests"] == U.LEDGER_TRAIL_MAX + 50
    assert [i["seq"] for i in usage["trail"]] == list(range(1, U.LEDGER_TRAIL_MAX + 51))


def test_once_audited_the_trail_keeps_the_most_recent_actions_while_the_counters_keep_everything():
    usage = U.fold(None, [action(n) for n in range(1, U.LEDGER_TRAIL_MAX + 51)])
    usage = U.fold(dict(usage, audited=U.LEDGER_TRAIL_MAX + 50), [action(U.LEDGER_TRAIL_MAX + 51)])
    assert usage["requests"] == U.LEDGER_TRAIL_MAX + 51
    assert len(usage["trail"]) == U.LEDGER_TRAIL_MAX
    assert (usage["trail"][0]["seq"], usage["trail"][-1]["seq"]) == (52, U.LEDGER_TRAIL_MAX + 51)


def test_a_smaller_trail_bound_is_honoured_for_audited_actions():
    usage = dict(U.fold(None, [action(n) for n in range(1, 6)]), audited=5)
    assert [i["seq"] for i in U.fold(usage, [action(6)], trail_max=2)["trail"]] == [5, 6]


def test_a_batch_share_sent_again_after_many_newer_actions_is_still_counted_once():
    first = [action(1), action(2)]
    usage = U.fold(None, first)
    for n in range(3, 3 + 3 * U.LEDGER_TRAIL_MAX, 10):  # 60 batches of 10: the auditIDs left the trail
        usage = dict(U.fold(usage, [action(n + i) for i in range(10)]), audited=n + 9)
    assert "audit-1" not in {i["auditID"] for i in usage["trail"]}
    assert U.fold(usage, first) == usage


def test_a_batch_sent_again_is_counted_once():
    batch = [action(1, "create", 201), action(2)]
    once = U.fold(None, batch)
    assert U.fold(once, batch) == once


def test_a_repeated_audit_id_within_one_batch_is_counted_once():
    usage = U.fold(None, [action(1, "create", 201), action(1, "create", 201), action(2)])
    assert (usage["requests"], usage["writes"]) == (2, 1)
    assert [i["auditID"] for i in usage["trail"]] == ["audit-1", "audit-2"]


def test_actions_without_an_audit_id_are_each_counted():
    usage = U.fold(None, [action(1, audit_id=""), action(2, audit_id="")])
    assert usage["requests"] == 2
    assert all("auditID" not in i for i in usage["trail"])


def test_folding_keeps_the_leaders_audited_mark():
    usage = U.fold({"requests": 2, "audited": 2, "trail": [{"seq": 1}, {"seq": 2}]}, [action(3)])
    assert (usage["requests"], usage["audited"]) == (3, 2)


def test_a_trail_item_leaves_out_empty_fields():
    item = U.parse_event(event(objectRef=DROP, requestURI="/version", verb="get")).trail_item(7)
    assert item == {
        "seq": 7,
        "time": "2026-01-01T12:00:00Z",
        "verb": "get",
        "code": 200,
        "uri": "/version",
        "auditID": "0b1c-audit-1",
        "key": U.event_key(event(objectRef=DROP, requestURI="/version", verb="get")),
    }


# ------------------------------------------------------------------------------------ unaudited
def usage_of(requests: int, audited: int, trail_max: int = U.LEDGER_TRAIL_MAX) -> dict:
    """`requests` actions of which `audited` are audited, the trail cut to `trail_max` (as a ledger
    entry from before the trail kept every unaudited action would hold it)."""
    usage = U.fold(None, [action(n) for n in range(1, requests + 1)])
    return dict(usage, audited=audited, trail=usage["trail"][-trail_max:])


@pytest.mark.parametrize(
    "usage,seqs,lost",
    [
        (None, [], 0),
        ({}, [], 0),
        (usage_of(3, 0), [1, 2, 3], 0),
        (usage_of(3, 1), [2, 3], 0),
        (usage_of(3, 3), [], 0),
        (usage_of(10, 2, trail_max=4), [7, 8, 9, 10], 4),
        (usage_of(U.LEDGER_TRAIL_MAX + 50, 10), list(range(51, U.LEDGER_TRAIL_MAX + 51)), 40),
        (usage_of(U.LEDGER_TRAIL_MAX + 50, 60), list(range(61, U.LEDGER_TRAIL_MAX + 51)), 0),
    ],
    ids=[
        "no usage: nothing",
        "empty usage: nothing",
        "nothing audited yet: every item",
        "items past the audited mark",
        "everything audited: nothing",
        "a small ring that overflowed: what it holds and how many it lost",
        "the ledger ring overflowed before the leader caught up: the lost count",
        "an overflowed ring whose lost part was already audited loses nothing",
    ],
)
def test_unaudited(usage, seqs, lost):
    items, missing = U.unaudited(usage)
    assert ([i["seq"] for i in items], missing) == (seqs, lost)


# ------------------------------------------------------------------------------------ limits
@pytest.mark.parametrize(
    "policy,request_,want",
    [
        (Limits(), Limits(), Limits()),
        (Limits(100, 10, "15m"), Limits(), Limits(100, 10, "15m")),
        (Limits(), Limits(5, 2, "1m"), Limits(5, 2, "1m")),
        (Limits(100, 10, "15m"), Limits(50, 20, "30m"), Limits(50, 10, "15m")),
        (Limits(100, None, "15m"), Limits(None, 3, "90s"), Limits(100, 3, "90s")),
        (Limits(None, None, "1h"), Limits(None, None, "59m59s"), Limits(None, None, "59m59s")),
        (Limits(None, None, "15m"), Limits(None, None, "banana"), Limits(None, None, "15m")),
        (Limits(), Limits(None, None, "banana"), Limits(None, None, "banana")),
    ],
    ids=[
        "no limits anywhere: none",
        "the policy's when the request sets none",
        "the request's when the policy sets none",
        "the lower of each",
        "None never wins over a number",
        "a shorter request idleTimeout wins",
        "an unreadable request idleTimeout never loosens the policy's",
        "an unreadable request idleTimeout alone is kept (limit_problems reports it, idleness fails closed)",
    ],
)
def test_effective_limits(policy, request_, want):
    assert L.effective_limits(policy, request_) == want


@pytest.mark.parametrize(
    "limits,problems",
    [
        (Limits(), []),
        (Limits(1, 1, "10s"), []),
        (Limits(0), ["spec.limits.maxRequests: must be a whole number of at least 1, not 0"]),
        (Limits(None, -1), ["spec.limits.maxWrites: must be a whole number of at least 1, not -1"]),
        (Limits(True), ["spec.limits.maxRequests: must be a whole number of at least 1, not True"]),
        (Limits("5"), ["spec.limits.maxRequests: must be a whole number of at least 1, not '5'"]),
        (Limits(2.5), ["spec.limits.maxRequests: must be a whole number of at least 1, not 2.5"]),
        (Limits(None, None, "9s"), ["spec.limits.idleTimeout: 9s is shorter than the minimum 10s"]),
    ],
    ids=[
        "no limits are fine",
        "the smallest allowed values are fine",
        "zero requests",
        "negative writes",
        "a boolean is not a count",
        "text is not a count",
        "a fraction is not a count",
        "an idleTimeout under 10s",
    ],
)
def test_limit_problems(limits, problems):
    assert L.limit_problems(limits, "spec.limits") == problems


def test_an_unreadable_idle_timeout_is_a_problem_naming_its_field():
    (problem,) = L.limit_problems(Limits(None, None, "banana"), "spec.limits")
    assert problem.startswith("spec.limits.idleTimeout: ") and "banana" in problem


@pytest.mark.parametrize(
    "request_,policy,keys",
    [
        (Limits(), Limits(10, 1, "1m"), []),
        (Limits(10, 1, "1m"), Limits(10, 1, "1m"), []),
        (Limits(11), Limits(10), ["maxRequests"]),
        (Limits(None, 2), Limits(None, 1), ["maxWrites"]),
        (Limits(None, None, "61s"), Limits(None, None, "1m"), ["idleTimeout"]),
        (Limits(11, 2, "2m"), Limits(10, 1, "1m"), ["maxRequests", "maxWrites", "idleTimeout"]),
        (Limits(1000, 1000, "24h"), Limits(), []),
        (Limits(None, None, "banana"), Limits(None, None, "1m"), []),
    ],
    ids=[
        "no request limits loosen nothing",
        "equal limits loosen nothing",
        "more requests than the policy",
        "more writes than the policy",
        "a longer idleTimeout than the policy",
        "every loosened limit is named",
        "a policy without limits is not loosened",
        "an unreadable idleTimeout is limit_problems' to report",
    ],
)
def test_loosens(request_, policy, keys):
    found = L.loosens(request_, policy)
    assert [m.split()[0].removeprefix("spec.limits.") for m in found] == keys


# ------------------------------------------------------------------------------------ idleness and limits
def grant_entry(limits=None, usage=None, state="Active", activated=0.0):
    entry = {"state": state, "activatedAt": at(activated), "expiresAt": at(3600)}
    if limits is not None:
        entry["limits"] = limits
    if usage is not None:
        entry["usage"] = usage
    return entry


@pytest.mark.parametrize(
    "entry,deadline",
    [
        (grant_entry({"idleTimeout": "15m"}, {"lastUsedAt": at(300)}), 300 + 900),
        (grant_entry({"idleTimeout": "15m"}), 900),
        (grant_entry({"idleTimeout": "15m"}, {"requests": 0}), 900),
        (grant_entry({"maxRequests": 5}, {"lastUsedAt": at(300)}), None),
        (grant_entry(), None),
        ({"limits": {"idleTimeout": "15m"}}, None),
        (grant_entry({"idleTimeout": "banana"}, {"lastUsedAt": at(300)}), 300),
    ],
    ids=[
        "idleTimeout after the last use",
        "idleTimeout after activation when never used",
        "idleTimeout after activation when the usage has no last use",
        "no idleTimeout: no deadline",
        "no limits: no deadline",
        "nothing to count from: no deadline",
        "an unreadable idleTimeout fails closed: idle at once",
    ],
)
def test_idle_deadline(entry, deadline):
    want = None if deadline is None else T0 + dt.timedelta(seconds=deadline)
    assert L.idle_deadline(entry) == want


@pytest.mark.parametrize(
    "limits,usage,now,reason",
    [
        ({"maxRequests": 3}, {"requests": 2}, 10, None),
        ({"maxRequests": 3}, {"requests": 3}, 10, L.USE_LIMIT_REACHED),
        ({"maxRequests": 3}, {"requests": 4}, 10, L.USE_LIMIT_REACHED),
        ({"maxWrites": 1}, {"requests": 9, "writes": 0}, 10, None),
        ({"maxWrites": 1}, {"requests": 9, "writes": 1}, 10, L.USE_LIMIT_REACHED),
        ({"idleTimeout": "1m"}, {"lastUsedAt": at(30)}, 89, None),
        ({"idleTimeout": "1m"}, {"lastUsedAt": at(30)}, 90, L.IDLE_TIMEOUT),
        ({"idleTimeout": "1m"}, {"lastUsedAt": at(30)}, 500, L.IDLE_TIMEOUT),
        ({"idleTimeout": "1m"}, None, 59, None),
        ({"idleTimeout": "1m"}, None, 60, L.IDLE_TIMEOUT),
        ({"maxRequests": 3, "idleTimeout": "1m"}, {"requests": 3, "lastUsedAt": at(0)}, 500, L.USE_LIMIT_REACHED),
        (None, {"requests": 10_000, "writes": 10_000}, 10_000, None),
    ],
    ids=[
        "under maxRequests: nothing",
        "maxRequests reached at equality",
        "maxRequests passed",
        "reads do not count against maxWrites",
        "maxWrites reached",
        "just before the idle deadline: nothing",
        "idle at the deadline",
        "idle after the deadline",
        "never used, before activation plus idleTimeout: nothing",
        "never used, at activation plus idleTimeout: idle",
        "a count limit is named before idleness",
        "no limits: never",
    ],
)
def test_limit_crossed(limits, usage, now, reason):
    crossed = L.limit_crossed(grant_entry(limits, usage), T0 + dt.timedelta(seconds=now))
    assert (crossed[0] if crossed else None) == reason


def test_the_limit_message_names_the_count_and_the_limit():
    _, message = L.limit_crossed(grant_entry({"maxWrites": 2}, {"writes": 2}), T0)
    assert message == "writes 2 reached the limit maxWrites 2; access is revoked"


def test_the_idle_message_says_when_it_was_last_used_or_that_it_never_was():
    _, used = L.limit_crossed(grant_entry({"idleTimeout": "1m"}, {"lastUsedAt": at(5)}), T0 + dt.timedelta(hours=1))
    _, never = L.limit_crossed(grant_entry({"idleTimeout": "1m"}), T0 + dt.timedelta(hours=1))
    assert f"last used at {at(5)}" in used and f"never used since {at(0)}" in never


# ------------------------------------------------------------------------------------ status.usage
def test_status_usage_shows_the_counters_the_limits_and_the_most_recent_trail():
    usage = usage_of(U.STATUS_TRAIL_MAX + 20, 0)
    usage["writes"], usage["denied"] = 4, 1
    entry = grant_entry({"maxRequests": 500, "idleTimeout": "15m"}, usage)
    out = U.status_usage(entry)
    assert out["trailTotal"] == out["requests"] == U.STATUS_TRAIL_MAX + 20
    assert (out["writes"], out["denied"]) == (4, 1)
    assert [i["seq"] for i in out["trail"]] == list(range(21, U.STATUS_TRAIL_MAX + 21))
    assert (out["firstUsedAt"], out["lastUsedAt"]) == (usage["firstUsedAt"], usage["lastUsedAt"])
    assert out["limits"] == {"maxRequests": 500, "idleTimeout": "15m"}
    out["limits"]["maxRequests"] = 1
    assert entry["limits"]["maxRequests"] == 500, "status gets a copy of the limits"


def test_status_usage_of_a_grant_with_limits_but_no_use_yet():
    assert U.status_usage(grant_entry({"maxRequests": 5})) == {
        "requests": 0,
        "denied": 0,
        "writes": 0,
        "trail": [],
        "trailTotal": 0,
        "limits": {"maxRequests": 5},
    }


@pytest.mark.parametrize(
    "entry",
    [None, {}, grant_entry(), grant_entry({}, {})],
    ids=["no entry", "an empty entry", "neither usage nor limits", "empty usage and limits"],
)
def test_no_status_usage_without_usage_or_limits(entry):
    assert U.status_usage(entry) is None


def test_limits_round_trip_through_the_spec_leaving_unset_ones_out():
    limits = Limits.from_spec({"maxRequests": 5, "idleTimeout": ""})
    assert limits == Limits(5, None, None) and limits.as_dict() == {"maxRequests": 5}
    assert Limits.from_spec(None) == Limits.from_spec("junk") == Limits()


# ------------------------------------------------------------------------------------ within_use_limits
EXPIRES = T0 + dt.timedelta(hours=1)
KEEP = D.Decision(D.ACTIVE, "Active", "token is valid", requeue_at=EXPIRES)


@pytest.mark.parametrize(
    "decision,entry,now,want",
    [
        (KEEP, grant_entry({"maxRequests": 2}, {"requests": 2}), 10, (D.REVOKE, L.USE_LIMIT_REACHED, None)),
        (KEEP, grant_entry({"maxWrites": 1}, {"writes": 1}), 10, (D.REVOKE, L.USE_LIMIT_REACHED, None)),
        (KEEP, grant_entry({"idleTimeout": "1m"}, {"lastUsedAt": at(0)}), 60, (D.REVOKE, L.IDLE_TIMEOUT, None)),
        (KEEP, grant_entry({"idleTimeout": "5m"}, {"lastUsedAt": at(60)}), 70, (D.ACTIVE, "Active", 360)),
        (KEEP, grant_entry({"idleTimeout": "2h"}, {"lastUsedAt": at(60)}), 70, (D.ACTIVE, "Active", 3600)),
        (KEEP, grant_entry({"maxRequests": 2}, {"requests": 1}), 70, (D.ACTIVE, "Active", 3600)),
        (KEEP, None, 70, (D.ACTIVE, "Active", 3600)),
        (
            D.Decision(D.ACTIVE, "Active", "token is valid"),
            grant_entry({"idleTimeout": "5m"}),
            70,
            (D.ACTIVE, "Active", 300),
        ),
        (
            D.Decision(D.SETTLE, "Revoked", "the grant is Revoked in the ledger"),
            grant_entry({"maxRequests": 2}, {"requests": 5}, state="Revoked"),
            10,
            (D.SETTLE, "Revoked", None),
        ),
        (
            D.Decision(D.EXPIRE, "DurationElapsed", "the granted duration has elapsed"),
            grant_entry({"idleTimeout": "1m"}),
            5000,
            (D.EXPIRE, "DurationElapsed", None),
        ),
    ],
    ids=[
        "an active grant at maxRequests is revoked",
        "an active grant at maxWrites is revoked",
        "an active grant idle at its deadline is revoked",
        "an idle deadline before the requeue moves the requeue to it",
        "an idle deadline after expiry leaves the requeue at expiry",
        "an active grant under its limits stays",
        "no ledger entry: untouched",
        "an active decision without a requeue gets the idle deadline",
        "a settle is untouched by limits",
        "an expiry is untouched by limits",
    ],
)
def test_within_use_limits(decision, entry, now, want):
    got = D.within_use_limits(decision, entry, T0 + dt.timedelta(seconds=now))
    action_, reason, requeue = want
    assert (got.action, got.reason) == (action_, reason)
    if requeue is not None:
        assert got.requeue_at == T0 + dt.timedelta(seconds=requeue)
    if action_ == D.REVOKE:
        assert got.message.endswith("access is revoked")


# ------------------------------------------------------------------------------------ check_limits
POLICY = Policy(
    name="prod",
    requester_groups=("sre",),
    allowed_namespaces=("team-*",),
    allowed_cluster_roles=("view",),
    max_duration="1h",
    limits=Limits(100, 10, "15m"),
)


def request_with(limits: Limits) -> RequestView:
    return RequestView(
        name="r1",
        namespace="team-a",
        requester="alice",
        requester_groups=("sre",),
        reason="database is down badly",
        duration="30m",
        namespaces=("team-a",),
        cluster_roles=("view",),
        policy="prod",
        limits=limits,
    )


@pytest.mark.parametrize(
    "limits,policy_limits,reason",
    [
        (Limits(), Limits(100, 10, "15m"), None),
        (Limits(50, 5, "5m"), Limits(100, 10, "15m"), None),
        (Limits(100, 10, "15m"), Limits(100, 10, "15m"), None),
        (Limits(101), Limits(100, 10, "15m"), "LimitsExceedPolicy"),
        (Limits(None, 11), Limits(100, 10, "15m"), "LimitsExceedPolicy"),
        (Limits(None, None, "16m"), Limits(100, 10, "15m"), "LimitsExceedPolicy"),
        (Limits(0), Limits(100, 10, "15m"), "LimitsExceedPolicy"),
        (Limits(None, None, "5s"), Limits(100, 10, "15m"), "LimitsExceedPolicy"),
        (Limits(None, None, "banana"), Limits(100, 10, "15m"), "LimitsExceedPolicy"),
        (Limits("7"), Limits(), "LimitsExceedPolicy"),
        (Limits(5, 1, "1m"), Limits(), None),
    ],
    ids=[
        "no request limits: ok",
        "lower request limits: ok",
        "equal request limits: ok",
        "maxRequests above the policy's is refused",
        "maxWrites above the policy's is refused",
        "an idleTimeout longer than the policy's is refused",
        "a zero maxRequests is refused",
        "an idleTimeout under 10s is refused",
        "an unreadable idleTimeout is refused",
        "a count given as text is refused even without policy limits",
        "a request may set limits its policy does not have",
    ],
)
def test_a_request_may_only_lower_its_policys_use_limits(limits, policy_limits, reason):
    policy = dataclasses.replace(POLICY, limits=policy_limits)
    failure = first_failure(evaluate_request(request_with(limits), policy))
    assert (failure.reason if failure else None) == reason
    if failure:
        assert failure.rule == "limits" and "spec.limits." in failure.message


def test_request_limits_are_read_from_the_resource_spec():
    view = RequestView.from_resource({"metadata": {"name": "r1"}, "spec": {"limits": {"maxRequests": 500}}})
    assert view.limits == Limits(500)
    failure = first_failure(evaluate_request(dataclasses.replace(request_with(Limits()), limits=view.limits), POLICY))
    assert failure.reason == "LimitsExceedPolicy" and "500 exceeds the policy's 100" in failure.message


# ------------------------------------------------------------------------------------ catch-up routing
NOW = T0.timestamp()
SUMMARY = Summary(UID, "team-a", "r1", "Active", "jti-1", "k1", "prod", NOW + 600, False, False, "5", ("bg", "s", "u"))
ACTIVE_REQUEST = summarize_request(
    {
        "metadata": {"namespace": "team-a", "name": "r1", "uid": UID, "resourceVersion": "7", "generation": 1},
        "spec": {"policy": "prod"},
        "status": {"phase": "Active", "observedGeneration": 1},
    }
)


@pytest.mark.parametrize(
    "changes,why",
    [
        ({}, None),
        ({"uses": 3, "audited": 3}, None),
        ({"uses": 3, "audited": 2}, "use or token reuse not yet audited"),
        ({"reuses": 1, "reported": 0}, "use or token reuse not yet audited"),
        ({"idle_deadline": NOW + 1}, None),
        ({"idle_deadline": NOW}, "idle timeout reached"),
        ({"idle_deadline": NOW - 1}, "idle timeout reached"),
    ],
    ids=[
        "no use: settled",
        "every use audited: settled",
        "a use not audited yet: reconcile",
        "a token reuse not reported yet: reconcile",
        "before the idle deadline: settled",
        "at the idle deadline: reconcile",
        "past the idle deadline: reconcile",
    ],
)
def test_the_catch_up_routes_unaudited_use_and_idle_grants_to_a_reconcile(changes, why):
    grant = SUMMARY._replace(**changes)
    assert needs_reconcile(ACTIVE_REQUEST, grant, NOW, lambda kid: kid == "k1", secret_present=True) == why


def test_counting_never_stops_when_the_leader_is_far_behind_only_the_trail_is_bounded():
    usage = U.fold(None, [action(n) for n in range(1, U.UNAUDITED_MAX + 301)])
    assert usage["requests"] == U.UNAUDITED_MAX + 300
    assert len(usage["trail"]) == U.UNAUDITED_MAX
    items, lost = U.unaudited(usage)
    assert (len(items), lost) == (U.UNAUDITED_MAX, 300), "the gap is recorded as used-unrecorded"
