"""What a grant did, and whether it may go on: pure functions over kube-apiserver audit events and
the ledger entry, `now` injected.

kube-apiserver's audit webhook backend sends one `audit.k8s.io/v1` Event per request of a grant
identity (the shipped audit policy logs `Metadata` for group `breakglass:grant` only, at
ResponseComplete/Panic). `parse_event` turns one into an `Action` attributed to a request uid (the
grant username carries it); `fold` adds actions to the usage kept in the grant's ledger entry
(counters, a bounded trail with per-grant sequence numbers); `limit_crossed` says whether the
grant's use limits revoke it now, `idle_deadline` when idleness will.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, NamedTuple

from .. import api
from .durations import parse_rfc3339, to_rfc3339

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
SESSION_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy"})
BATCH_MARKS = 64  # batch shares remembered per grant (a resend is recognised among these)
UNAUDITED_MAX = 1000  # trail items a ledger entry holds for the leader (<= ~0.6 KB each); beyond: counted only
COUNTED_STAGES = frozenset({"ResponseStarted", "ResponseComplete", "Panic"})
LONG_RUNNING_VERBS = frozenset({"watch", "proxy"})
LONG_RUNNING_SUBRESOURCES = frozenset({"attach", "exec", "proxy", "log", "portforward"})
GRANT_GROUP = api.IDENTITY_PREFIX + api.GRANT_GROUP_CLAIM
LEDGER_TRAIL_MAX = 200  # the ledger keeps this many recent actions (the leader audits them all first)
STATUS_TRAIL_MAX = 50  # status.usage.trail shows the most recent ones
READ, WRITE, DENIED = "read", "write", "denied"


class MalformedEvent(ValueError):
    """An audit event without the fields every kube-apiserver event carries."""


class Action(NamedTuple):
    """One API request of a grant identity, as the trail keeps it."""

    uid: str  # the request uid the grant username carries
    username: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    uri: str  # set for non-resource requests (/api, /healthz, ...)
    code: int
    time: str  # RFC 3339, kube-apiserver's stageTimestamp
    audit_id: str
    key: str = ""  # event_key(): what a resend repeats exactly
    received: str = ""  # RFC 3339, when kube-apiserver received the request (before any grant end?)

    @property
    def verb_class(self) -> str:
        return verb_class(self.verb, self.code, self.subresource)

    def trail_item(self, seq: int) -> dict[str, Any]:
        item = {
            "seq": seq,
            "time": self.time,
            "verb": self.verb,
            "resource": self.resource,
            "subresource": self.subresource,
            "namespace": self.namespace,
            "name": self.name,
            "code": self.code,
            "uri": self.uri,
            "auditID": self.audit_id,
            "key": self.key,
        }
        return {k: v for k, v in item.items() if v != ""}  # empty fields are left out (status patches)


def verb_class(verb: str, code: int, subresource: str = "") -> str:
    """denied (403), write (a mutating verb, or a session into a pod: exec/attach/portforward/proxy,
    whatever verb the client upgraded with), else read."""
    if code == 403:
        return DENIED
    return WRITE if verb in WRITE_VERBS or subresource in SESSION_SUBRESOURCES else READ


def grant_uid(username: str) -> str | None:
    """The request uid a grant username (`breakglass:<namespace>:<name>:<uid>`) carries."""
    if not username.startswith(api.IDENTITY_PREFIX):
        return None
    parts = username[len(api.IDENTITY_PREFIX) :].split(":")
    return parts[2] if len(parts) == 3 and all(parts) else None


def is_long_running(verb: str, subresource: str) -> bool:
    """kube-apiserver's own rule: these get a ResponseStarted event when their response starts."""
    return verb in LONG_RUNNING_VERBS or subresource in LONG_RUNNING_SUBRESOURCES


