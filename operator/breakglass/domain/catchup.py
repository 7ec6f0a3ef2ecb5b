"""Which requests need a reconcile, decided from what the watches already hold (pure, `now` injected).

At start-up, after a watch relist and in the slow safety resync, every request is routed through
`needs_reconcile`: only requests whose recorded state is not settled are reconciled (three API reads
each). An Active grant the ledger agrees with needs no API call at all: its expiry and review timers
are armed from the ledger and the request status. That is what keeps a restart with 10,000 live
grants at a couple of LIST pages instead of 30,000 reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .. import api
from .durations import parse_rfc3339
from .scheduling import StartAtError, parse_start_at

LIVE = frozenset({"Issuing", "Active"})


class RequestSummary(NamedTuple):
    """The fields of a BreakGlassRequest the routing and housekeeping read (kept for every request)."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    phase: str
    generation: int | None
    observed_generation: int | None
    deleting: bool
    finalized: bool  # carries the operator's finalizer
    review_due: float | None  # an open emergency review's dueAt (POSIX seconds)
    overdue_marked: bool  # condition ReviewOverdue=True already written
    policy: str
    start_at: float | None = None  # spec.startAt (POSIX seconds); None: none, or not a valid time

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name


def summarize_request(body: dict[str, Any]) -> RequestSummary:
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    review = status.get("review") or {}
    due = None
    if review.get("required") and not review.get("reviewedAt") and review.get("dueAt"):
        due = parse_rfc3339(review["dueAt"]).timestamp()
    marked = any(
        c.get("type") == api.COND_REVIEW_OVERDUE and c.get("status") == "True" for c in status.get("conditions") or []
    )
    start_at = None
    if (body.get("spec") or {}).get("startAt"):
        try:
            start_at = parse_start_at(body["spec"]["startAt"]).timestamp()
        except StartAtError:
            start_at = None  # a Scheduled request then counts as due: its reconcile denies it
    return RequestSummary(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        phase=status.get("phase") or "",
        generation=meta.get("generation"),
        observed_generation=status.get("observedGeneration"),
        deleting=bool(meta.get("deletionTimestamp")),
        finalized=api.FINALIZER in (meta.get("finalizers") or []),
        review_due=due,
        overdue_marked=marked,
        policy=(body.get("spec") or {}).get("policy", ""),
        start_at=start_at,
    )


def needs_reconcile(
    req: RequestSummary,
    grant: Any | None,
    now: float,
    key_known: Callable[[str], bool],
    secret_present: bool | None = None,
) -> str | None:
    """Why this request needs a full reconcile now (None: its recorded state is settled).
    `grant` is the ledger's Summary for the request uid (state, uid, kid, expires, cleaned) or None;
    `secret_present`: whether its token Secret exists (None: unknown, so the reconcile looks)."""
    if req.deleting:
        return "being deleted"
    if req.phase in ("", api.PENDING):
        return "not decided yet"
    if req.observed_generation != req.generation:
        return "spec changed since the last decision"
    if req.review_due is not None and req.review_due <= now and not req.overdue_marked:
        return "emergency review overdue"
    if grant is not None and grant.uid != req.uid:
        return "ledger entry of another request"
    if grant is not None and not getattr(grant, "usage_settled", True):
        return "use or token reuse not yet audited"
    if req.phase == api.ACTIVE:
        if grant is None or grant.state != "Active":
            return "status Active but the ledger disagrees"
        if grant.expires <= now:
            return "expired"
        if getattr(grant, "idle_deadline", 0) and grant.idle_deadline <= now:
            return "idle timeout reached"
        if not key_known(grant.kid):
            return "signing key lost"
        if secret_present is None:
            return "token Secret not known to be present"
        if not secret_present:
            return "token Secret deleted"
        return None
    if req.phase == api.SCHEDULED:
        if grant is not None:
            return "status Scheduled but the ledger has a grant"
        if req.start_at is None or req.start_at <= now:
            return "scheduled start reached"
        return None  # woken at its startAt (wake_at)
    if req.phase in api.TERMINAL_PHASES:
        if grant is not None and (grant.state in LIVE or not grant.cleaned):
            return "ended grant not cleaned up"
        return None
    return "phase unknown to this version"


def wake_at(req: RequestSummary, now: float) -> float | None:
    """When a settled request must be looked at again without any event: an open review's due time,
    a Scheduled request's startAt (the reconcile that issues its token)."""
    times = []
    if req.review_due is not None and req.review_due > now and req.phase not in ("", api.PENDING):
        times.append(req.review_due)
    if req.phase == api.SCHEDULED and req.start_at is not None:
        times.append(req.start_at)
    return min(times, default=None)
