"""The request lifecycle from kubectl: request, approve, deny, review, revoke, list, status, token
(`usage` is in usage.py; `review` prints its summary first).

Each command takes the parsed args and a Client and returns the exit code; CliError says what failed.
"""

from __future__ import annotations

import base64
import sys
import time
from typing import Any

from .. import api
from ..domain.durations import DurationError, parse_duration, to_rfc3339, utcnow
from ..domain.scheduling import StartAtError, parse_start_at
from ..tls import write_private
from .errors import NOT_OK, OK, TIMEOUT, USAGE, CliError, try_or
from .output import REQUEST_HEADERS, emit, print_status, print_table, request_row
from .usage import print_review_summary


def start_at_value(text: str, now) -> str:
    """--start-at: an RFC 3339 time as given, or +DURATION from `now` (as RFC 3339 UTC)."""
    if text.startswith("+"):
        try:
            return to_rfc3339(now + parse_duration(text[1:]))
        except DurationError as exc:
            raise CliError(f"--start-at: {exc}", USAGE) from None
    try:
        parse_start_at(text)
    except StartAtError as exc:
        raise CliError(f"--start-at: {exc} or +DURATION (e.g. +2h)", USAGE) from None
    return text


def request_body(args, namespace: str, now=None) -> dict[str, Any]:
    """The BreakGlassRequest `request` files (requester and groups are stamped by admission)."""
    for d in filter(None, [args.duration]):
        try:
            parse_duration(d)
        except DurationError as exc:
            raise CliError(f"--duration: {exc}", USAGE) from None
    start_at = getattr(args, "start_at", None)
    start_at = start_at_value(start_at, now or utcnow()) if start_at else None
    name = args.name or f"{args.policy}-{time.strftime('%Y%m%d%H%M%S')}"
    spec: dict[str, Any] = {"policy": args.policy, "reason": args.reason}
    for key, value in (("ticket", args.ticket), ("duration", args.duration)):
        if value:
            spec[key] = value
    if args.namespace_access:
        spec["namespaces"] = args.namespace_access
    if args.role:
        spec["clusterRoles"] = args.role
    if args.scope:
        spec["scopes"] = args.scope
    if args.audience:
        spec["audiences"] = args.audience
    if args.emergency:
        spec["emergency"] = True
    if start_at:
        spec["startAt"] = start_at
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND_REQUEST,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def cmd_request(args, client) -> int:
    body = request_body(args, client.namespace)
    created = client.create_request(body)
    print(f"breakglassrequest {client.namespace}/{created['metadata']['name']} created", file=sys.stderr)
    if not args.wait:
        print(created["metadata"]["name"])
        return OK
    return wait_issued(args, client, created["metadata"]["name"])


def wait_issued(args, client, name: str) -> int:
    """Poll until issued (print the token Secret's <namespace>/<name>), ended, or --timeout passes."""
    deadline = time.monotonic() + args.timeout
    last = None
    while time.monotonic() < deadline:
        req = client.get_request(name)
        status = req.get("status") or {}
        phase = status.get("phase")
        if phase != last:
            print(
                f"phase: {phase or 'Pending'}" + (f" ({status.get('message')})" if status.get("message") else ""),
                file=sys.stderr,
            )
            last = phase
        if phase == api.ACTIVE and status.get("secretRef"):
            print(f"{status['secretRef']['namespace']}/{status['secretRef']['name']}")
            return OK
        if phase in api.TERMINAL_PHASES:
            print(f"request {name} ended {phase}: {status.get('message', '')}", file=sys.stderr)
            return NOT_OK
        time.sleep(0.5)
    print(f"timed out after {args.timeout}s waiting for {name} to be issued", file=sys.stderr)
    return TIMEOUT