def capped(value: Any, limit: int) -> str:
    """`value` cut to at most `limit` bytes as JSON (escapes included): a tenant chooses object names
    and URIs, and the ledger entry holding the trail must stay far below 1 MiB."""
    if not isinstance(value, str):
        return ""
    out = value[:limit]
    while (excess := len(json.dumps(out)) - 2 - limit) > 0:
        out = out[: len(out) - max(1, excess // 12)]  # a character escapes to at most 12 bytes
    return out


def event_key(event: dict[str, Any]) -> str:
    """What makes one audit event unique (a resent batch carries the same): not the auditID alone,
    which a client may choose with its Audit-ID header."""
    raw = [event.get(k) for k in ("auditID", "requestReceivedTimestamp", "stageTimestamp", "stage", "verb")]
    raw += [event.get(k) for k in ("requestURI", "userAgent", "sourceIPs", "objectRef")]
    raw.append(
        (event.get("responseStatus") or {}).get("code") if isinstance(event.get("responseStatus"), dict) else None
    )
    try:
        text = json.dumps(raw, sort_keys=True, default=str)
    except (RecursionError, ValueError) as exc:
        raise MalformedEvent(f"an audit event is not kube-apiserver's: {exc}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_event(event: Any) -> Action | None:
    """The Action of one audit event, or None when it is not a counted use by a grant identity.
    Raises MalformedEvent for an event that is not shaped like kube-apiserver's. A long-running
    request (watch, exec, logs, ...) counts when its response starts; its ResponseComplete then
    counts only if it never started (refused, e.g. 403)."""
    if not isinstance(event, dict):
        raise MalformedEvent("an audit event is not an object")
    user, stage = event.get("user"), event.get("stage")
    if not isinstance(user, dict) or not isinstance(stage, str) or not isinstance(event.get("verb"), str):
        raise MalformedEvent("an audit event lacks user, stage or verb")
    if stage not in COUNTED_STAGES:
        return None
    username, groups = user.get("username"), user.get("groups") or []
    if not isinstance(username, str) or not isinstance(groups, list) or GRANT_GROUP not in groups:
        return None
    uid = grant_uid(username)
    if uid is None:
        return None
    ref = event.get("objectRef") if isinstance(event.get("objectRef"), dict) else {}
    status = event.get("responseStatus") if isinstance(event.get("responseStatus"), dict) else {}
    code = status.get("code", 500 if stage == "Panic" else 0)
    when = event.get("stageTimestamp") or event.get("requestReceivedTimestamp")
    try:
        when = to_rfc3339(parse_rfc3339(str(when)))
        received = to_rfc3339(parse_rfc3339(str(event.get("requestReceivedTimestamp") or when)))
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedEvent(f"an audit event has no valid stageTimestamp: {exc}") from None
    if not isinstance(code, int) or isinstance(code, bool):
        raise MalformedEvent("an audit event's responseStatus.code is not a number")
    verb, subresource = capped(event["verb"], 32), capped(ref.get("subresource"), 32)
    if stage == "ResponseComplete" and is_long_running(verb, subresource):
        return None  # counted at ResponseStarted (kube-apiserver sends one for these, faked if need be)
    uri = event.get("requestURI") if isinstance(event.get("requestURI"), str) else ""
    return Action(
        uid=uid,
        username=username,
        verb=verb,
        resource=capped(ref.get("resource"), 64),
        subresource=subresource,
        namespace=capped(ref.get("namespace"), 64),
        name=capped(ref.get("name"), 128),
        uri="" if ref else capped(uri.split("?")[0], 128),  # the path, not client parameters
        code=code,
        time=when,
        audit_id=capped(event.get("auditID"), 40),
        key=event_key(event),
        received=received,
    )


def batch_mark(actions: list[Action]) -> str:
    """A short fingerprint of one grant's share of one audit batch: kube-apiserver resends a batch
    unchanged, so a resend carries the same mark (however many newer actions came meanwhile)."""
    return hashlib.sha256(",".join(a.key for a in actions).encode()).hexdigest()[:16]


def new_actions(usage: dict[str, Any] | None, actions: list[Action]) -> list[Action]:
    """The actions not counted before, in order: none when this batch share's mark is among the
    grant's last BATCH_MARKS (a resend), else those whose event key the trail does not hold."""
    usage = usage or {}
    if actions and batch_mark(actions) in (usage.get("batches") or []):
        return []
    seen = {item.get("key") for item in usage.get("trail") or []} - {None, ""}
    fresh = []
    for action in actions:
        if action.key and action.key in seen:
            continue
        seen.add(action.key)
        fresh.append(action)
    return fresh


def fold(usage: dict[str, Any] | None, actions: list[Action], trail_max: int = LEDGER_TRAIL_MAX) -> dict[str, Any]:
    """The usage after `actions` (in order): counters, first/last use, and the trail with each
    action's per-grant sequence number (seq = its position among all of the grant's requests).
    Only `new_actions` count. The trail keeps every action the leader has not audited yet, up to
    UNAUDITED_MAX (beyond, the counters still count; the leader records the gap as used-unrecorded),
    and at least the last `trail_max`."""
    usage = dict(usage or {})
    fresh = new_actions(usage, actions)
    if actions and not fresh and batch_mark(actions) in (usage.get("batches") or []):
        return usage  # kube-apiserver sent this batch again (our answer was lost or refused)
    requests = int(usage.get("requests", 0))
    trail = list(usage.get("trail") or [])
    for action in fresh:
        requests += 1
        kind = action.verb_class
        usage["denied"] = int(usage.get("denied", 0)) + (kind == DENIED)
        usage["writes"] = int(usage.get("writes", 0)) + (kind == WRITE and succeeded(action.code))
        if not usage.get("firstUsedAt") or action.time < usage["firstUsedAt"]:
            usage["firstUsedAt"] = action.time
        if not usage.get("lastUsedAt") or action.time > usage["lastUsedAt"]:
            usage["lastUsedAt"] = action.time
        trail.append(action.trail_item(requests))
    usage["requests"] = requests
    usage.setdefault("denied", 0)
    usage.setdefault("writes", 0)
    usage.setdefault("audited", 0)
    keep = min(UNAUDITED_MAX, max(trail_max, requests - int(usage["audited"])))
    usage["trail"] = trail[-keep:]
    if actions:
        usage["batches"] = ((usage.get("batches") or []) + [batch_mark(actions)])[-BATCH_MARKS:]
    return usage


def succeeded(code: int) -> bool:
    """2xx/3xx, and 101: exec, attach and port-forward sessions switch protocols."""
    return 200 <= code < 400 or code == 101


def unaudited(usage: dict[str, Any] | None) -> tuple[list[dict[str, Any]], int]:
    """Trail items the audit log does not hold yet, and how many more were lost to the bounded
    trail before the leader could record them (0 unless the leader fell far behind)."""
    usage = usage or {}
    audited = int(usage.get("audited", 0))
    items = [i for i in usage.get("trail") or [] if i.get("seq", 0) > audited]
    first = items[0]["seq"] if items else int(usage.get("requests", 0)) + 1
    return items, max(0, first - audited - 1)


def status_usage(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """status.usage of the request: the counters, the grant's limits and the most recent trail."""
    if not entry or not (entry.get("usage") or entry.get("limits")):
        return None
    usage = entry.get("usage") or {}
    out: dict[str, Any] = {
        "requests": int(usage.get("requests", 0)),
        "denied": int(usage.get("denied", 0)),
        "writes": int(usage.get("writes", 0)),
        "trail": [{k: v for k, v in i.items() if k != "key"} for i in (usage.get("trail") or [])[-STATUS_TRAIL_MAX:]],
        "trailTotal": int(usage.get("requests", 0)),
    }
    for key in ("firstUsedAt", "lastUsedAt"):
        if usage.get(key):
            out[key] = usage[key]
    if entry.get("limits"):
        out["limits"] = dict(entry["limits"])
    return out
