"""`kubectl breakglass`: request, extend, approve, deny, review, revoke, list, status, usage, token, verify,
audit, explain.

Exit codes: 0 ok; 1 the thing asked about is not ok (rejected, invalid token, broken audit chain,
explain says it would be rejected); 2 usage error; 3 cluster/API error; 4 not found; 5 timed out.

This module is the argument parser and the dispatch; the commands live in commands.py (the request
lifecycle), usage.py, verify.py, audit_verify.py and explain.py, cluster access in client.py, printing in output.py.
"""

from __future__ import annotations

import argparse
import sys

from .. import api
from .audit_verify import cmd_audit_verify
from .commands import (
    cmd_approve,
    cmd_deny,
    cmd_extend,
    cmd_list,
    cmd_request,
    cmd_review,
    cmd_revoke,
    cmd_status,
    cmd_token,
)
from .errors import API_ERROR, NOT_FOUND, NOT_OK, OK, TIMEOUT, USAGE, CliError
from .explain import cmd_explain
from .usage import cmd_usage
from .verify import cmd_verify

__all__ = [
    "API_ERROR",
    "NOT_FOUND",
    "NOT_OK",
    "OK",
    "TIMEOUT",
    "USAGE",
    "CliError",
    "build_parser",
    "cmd_audit_verify",
    "main",
]

COMMANDS = {
    "request": cmd_request,
    "extend": cmd_extend,
    "approve": cmd_approve,
    "deny": cmd_deny,
    "review": cmd_review,
    "revoke": cmd_revoke,
    "list": cmd_list,
    "status": cmd_status,
    "usage": cmd_usage,
    "token": cmd_token,
    "explain": cmd_explain,
}


