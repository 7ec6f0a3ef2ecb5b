"""Policy status: Ready says whether a policy is usable, with the first problem as the reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import api
from .domain.conditions import set_condition
from .domain.policy import Policy, validate_policy
from .k8s.client import Kube


def policy_status(body: dict[str, Any], now) -> dict[str, Any]:
    meta = body["metadata"]
    policy = Policy.from_resource(meta["name"], body.get("spec"))
    problems = validate_policy(policy)
    old = body.get("status") or {}
    if problems:
        cond = dict(status=False, reason=problems[0].reason, message="; ".join(p.message for p in problems))
    else:
        cond = dict(
            status=True,
            reason="Valid",
            message=f"requesters {list(policy.requester_users) + list(policy.requester_groups)}; "
            f"{policy.required_approvals} approval(s) from "
            f"{list(policy.approver_users) + list(policy.approver_groups)}; "
            f"max {policy.max_duration}",
        )
    conditions = set_condition(
        old.get("conditions"), type=api.COND_READY, now=now, observed_generation=meta.get("generation"), **cond
    )
    return {"conditions": conditions, "observedGeneration": meta.get("generation")}


def reconcile_policy(kube: Kube, body: dict[str, Any], now, enqueue_pending: Callable[[str], None]) -> None:
    status = policy_status(body, now)
    old = body.get("status") or {}
    if status != {"conditions": old.get("conditions"), "observedGeneration": old.get("observedGeneration")}:
        kube.patch_policy_status(body["metadata"]["name"], status)
    # Policies change: pending requests under this one are decided again.
    enqueue_pending(body["metadata"]["name"])
