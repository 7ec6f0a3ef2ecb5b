"""kube-apiserver's audit batches (`audit.k8s.io/v1` EventList) into grant actions, all or nothing.

A batch is parsed whole when small; a large one (a grant can make its own events large with ~1 MB
request URIs) is read from a spooled file event by event, so memory stays bounded by one event and
the compact actions (their fields are capped in `domain/usage.parse_event`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import IO, Any

import ijson

from .domain.durations import parse_rfc3339
from .domain.usage import Action, MalformedEvent, parse_event


class BadBatch(ValueError):
    """Not an audit.k8s.io EventList: answered 400, nothing recorded."""


def parse_batch(body: bytes) -> tuple[list[Action], int, float | None]:
    """(grant actions, events ignored, oldest stageTimestamp as POSIX seconds) of one EventList.
    All or nothing: any malformed event rejects the whole batch."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadBatch(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "EventList" or not isinstance(doc.get("items"), list):
        raise BadBatch("body is not an audit.k8s.io EventList (kind EventList with items)")
    _check_version(doc.get("apiVersion"))
    return _actions(doc["items"])


def parse_batch_file(stream: IO[bytes]) -> tuple[list[Action], int, float | None]:
    """The same for a large body spooled to a file: the top-level kind and apiVersion first, then
    the items one at a time."""
    try:
        top = {}
        for prefix, event, value in ijson.parse(stream):
            if prefix in ("kind", "apiVersion") and event == "string":
                top[prefix] = value
            if prefix == "items" and event == "start_array":
                break
        else:
            raise BadBatch("body is not an audit.k8s.io EventList (kind EventList with items)")
        if top.get("kind") != "EventList":
            raise BadBatch("body is not an audit.k8s.io EventList (kind EventList with items)")
        _check_version(top.get("apiVersion"))
        stream.seek(0)
        return _actions(ijson.items(stream, "items.item", use_float=True))
    except ijson.JSONError as exc:
        raise BadBatch(f"body is not JSON: {exc}") from None


def _check_version(version: Any) -> None:
    if not str(version or "").startswith("audit.k8s.io/"):
        raise BadBatch(f"apiVersion {version!r} is not audit.k8s.io/v1")


def _actions(events: Iterable[Any]) -> tuple[list[Action], int, float | None]:
    actions, ignored, oldest = [], 0, None
    for index, event in enumerate(events):
        try:
            action = parse_event(event)
        except MalformedEvent as exc:
            raise BadBatch(f"items[{index}]: {exc}") from None
        if action is None:
            ignored += 1
            continue
        actions.append(action)
        stamp = parse_rfc3339(action.time).timestamp()
        oldest = stamp if oldest is None else min(oldest, stamp)
    return actions, ignored, oldest
