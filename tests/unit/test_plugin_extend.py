"""`kubectl breakglass extend` and `approve --extension`: the objects they file."""

from __future__ import annotations

import pytest

from breakglass.plugin.cli import build_parser
from breakglass.plugin.commands import approval_body, extension_body
from breakglass.plugin.errors import CliError


def test_extend_files_an_extension_naming_the_request_duration_and_reason():
    args = build_parser().parse_args(["-n", "team-a", "extend", "r1", "--by", "30m", "--reason", "still migrating"])
    body = extension_body(args, "team-a")
    assert body["kind"] == "BreakGlassExtension"
    assert body["spec"] == {"request": "r1", "by": "30m", "reason": "still migrating"}
    assert "requester" not in body["spec"]  # stamped by admission


def test_extend_refuses_a_malformed_duration_before_calling_the_cluster():
    args = build_parser().parse_args(["extend", "r1", "--by", "soon", "--reason", "still migrating"])
    with pytest.raises(CliError, match="--by"):
        extension_body(args, "team-a")


def test_approve_with_extension_answers_the_extension():
    args = build_parser().parse_args(["approve", "r1", "--extension", "r1-ext-abc"])
    assert approval_body(args, "team-a", "Approve")["spec"] == {
        "request": "r1",
        "decision": "Approve",
        "extension": "r1-ext-abc",
    }
