"""Kube methods for the objects a grant is made of and the operator's own state: Secrets, Roles,
RoleBindings and ConfigMaps (create-if-absent, uid-guarded delete, resourceVersion-guarded writes),
namespaces and Events. Mixed into `client.Kube`: still the one place that calls the API server."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException

from .. import api
from .errors import Conflict, _classify, _false_on_404, _none_on_404

log = logging.getLogger(__name__)
# Metadata only (meta.k8s.io PartialObjectMetadata): a Secret's data never crosses the wire.
METADATA_LIST = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}
METADATA_WATCH = {"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"}


class ObjectsMixin:
    # --- secrets ---------------------------------------------------------
    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.read("Secret", namespace, name)

    def create_secret_if_absent(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create; on conflict return the existing one. (object, created?)"""
        return self.create_if_absent("Secret", body)

    def replace_secret(self, body: dict[str, Any]) -> None:
        """Guarded by metadata.resourceVersion: Conflict when someone wrote in between."""
        try:
            self.core.replace_namespaced_secret(body["metadata"]["name"], body["metadata"]["namespace"], body)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"secret {body['metadata']['namespace']}/{body['metadata']['name']} changed") from None
            raise

    def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete; with `uid`, only if it is still that exact object (409 otherwise, reported False)."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            return _false_on_404(
                lambda: self.core.delete_namespaced_secret(name, namespace, body=body, _preload_content=False)
            )
        except ApiException as exc:
            if exc.status == 409 and uid:
                return False
            raise

    # --- objects the operator creates for a grant (create-if-absent, uid-guarded delete) --------
    def create_if_absent(self, kind: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create `kind` (Secret, Role, RoleBinding, ConfigMap); on 409 return the existing object
        so the caller can decide whether it is really its own. (object, created?)"""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        create, read = self._verbs(kind)[:2]
        try:
            return _raw(create, ns, body), True
        except ApiException as exc:
            if exc.status != 409:
                raise _classify(exc, f"create {kind} {ns}/{name}") from None
        existing = _none_on_404(lambda: _raw(read, name, ns))
        if existing is None:
            raise Conflict(f"{kind} {ns}/{name} conflicted on create but is gone")
        return existing, False

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        read = self._verbs(kind)[1]
        return _none_on_404(lambda: _raw(read, name, namespace))

    def delete_exact(self, kind: str, namespace: str, name: str, uid: str) -> bool:
        """Delete only if the object is still the one with `uid` (the one we created). False if it is
        gone or is another object now (then it is not ours to delete)."""
        delete = self._verbs(kind)[2]
        try:
            delete(name, namespace, body={"preconditions": {"uid": uid}}, _preload_content=False)
            return True
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise

    def replace_configmap(self, body: dict[str, Any]) -> dict[str, Any]:
        """Replace guarded by metadata.resourceVersion; Conflict when someone wrote in between."""
        meta = body["metadata"]
        try:
            return _raw(self.core.replace_namespaced_config_map, meta["name"], meta["namespace"], body)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"configmap {meta['namespace']}/{meta['name']} changed meanwhile") from None
            raise

    def iter_configmap_pages(self, namespace: str, selector: str, limit: int = 500):
        """Yields (items, resourceVersion) per page of a paged LIST, as plain JSON (no model objects:
        decoding 10,000 ConfigMaps through the client's models costs seconds of CPU)."""
        token = None
        while True:
            kwargs = {"label_selector": selector, "limit": limit, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            page = json.loads(self.core.list_namespaced_config_map(namespace, **kwargs).data)
            meta = page.get("metadata") or {}
            yield page.get("items") or [], meta.get("resourceVersion", "")
            token = meta.get("continue")
            if not token:
                return

    def list_configmaps(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        items, version = [], ""
        for page, page_version in self.iter_configmap_pages(namespace, selector):
            items.extend(page)
            version = page_version
        return items, version

    def watch_configmaps(self, namespace: str, selector: str, resource_version: str, timeout: int = 300):
        """Yields (type, object) from a watch as plain JSON (BOOKMARK events keep the version fresh
        while idle); raises ApiException (410 when the version is too old)."""
        resp = self.core.list_namespaced_config_map(
            namespace,
            label_selector=selector,
            resource_version=resource_version,
            watch=True,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(5, timeout + 15),  # a half-open connection must not freeze the view
            _preload_content=False,
        )
        return stream_events(resp)

    def iter_secret_metadata_pages(self, namespace: str, selector: str, limit: int = 500):
        """(items, resourceVersion) per page of Secrets' metadata only (never their data)."""
        token = None
        while True:
            kwargs = {"label_selector": selector, "limit": limit, "_headers": METADATA_LIST}
            if token:
                kwargs["_continue"] = token
            page = _raw(self.core.list_namespaced_secret, namespace, **kwargs)
            meta = page.get("metadata") or {}
            yield page.get("items") or [], meta.get("resourceVersion", "")
            token = meta.get("continue")
            if not token:
                return

    def watch_secret_metadata(self, namespace: str, selector: str, resource_version: str, timeout: int = 300):
        resp = self.core.list_namespaced_secret(
            namespace,
            label_selector=selector,
            resource_version=resource_version,
            watch=True,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(5, timeout + 15),
            _preload_content=False,
            _headers=METADATA_WATCH,
        )
        return stream_events(resp)

    def _verbs(self, kind: str):
        c, r = self.core, self.rbac
        return {
            "Secret": (c.create_namespaced_secret, c.read_namespaced_secret, c.delete_namespaced_secret),
            "ConfigMap": (c.create_namespaced_config_map, c.read_namespaced_config_map, c.delete_namespaced_config_map),
            "Role": (r.create_namespaced_role, r.read_namespaced_role, r.delete_namespaced_role),
            "RoleBinding": (
                r.create_namespaced_role_binding,
                r.read_namespaced_role_binding,
                r.delete_namespaced_role_binding,
            ),
        }[kind]

    # --- configmaps (optimistic concurrency) ------------------------------
    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _none_on_404(lambda: _raw(self.core.read_namespaced_config_map, name, namespace))

    def update_configmap(
        self, namespace: str, name: str, mutate: Callable[[dict[str, str]], dict[str, str]], attempts: int = 20
    ) -> dict[str, str]:
        """Read-modify-write with resourceVersion; retried on conflict so no update is lost."""
        for _ in range(attempts):
            cm = self.get_configmap(namespace, name)
            if cm is None:
                data = mutate({})
                body = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": {api.MANAGED_BY_LABEL: api.MANAGED_BY},
                    },
                    "data": data,
                }
                try:
                    self.core.create_namespaced_config_map(namespace, body, _preload_content=False)
                    return data
                except ApiException as exc:
                    if exc.status == 409:
                        continue
                    raise
            data = mutate(dict(cm.get("data") or {}))
            cm["data"] = data
            try:
                self.core.replace_namespaced_config_map(name, namespace, cm, _preload_content=False)
                return data
            except ApiException as exc:
                if exc.status == 409:
                    continue
                raise
        raise RuntimeError(f"configmap {namespace}/{name}: too many concurrent updates")

    def namespace_exists(self, name: str) -> bool:
        return _none_on_404(lambda: self.core.read_namespace(name, _preload_content=False)) is not None

    def ensure_namespace(self, name: str) -> None:
        """Create the operator namespace for local runs; in-cluster it exists (and we may not create it)."""
        try:
            self.core.create_namespace({"metadata": {"name": name}})
        except ApiException as exc:
            if exc.status not in (403, 409):
                raise

    # --- events -----------------------------------------------------------
    def create_event(self, body: dict[str, Any]) -> None:
        try:
            self.core.create_namespaced_event(body["metadata"]["namespace"], body, _preload_content=False)
        except ApiException as exc:  # events are best effort; the audit log is the record
            log.warning("could not post event %s: %s", body.get("reason"), exc.reason)


def _raw(call, *args, **kwargs) -> dict[str, Any]:
    """Call a client method and parse its JSON answer directly: the client's typed models cost
    more CPU than the round trip itself on the hot path (an issue or expiry is ~8 calls)."""
    return json.loads(call(*args, _preload_content=False, **kwargs).data)


def stream_events(resp):
    """(type, object) per line of a raw watch response (chunked JSON lines); ERROR → ApiException."""
    try:
        pending = b""
        for chunk in resp.stream(amt=None, decode_content=False):  # per chunk as it arrives
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                ev = json.loads(line)
                if ev.get("type") == "ERROR":
                    obj = ev.get("object") or {}
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                yield ev["type"], ev["object"]
    finally:
        resp.release_conn()
