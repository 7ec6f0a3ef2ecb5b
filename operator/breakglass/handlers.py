"""kopf decorators only. Each handler delegates to a service in a line or two."""

from __future__ import annotations

import asyncio
import logging

import kopf

from . import admission, api, bootstrap, metrics, serving, wiring
from .admission import extensions as ext_admission
from .domain.durations import utcnow
from .domain.policy import Verdict

log = logging.getLogger(__name__)


_FORBIDDEN = ("identity", "self-approval", "authorization", "operator-only")


def _reject(kind: str, verdict: Verdict) -> None:
    if not verdict.ok:
        metrics.admission_rejections_total.labels(kind, verdict.rule or verdict.reason).inc()
        raise kopf.AdmissionError(verdict.message, code=403 if verdict.rule in _FORBIDDEN else 422)


@kopf.on.login()
def login(memo: kopf.Memo, **_):
    """kopf uses exactly the credentials our own client uses (--kubeconfig or in-cluster)."""
    return bootstrap.connection_info(memo.settings)


@kopf.on.startup()
async def start_operator(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
    """Build the services, configure kopf, start queue, endpoints, metrics and the catch-up sweep."""
    memo.rt = await asyncio.get_running_loop().run_in_executor(None, wiring.build, memo.settings)
    await serving.start(memo.rt, settings)


@kopf.on.cleanup()
async def stop_operator(memo: kopf.Memo, **_):
    await serving.stop(memo.rt)


# --- watches: every event becomes "reconcile that request" -------------------------------
# Requests themselves are watched by the operator's own informer (runtime.request_informer: paged
# list, then a watch; 10,000 requests cost a few pages and no per-event framework overhead).
@kopf.on.event(api.GROUP, api.VERSION, api.APPROVAL_PLURAL)
def approval_changed(spec, namespace, memo: kopf.Memo, **_):
    if spec.get("request"):
        memo.rt.enqueue(namespace, spec["request"])


@kopf.on.event(api.GROUP, api.VERSION, api.EXTENSION_PLURAL)
def extension_changed(spec, namespace, memo: kopf.Memo, **_):
    if spec.get("request"):
        memo.rt.enqueue(namespace, spec["request"])


@kopf.on.event(api.GROUP, api.VERSION, api.DRILL_PLURAL)
def drill_changed(name, namespace, type, memo: kopf.Memo, **_):
    if type != "DELETED":
        memo.rt.enqueue_drill(namespace, name)


@kopf.on.event(api.GROUP, api.VERSION, api.POLICY_PLURAL)
def policy_changed(body, type, memo: kopf.Memo, **_):
    memo.rt.on_policy(dict(body), deleted=type == "DELETED")


# --- admission: identity is stamped from userinfo, then everything is validated ----------
# persistent=True: the webhook configurations stay registered while the operator is down, so
# admission fails closed (failurePolicy Fail) instead of silently admitting unchecked objects.
@kopf.on.mutate(
    api.GROUP, api.VERSION, api.REQUEST_PLURAL, id="stamp-requester", operations=["CREATE"], persistent=True
)
def stamp_requester(spec, meta, userinfo, patch, **_):
    verdict, fields = admission.stamp_request_identity(dict(spec), userinfo)
    _reject("BreakGlassRequest", verdict)
    patch.spec.update(fields)
    # The revoke-on-delete finalizer from birth: no separate write before the first grant.
    finalizers = list(meta.get("finalizers") or [])
    if api.FINALIZER not in finalizers:
        patch.metadata["finalizers"] = finalizers + [api.FINALIZER]


# DELETE is routed here too: kopf then passes the stored object as both `body` and `old` (new is None).
@kopf.on.validate(
    api.GROUP,
    api.VERSION,
    api.REQUEST_PLURAL,
    id="validate-request",
    operations=["CREATE", "UPDATE", "DELETE"],
    persistent=True,
)
def validate_request(body, old, operation, userinfo, dryrun, memo: kopf.Memo, **_):
    if admission.is_identity_probe(dict(body), operation, dryrun):
        return
    rules = admission.RequestRules(
        memo.rt.policies.get,
        memo.rt.namespace_exists,
        memo.rt.settings.admin_groups,
        memo.rt.operator_username,
        memo.rt.settings.max_token_lifetime,
        memo.rt.protected_namespaces,
    )
    _reject(
        "BreakGlassRequest",
        admission.validate_request(operation, dict(body), dict(old) if old else None, userinfo, rules),
    )


@kopf.on.mutate(
    api.GROUP, api.VERSION, api.APPROVAL_PLURAL, id="stamp-approver", operations=["CREATE"], persistent=True
)
def stamp_approver(body, spec, userinfo, patch, memo: kopf.Memo, **_):
    verdict, fields = admission.stamp_approval_identity(dict(spec), userinfo)
    _reject("BreakGlassApproval", verdict)
    if spec.get("extension"):  # an answer to a BreakGlassExtension: bound to its uid too
        verdict, request_fields, owners = ext_admission.stamp_extension_approval(
            dict(body), memo.rt.kube.get_request, memo.rt.kube.get_extension
        )
    else:
        verdict, request_fields, owners = admission.stamp_approval_request(dict(body), memo.rt.kube.get_request)
    _reject("BreakGlassApproval", verdict)
    patch.spec.update({**fields, **request_fields})
    patch.metadata["ownerReferences"] = owners


@kopf.on.validate(
    api.GROUP,
    api.VERSION,
    api.APPROVAL_PLURAL,
    id="validate-approval",
    operations=["CREATE", "UPDATE"],
    persistent=True,
)
def validate_approval(body, spec, old, operation, userinfo, memo: kopf.Memo, **_):
    if operation == "CREATE" and (spec.get("extension") or spec.get("extensionUID")):
        verdict = ext_admission.validate_extension_approval(
            dict(body), userinfo, memo.rt.kube.get_request, memo.rt.kube.get_extension, memo.rt.policies.get
        )
    elif operation == "CREATE":
        verdict = admission.validate_approval_create(
            dict(body), userinfo, memo.rt.kube.get_request, memo.rt.policies.get
        )
    else:
        verdict = admission.validate_approval_update(dict(old or {}), dict(body))
    _reject("BreakGlassApproval", verdict)


@kopf.on.mutate(
    api.GROUP, api.VERSION, api.EXTENSION_PLURAL, id="stamp-extension", operations=["CREATE"], persistent=True
)
def stamp_extension(body, spec, userinfo, patch, memo: kopf.Memo, **_):
    verdict, fields = admission.stamp_request_identity(dict(spec), userinfo)
    _reject("BreakGlassExtension", verdict)
    verdict, request_fields, owners = ext_admission.stamp_extension(dict(body), memo.rt.kube.get_request)
    _reject("BreakGlassExtension", verdict)
    patch.spec.update({**fields, **request_fields})
    patch.metadata["ownerReferences"] = owners


@kopf.on.validate(
    api.GROUP,
    api.VERSION,
    api.EXTENSION_PLURAL,
    id="validate-extension",
    operations=["CREATE", "UPDATE"],
    persistent=True,
)
def validate_extension(body, old, operation, userinfo, memo: kopf.Memo, **_):
    if operation == "CREATE":
        verdict = ext_admission.validate_extension_create(
            dict(body),
            userinfo,
            memo.rt.kube.get_request,
            memo.rt.policies.get,
            memo.rt.settings.max_token_lifetime,
            utcnow(),
        )
    else:
        verdict = ext_admission.validate_extension_update(dict(old or {}), dict(body))
    _reject("BreakGlassExtension", verdict)
