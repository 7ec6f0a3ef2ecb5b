"""What `kubectl breakglass` prints: tables, the status and explain views, and -o json|yaml."""

from __future__ import annotations

import datetime as dt
import json
import types

import pytest
import yaml

from breakglass.plugin import output

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
POLICIES = {"prod-db": {"spec": {"requiredApprovals": 2}}, "open": {"spec": {"requiredApprovals": 0}}}


def req(name="checkout", phase=None, policy="prod-db", approvals=(), **status):
    st = {**({"phase": phase} if phase else {}), **status}
    if approvals:
        st["approvals"] = [{"decision": d, "approver": a, "time": "t"} for a, d in approvals]
    return {
        "metadata": {"name": name, "namespace": "team-db"},
        "spec": {
            "policy": policy,
            "requester": "alice",
            "reason": "primary is down",
            "clusterRoles": ["view"],
            "namespaces": ["team-db"],
        },
        **({"status": st} if st else {}),
    }


@pytest.mark.parametrize(
    "status,expected",
    [
        ({}, "-"),
        ({"phase": "Active", "expiresAt": "2026-01-01T12:30:00Z"}, "30m"),
        ({"phase": "Active", "expiresAt": "2026-01-01T13:30:05Z"}, "1h30m5s"),
        ({"phase": "Active", "expiresAt": "2026-01-01T11:59:00Z"}, "expired"),
        ({"phase": "Revoked", "expiresAt": "2026-01-01T12:30:00Z"}, "-"),
        ({"phase": "Active"}, "-"),
    ],
    ids=[
        "nothing issued shows a dash",
        "an active grant shows the time left",
        "hours, minutes and seconds",
        "an active grant past its expiry says expired",
        "an ended grant shows a dash",
        "no expiry shows a dash",
    ],
)
def test_expires_in_shows_the_time_left_of_an_active_grant_only(status, expected):
    assert output.expires_in(status, NOW) == expected


@pytest.mark.parametrize(
    "request_body,expected",
    [
        (req(), "0/2"),
        (req(approvals=[("bob", "Approve")]), "1/2"),
        (req(approvals=[("bob", "Approve"), ("carol", "Deny"), ("dave", "Review")]), "1/2"),
        (req(policy="open"), "0/0"),
        (req(policy="unknown"), "0/1"),
    ],
    ids=[
        "no approvals yet",
        "one approval",
        "only Approve decisions count",
        "a policy needing none",
        "an unknown policy assumes one",
    ],
)
def test_approvals_are_shown_as_given_over_required(request_body, expected):
    assert output.approvals_text(request_body, POLICIES) == expected


@pytest.mark.parametrize(
    "rows,headers,expected",
    [
        ([], ["NAME", "PHASE"], ["NAME   PHASE"]),
        ([["a", "Pending"]], ["NAME", "PHASE"], ["NAME   PHASE", "a      Pending"]),
        (
            [["a-long-name", "-"], ["b", "Active"]],
            ["NAME", "PHASE"],
            ["NAME          PHASE", "a-long-name   -", "b             Active"],
        ),
        ([["x", ""]], ["NAME", "PHASE"], ["NAME   PHASE", "x"]),
    ],
    ids=[
        "no rows prints the headers",
        "columns are as wide as their widest cell",
        "every row is aligned to the widest",
        "trailing blanks are trimmed",
    ],
)
def test_tables_are_aligned_columns_three_spaces_apart(capsys, rows, headers, expected):
    output.print_table(rows, headers)
    assert capsys.readouterr().out.splitlines() == expected


@pytest.mark.parametrize(
    "request_body,expected",
    [
        (req(), ["team-db", "checkout", "Pending", "alice", "prod-db", "0/2", "-"]),
        (
            req(phase="Active", expiresAt="2026-01-01T12:10:00Z", approvals=[("bob", "Approve"), ("carol", "Approve")]),
            ["team-db", "checkout", "Active", "alice", "prod-db", "2/2", "10m"],
        ),
    ],
    ids=["a new request is Pending", "an issued request shows approvals and time left"],
)
def test_a_list_row_is_namespace_name_phase_requester_policy_approvals_expiry(request_body, expected):
    assert output.request_row(request_body, POLICIES, NOW) == expected


