"""Kube methods for the control plane around the operator: webhook configurations (caBundle), the
operator's own credentials, and the leader-election Lease. Mixed into `client.Kube`."""

from __future__ import annotations

from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from .errors import Conflict, _classify, _none_on_404

# A lease call must fail fast: a leader blocked in one for longer than its renew deadline would
# believe it still leads while the lease it holds runs out.
LEASE_CALL_TIMEOUT = 2.0


class PlatformMixin:
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
            lambda: self.api_client.sanitize_for_serialization(
                coord.read_namespaced_lease(name, namespace, _request_timeout=LEASE_CALL_TIMEOUT)
            )
        )

    def create_lease(self, body: dict[str, Any]) -> dict[str, Any]:
        coord = kubernetes.client.CoordinationV1Api(self.api_client)
        try:
            return self.api_client.sanitize_for_serialization(
                coord.create_namespaced_lease(body["metadata"]["namespace"], body, _request_timeout=LEASE_CALL_TIMEOUT)
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
                coord.replace_namespaced_lease(
                    meta["name"], meta["namespace"], body, _request_timeout=LEASE_CALL_TIMEOUT
                )
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict("lease changed meanwhile") from None
            raise
