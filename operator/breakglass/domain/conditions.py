"""Kubernetes-style conditions: lastTransitionTime moves only when status flips."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .durations import to_rfc3339


def set_condition(
    conditions: list[dict[str, Any]] | None,
    *,
    type: str,
    status: bool | str,
    reason: str,
    message: str,
    now: dt.datetime,
    observed_generation: int | None,
) -> list[dict[str, Any]]:
    """Return a new list with `type` set; other conditions are kept untouched."""
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    result: list[dict[str, Any]] = []
    found = False
    for cond in conditions or []:
        if cond.get("type") != type:
            result.append(dict(cond))
            continue
        found = True
        flipped = cond.get("status") != status_text
        result.append(
            {
                "type": type,
                "status": status_text,
                "reason": reason,
                "message": message,
                "lastTransitionTime": to_rfc3339(now) if flipped else cond.get("lastTransitionTime", to_rfc3339(now)),
                "observedGeneration": observed_generation,
            }
        )
    if not found:
        result.append(
            {
                "type": type,
                "status": status_text,
                "reason": reason,
                "message": message,
                "lastTransitionTime": to_rfc3339(now),
                "observedGeneration": observed_generation,
            }
        )
    return result


def get_condition(conditions: list[dict[str, Any]] | None, type: str) -> dict[str, Any] | None:
    for cond in conditions or []:
        if cond.get("type") == type:
            return cond
    return None
