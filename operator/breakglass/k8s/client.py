"""The only module that calls the API server (sync kubernetes client, thread-safe)."""

from __future__ import annotations

import json
import logging
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from .. import api

log = logging.getLogger(__name__)


def load_config(kubeconfig: str | None = None, pool_size: int = 32) -> kubernetes.client.ApiClient:
    cfg = kubernetes.client.Configuration()
    try:
        if kubeconfig:
            kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            try:
                kubernetes.config.load_incluster_config(client_configuration=cfg)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=cfg)
    except Exception as exc:  # config errors must name the problem, not a stack trace
        raise SystemExit(f"breakglass: cannot load Kubernetes credentials: {exc}") from None
    cfg.connection_pool_maxsize = pool_size
    client = kubernetes.client.ApiClient(cfg)
    # The client has no default timeout: a stuck connection would hold a worker forever.
    import urllib3

    client.rest_client.pool_manager.connection_pool_kw["timeout"] = urllib3.Timeout(connect=5, read=45)
    return client


from .errors import Conflict, PermanentError, _classify, _false_on_404, _none_on_404, error_text  # noqa: E402,F401
from .objects import ObjectsMixin, stream_events  # noqa: E402
from .platform import PlatformMixin  # noqa: E402


class Kube(ObjectsMixin, PlatformMixin):
    """The only way the operator talks to the API server (sync client, thread-safe)."""

    def __init__(self, api_client: kubernetes.client.ApiClient):
        self.api_client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    # --- custom resources -------------------------------------------------
    def get_policy(self, name: str) -> dict[str, Any] | None:
        return _none_on_404(
            lambda: self.custom.get_cluster_custom_object(api.GROUP, api.VERSION, api.POLICY_PLURAL, name)
        )

    def list_policies(self) -> list[dict[str, Any]]:
        return self.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.POLICY_PLURAL)["items"]

    def patch_policy_status(self, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_cluster_custom_object_status(
            api.GROUP, api.VERSION, api.POLICY_PLURAL, name, {"status": status}
        )

    def get_request(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _none_on_404(
            lambda: self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.REQUEST_PLURAL, name
            )
        )

    def list_requests(self, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace:
            return self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.REQUEST_PLURAL)[
                "items"
            ]
        return self.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.REQUEST_PLURAL)["items"]

    def iter_request_pages(self, limit: int = 500):
        """Yields (items, resourceVersion) per page of every request (plain JSON, paged: memory
        bounded at any scale)."""
        token = None
        while True:
            kwargs: dict[str, Any] = {"limit": limit, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            resp = self.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.REQUEST_PLURAL, **kwargs)
            page = json.loads(resp.data)
            meta = page.get("metadata") or {}
            yield page.get("items") or [], meta.get("resourceVersion", "")
            token = meta.get("continue")
            if not token:
                return

    def watch_requests(self, resource_version: str, timeout: int = 300):
        """(type, object) of every request change since `resource_version`, plain JSON, bookmarks on."""
        resp = self.custom.list_cluster_custom_object(
            api.GROUP,
            api.VERSION,
            api.REQUEST_PLURAL,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=resource_version,
            timeout_seconds=timeout,
            _request_timeout=(5, timeout + 15),
            _preload_content=False,
        )
        return stream_events(resp)

    def create_request(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.REQUEST_PLURAL, body)

    def patch_request(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.REQUEST_PLURAL, name, patch
        )

    def patch_request_status(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource; `body` = {"status": ..., "metadata": {"resourceVersion": ...}}
        (with a resourceVersion the write fails with Conflict if the request changed meanwhile)."""
        try:
            return self.custom.patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, namespace, api.REQUEST_PLURAL, name, body
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"request {namespace}/{name} changed meanwhile") from None
            raise

    def list_approvals(self, namespace: str, request_name: str) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.APPROVAL_PLURAL)[
            "items"
        ]
        return [a for a in items if (a.get("spec") or {}).get("request") == request_name]

    def list_extensions(self, namespace: str, request_name: str) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.EXTENSION_PLURAL)[
            "items"
        ]
        return [e for e in items if (e.get("spec") or {}).get("request") == request_name]

    def get_extension(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _none_on_404(
            lambda: self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.EXTENSION_PLURAL, name
            )
        )

    def get_drill(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _none_on_404(
            lambda: self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.DRILL_PLURAL, name)
        )

    def patch_drill_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.DRILL_PLURAL, name, {"status": status}
        )

    def delete_request(self, namespace: str, name: str) -> None:
        _false_on_404(
            lambda: self.custom.delete_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.REQUEST_PLURAL, name
            )
        )

    def get_cluster_role(self, name: str) -> dict[str, Any] | None:
        return _none_on_404(lambda: self.api_client.sanitize_for_serialization(self.rbac.read_cluster_role(name)))

    def token_review(self, token: str) -> dict[str, Any]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        out = kubernetes.client.AuthenticationV1Api(self.api_client).create_token_review(body)
        return self.api_client.sanitize_for_serialization(out)

    def access_review_as_token(self, token: str, attributes: dict[str, Any]) -> dict[str, Any]:
        """A SelfSubjectAccessReview sent *with the given token*: what can that credential do?"""
        cfg = kubernetes.client.Configuration()
        base = self.api_client.configuration
        cfg.host, cfg.ssl_ca_cert, cfg.verify_ssl = base.host, base.ssl_ca_cert, base.verify_ssl
        cfg.api_key = {"authorization": f"Bearer {token}"}
        with kubernetes.client.ApiClient(cfg) as client:
            body = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
            out = kubernetes.client.AuthorizationV1Api(client).create_self_subject_access_review(body)
            return client.sanitize_for_serialization(out)