def approval_body(args, namespace: str, decision: str) -> dict[str, Any]:
    """The BreakGlassApproval approve/deny/review files (the approver is stamped by admission)."""
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND_APPROVAL,
        "metadata": {"generateName": f"{args.name}-", "namespace": namespace},
        "spec": {"request": args.name, "decision": decision},
    }
    if getattr(args, "comment", None):
        body["spec"]["comment"] = args.comment
    if getattr(args, "extension", None):  # an answer to a BreakGlassExtension of the request
        body["spec"]["extension"] = args.extension
    return body


def extension_body(args, namespace: str) -> dict[str, Any]:
    """The BreakGlassExtension `extend` files (requester and request uid are stamped by admission)."""
    try:
        parse_duration(args.by)
    except DurationError as exc:
        raise CliError(f"--by: {exc}", USAGE) from None
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND_EXTENSION,
        "metadata": {"generateName": f"{args.name[:40]}-ext-", "namespace": namespace},
        "spec": {"request": args.name, "by": args.by, "reason": args.reason},
    }


def cmd_extend(args, client) -> int:
    body = extension_body(args, client.namespace)
    client.get_request(args.name)
    created = client.create_extension(body)
    name = created["metadata"]["name"]
    print(
        f"breakglassextension {client.namespace}/{name} filed (+{args.by}); an approver runs "
        f"`kubectl breakglass -n {client.namespace} approve {args.name} --extension {name}`",
        file=sys.stderr,
    )
    print(name)
    return OK


def _decide(args, client, decision: str, checked: bool = False) -> int:
    if not checked:
        client.get_request(args.name)  # a clear "not found" before admission says it
    created = client.create_approval(approval_body(args, client.namespace, decision))
    what = f" extension {args.extension}" if getattr(args, "extension", None) else ""
    print(
        f"{decision.lower()} recorded for {client.namespace}/{args.name}{what} "
        f"(breakglassapproval {created['metadata']['name']}, approver {created['spec'].get('approver')})"
    )
    return OK


def cmd_approve(args, client) -> int:
    return _decide(args, client, "Approve")


def cmd_deny(args, client) -> int:
    return _decide(args, client, "Deny")


def cmd_review(args, client) -> int:
    """Show the reviewer what the grant did (usage summary and the last actions), then file the review."""
    print_review_summary(client.get_request(args.name), utcnow())
    print()
    return _decide(args, client, "Review", checked=True)


def cmd_revoke(args, client) -> int:
    client.get_request(args.name)
    client.revoke_request(args.name)
    print(f"breakglassrequest {client.namespace}/{args.name} revoked")
    return OK


def _policies_by_name(client) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in try_or(client.list_policies, [])}


def cmd_list(args, client) -> int:
    reqs = client.list_requests(args.all_namespaces)
    policies = _policies_by_name(client)
    now = utcnow()
    rows = [request_row(r, policies, now) for r in reqs]
    emit(args, reqs, lambda: print_table(rows, REQUEST_HEADERS))
    return OK


def cmd_status(args, client) -> int:
    req = client.get_request(args.name)
    policies = _policies_by_name(client)
    emit(args, req, lambda: print_status(req, policies, utcnow()))
    return OK


def cmd_token(args, client) -> int:
    req = client.get_request(args.name)
    st = req.get("status") or {}
    if st.get("phase") != api.ACTIVE or not st.get("secretRef"):
        when = f" before its start at {req['spec']['startAt']}" if st.get("phase") == api.SCHEDULED else ""
        raise CliError(f"request {args.name} is {st.get('phase', 'Pending')}: no token to show{when}", NOT_OK)
    secret = client.get_secret(st["secretRef"]["namespace"], st["secretRef"]["name"])
    data = secret.get("data") or {}
    if args.kubeconfig_out:
        if "kubeconfig" not in data:
            raise CliError("the token Secret has no kubeconfig (operator runs without --cluster-server)", NOT_OK)
        write_private(args.kubeconfig_out, base64.b64decode(data["kubeconfig"]))
        print(f"kubeconfig written to {args.kubeconfig_out} (expires {st.get('expiresAt')})", file=sys.stderr)
        return OK
    sys.stdout.write(base64.b64decode(data["token"]).decode() + "\n")
    return OK