@pytest.mark.parametrize("fmt,parse", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_json_and_yaml_print_the_object_and_not_the_table(capsys, fmt, parse):
    data = {"b": 1, "a": [1, 2], "metadata": {"name": "x"}}
    output.emit(types.SimpleNamespace(output=fmt), data, lambda: pytest.fail("table printed"))
    assert parse(capsys.readouterr().out) == data


@pytest.mark.parametrize(
    "fmt,expected",
    [
        ("json", '{\n  "a": [\n    1\n  ],\n  "b": 1\n}\n'),
        ("yaml", "b: 1\na:\n- 1\n"),
    ],
    ids=["json is indented with sorted keys", "yaml keeps the object's order"],
)
def test_json_and_yaml_are_formatted_stably(capsys, fmt, expected):
    output.emit(types.SimpleNamespace(output=fmt), {"b": 1, "a": [1]}, lambda: None)
    assert capsys.readouterr().out == expected


def test_table_output_calls_the_table_view(capsys):
    output.emit(types.SimpleNamespace(output="table"), {"x": 1}, lambda: print("the table"))
    assert capsys.readouterr().out == "the table\n"


@pytest.mark.parametrize(
    "request_body,present,absent",
    [
        (
            req(),
            [
                "checkout   Pending   alice",
                "0/2",
                "reason:   primary is down",
                "grant:    roles ['view'] in ['team-db']; scopes []",
            ],
            ["secret:", "review:", "message:", "approval:"],
        ),
        (
            req(
                phase="Active",
                expiresAt="2026-01-01T12:10:00Z",
                message="token is valid",
                secretRef={"namespace": "breakglass-system", "name": "breakglass-token-u"},
                tokenId="jti-1",
                approvals=[("bob", "Approve")],
                review={"by": "carol"},
                conditions=[{"type": "Ready", "status": "True", "reason": "Issued", "message": "ok"}],
            ),
            [
                "Active",
                "10m",
                "message:  token is valid",
                "approval: Approve by bob at t ",
                "secret:   breakglass-system/breakglass-token-u (jti jti-1)",
                "review:   {'by': 'carol'}",
                "condition Ready=True (Issued): ok",
            ],
            [],
        ),
    ],
    ids=["a pending request shows its reason and grant", "an active request shows approvals, secret and conditions"],
)
def test_status_shows_the_row_then_the_details(capsys, request_body, present, absent):
    output.print_status(request_body, POLICIES, NOW)
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "PHASE", "REQUESTER", "POLICY", "APPROVALS", "EXPIRES", "IN"]
    for text in present:
        assert text in out, out
    for text in absent:
        assert text not in out, out


@pytest.mark.parametrize(
    "ok,claims,expected",
    [
        (
            True,
            {
                "sub": "alice",
                "scope": "db:read",
                "aud": ["breakglass"],
                "iss": "https://op",
                "jti": "j1",
                "breakglass": {"request": "team-db/checkout", "policy": "prod-db"},
            },
            [
                "VALID: Valid: signature ok",
                "subject:   alice   request: team-db/checkout   policy: prod-db",
                "scope:     db:read",
                "audience:  ['breakglass']   issuer: https://op   kid: k1",
                "jti:       j1   remaining: 5m",
            ],
        ),
        (False, None, ["INVALID: Valid: signature ok"]),
    ],
    ids=["a valid token shows who it is for", "an unreadable token shows only the verdict"],
)
def test_verify_prints_the_verdict_then_the_claims(capsys, ok, claims, expected):
    output.print_verification(ok, "Valid", "signature ok", "k1", claims, "5m")
    assert capsys.readouterr().out.splitlines() == expected


@pytest.mark.parametrize(
    "result,expected",
    [
        (
            {
                "allowed": True,
                "checks": [{"rule": "policy", "ok": True, "message": "policy 'p' is Ready"}],
                "requester": "alice",
                "groups": ["sre"],
                "approval": "no approval required: issued at once",
                "duration": "10m",
            },
            [
                "PASS  policy        policy 'p' is Ready",
                "",
                "requester: alice ['sre']",
                "approval:  no approval required: issued at once",
                "duration:  10m",
                "",
                "verdict:   would be admitted",
            ],
        ),
        (
            {
                "allowed": False,
                "checks": [{"rule": "policy", "ok": False, "message": "no such policy"}],
                "requester": "bob",
                "groups": [],
            },
            ["FAIL  policy        no such policy", "", "requester: bob []", "", "verdict:   would be REJECTED"],
        ),
    ],
    ids=["an admitted request shows the approval path and duration", "a rejected request shows the failing rule"],
)
def test_explain_prints_each_rule_then_the_verdict(capsys, result, expected):
    output.print_explanation(result)
    assert capsys.readouterr().out.splitlines() == expected
