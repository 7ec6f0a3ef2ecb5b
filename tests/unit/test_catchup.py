"""Which requests a restart, a relist or the safety resync reconciles, and which only get timers
(pure: plain summaries and an injected `now`)."""

from __future__ import annotations

import pytest

from breakglass import api
from breakglass.domain.catchup import needs_reconcile, summarize_request, wake_at
from breakglass.ledger import Summary
from breakglass.request_index import RequestIndex

NOW = 1_800_000_000.0
UID = "uid-1"


def request(
    phase="Active",
    generation=1,
    observed=1,
    deleting=False,
    finalized=False,
    review_due=None,
    marked=False,
    start_at=None,
):
    status = {"phase": phase, "observedGeneration": observed} if phase else {}
    if review_due is not None:
        status["review"] = {"required": True, "dueAt": review_due}
    if marked:
        status["conditions"] = [{"type": api.COND_REVIEW_OVERDUE, "status": "True"}]
    meta = {"namespace": "team-a", "name": "r1", "uid": UID, "resourceVersion": "7", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2027-01-15T08:00:00Z"
    if finalized:
        meta["finalizers"] = [api.FINALIZER]
    spec = {"policy": "prod", **({"startAt": start_at} if start_at is not None else {})}
    return summarize_request({"metadata": meta, "spec": spec, "status": status})


def grant(state="Active", expires=NOW + 600, kid="k1", cleaned=False, uid=UID):
    return Summary(uid, "team-a", "r1", state, "jti-1", kid, "prod", expires, False, cleaned, "5", ("bg", "s", "su"))


AHEAD, PASSED = "2027-01-15T16:00:00Z", "2027-01-15T07:00:00Z"  # NOW is 2027-01-15T08:00:00Z


def known(kid):
    return kid == "k1"


CASES = [
    ("an Active grant the ledger agrees with costs no reconcile", request(), grant(), None),
    (
        "an Active grant past its exp is reconciled (expired while the operator was down)",
        request(),
        grant(expires=NOW - 1),
        "expired",
    ),
    (
        "an Active status without a ledger entry is reconciled (fail closed: LedgerEntryMissing)",
        request(),
        None,
        "status Active but the ledger disagrees",
    ),
    (
        "an Active status whose ledger entry ended is reconciled to settle",
        request(),
        grant(state="Revoked"),
        "status Active but the ledger disagrees",
    ),
    (
        "a grant signed by a key no longer in the keyring is reconciled (SigningKeyLost)",
        request(),
        grant(kid="gone"),
        "signing key lost",
    ),
    (
        "a spec change not yet decided (e.g. revoked: true) is reconciled",
        request(generation=2),
        grant(),
        "spec changed since the last decision",
    ),
    ("a request being deleted is reconciled", request(deleting=True, finalized=True), grant(), "being deleted"),
    (
        "a Pending request is reconciled (an approval may have been missed)",
        request(phase="Pending"),
        None,
        "not decided yet",
    ),
    ("a request never seen is reconciled", request(phase=None, observed=None), None, "not decided yet"),
    ("a settled Expired request costs nothing", request(phase="Expired"), grant(state="Expired", cleaned=True), None),
    ("a Denied request without a grant costs nothing", request(phase="Denied"), None, None),
    (
        "an ended grant not cleaned up yet is reconciled",
        request(phase="Revoked"),
        grant(state="Revoked"),
        "ended grant not cleaned up",
    ),
    (
        "a terminal request keeps its finalizer until deleted and costs nothing",
        request(phase="Expired", finalized=True),
        grant(state="Expired", cleaned=True),
        None,
    ),
    (
        "an overdue review not yet marked is reconciled",
        request(review_due="2027-01-15T08:00:00Z"),
        grant(),
        "emergency review overdue",
    ),
    (
        "an overdue review already marked costs nothing",
        request(review_due="2027-01-15T08:00:00Z", marked=True),
        grant(),
        None,
    ),
    (
        "a ledger entry of another request uid is never taken as this request's",
        request(),
        grant(uid="other"),
        "ledger entry of another request",
    ),
    ("a Scheduled request whose startAt is ahead costs nothing", request("Scheduled", start_at=AHEAD), None, None),
    (
        "a Scheduled request whose startAt has passed is reconciled (its token is due)",
        request("Scheduled", start_at=PASSED),
        None,
        "scheduled start reached",
    ),
    (
        "a Scheduled request revoked (spec changed) before its start is reconciled",
        request("Scheduled", generation=2, start_at=AHEAD),
        None,
        "spec changed since the last decision",
    ),
    (
        "a Scheduled request with a malformed startAt is reconciled (the reconcile denies it)",
        request("Scheduled", start_at="soon"),
        None,
        "scheduled start reached",
    ),
    (
        "a Scheduled request the ledger already has a grant for is reconciled (an issue was interrupted)",
        request("Scheduled", start_at=PASSED),
        grant(state="Issuing"),
        "status Scheduled but the ledger has a grant",
    ),
    (
        "a Scheduled request being deleted is reconciled",
        request("Scheduled", deleting=True, finalized=True, start_at=AHEAD),
        None,
        "being deleted",
    ),
]


@pytest.mark.parametrize("req,entry,why", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_needs_reconcile(req, entry, why):
    assert needs_reconcile(req, entry, NOW, known, secret_present=True) == why


SECRET_CASES = [
    (
        "a live grant whose token Secret was deleted is reconciled (revoked SecretDeleted)",
        False,
        "token Secret deleted",
    ),
    (
        "a live grant whose token Secret cannot be seen (another namespace) is reconciled",
        None,
        "token Secret not known to be present",
    ),
    ("a live grant whose token Secret exists costs nothing", True, None),
]


@pytest.mark.parametrize("present,why", [c[1:] for c in SECRET_CASES], ids=[c[0] for c in SECRET_CASES])
def test_needs_reconcile_looks_at_the_token_secret(present, why):
    assert needs_reconcile(request(), grant(), NOW, known, secret_present=present) == why


def test_an_open_review_due_later_wakes_the_request_at_its_due_time():
    due = "2027-01-15T08:00:00Z"
    req = request(review_due=due)
    stamp = req.review_due
    assert wake_at(req, stamp - 10) == stamp
    assert wake_at(req, stamp + 1) is None
    assert wake_at(request(), NOW) is None


def test_a_scheduled_request_is_woken_at_its_start_at():
    req = request("Scheduled", start_at=AHEAD)
    assert req.start_at == 1_800_000_000.0 + 8 * 3600 and req.start_at > NOW
    assert wake_at(req, NOW) == req.start_at
    assert wake_at(request("Pending", start_at=AHEAD), NOW) is None  # approvals, not the clock, move it
    assert wake_at(request("Active", start_at=PASSED), NOW) is None
    assert request(start_at=None).start_at is None and request(start_at="soon").start_at is None


def body(name, rv, phase="Active", uid=None):
    return {
        "metadata": {"namespace": "team-a", "name": name, "uid": uid or f"uid-{name}", "resourceVersion": rv},
        "status": {"phase": phase},
    }


def test_the_index_keeps_the_newest_version_and_forgets_deleted_requests_by_uid():
    index = RequestIndex()
    index.observe(None, body("r1", "5"))
    index.observe("MODIFIED", body("r1", "4", phase="Pending"))  # late, older event
    assert index.get("team-a", "r1").phase == "Active"
    index.observe("DELETED", body("r1", "6", uid="uid-other"))  # another incarnation's delete
    assert index.get("team-a", "r1") is not None
    index.observe("DELETED", body("r1", "6"))
    assert index.get("team-a", "r1") is None and index.by_uid("uid-r1") is None


def test_a_full_list_reports_the_requests_the_watch_had_not_shown():
    index = RequestIndex()
    index.observe(None, body("seen", "5"))
    index.observe(None, body("stale", "5"))
    fresh, behind = index.replace_all([body("seen", "5"), body("stale", "9"), body("new", "3")])
    assert behind == {("team-a", "stale"), ("team-a", "new")}
    assert index.synced.is_set() and len(index) == 3
