"""The plugin's cluster access: the operator's `Kube` (breakglass.k8s.client) on the user's kubeconfig
and context, every API error mapped to a CliError with the plugin's exit code.

kubernetes is imported when a Client is made, so `audit verify --offline` and `verify --jwks` never
load it.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from typing import Any

from .. import api
from .errors import API_ERROR, NOT_FOUND, NOT_OK, CliError, try_or


class Client:
    def __init__(self, args):
        import kubernetes
        from kubernetes.client.rest import ApiException

        from ..k8s.client import Kube

        self.ApiException = ApiException
        try:
            cfg = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(
                config_file=args.kubeconfig, context=args.context, client_configuration=cfg
            )
            contexts, current = kubernetes.config.list_kube_config_contexts(config_file=args.kubeconfig)
        except Exception as exc:
            raise CliError(f"cannot load kubeconfig: {exc}", API_ERROR) from None
        ctx = current if not args.context else next((c for c in contexts if c["name"] == args.context), current)
        self.namespace = args.namespace or (ctx.get("context") or {}).get("namespace") or "default"
        self.kube = Kube(kubernetes.client.ApiClient(cfg))

    def _call(self, fn, *a, what: str = "", **kw):
        """fn(*a, **kw); `what` names the object for a 404, and a None result (Kube's 404) is one too."""
        try:
            out = fn(*a, **kw)
        except self.ApiException as exc:
            raise api_error(exc, what) from None
        except OSError as exc:
            raise CliError(f"cannot reach the API server: {exc}", API_ERROR) from None
        if out is None and what:
            raise CliError(f"{what} not found", NOT_FOUND)
        return out

    # --- requests and policies ------------------------------------------------
    def get_request(self, name):
        return self._call(
            self.kube.get_request, self.namespace, name, what=f"BreakGlassRequest {self.namespace}/{name}"
        )

    def list_requests(self, all_namespaces=False):
        return self._call(self.kube.list_requests, None if all_namespaces else self.namespace)

    def create_request(self, body):
        return self._call(self.kube.create_request, self.namespace, body)

    def revoke_request(self, name):
        return self._call(self.kube.patch_request, self.namespace, name, {"spec": {"revoked": True}})

    def create_approval(self, body):
        return self._call(
            self.kube.custom.create_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            self.namespace,
            api.APPROVAL_PLURAL,
            body,
        )

    def create_extension(self, body):
        return self._call(
            self.kube.custom.create_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            self.namespace,
            api.EXTENSION_PLURAL,
            body,
        )

    def get_policy(self, name):
        return self._call(self.kube.get_policy, name, what=f"BreakGlassPolicy {name}")

    def list_policies(self):
        return self._call(self.kube.list_policies)

    # --- secrets and configmaps -----------------------------------------------
    def get_secret(self, namespace, name):
        return self._call(self.kube.get_secret, namespace, name, what=f"Secret {namespace}/{name}")

    def get_configmap(self, namespace, name):
        return self._call(self.kube.get_configmap, namespace, name, what=f"ConfigMap {namespace}/{name}")

    # --- who am I -------------------------------------------------------------
    def whoami(self) -> tuple[str, list[str]]:
        """Ask the API server who we are: a server-side dry-run create is stamped by the mutating webhook."""
        policies = try_or(self.list_policies, [])
        probe = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_REQUEST,
            "metadata": {
                "generateName": "explain-",
                "namespace": self.namespace,
                "labels": {api.IDENTITY_PROBE_LABEL: "true"},
            },
            "spec": {
                "policy": (policies[0]["metadata"]["name"] if policies else "x"),
                "reason": "explain: identity probe (dry run)",
            },
        }
        try:
            created = self.kube.custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, self.namespace, api.REQUEST_PLURAL, probe, dry_run="All"
            )
            return created["spec"]["requester"], created["spec"].get("requesterGroups", [])
        except self.ApiException as exc:
            raise CliError(
                "cannot determine who you are (pass --as-user/--as-group): "
                f"{json.loads(exc.body).get('message', exc.reason) if exc.body else exc.reason}",
                API_ERROR,
            ) from None


def api_error(exc, what: str = "") -> CliError:
    """An ApiException as the plugin reports it: 404 not found (4), refused (1), anything else (3)."""
    try:
        message = json.loads(exc.body).get("message", exc.reason)
    except Exception:
        message = exc.reason
    if exc.status == 404:
        return CliError(f"{what or 'object'} not found" + (f": {message}" if not what else ""), NOT_FOUND)
    if exc.status == 403 and "admission webhook" not in message:
        return CliError(f"not allowed: {message}", NOT_OK)
    if exc.status in (400, 403, 422):
        return CliError(f"rejected: {message}", NOT_OK)
    return CliError(f"API error {exc.status}: {message}", API_ERROR)


def fetch_json(url: str, ca_file: str | None = None, insecure: bool = False) -> Any:
    """GET a JSON document from the operator's HTTPS endpoints (JWKS, revocations)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if insecure:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            return json.load(r)
    except Exception as exc:
        raise CliError(f"cannot fetch {url}: {exc}", API_ERROR) from None
