import datetime as dt

from breakglass.sweeper import Sweeper, expired_objects

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def obj(name, expires=None):
    ann = {"breakglass.dev/expires-at": expires} if expires else {}
    return {"metadata": {"name": name, "annotations": ann}}


def test_only_objects_past_their_expiry_are_swept():
    items = [obj("past", "2026-01-01T11:59:59Z"), obj("now", "2026-01-01T12:00:00Z"),
             obj("future", "2026-01-01T12:00:01Z"), obj("unmarked")]
    assert [o["metadata"]["name"] for o in expired_objects(items, NOW)] == ["past", "now"]


class RequestList:
    """Plain data standing in for the cluster's list of requests (no API behaviour is simulated)."""

    def __init__(self, items):
        self.items = items

    def list_requests(self):
        return self.items


def req(name, phase=None, generation=1, observed=1, deleting=False):
    meta = {"name": name, "namespace": "ns", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    status = {"phase": phase, "observedGeneration": observed} if phase else {}
    return {"metadata": meta, "status": status}


def test_the_resync_picks_up_what_a_missed_watch_event_could_leave_behind():
    items = [req("new"), req("pending", "Pending"), req("active", "Active"),
             req("revoked-unseen", "Active", generation=2, observed=1), req("deleting", "Expired", deleting=True),
             req("done", "Expired")]
    seen = []
    Sweeper(RequestList(items), None, None, lambda ns, n: seen.append(n), lambda: NOW).resync_stale()
    assert seen == ["new", "pending", "revoked-unseen", "deleting"]
