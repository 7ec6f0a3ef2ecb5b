"""`kubectl breakglass usage NAME` and the usage summary `review` prints: what a grant's identity did,
read from the request's status.usage (written by the operator), without a cluster (the FakeClient of
the plugin's argument tests stands in)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml
from test_plugin_args import FakeClient

from breakglass.plugin import cli, usage
from breakglass.plugin.errors import NOT_FOUND, OK

NOW = dt.datetime(2026, 11, 29, 22, 40, 19, tzinfo=dt.UTC)  # 10s after the last use below


def entry(seq, verb="get", resource="pods", namespace="app", name="", code=200, subresource="", uri=None):
    e = {
        "seq": seq,
        "time": f"2026-11-29T22:40:{seq:02d}Z",
        "verb": verb,
        "resource": resource,
        "subresource": subresource,
        "namespace": namespace,
        "name": name,
        "code": code,
    }
    return {**e, "uri": uri} if uri else e


TRAIL = [
    entry(1, "list", "pods"),
    entry(2, "get", "secrets", name="db", code=403),
    entry(3, "get", "", namespace="", uri="/api"),
    entry(9, "patch", "deployments", name="web"),
]
USAGE = {
    "requests": 4,
    "denied": 1,
    "writes": 1,
    "firstUsedAt": "2026-11-29T22:40:01Z",
    "lastUsedAt": "2026-11-29T22:40:09Z",
    "limits": {"maxRequests": 5, "maxWrites": 2, "idleTimeout": "20s"},
    "trail": TRAIL,
    "trailTotal": 4,
}


def req(name="checkout", phase="Active", usage_=None, **status):
    st = {"phase": phase, **status, **({"usage": usage_} if usage_ is not None else {})}
    return {"metadata": {"name": name, "namespace": "team-db"}, "spec": {"policy": "prod-db"}, "status": st}


@pytest.fixture
def run(monkeypatch, capsys):
    """cli.main(argv) against a FakeClient holding `requests`, at NOW: (exit code, stdout, stderr, client)."""
    monkeypatch.setattr(usage, "utcnow", lambda: NOW)

    def run_(argv, requests):
        client = FakeClient(dict(requests))
        monkeypatch.setattr(cli, "_client", lambda args: client)
        code = cli.main(argv)
        out, err = capsys.readouterr()
        return code, out, err, client

    return run_


def test_usage_prints_the_trail_oldest_first_with_limits_left(run):
    shuffled = {**USAGE, "trail": [TRAIL[2], TRAIL[0], TRAIL[3], TRAIL[1]]}
    code, out, err, _ = run(["usage", "checkout"], {"checkout": req(usage_=shuffled)})
    assert (code, err) == (OK, "")
    assert out.splitlines() == [
        "usage of team-db/checkout (Active)",
        "requests:  4   denied: 1   writes: 1",
        "used:      first 2026-11-29T22:40:01Z   last 2026-11-29T22:40:09Z (10s ago)",
        "limits:    maxRequests 5 (1 left), maxWrites 2 (1 left), idleTimeout 20s (10s since last use, 10s left)",
        "",
        "SEQ   TIME                   VERB    RESOURCE      NAMESPACE   NAME   CODE",
        "1     2026-11-29T22:40:01Z   list    pods          app         -      200",
        "2     2026-11-29T22:40:02Z   get     secrets       app         db     403",
        "3     2026-11-29T22:40:03Z   get     /api          -           -      200",
        "9     2026-11-29T22:40:09Z   patch   deployments   app         web    200",
    ]


@pytest.mark.parametrize(
    "counts,limits,expected",
    [
        (
            {"requests": 4, "writes": 1},
            {"maxRequests": 5, "maxWrites": 2},
            ["maxRequests 5 (1 left)", "maxWrites 2 (1 left)"],
        ),
        ({"requests": 5, "writes": 0}, {"maxRequests": 5}, ["maxRequests 5 (0 left)"]),
        (
            {"requests": 7, "writes": 3},
            {"maxRequests": 5, "maxWrites": 2},
            ["maxRequests 5 (0 left)", "maxWrites 2 (0 left)"],
        ),
        ({}, {"maxWrites": 2}, ["maxWrites 2 (2 left)"]),
        ({"requests": 3}, {"idleTimeout": "5m"}, []),
        ({"requests": 3}, None, []),
    ],
    ids=[
        "left is the limit minus what was used",
        "a limit used up has none left",
        "counts past the limit never show a negative",
        "nothing used yet leaves the whole limit",
        "an idle timeout alone is no count limit",
        "no limits at all",
    ],
)
def test_limits_left_is_the_limit_minus_what_was_used(counts, limits, expected):
    assert usage.limit_texts({**counts, **({"limits": limits} if limits is not None else {})}) == expected


@pytest.mark.parametrize(
    "phase,last_used,expected",
    [
        ("Active", "2026-11-29T22:40:09Z", "idleTimeout 20s (10s since last use, 10s left)"),
        ("Active", "2026-11-29T22:39:00Z", "idleTimeout 20s (1m19s since last use, due now)"),
        ("Revoked", "2026-11-29T22:39:00Z", "idleTimeout 20s (1m19s since last use)"),
        ("Active", None, "idleTimeout 20s (not used yet)"),
    ],
    ids=[
        "an active grant shows the idle time left",
        "an active grant idle past its timeout is due",
        "an ended grant shows only the time since last use",
        "a grant never used says so",
    ],
)
def test_the_idle_timeout_shows_the_time_since_the_last_use(phase, last_used, expected):
    u = {"limits": {"idleTimeout": "20s"}, **({"lastUsedAt": last_used} if last_used else {})}
    assert usage.idle_text(u, phase, NOW) == expected


@pytest.mark.parametrize(
    "e,expected",
    [
        (entry(1, resource="pods"), "pods"),
        (entry(1, resource="pods", subresource="log"), "pods/log"),
        (entry(1, resource="", namespace="", uri="/api"), "/api"),
        (entry(1, resource="", namespace="", uri="/apis/apps/v1?timeout=32s"), "/apis/apps/v1?timeout=32s"),
        (entry(1, resource=""), "-"),
    ],
    ids=[
        "a resource",
        "a subresource follows its resource",
        "a non-resource request shows its uri",
        "the uri is shown as recorded",
        "neither resource nor uri is a dash",
    ],
)
def test_the_resource_column_shows_subresources_and_the_uri_of_non_resource_requests(e, expected):
    assert usage.resource_text(e) == expected


def test_a_non_resource_request_row_has_no_namespace_or_name():
    assert usage.trail_row(entry(3, "get", "", namespace="", uri="/version", code=200)) == [
        "3",
        "2026-11-29T22:40:03Z",
        "get",
        "/version",
        "-",
        "-",
        "200",
    ]


TRUNCATED = 'showing the last 4 of 120 actions; the full trail is in the operator\'s audit log (event "used")'


@pytest.mark.parametrize(
    "total,expected",
    [
        (4, None),
        (None, None),
        (120, TRUNCATED),
    ],
    ids=[
        "the whole trail is shown",
        "no total counts the trail",
        "a trail cut to the last actions says where the rest is",
    ],
)
def test_usage_says_when_the_trail_is_only_the_last_actions(run, total, expected):
    u = {**USAGE, "requests": 120, **({"trailTotal": total} if total else {})}
    if total is None:
        del u["trailTotal"]
    _, out, _, _ = run(["usage", "checkout"], {"checkout": req(usage_=u)})
    last = out.splitlines()[-1]
    if expected is None:
        assert last.startswith("9 ") and "showing the last" not in out
    else:
        assert last == expected


@pytest.mark.parametrize(
    "request_body,expected",
    [
        (req(), "no use recorded yet"),
        (req(usage_={"requests": 0, "limits": {"maxRequests": 5}}), "no use recorded yet"),
        (req(phase="Expired", issuedAt="2026-11-29T22:00:00Z"), "no use recorded yet"),
        (req(phase="Pending"), "no use recorded yet: the request has not become Active (it is Pending)"),
        (req(phase="Scheduled"), "no use recorded yet: the request has not become Active (it is Scheduled)"),
        (req(phase="Denied"), "no use recorded: the request never became Active (it is Denied)"),
        (req(phase="Revoked"), "no use recorded: the request never became Active (it is Revoked)"),
    ],
    ids=[
        "an active grant without usage",
        "an active grant with zero requests",
        "an issued grant that expired unused",
        "a pending request is not active yet",
        "a scheduled request is not active yet",
        "a denied request never became active",
        "a request revoked before issue never became active",
    ],
)
def test_no_usage_yet_says_so_and_prints_no_trail(run, request_body, expected):
    code, out, _, _ = run(["usage", "checkout"], {"checkout": request_body})
    lines = out.splitlines()
    assert code == OK and lines[1] == expected
    assert "SEQ" not in out and "requests:" not in out


def test_a_grant_not_used_yet_still_shows_its_whole_limits():
    lines = usage.summary_lines(req(usage_={"requests": 0, "limits": {"maxRequests": 5, "idleTimeout": "1m"}}), NOW)
    assert lines[1:] == ["no use recorded yet", "limits:    maxRequests 5 (5 left), idleTimeout 1m (not used yet)"]


@pytest.mark.parametrize(
    "u,expected",
    [
        ({"requests": 1, "trail": [entry(1)], "trailTotal": 1}, "limits:    none"),
        ({"requests": 1, "limits": {"maxWrites": 0}}, "limits:    maxWrites 0 (0 left)"),
    ],
    ids=["a grant without limits says none", "a zero limit is a limit"],
)
def test_the_limits_line_is_always_there_once_the_operator_reports_usage(u, expected):
    assert expected in usage.summary_lines(req(usage_=u), NOW)


@pytest.mark.parametrize(
    "reason,message",
    [
        ("UseLimitReached", "maxRequests 5 reached"),
        ("IdleTimeout", "not used for 20s"),
    ],
)
def test_the_summary_says_why_a_grant_was_revoked_for_its_limits(reason, message):
    revoked = req(
        phase="Revoked",
        usage_={**USAGE, "requests": 5},
        conditions=[
            {"type": "Issued", "status": "False", "reason": "TokenRevoked", "message": "deleted"},
            {"type": "Revoked", "status": "True", "reason": reason, "message": message},
        ],
    )
    lines = usage.summary_lines(revoked, NOW)
    assert lines[0] == "usage of team-db/checkout (Revoked)"
    assert lines[-1] == f"revoked:   {reason}: {message}"
    assert lines[-2] == "limits:    maxRequests 5 (0 left), maxWrites 2 (1 left), idleTimeout 20s (10s since last use)"


@pytest.mark.parametrize("fmt,parse", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_usage_json_and_yaml_print_status_usage_as_is(run, fmt, parse):
    code, out, _, _ = run(["usage", "checkout", "-o", fmt], {"checkout": req(usage_=USAGE)})
    assert code == OK and parse(out) == USAGE


def test_usage_json_of_a_request_without_usage_is_an_empty_object(run):
    assert run(["usage", "checkout", "-o", "json"], {"checkout": req(phase="Pending")})[1] == "{}\n"


def test_usage_of_a_missing_request_exits_4_saying_it_is_not_found(run):
    code, out, err, _ = run(["-n", "team-db", "usage", "nope"], {})
    assert (code, out) == (NOT_FOUND, "")
    assert err == "error: BreakGlassRequest team-db/nope not found\n"


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["usage", "r"], {"name": "r", "namespace": None, "output": "table"}),
        (["usage", "r", "-n", "team-db", "-o", "json"], {"name": "r", "namespace": "team-db", "output": "json"}),
        (["-o", "yaml", "usage", "r"], {"name": "r", "output": "yaml"}),
    ],
    ids=["defaults", "namespace and output after the name", "output before the command"],
)
def test_usage_takes_a_name_a_namespace_and_an_output_format(argv, expected):
    args = vars(cli.build_parser().parse_args(argv))
    assert {k: args[k] for k in expected} == expected


def test_review_prints_the_usage_summary_and_the_last_five_actions_before_filing(run):
    long = {**USAGE, "requests": 70, "trail": [entry(i) for i in range(21, 71)], "trailTotal": 70}
    code, out, _, client = run(["review", "checkout", "--comment", "ok"], {"checkout": req(usage_=long)})
    lines = out.splitlines()
    assert code == OK and [b["spec"]["decision"] for b in client.filed] == ["Review"]
    assert lines[:2] == ["usage of team-db/checkout (Active)", "requests:  70   denied: 1   writes: 1"]
    table = lines[lines.index(next(x for x in lines if x.startswith("SEQ"))) + 1 :]
    assert [row.split()[0] for row in table[:5]] == ["66", "67", "68", "69", "70"]
    assert table[5] == (
        "showing the last 5 of 70 actions; `kubectl breakglass -n team-db usage checkout` shows the last 50; "
        'the full trail is in the operator\'s audit log (event "used")'
    )
    assert lines[-1] == "review recorded for team-db/checkout (breakglassapproval r-abc, approver bob)"


def test_review_of_a_grant_never_used_says_so_and_still_files_the_review(run):
    code, out, _, client = run(["review", "checkout"], {"checkout": req(issuedAt="2026-11-29T22:00:00Z")})
    assert code == OK and len(client.filed) == 1
    assert out.splitlines()[:2] == ["usage of team-db/checkout (Active)", "no use recorded yet"]
    assert "SEQ" not in out


def test_review_of_a_short_trail_shows_it_whole_without_a_truncation_note(run):
    _, out, _, _ = run(["review", "checkout"], {"checkout": req(usage_=USAGE)})
    assert [x.split()[0] for x in out.splitlines() if x[:1].isdigit()] == ["1", "2", "3", "9"]
    assert "showing the last" not in out


def test_review_of_a_missing_request_files_nothing(run):
    code, out, _, client = run(["review", "nope"], {})
    assert (code, out, client.filed) == (NOT_FOUND, "", [])