def build_parser() -> argparse.ArgumentParser:
    def common_options(suppress: bool) -> argparse.ArgumentParser:
        # Sub-commands use SUPPRESS so `kubectl breakglass -n x list` keeps the top-level value.
        d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
        c = argparse.ArgumentParser(add_help=False)
        c.add_argument("--kubeconfig", default=d(None), help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
        c.add_argument("--context", default=d(None), help="kubeconfig context")
        c.add_argument("-n", "--namespace", default=d(None), help="namespace of the request (default: context's)")
        c.add_argument("-o", "--output", choices=["table", "json", "yaml"], default=d("table"), help="output format")
        return c

    common = common_options(True)
    p = argparse.ArgumentParser(
        prog="kubectl breakglass", description="Break-glass access from kubectl.", parents=[common_options(False)]
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("request", parents=[common], help="file a BreakGlassRequest")
    r.add_argument("--policy", required=True)
    r.add_argument("--reason", required=True)
    r.add_argument("--ticket")
    r.add_argument("--duration", help="e.g. 30m, 1h")
    r.add_argument("--namespace-access", nargs="+", default=[], metavar="NS", help="namespaces to grant access in")
    r.add_argument("--role", nargs="+", default=[], metavar="CLUSTERROLE", help="ClusterRoles to bind there")
    r.add_argument("--scope", nargs="+", default=[], help="free-form JWT scopes")
    r.add_argument("--audience", nargs="+", default=[], help="token audiences")
    r.add_argument("--emergency", action="store_true", help="issue at once (policy must allow); review follows")
    r.add_argument(
        "--start-at",
        metavar="TIME",
        help="scheduled start: RFC 3339 (2026-11-28T22:00:00Z) or +DURATION from now (+2h); "
        "approvals may come before it, the token is issued at it",
    )
    r.add_argument("--name", help="request name (default: <policy>-<timestamp>)")
    r.add_argument("--wait", action="store_true", help="wait until issued; print the Secret name")
    r.add_argument("--timeout", type=float, default=600, help="seconds --wait waits")
    for verb, helptext in (
        ("approve", "approve a request"),
        ("deny", "deny a request"),
        ("review", "close an emergency review (shows the grant's usage first)"),
        ("revoke", "revoke a grant now"),
        ("status", "show one request"),
        ("usage", "show what a grant did: request counts, limits left, the recent API actions"),
    ):
        c = sub.add_parser(verb, parents=[common], help=helptext)
        c.add_argument("name")
        if verb in ("approve", "deny", "review"):
            c.add_argument("--comment")
        if verb in ("approve", "deny"):
            c.add_argument("--extension", metavar="EXT", help="answer this BreakGlassExtension of the request instead")
    x = sub.add_parser("extend", parents=[common], help="ask for more time on your Active grant")
    x.add_argument("name")
    x.add_argument("--by", required=True, metavar="DURATION", help="how much longer, e.g. 30m")
    x.add_argument("--reason", required=True)
    lst = sub.add_parser("list", parents=[common], help="list requests")
    lst.add_argument("-A", "--all-namespaces", action="store_true")
    t = sub.add_parser("token", parents=[common], help="print an issued grant's token (or write its kubeconfig)")
    t.add_argument("name")
    t.add_argument("--kubeconfig-out", metavar="FILE", help="write a ready kubeconfig (mode 0600) instead")
    v = sub.add_parser("verify", parents=[common], help="verify a token; exit 1 with the precise reason")
    v.add_argument("token", nargs="?", help="the token, or - for stdin")
    v.add_argument("--secret", metavar="NS/NAME", help="read the token from this Secret")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--jwks", metavar="URL", help="JWKS URL (the operator's /openid/v1/jwks)")
    src.add_argument("--from-cluster", action="store_true", help="read JWKS and revocations from the cluster (default)")
    v.add_argument("--issuer", help="expected iss (default with --jwks: the URL's issuer)")
    v.add_argument("--audience", default="breakglass", help="expected audience (default breakglass)")
    v.add_argument("--ca-file", help="CA bundle for --jwks")
    v.add_argument("--insecure-skip-tls-verify", action="store_true")
    v.add_argument("--operator-namespace", default=api.DEFAULT_OPERATOR_NAMESPACE)
    a = sub.add_parser("audit", help="audit log tools")
    asub = a.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    av = asub.add_parser(
        "verify",
        parents=[common],
        help="verify a hash-chained audit log against the head the operator publishes; "
        "report the first broken link, a truncated tail or a re-sealed rewrite",
    )
    av.add_argument("file")
    av.add_argument(
        "--hmac-secret",
        help="HMAC key (or $BREAKGLASS_AUDIT_HMAC_SECRET; default: read the operator's Secret when allowed)",
    )
    av.add_argument(
        "--hmac-secret-name",
        default=api.AUDIT_HMAC_SECRET,
        help=f"Secret (key `hmac`) in the operator namespace holding the key (default "
        f"{api.AUDIT_HMAC_SECRET}; the chart's audit.hmacSecretName if set)",
    )
    av.add_argument(
        "--operator-namespace",
        default=api.DEFAULT_OPERATOR_NAMESPACE,
        help=f"where the operator publishes the head (default {api.DEFAULT_OPERATOR_NAMESPACE})",
    )
    av.add_argument("--offline", action="store_true", help="do not contact the cluster: chain (and HMAC) only")
    av.add_argument(
        "--segment",
        action="store_true",
        help="the file is a piece of the chain (rotated log, one container's stdout): its first "
        "record may continue earlier ones",
    )
    e = sub.add_parser("explain", parents=[common], help="simulate a request against the policies (creates nothing)")
    e.add_argument("-f", "--filename", required=True, help="request manifest, or - for stdin")
    e.add_argument("--as-user", help="simulate for this user instead of yourself")
    e.add_argument("--as-group", nargs="*", default=[], help="groups for --as-user")
    return p


def _client(args):
    from .client import Client  # kubernetes is loaded only by commands that talk to the cluster

    return Client(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return USAGE
    try:
        if args.command == "audit":
            if args.audit_command != "verify":
                parser.error("audit needs a subcommand: verify")
            return cmd_audit_verify(args, lambda: _client(args))
        if args.command == "verify":
            return cmd_verify(args, lambda: _client(args))
        return COMMANDS[args.command](args, _client(args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
