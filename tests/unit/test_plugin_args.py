"""`kubectl breakglass` argument parsing and dispatch: flags before or after the command, the objects
the commands file, and the exit codes of misuse, without a cluster (a fake Client stands in)."""

from __future__ import annotations

import base64

import pytest

from breakglass import api
from breakglass.plugin import cli
from breakglass.plugin.commands import approval_body, request_body
from breakglass.plugin.errors import API_ERROR, NOT_FOUND, NOT_OK, OK, TIMEOUT, USAGE, CliError


@pytest.mark.parametrize(
    "argv,expected",
    [
        (
            ["list"],
            {"namespace": None, "output": "table", "kubeconfig": None, "context": None, "all_namespaces": False},
        ),
        (["-n", "team-db", "list"], {"namespace": "team-db"}),
        (["list", "-n", "team-db"], {"namespace": "team-db"}),
        (["-n", "a", "list", "-n", "b"], {"namespace": "b"}),
        (
            ["-o", "json", "--context", "c", "--kubeconfig", "k", "status", "x"],
            {"output": "json", "context": "c", "kubeconfig": "k", "name": "x"},
        ),
        (["status", "x", "-o", "yaml"], {"output": "yaml"}),
        (["list", "-A"], {"all_namespaces": True}),
        (
            ["request", "--policy", "p", "--reason", "r"],
            {
                "wait": False,
                "timeout": 600,
                "namespace_access": [],
                "role": [],
                "scope": [],
                "audience": [],
                "emergency": False,
                "name": None,
                "ticket": None,
                "duration": None,
            },
        ),
        (
            [
                "request",
                "--policy",
                "p",
                "--reason",
                "r",
                "--namespace-access",
                "a",
                "b",
                "--role",
                "view",
                "edit",
                "--wait",
                "--timeout",
                "2.5",
            ],
            {"namespace_access": ["a", "b"], "role": ["view", "edit"], "timeout": 2.5},
        ),
        (["approve", "x", "--comment", "go"], {"name": "x", "comment": "go"}),
        (["deny", "x"], {"name": "x", "comment": None}),
        (["token", "x", "--kubeconfig-out", "f"], {"kubeconfig_out": "f"}),
        (
            ["verify", "tok"],
            {
                "token": "tok",
                "audience": "breakglass",
                "jwks": None,
                "from_cluster": False,
                "operator_namespace": api.DEFAULT_OPERATOR_NAMESPACE,
                "insecure_skip_tls_verify": False,
            },
        ),
        (["verify", "--secret", "ns/s", "--jwks", "https://x/openid/v1/jwks"], {"token": None, "secret": "ns/s"}),
        (
            ["audit", "verify", "f.log"],
            {
                "file": "f.log",
                "hmac_secret": None,
                "hmac_secret_name": api.AUDIT_HMAC_SECRET,
                "offline": False,
                "segment": False,
            },
        ),
        (
            ["explain", "-f", "-", "--as-user", "u", "--as-group", "a", "b"],
            {"filename": "-", "as_user": "u", "as_group": ["a", "b"]},
        ),
        (["explain", "-f", "r.yaml"], {"as_user": None, "as_group": []}),
    ],
    ids=[
        "list has the global defaults",
        "-n before the command",
        "-n after the command",
        "-n after the command wins",
        "global flags before the command",
        "-o after the command",
        "list -A",
        "request defaults",
        "request takes several namespaces and roles",
        "approve with a comment",
        "deny without a comment",
        "token --kubeconfig-out",
        "verify defaults",
        "verify from a Secret via a JWKS URL",
        "audit verify defaults",
        "explain as another user",
        "explain as yourself",
    ],
)
def test_flags_parse_to_these_values(argv, expected):
    args = vars(cli.build_parser().parse_args(argv))
    assert {k: args[k] for k in expected} == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["request", "--reason", "r"],
        ["request", "--policy", "p"],
        ["-o", "xml", "list"],
        ["approve"],
        ["verify", "--jwks", "u", "--from-cluster"],
        ["explain"],
        ["bogus"],
        ["request", "--policy", "p", "--reason", "r", "--timeout", "soon"],
    ],
    ids=[
        "request without a policy",
        "request without a reason",
        "an unknown output format",
        "approve without a name",
        "--jwks and --from-cluster together",
        "explain without a file",
        "an unknown command",
        "a timeout that is no number",
    ],
)
def test_malformed_command_lines_exit_2_with_usage(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(argv)
    assert exc.value.code == USAGE and "usage:" in capsys.readouterr().err


BASE = ["request", "--policy", "prod-db", "--reason", "primary is down"]


@pytest.mark.parametrize(
    "flags,spec",
    [
        ([], {"policy": "prod-db", "reason": "primary is down"}),
        (["--ticket", "INC-1", "--duration", "30m"], {"ticket": "INC-1", "duration": "30m"}),
        (["--namespace-access", "a", "b", "--role", "view"], {"namespaces": ["a", "b"], "clusterRoles": ["view"]}),
        (["--scope", "db:read", "--audience", "vault"], {"scopes": ["db:read"], "audiences": ["vault"]}),
        (["--emergency"], {"emergency": True}),
    ],
    ids=["policy and reason only", "ticket and duration", "namespaces and roles", "scopes and audiences", "emergency"],
)
def test_request_files_exactly_the_fields_given(flags, spec):
    body = request_body(cli.build_parser().parse_args(BASE + flags + ["--name", "n"]), "team-db")
    assert body == {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND_REQUEST,
        "metadata": {"name": "n", "namespace": "team-db"},
        "spec": {"policy": "prod-db", "reason": "primary is down", **spec},
    }


def test_a_request_without_a_name_is_named_after_its_policy_and_the_time():
    name = request_body(cli.build_parser().parse_args(BASE), "ns")["metadata"]["name"]
    assert name.startswith("prod-db-") and len(name) == len("prod-db-") + 14 and name[8:].isdigit()


def test_a_bad_duration_is_a_usage_error_before_anything_is_filed():
    with pytest.raises(CliError) as exc:
        request_body(cli.build_parser().parse_args(BASE + ["--duration", "soon"]), "ns")
    assert exc.value.code == USAGE and str(exc.value).startswith("--duration:")


@pytest.mark.parametrize(
    "argv,decision,spec",
    [
        (["approve", "r", "--comment", "go"], "Approve", {"request": "r", "decision": "Approve", "comment": "go"}),
        (["deny", "r"], "Deny", {"request": "r", "decision": "Deny"}),
        (["review", "r"], "Review", {"request": "r", "decision": "Review"}),
    ],
    ids=["approve with a comment", "deny", "review"],
)
def test_an_approval_names_the_request_and_the_decision(argv, decision, spec):
    body = approval_body(cli.build_parser().parse_args(argv), "team-db", decision)
    assert body["metadata"] == {"generateName": "r-", "namespace": "team-db"} and body["spec"] == spec


class FakeClient:
    """The Client the commands use, over a dict of requests; records what was filed."""

    def __init__(self, requests=None, secret=None):
        self.namespace, self.requests, self.secret, self.filed = "team-db", requests or {}, secret, []

    def get_request(self, name):
        if name not in self.requests:
            raise CliError(f"BreakGlassRequest {self.namespace}/{name} not found", NOT_FOUND)
        return self.requests[name]

    def create_request(self, body):
        self.filed.append(body)
        self.requests.setdefault(body["metadata"]["name"], body)
        return body

    def create_approval(self, body):
        self.filed.append(body)
        return {"metadata": {"name": "r-abc"}, "spec": {**body["spec"], "approver": "bob"}}

    def revoke_request(self, name):
        self.filed.append(("revoke", name))

    def list_policies(self):
        raise CliError("not allowed: policies", NOT_OK)

    def get_secret(self, namespace, name):
        return self.secret


ACTIVE = {
    "metadata": {"name": "r"},
    "spec": {},
    "status": {"phase": "Active", "secretRef": {"namespace": "breakglass-system", "name": "breakglass-token-u"}},
}
TOKEN_SECRET = {"data": {"token": base64.b64encode(b"a.b.c").decode()}}


@pytest.mark.parametrize(
    "argv,requests,code,stdout,stderr",
    [
        ([], {}, USAGE, "", "usage:"),
        (BASE + ["--name", "r"], {}, OK, "r\n", "breakglassrequest team-db/r created"),
        (
            BASE + ["--name", "r", "--wait", "--timeout", "5"],
            {"r": ACTIVE},
            OK,
            "breakglass-system/breakglass-token-u\n",
            "phase: Active",
        ),
        (
            BASE + ["--name", "r", "--wait", "--timeout", "5"],
            {"r": {"status": {"phase": "Denied", "message": "denied by bob"}}},
            NOT_OK,
            "",
            "request r ended Denied",
        ),
        (BASE + ["--name", "r", "--wait", "--timeout", "0"], {}, TIMEOUT, "", "timed out after 0.0s"),
        (BASE + ["--duration", "soon"], {}, USAGE, "", "error: --duration:"),
        (
            ["approve", "r"],
            {"r": ACTIVE},
            OK,
            "approve recorded for team-db/r (breakglassapproval r-abc, approver bob)",
            "",
        ),
        (["deny", "missing"], {}, NOT_FOUND, "", "error: BreakGlassRequest team-db/missing not found"),
        (["revoke", "r"], {"r": ACTIVE}, OK, "breakglassrequest team-db/r revoked", ""),
        (["revoke", "missing"], {}, NOT_FOUND, "", "not found"),
        (["token", "r"], {"r": ACTIVE}, OK, "a.b.c\n", ""),
        (["token", "r"], {"r": {"status": {"phase": "Revoked"}}}, NOT_OK, "", "request r is Revoked: no token to show"),
        (["token", "r"], {"r": {"status": {}}}, NOT_OK, "", "request r is Pending"),
        (["token", "r", "--kubeconfig-out", "/nonexistent/k"], {"r": ACTIVE}, NOT_OK, "", "has no kubeconfig"),
        (["verify"], {}, USAGE, "", "give a TOKEN"),
        (["verify", "--secret", "no-slash"], {}, USAGE, "", "--secret takes NAMESPACE/NAME"),
    ],
    ids=[
        "no command prints usage",
        "request prints the request's name",
        "request --wait prints the token Secret",
        "request --wait on a denied request exits 1",
        "request --wait times out with 5",
        "a bad duration is a usage error",
        "approve says who approved",
        "deny of an unknown request is not found",
        "revoke",
        "revoke of an unknown request is not found",
        "token prints the token",
        "token of a revoked request exits 1",
        "token of a pending request exits 1",
        "a Secret without a kubeconfig exits 1",
        "verify without a token",
        "verify --secret without a namespace",
    ],
)
def test_commands_print_and_exit_as_documented(monkeypatch, capsys, argv, requests, code, stdout, stderr):
    client = FakeClient(dict(requests), secret=TOKEN_SECRET)
    monkeypatch.setattr(cli, "_client", lambda args: client)
    monkeypatch.setattr("time.sleep", lambda s: None)
    assert cli.main(argv) == code
    out, err = capsys.readouterr()
    assert stdout in out and stderr in err, (out, err)


def test_a_cluster_that_cannot_be_reached_exits_3(monkeypatch, capsys):
    def unreachable(args):
        raise CliError("cannot load kubeconfig: nothing", API_ERROR)

    monkeypatch.setattr(cli, "_client", unreachable)
    assert cli.main(["list"]) == API_ERROR
    assert "error: cannot load kubeconfig" in capsys.readouterr().err


def test_audit_without_a_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["audit"])
    assert exc.value.code == USAGE and "audit needs a subcommand: verify" in capsys.readouterr().err


def test_ctrl_c_exits_130(monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_client", interrupted)
    assert cli.main(["list"]) == 130
