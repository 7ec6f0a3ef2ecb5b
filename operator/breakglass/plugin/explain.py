"""`kubectl breakglass explain`: simulate a request against the live policy, creating nothing.

The rules are the admission/operator chain (domain.policy) and the approval path is decide()'s own
(domain.decisions.approval_path), asked with no approvals yet, so explain cannot drift from them.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import yaml

from .. import api
from ..domain.checks import evaluate_request
from ..domain.decisions import approval_path
from ..domain.durations import DurationError, format_duration, utcnow
from ..domain.policy import Policy, RequestView, effective_duration, validate_policy
from .errors import NOT_OK, OK, USAGE, CliError, try_or
from .output import emit, print_explanation


def approval_text(request: RequestView, policy: Policy) -> str:
    """decide()'s approval path for a request with no approvals yet, said for a person."""
    path = approval_path(request, policy)
    if request.start_at and not request.emergency:
        when = f"issued at spec.startAt {request.start_at}"
        if path.reason in ("NoApprovalRequired", "AutoApproved"):
            return f"{'auto-approved' if path.reason == 'AutoApproved' else 'no approval required'}: {when}"
        return (
            f"needs {policy.required_approvals} approval(s) within approvalTimeout {policy.approval_timeout} "
            f"from users {list(policy.approver_users)} / groups {list(policy.approver_groups)}; then {when}"
        )
    if path.reason == "EmergencyAccess":
        return "emergency: issued at once, review required within " + policy.emergency_review_within
    if path.reason == "NoApprovalRequired":
        return "no approval required: issued at once"
    if path.reason == "AutoApproved":
        return "auto-approved (autoApprove group): issued at once"
    return (
        f"needs {policy.required_approvals} approval(s) from users {list(policy.approver_users)} / "
        f"groups {list(policy.approver_groups)}"
        + ("" if policy.allow_self_approval else f"; {request.requester} may not approve it")
    )


def explain(
    body: dict[str, Any],
    user: str,
    groups: list[str],
    namespace: str,
    policy_body: dict[str, Any] | None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The verdict on `body` filed by `user` in `groups` under `policy_body` (None: no such policy):
    {"allowed", "checks": [{"rule", "ok", "message"}], "requester", "groups"[, "approval", "duration"]}."""
    spec = dict(body.get("spec") or {})
    meta = dict(body.get("metadata") or {})
    meta.setdefault("namespace", namespace)
    spec.update(requester=user, requesterGroups=groups)
    name = spec.get("policy") or ""
    verdicts: list[tuple[str, bool, str]] = []
    policy = view = None
    if policy_body is None:
        verdicts.append(("policy", False, f"spec.policy {name!r}: no BreakGlassPolicy of that name exists"))
    else:
        policy = Policy.from_resource(name, policy_body.get("spec"))
        view = RequestView.from_resource({"metadata": meta, "spec": spec})
        problems = validate_policy(policy)
        verdicts.append(("policy", not problems, problems[0].message if problems else f"policy {name!r} is Ready"))
        verdicts.extend((v.rule, v.ok, v.message) for v in evaluate_request(view, policy, now or utcnow()))
    info: dict[str, Any] = {"requester": user, "groups": groups}
    if policy is not None and view is not None:
        info["approval"] = approval_text(view, policy)
        try:
            info["duration"] = format_duration(effective_duration(view, policy))
        except DurationError:
            pass
    return {
        "allowed": all(v[1] for v in verdicts),
        "checks": [{"rule": r, "ok": o, "message": m} for r, o, m in verdicts],
        **info,
    }


def read_request(filename: str) -> dict[str, Any]:
    try:
        with sys.stdin if filename == "-" else open(filename) as fh:
            body = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {filename}: {exc}", USAGE) from None
    if not isinstance(body, dict) or body.get("kind") != api.KIND_REQUEST:
        raise CliError(f"{filename} is not a BreakGlassRequest", USAGE)
    return body


def cmd_explain(args, client) -> int:
    body = read_request(args.filename)
    user, groups = args.as_user, args.as_group
    if not user:
        user, groups = client.whoami()
    name = (body.get("spec") or {}).get("policy") or ""
    result = explain(body, user, groups, client.namespace, try_or(lambda: client.get_policy(name), None))
    emit(args, result, lambda: print_explanation(result))
    return OK if result["allowed"] else NOT_OK
