"""How the plugin prints: -o json|yaml dumps the object, table prints the human view.

The table views are functions of plain data (and `now`), so they can be tested without a cluster.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import yaml

from .. import api
from ..domain.durations import format_duration, parse_rfc3339
from ..domain.scheduling import StartAtError, parse_start_at

REQUEST_HEADERS = ["NAMESPACE", "NAME", "PHASE", "REQUESTER", "POLICY", "APPROVALS", "EXPIRES IN"]
STATUS_HEADERS = ["NAME", "PHASE", "REQUESTER", "POLICY", "APPROVALS", "EXPIRES IN"]


def emit(args, data: Any, table: Callable[[], None]) -> None:
    """`data` as JSON or YAML when -o asks for it, else the human view `table()` prints."""
    if args.output == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    elif args.output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        table()


def print_table(rows: list[list[Any]], headers: list[str]) -> None:
    widths = (
        [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
        if rows
        else [len(h) for h in headers]
    )
    for row in [headers] + rows:
        print("   ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def expires_in(status: dict[str, Any], now: dt.datetime) -> str:
    if not status.get("expiresAt"):
        return "-"
    left = (parse_rfc3339(status["expiresAt"]) - now).total_seconds()
    if status.get("phase") != api.ACTIVE:
        return "-"
    return format_duration(dt.timedelta(seconds=max(0, int(left)))) if left > 0 else "expired"


def starts_in(req: dict[str, Any], now: dt.datetime) -> str | None:
    """A Scheduled request: how long until its token is issued (spec.startAt)."""
    start = (req.get("spec") or {}).get("startAt")
    if (req.get("status") or {}).get("phase") != api.SCHEDULED or not start:
        return None
    try:
        left = (parse_start_at(start) - now).total_seconds()
    except StartAtError:
        return None
    return f"starts in {format_duration(dt.timedelta(seconds=int(left)))}" if left >= 1 else "starting"


def approvals_text(req: dict[str, Any], policies: dict[str, dict[str, Any]]) -> str:
    pol = policies.get((req.get("spec") or {}).get("policy"), {})
    need = (pol.get("spec") or {}).get("requiredApprovals", 1)
    got = len([a for a in (req.get("status") or {}).get("approvals") or [] if a.get("decision") == "Approve"])
    return f"{got}/{need}"


def request_row(req: dict[str, Any], policies: dict[str, dict[str, Any]], now: dt.datetime) -> list[str]:
    """One `list` row: namespace, name, phase, requester, policy, approvals x/y, expires in."""
    st = req.get("status") or {}
    return [
        req["metadata"]["namespace"],
        req["metadata"]["name"],
        st.get("phase", "Pending"),
        req["spec"].get("requester", ""),
        req["spec"].get("policy", ""),
        approvals_text(req, policies),
        starts_in(req, now) or expires_in(st, now),
    ]


def print_status(req: dict[str, Any], policies: dict[str, dict[str, Any]], now: dt.datetime) -> None:
    """`status NAME`: the request's row, then reason, grant, approvals, secret, review, conditions."""
    st, spec = req.get("status") or {}, req["spec"]
    print_table(
        [
            [
                req["metadata"]["name"],
                st.get("phase", "Pending"),
                spec.get("requester", ""),
                spec.get("policy", ""),
                approvals_text(req, policies),
                starts_in(req, now) or expires_in(st, now),
            ]
        ],
        STATUS_HEADERS,
    )
    print(f"\nreason:   {spec.get('reason')}")
    print(
        f"grant:    roles {spec.get('clusterRoles', [])} in {spec.get('namespaces', [])}; "
        f"scopes {spec.get('scopes', [])}"
    )
    if spec.get("startAt"):
        print(f"start:    {spec['startAt']} (scheduled; the token is issued then)")
    if st.get("message"):
        print(f"message:  {st['message']}")
    for a in st.get("approvals") or []:
        print(f"approval: {a.get('decision')} by {a.get('approver')} at {a.get('time')} {a.get('comment', '')}")
    for x in st.get("extensions") or []:
        if x.get("state") == "Applied":
            who = ", ".join(x.get("approvedBy") or []) or "no approval required"
            print(
                f"extended: +{x.get('by')} by {who} at {x.get('at')} (now until {x.get('expiresAt')}) [{x.get('name')}]"
            )
        else:
            print(f"extension refused: +{x.get('by')} at {x.get('at')}: {x.get('message')} [{x.get('name')}]")
    if st.get("secretRef"):
        print(f"secret:   {st['secretRef']['namespace']}/{st['secretRef']['name']} (jti {st.get('tokenId')})")
    if st.get("review"):
        print(f"review:   {st['review']}")
    for c in st.get("conditions") or []:
        print(f"condition {c['type']}={c['status']} ({c.get('reason')}): {c.get('message')}")


def print_verification(
    ok: bool, reason: str, message: str, kid: str | None, claims: dict[str, Any] | None, remaining: str
) -> None:
    """`verify` as text: VALID/INVALID with the reason, then who the token is for."""
    print(f"{'VALID' if ok else 'INVALID'}: {reason}: {message}")
    if claims:
        bg = claims.get("breakglass") or {}
        print(f"subject:   {claims.get('sub')}   request: {bg.get('request')}   policy: {bg.get('policy')}")
        print(f"scope:     {claims.get('scope')}")
        print(f"audience:  {claims.get('aud')}   issuer: {claims.get('iss')}   kid: {kid}")
        print(f"jti:       {claims.get('jti')}   remaining: {remaining}")


def print_explanation(result: dict[str, Any]) -> None:
    """`explain` as text: one PASS/FAIL line per rule, who asks, the approval path, the verdict."""
    for check in result["checks"]:
        print(f"{'PASS' if check['ok'] else 'FAIL'}  {check['rule']:<13} {check['message']}")
    print(f"\nrequester: {result['requester']} {result['groups']}")
    if "approval" in result:
        print(f"approval:  {result['approval']}")
    if "duration" in result:
        print(f"duration:  {result['duration']}")
    print(f"\nverdict:   {'would be admitted' if result['allowed'] else 'would be REJECTED'}")
