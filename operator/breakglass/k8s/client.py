"""The only module that calls the API server (sync kubernetes client, thread-safe)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from .. import api

log = logging.getLogger(__name__)


class Conflict(Exception):
    """A write lost a race (resourceVersion or uid precondition, or the name is taken)."""


class PermanentError(Exception):
    """The API server refused a write for a reason a retry cannot fix (404 namespace, 403, 422)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


class Kube:
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

    # --- secrets ---------------------------------------------------------
    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _none_on_404(
            lambda: self.api_client.sanitize_for_serialization(self.core.read_namespaced_secret(name, namespace))
        )

    def create_secret_if_absent(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create; on conflict return the existing one. (object, created?)"""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            created = self.core.create_namespaced_secret(ns, body)
            return self.api_client.sanitize_for_serialization(created), True
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.get_secret(ns, name)
        if existing is None:
            raise RuntimeError(f"secret {ns}/{name} conflicted on create but cannot be read")
        return existing, False

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
            return _false_on_404(lambda: self.core.delete_namespaced_secret(name, namespace, body=body))
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
            return self.api_client.sanitize_for_serialization(create(ns, body)), True
        except ApiException as exc:
            if exc.status != 409:
                raise _classify(exc, f"create {kind} {ns}/{name}") from None
        existing = _none_on_404(lambda: self.api_client.sanitize_for_serialization(read(name, ns)))
        if existing is None:
            raise Conflict(f"{kind} {ns}/{name} conflicted on create but is gone")
        return existing, False

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        read = self._verbs(kind)[1]
        return _none_on_404(lambda: self.api_client.sanitize_for_serialization(read(name, namespace)))

    def delete_exact(self, kind: str, namespace: str, name: str, uid: str) -> bool:
        """Delete only if the object is still the one with `uid` (the one we created). False if it is
        gone or is another object now (then it is not ours to delete)."""
        delete = self._verbs(kind)[2]
        try:
            delete(name, namespace, body={"preconditions": {"uid": uid}})
            return True
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise

    def replace_configmap(self, body: dict[str, Any]) -> dict[str, Any]:
        """Replace guarded by metadata.resourceVersion; Conflict when someone wrote in between."""
        meta = body["metadata"]
        try:
            return self.api_client.sanitize_for_serialization(
                self.core.replace_namespaced_config_map(meta["name"], meta["namespace"], body)
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"configmap {meta['namespace']}/{meta['name']} changed meanwhile") from None
            raise

    def list_configmaps(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        out = self.core.list_namespaced_config_map(namespace, label_selector=selector)
        return ([self.api_client.sanitize_for_serialization(i) for i in out.items], out.metadata.resource_version)

    def watch_configmaps(self, namespace: str, selector: str, resource_version: str, timeout: int = 300):
        """Yields (type, object) from a watch; raises ApiException 410 when the version is too old."""
        import kubernetes.watch

        w = kubernetes.watch.Watch()
        for ev in w.stream(
            self.core.list_namespaced_config_map,
            namespace,
            label_selector=selector,
            resource_version=resource_version,
            timeout_seconds=timeout,
            allow_watch_bookmarks=False,
        ):
            yield ev["type"], self.api_client.sanitize_for_serialization(ev["object"])

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

    # --- admission webhook configurations (caBundle injection) -------------
    def get_webhook_configuration(self, kind: str, name: str) -> dict[str, Any] | None:
        """kind: "validating" or "mutating". None when absent; PermanentError when forbidden."""
        adm = kubernetes.client.AdmissionregistrationV1Api(self.api_client)
        read = (
            adm.read_validating_webhook_configuration
            if kind == "validating"
            else adm.read_mutating_webhook_configuration
        )
        try:
            return self.api_client.sanitize_for_serialization(read(name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _classify(exc, f"read {kind} webhook configuration {name}") from None

    def patch_webhook_hooks(self, kind: str, name: str, hooks: list[dict[str, Any]]) -> None:
        adm = kubernetes.client.AdmissionregistrationV1Api(self.api_client)
        patch = (
            adm.patch_validating_webhook_configuration
            if kind == "validating"
            else adm.patch_mutating_webhook_configuration
        )
        patch(name, {"webhooks": hooks})

    # --- who we are -----------------------------------------------------------
    def bearer_token(self) -> str | None:
        cfg = self.api_client.configuration
        auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken") or ""
        return (auth.partition(" ")[2] or auth) if auth else None

    def client_cert_file(self) -> str | None:
        return self.api_client.configuration.cert_file

    # --- leases (leader election) ------------------------------------------
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        coord = kubernetes.client.CoordinationV1Api(self.api_client)
        return _none_on_404(
            lambda: self.api_client.sanitize_for_serialization(coord.read_namespaced_lease(name, namespace))
        )

    def create_lease(self, body: dict[str, Any]) -> dict[str, Any]:
        coord = kubernetes.client.CoordinationV1Api(self.api_client)
        try:
            return self.api_client.sanitize_for_serialization(
                coord.create_namespaced_lease(body["metadata"]["namespace"], body)
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict("lease exists") from None
            raise

    def replace_lease(self, body: dict[str, Any]) -> dict[str, Any]:
        """Guarded by metadata.resourceVersion: of two replicas writing at once, one gets Conflict."""
        coord = kubernetes.client.CoordinationV1Api(self.api_client)
        meta = body["metadata"]
        try:
            return self.api_client.sanitize_for_serialization(
                coord.replace_namespaced_lease(meta["name"], meta["namespace"], body)
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict("lease changed meanwhile") from None
            raise

    # --- configmaps (optimistic concurrency) ------------------------------
    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _none_on_404(
            lambda: self.api_client.sanitize_for_serialization(self.core.read_namespaced_config_map(name, namespace))
        )

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
                    self.core.create_namespaced_config_map(namespace, body)
                    return data
                except ApiException as exc:
                    if exc.status == 409:
                        continue
                    raise
            data = mutate(dict(cm.get("data") or {}))
            cm["data"] = data
            try:
                self.core.replace_namespaced_config_map(name, namespace, cm)
                return data
            except ApiException as exc:
                if exc.status == 409:
                    continue
                raise
        raise RuntimeError(f"configmap {namespace}/{name}: too many concurrent updates")

    def namespace_exists(self, name: str) -> bool:
        return _none_on_404(lambda: self.core.read_namespace(name)) is not None

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
            self.core.create_namespaced_event(body["metadata"]["namespace"], body)
        except ApiException as exc:  # events are best effort; the audit log is the record
            log.warning("could not post event %s: %s", body.get("reason"), exc.reason)


def _none_on_404(fn):
    try:
        return fn()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _false_on_404(fn) -> bool:
    try:
        fn()
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _ignore_409(fn) -> None:
    try:
        fn()
    except ApiException as exc:
        if exc.status != 409:
            raise


def _classify(exc: ApiException, what: str) -> Exception:
    """Permanent refusals become PermanentError (the issue is rolled back); the rest is retried."""
    if exc.status in (400, 403, 404, 422):
        return PermanentError(exc.status, f"{what}: {error_text(exc)}")
    return exc


def error_text(exc: Exception) -> str:
    """A short, token-free description of an API error."""
    if isinstance(exc, ApiException):
        try:
            return json.loads(exc.body).get("message", exc.reason)
        except Exception:
            return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
