"""Scheduled drills: exercise the whole break-glass path before the emergency does.

A run files a synthetic request (labelled as a drill) under the drill's policy, waits for issue,
verifies the token against the published JWKS, optionally checks it through a TokenReview and a
SelfSubjectAccessReview made *with the token*, revokes it, and checks the Secret and RoleBindings
are gone. Each step's result lands in the drill's status; the first failing step names the cause.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from . import api, metrics
from .audit import AuditLog
from .domain.durations import parse_rfc3339, to_rfc3339
from .domain.schedule import next_run, validate
from .k8s.client import Kube, error_text
from .tokens.jwt_tokens import verify

log = logging.getLogger(__name__)


class StepFailed(Exception):
    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step, self.message = step, message


class DrillRunner:
    def __init__(
        self,
        *,
        kube: Kube,
        audit: AuditLog,
        issuer: str,
        operator_namespace: str,
        clock: Callable[[], dt.datetime],
        ledger=None,
        step_timeout: float = 30.0,
    ):
        self.kube, self.audit, self.issuer, self.ledger = kube, audit, issuer, ledger
        self.operator_namespace = operator_namespace
        self.clock, self.step_timeout = clock, step_timeout

    def reconcile(self, namespace: str, name: str) -> dt.datetime | None:
        drill = self.kube.get_drill(namespace, name)
        if drill is None:
            return None
        spec, status = drill.get("spec") or {}, drill.get("status") or {}
        problem = validate(spec.get("schedule", ""))
        if problem:
            self._status(drill, {"lastResult": "Failed", "failureReason": f"spec.schedule: {problem}"})
            return None
        now = self.clock()
        last = parse_rfc3339(status["lastRun"]) if status.get("lastRun") else None
        run_now = spec.get("runNow") is not None and spec.get("runNow") != status.get("handledRunNow")
        due = next_run(spec["schedule"], last, now)
        if not run_now and due > now:
            return due
        self.run(drill)
        drill = self.kube.get_drill(namespace, name) or drill
        last = parse_rfc3339(drill["status"]["lastRun"])
        return next_run(spec["schedule"], last, self.clock())

    def run(self, drill: dict[str, Any]) -> bool:
        meta, spec = drill["metadata"], drill.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        started_at, t0 = self.clock(), time.monotonic()
        self._status(
            drill, {"lastRun": to_rfc3339(started_at), "lastResult": "Running", "handledRunNow": spec.get("runNow")}
        )
        steps: list[dict[str, Any]] = []
        request_name = f"drill-{name}-{int(started_at.timestamp())}"[:50]
        failure: StepFailed | None = None
        try:
            self._step(steps, "file", lambda: self._file(ns, request_name, drill))
            req = self._step(steps, "issue", lambda: self._wait_active(ns, request_name))
            token = self._step(steps, "read-secret", lambda: self._read_token(req))
            self._step(steps, "verify-jwks", lambda: self._verify_jwks(token))
            if spec.get("verifyWithCluster"):
                self._step(steps, "token-review", lambda: self._token_review(token, req))
                self._step(steps, "access-review", lambda: self._access_review(token, spec))
            self._step(steps, "revoke", lambda: self._revoke(ns, request_name))
            self._step(steps, "cleanup", lambda: self._wait_clean(req))
        except StepFailed as exc:
            failure = exc
        finally:
            try:
                self.kube.delete_request(ns, request_name)
            except Exception as exc:  # best effort; the request is revoked or never issued
                log.info("drill request %s/%s not deleted: %s", ns, request_name, error_text(exc))
        elapsed = round(time.monotonic() - t0, 3)
        label = f"{ns}/{name}"
        ok = failure is None
        patch: dict[str, Any] = {
            "steps": steps,
            "durationSeconds": elapsed,
            "lastResult": "Succeeded" if ok else "Failed",
            "failureReason": None if ok else f"step {failure.step} failed: {failure.message}",
        }
        if ok:
            patch["lastSuccess"] = to_rfc3339(self.clock())
            metrics.drill_last_success.labels(label).set(self.clock().timestamp())
        metrics.drill_runs_total.labels(label, "success" if ok else "failure").inc()
        self._status(drill, patch)
        self.kube.create_event(
            _event(
                drill,
                "Normal" if ok else "Warning",
                "DrillSucceeded" if ok else "DrillFailed",
                f"drill passed all {len(steps)} steps in {elapsed}s"
                if ok
                else f"drill failed at step {failure.step}: {failure.message}",
                self.clock(),
            )
        )
        self.audit.record(
            "drill",
            time=to_rfc3339(self.clock()),
            drill={"namespace": ns, "name": name},
            policy=spec.get("policy"),
            request={"namespace": ns, "name": request_name},
            outcome="success" if ok else "failure",
            reason=None if ok else f"{failure.step}: {failure.message}",
            durationSeconds=elapsed,
        )
        return ok

    # ------------------------------------------------------------------ steps
    def _step(self, steps, name, fn):
        t0 = time.monotonic()
        try:
            result = fn()
        except StepFailed as exc:
            steps.append({"name": name, "ok": False, "message": exc.message})
            raise StepFailed(name, exc.message) from None
        except Exception as exc:
            message = error_text(exc)
            steps.append({"name": name, "ok": False, "message": message})
            raise StepFailed(name, message) from None
        steps.append({"name": name, "ok": True, "message": f"ok in {time.monotonic() - t0:.2f}s"})
        return result

    def _file(self, ns, request_name, drill):
        spec = drill["spec"]
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_REQUEST,
            "metadata": {
                "name": request_name,
                "namespace": ns,
                "labels": {api.DRILL_LABEL: "true", "breakglass.dev/drill-name": drill["metadata"]["name"]},
            },
            "spec": {
                "policy": spec["policy"],
                "reason": f"scheduled break-glass drill {drill['metadata']['name']}",
                "duration": spec.get("duration") or "5m",
            },
        }
        for key in ("namespaces", "clusterRoles", "scopes"):
            if spec.get(key):
                body["spec"][key] = spec[key]
        self.kube.create_request(ns, body)

    def _poll(self, what, fn, timeout=None):
        deadline = time.monotonic() + (timeout or self.step_timeout)
        while True:
            value = fn()
            if value:
                return value
            if time.monotonic() > deadline:
                raise StepFailed("", f"timed out after {timeout or self.step_timeout:.0f}s waiting for {what}")
            time.sleep(0.2)

    def _wait_active(self, ns, request_name):
        def active():
            req = self.kube.get_request(ns, request_name)
            phase = ((req or {}).get("status") or {}).get("phase")
            if phase in api.TERMINAL_PHASES:
                raise StepFailed("", f"request ended {phase}: {req['status'].get('message')}")
            return req if phase == api.ACTIVE else None

        return self._poll("the drill request to be issued", active)

    def _read_token(self, req):
        ref = req["status"]["secretRef"]
        secret = self.kube.get_secret(ref["namespace"], ref["name"])
        if secret is None:
            raise StepFailed("", f"token Secret {ref['namespace']}/{ref['name']} missing")
        return base64.b64decode(secret["data"]["token"]).decode()

    def _verify_jwks(self, token):
        cm = self.kube.get_configmap(self.operator_namespace, api.JWKS_CONFIGMAP)
        if cm is None:
            raise StepFailed("", f"ConfigMap {api.JWKS_CONFIGMAP} is missing")
        jwks = json.loads((cm.get("data") or {}).get("jwks.json") or "{}")
        result = verify(token, jwks=jwks, issuer=self.issuer, audience=None)
        if not result.ok:
            raise StepFailed("", f"token does not verify against the published JWKS: {result.reason}: {result.message}")
        if not (result.claims.get("breakglass") or {}).get("drill"):
            raise StepFailed("", "token is not marked as a drill")
        published = {k.get("kid") for k in jwks.get("keys", [])}
        lost = [
            e
            for e in (self.ledger.summaries() if self.ledger else [])
            if e.state == "Active" and e.kid not in published
        ]
        if lost:  # a deleted or replaced keyring: live grants can no longer authenticate
            raise StepFailed(
                "",
                f"{len(lost)} live grant(s) were signed by keys no longer in the published JWKS "
                f"(e.g. kid {lost[0].kid}): the signing keyring was deleted or replaced",
            )
        return result.claims

    def _token_review(self, token, req):
        review = self.kube.token_review(token)
        status = review.get("status") or {}
        meta = req["metadata"]
        want = api.grant_username(meta["namespace"], meta["name"], meta["uid"])
        if not status.get("authenticated"):
            raise StepFailed("", f"TokenReview did not authenticate the token: {status.get('error') or 'no reason'}")
        if (status.get("user") or {}).get("username") != want:
            raise StepFailed("", f"TokenReview mapped the token to {status['user'].get('username')!r}, not {want!r}")

    def _access_review(self, token, spec):
        for ns in spec.get("namespaces") or []:
            for role_name in spec.get("clusterRoles") or []:
                role = self.kube.get_cluster_role(role_name)
                rule = next((r for r in (role or {}).get("rules") or [] if r.get("resources") and r.get("verbs")), None)
                if rule is None:
                    raise StepFailed("", f"ClusterRole {role_name} grants nothing checkable")
                attrs = {
                    "namespace": ns,
                    "verb": rule["verbs"][0],
                    "resource": rule["resources"][0].split("/")[0],
                    "group": (rule.get("apiGroups") or [""])[0],
                }
                review = self.kube.access_review_as_token(token, attrs)
                if not (review.get("status") or {}).get("allowed"):
                    raise StepFailed(
                        "",
                        f"the token may not {attrs['verb']} {attrs['resource']} in {ns} "
                        f"(ClusterRole {role_name}): {review.get('status', {}).get('reason', '')}",
                    )

    def _revoke(self, ns, request_name):
        self.kube.patch_request(ns, request_name, {"spec": {"revoked": True}})

    def _wait_clean(self, req):
        """Every object the ledger lists for this grant is gone (checked by name and uid)."""

        def clean():
            entry = self.ledger.get(req["metadata"]["uid"]) if self.ledger else None
            if entry is None or entry.get("state") in ("Issuing", "Active"):
                return False
            return all(
                (self.kube.read(o["kind"], o["namespace"], o["name"]) or {}).get("metadata", {}).get("uid")
                != o.get("uid")
                or not o.get("uid")
                for o in entry.get("objects") or []
            )

        self._poll("the Secret and RoleBindings to be deleted", clean, timeout=10)

    def _status(self, drill, patch):
        meta = drill["metadata"]
        self.kube.patch_drill_status(meta["namespace"], meta["name"], patch)


def _event(drill, type_, reason, message, now):
    from .k8s.builders import build_event

    return build_event(
        involved={**drill, "kind": "BreakGlassDrill", "apiVersion": api.API_VERSION},
        type_=type_,
        reason=reason,
        message=message,
        now=now,
    )
