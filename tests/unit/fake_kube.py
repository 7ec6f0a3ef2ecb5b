"""An in-memory stand-in for `breakglass.k8s.client.Kube`, for unit tests of the reconciler, grants,
ledger and sweeper.

Only the methods those modules call exist. It behaves like the API server where they rely on it:

* every write gets a fresh, increasing `resourceVersion` (one counter, like etcd) and every created
  object a fresh `uid`;
* `create_if_absent` returns the existing object (created=False) when the name is taken;
* `replace_configmap` and `patch_request_status` honour `metadata.resourceVersion` (Conflict);
  `patch_request` does too (a 409 ApiException, as the real client raises it);
* `delete_exact` deletes only the object with that uid (False otherwise);
* a create in a namespace that does not exist is a `PermanentError(404)`;
* a request being deleted disappears once its last finalizer is removed.

Every call is recorded, in order, in `calls` (verb, kind, namespace, name, detail). `fail(...)` makes
a call raise once (or `times` times), before or after the call took effect.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import itertools
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.rest import ApiException

from breakglass import api
from breakglass.audit import AuditLog
from breakglass.domain.durations import to_rfc3339
from breakglass.grants import Grants
from breakglass.k8s.client import Conflict, PermanentError
from breakglass.ledger import Ledger, entry_from_configmap
from breakglass.lifecycle import PolicyCache, Reconciler
from breakglass.settings import Settings
from breakglass.tokens.keys import Keyring

REQUEST, POLICY, APPROVAL = api.KIND_REQUEST, api.KIND_POLICY, api.KIND_APPROVAL
EXTENSION = api.KIND_EXTENSION


@dataclass(frozen=True)
class Call:
    verb: str  # get, patch, patch_status, list, create, read, delete, replace, event
    kind: str
    namespace: str | None
    name: str | None
    detail: Any = None  # create: created?; delete: deleted?; replace: the stored data

    def __repr__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else f"{self.name}"
        return f"{self.verb} {self.kind} {where}" + (f" ({self.detail})" if self.detail is not None else "")


@dataclass
class Fault:
    verb: str
    kind: str | None
    name: str | None
    exc: BaseException
    after: bool
    times: int
    hits: int = field(default=0)

    def matches(self, verb: str, kind: str, name: str | None) -> bool:
        return (
            self.times > 0
            and self.verb == verb
            and (self.kind is None or self.kind == kind)
            and (self.name is None or self.name == name)
        )


class FakeKube:
    def __init__(self, namespaces=("breakglass-system",)):
        self.namespaces: set[str] = set(namespaces)
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self._lock = threading.RLock()
        self._rv = itertools.count(100)
        self._uid = itertools.count(1)

    # ------------------------------------------------------------ test helpers
    def put(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Store an object as if someone else created it (not recorded as a call)."""
        with self._lock:
            body = copy.deepcopy(body)
            meta = body.setdefault("metadata", {})
            meta.setdefault("uid", self._new_uid(kind))
            meta["resourceVersion"] = self._next_rv()
            body.setdefault("kind", kind)
            self.objects[(kind, meta.get("namespace"), meta["name"])] = body
            return copy.deepcopy(body)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self.objects.get((kind, namespace, name))
            return copy.deepcopy(found) if found else None

    def remove(self, kind: str, namespace: str | None, name: str) -> None:
        with self._lock:
            self.objects.pop((kind, namespace, name), None)

    def of_kind(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(o)
                for (k, ns, _), o in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
                if k == kind and (namespace is None or ns == namespace)
            ]

    def names(self, *kinds: str) -> set[tuple[str, str | None, str]]:
        with self._lock:
            return {key for key in self.objects if key[0] in kinds}

    def fail(
        self,
        verb: str,
        kind: str | None = None,
        name: str | None = None,
        *,
        exc: BaseException | None = None,
        after: bool = False,
        times: int = 1,
    ) -> Fault:
        """The next `times` matching calls raise `exc` (default RuntimeError); `after`: once the call
        took effect (a crash between the write and the caller learning about it)."""
        fault = Fault(
            verb, kind, name, exc or RuntimeError(f"injected failure: {verb} {kind or ''} {name or ''}"), after, times
        )
        self.faults.append(fault)
        return fault

    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.verb in ("create", "delete", "replace", "patch", "patch_status")]

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    # ------------------------------------------------------------ internals
    def _next_rv(self) -> str:
        return str(next(self._rv))

    def _new_uid(self, kind: str) -> str:
        return f"{kind.lower()}-uid-{next(self._uid)}"

    def _record(self, verb: str, kind: str, namespace: str | None, name: str | None, detail: Any = None) -> None:
        self.calls.append(Call(verb, kind, namespace, name, detail))

    def _fault(self, verb: str, kind: str, name: str | None, after: bool, namespace: str | None = None) -> None:
        for fault in self.faults:
            if fault.after == after and fault.matches(verb, kind, name):
                fault.times -= 1
                fault.hits += 1
                if not after:  # the call was made, and failed
                    self._record(verb, kind, namespace, name, "injected failure")
                raise fault.exc

    # ------------------------------------------------------------ requests, policies, approvals
    def get_request(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            self._fault("get", REQUEST, name, after=False, namespace=namespace)
            self._record("get", REQUEST, namespace, name)
            return self.get(REQUEST, namespace, name)

    def patch_request(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch of metadata (the reconciler only patches finalizers)."""
        with self._lock:
            self._fault("patch", REQUEST, name, after=False, namespace=namespace)
            self._record("patch", REQUEST, namespace, name, patch.get("metadata", {}).get("finalizers"))
            obj = self.objects.get((REQUEST, namespace, name))
            if obj is None:
                raise ApiException(status=404, reason="Not Found")
            want = (patch.get("metadata") or {}).get("resourceVersion")
            if want is not None and want != obj["metadata"]["resourceVersion"]:
                raise ApiException(status=409, reason="Conflict")
            for key, value in (patch.get("metadata") or {}).items():
                if key == "resourceVersion":
                    continue
                if value is None:
                    obj["metadata"].pop(key, None)
                else:
                    obj["metadata"][key] = copy.deepcopy(value)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            out = copy.deepcopy(obj)
            if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
                del self.objects[(REQUEST, namespace, name)]  # the API server finishes the delete
            self._fault("patch", REQUEST, name, after=True)
            return out

    def patch_request_status(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._fault("patch_status", REQUEST, name, after=False, namespace=namespace)
            self._record("patch_status", REQUEST, namespace, name, (body.get("status") or {}).get("phase"))
            obj = self.objects.get((REQUEST, namespace, name))
            if obj is None:
                raise ApiException(status=404, reason="Not Found")
            want = (body.get("metadata") or {}).get("resourceVersion")
            if want is not None and want != obj["metadata"]["resourceVersion"]:
                raise Conflict(f"request {namespace}/{name} changed meanwhile")
            status = obj.setdefault("status", {})
            for key, value in (body.get("status") or {}).items():
                if value is None:
                    status.pop(key, None)
                else:
                    status[key] = copy.deepcopy(value)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._fault("patch_status", REQUEST, name, after=True)
            return copy.deepcopy(obj)

    def list_approvals(self, namespace: str, request_name: str) -> list[dict[str, Any]]:
        with self._lock:
            self._record("list", APPROVAL, namespace, request_name)
            return [
                a for a in self.of_kind(APPROVAL, namespace) if (a.get("spec") or {}).get("request") == request_name
            ]

    def list_extensions(self, namespace: str, request_name: str) -> list[dict[str, Any]]:
        with self._lock:
            self._record("list", EXTENSION, namespace, request_name)
            return [
                e for e in self.of_kind(EXTENSION, namespace) if (e.get("spec") or {}).get("request") == request_name
            ]

    def get_extension(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self.get(EXTENSION, namespace, name)

    def replace_secret(self, body: dict[str, Any]) -> None:
        """Replace guarded by metadata.resourceVersion (Conflict), keeping the uid."""
        with self._lock:
            ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
            self._fault("replace", "Secret", name, after=False, namespace=ns)
            self._record("replace", "Secret", ns, name)
            obj = self.objects.get(("Secret", ns, name))
            if obj is None or obj["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
                raise Conflict(f"secret {ns}/{name} changed")
            stored = copy.deepcopy(body)
            stored.setdefault("kind", "Secret")
            stored["metadata"].update(uid=obj["metadata"]["uid"], resourceVersion=self._next_rv())
            self.objects[("Secret", ns, name)] = stored
            self._fault("replace", "Secret", name, after=True)

    def get_policy(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            self._record("get", POLICY, None, name)
            return self.get(POLICY, None, name)

    # ------------------------------------------------------------ objects made for grants
    def create_if_absent(self, kind: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        with self._lock:
            ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
            self._fault("create", kind, name, after=False, namespace=ns)
            if ns not in self.namespaces:
                self._record("create", kind, ns, name, "namespace missing")
                raise PermanentError(404, f'create {kind} {ns}/{name}: namespaces "{ns}" not found')
            existing = self.objects.get((kind, ns, name))
            if existing is not None:
                self._record("create", kind, ns, name, False)
                return copy.deepcopy(existing), False
            stored = copy.deepcopy(body)
            stored.setdefault("kind", kind)
            stored["metadata"].pop("resourceVersion", None)
            stored["metadata"].update(uid=self._new_uid(kind), resourceVersion=self._next_rv())
            self.objects[(kind, ns, name)] = stored
            self._record("create", kind, ns, name, True)
            self._fault("create", kind, name, after=True)
            return copy.deepcopy(stored), True

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            self._fault("read", kind, name, after=False, namespace=namespace)
            self._record("read", kind, namespace, name)
            return self.get(kind, namespace, name)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.read("Secret", namespace, name)

    def delete_exact(self, kind: str, namespace: str, name: str, uid: str) -> bool:
        with self._lock:
            self._fault("delete", kind, name, after=False, namespace=namespace)
            obj = self.objects.get((kind, namespace, name))
            ok = obj is not None and obj["metadata"].get("uid") == uid
            if ok:
                del self.objects[(kind, namespace, name)]
            self._record("delete", kind, namespace, name, ok)
            self._fault("delete", kind, name, after=True)
            return ok

    def replace_configmap(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            meta = body["metadata"]
            ns, name = meta["namespace"], meta["name"]
            self._fault("replace", "ConfigMap", name, after=False, namespace=ns)
            obj = self.objects.get(("ConfigMap", ns, name))
            if obj is None:
                self._record("replace", "ConfigMap", ns, name, "missing")
                raise ApiException(status=404, reason="Not Found")
            if (
                meta.get("resourceVersion") is not None
                and meta["resourceVersion"] != obj["metadata"]["resourceVersion"]
            ):
                self._record("replace", "ConfigMap", ns, name, "conflict")
                raise Conflict(f"configmap {ns}/{name} changed meanwhile")
            stored = copy.deepcopy(body)
            stored.setdefault("kind", "ConfigMap")
            stored["metadata"].update(uid=obj["metadata"]["uid"], resourceVersion=self._next_rv())
            self.objects[("ConfigMap", ns, name)] = stored
            self._record("replace", "ConfigMap", ns, name, copy.deepcopy(stored.get("data")))
            self._fault("replace", "ConfigMap", name, after=True)
            return copy.deepcopy(stored)

    def iter_configmap_pages(self, namespace: str, selector: str, limit: int = 500):
        items, rv = self.list_configmaps(namespace, selector)
        for i in range(0, max(len(items), 1), limit):
            yield items[i : i + limit], rv

    def list_configmaps(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        with self._lock:
            self._record("list", "ConfigMap", namespace, selector)
            wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
            items = [
                cm
                for cm in self.of_kind("ConfigMap", namespace)
                if all((cm["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
            ]
            return items, self._next_rv()

    # ------------------------------------------------------------ events
    def create_event(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._record("event", "Event", body["metadata"].get("namespace"), body.get("reason"), body.get("message"))

    def events(self) -> list[str]:
        """The reasons of every Event posted, in order."""
        with self._lock:
            return [c.name for c in self.calls if c.verb == "event"]


# =====================================================================================================
# A small world on top of the fake: operator parts wired as wiring.build wires them, a fixed clock.
# =====================================================================================================
OPERATOR_NS = api.DEFAULT_OPERATOR_NAMESPACE
CREATED = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
UID = "6f1c3a9e-0000-4000-8000-000000000001"
RING = Keyring.new("ES256", CREATED - dt.timedelta(days=1))

POLICY_SPEC = {
    "requesters": {"groups": ["sre"]},
    "approvers": {"users": ["bob", "carol", "dave"], "groups": ["sre-leads"]},
    "requiredApprovals": 1,
    "allowedNamespaces": ["team-*"],
    "allowedClusterRoles": ["view", "edit"],
    "maxDuration": "1h",
    "approvalTimeout": "30m",
    "emergency": {"allowed": True, "reviewWithin": "5m"},
}
REQUEST_SPEC = {
    "policy": "prod",
    "requester": "alice",
    "requesterGroups": ["sre"],
    "reason": "the database is down badly",
    "duration": "10m",
    "namespaces": ["team-a", "team-b"],
    "clusterRoles": ["view"],
}


class FakeKeys:
    """KeyStore stand-in: one fixed keyring."""

    def __init__(self, ring: Keyring = RING):
        self.ring = ring

    def current(self) -> Keyring:
        return self.ring

    def has_kid(self, kid: str) -> bool:
        return any(k.kid == kid for k in self.ring.keys)


class FakeRevocations:
    """RevocationStore stand-in: remembers what was published."""

    def __init__(self):
        self.published: list[dict[str, Any]] = []

    def publish(self, **entry: Any) -> bool:
        self.published.append(entry)
        return True


class World:
    def __init__(
        self,
        namespaces=("team-a", "team-b"),
        settings: Settings | None = None,
        now: dt.datetime = CREATED,
        kube: FakeKube | None = None,
    ):
        """`kube`: share another world's cluster (a second operator replica with its own view)."""
        self.now = now
        self.settings = settings or Settings(namespace=OPERATOR_NS, issuer="https://issuer.test")
        self.kube = kube or FakeKube(namespaces=(self.settings.namespace, self.settings.tokens_namespace, *namespaces))
        self.ledger = Ledger(self.kube, self.settings.namespace)
        self.ledger._relist()  # synced, as after the watch's first list
        self.keys, self.revocations = FakeKeys(), FakeRevocations()
        self.audit_stream = io.StringIO()
        self.audit = AuditLog(stream=self.audit_stream)
        self.grants = Grants(
            kube=self.kube,
            ledger=self.ledger,
            keys=self.keys,
            revocations=self.revocations,
            settings=self.settings,
            clock=self.clock,
        )
        self.reconciler = Reconciler(
            kube=self.kube,
            ledger=self.ledger,
            grants=self.grants,
            audit=self.audit,
            settings=self.settings,
            clock=self.clock,
            policies=PolicyCache(self.kube, ttl=0),
        )
        self.kube.reset_calls()

    def clock(self) -> dt.datetime:
        return self.now

    def at(self, minutes: float) -> World:
        self.now = CREATED + dt.timedelta(minutes=minutes)
        return self

    # --------------------------------------------------------------- objects
    def policy(self, name: str = "prod", **changes: Any) -> dict[str, Any]:
        spec = {**POLICY_SPEC, **changes}
        return self.kube.put(POLICY, {"apiVersion": api.API_VERSION, "metadata": {"name": name}, "spec": spec})

    def request(
        self,
        name: str = "r1",
        namespace: str = "team-a",
        uid: str = UID,
        status: dict | None = None,
        finalizers=(),
        **changes: Any,
    ) -> dict[str, Any]:
        body = {
            "apiVersion": api.API_VERSION,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "generation": 1,
                "creationTimestamp": to_rfc3339(CREATED),
                "finalizers": list(finalizers),
            },
            "spec": {**REQUEST_SPEC, **changes},
        }
        if status is not None:
            body["status"] = status
        return self.kube.put(REQUEST, body)

    def change_request(self, name: str = "r1", namespace: str = "team-a", **spec: Any) -> None:
        with self.kube._lock:
            obj = self.kube.objects[(REQUEST, namespace, name)]
            obj["spec"].update(spec)
            obj["metadata"]["generation"] += 1
            obj["metadata"]["resourceVersion"] = self.kube._next_rv()

    def delete_request(self, name: str = "r1", namespace: str = "team-a") -> None:
        """kubectl delete: with a finalizer the object stays, marked; without, it is gone."""
        with self.kube._lock:
            obj = self.kube.objects[(REQUEST, namespace, name)]
            if obj["metadata"].get("finalizers"):
                obj["metadata"]["deletionTimestamp"] = to_rfc3339(self.now)
                obj["metadata"]["resourceVersion"] = self.kube._next_rv()
            else:
                del self.kube.objects[(REQUEST, namespace, name)]

    def approve(
        self,
        approver: str = "bob",
        decision: str = "Approve",
        *,
        request: str = "r1",
        namespace: str = "team-a",
        request_uid: str = UID,
        minutes: float = 0.5,
        groups=("sre-leads",),
        name: str | None = None,
    ) -> dict[str, Any]:
        return self.kube.put(
            APPROVAL,
            {
                "apiVersion": api.API_VERSION,
                "metadata": {
                    "name": name or f"{request}-{approver}-{decision.lower()}",
                    "namespace": namespace,
                    "creationTimestamp": to_rfc3339(CREATED + dt.timedelta(minutes=minutes)),
                },
                "spec": {
                    "request": request,
                    "requestUID": request_uid,
                    "approver": approver,
                    "approverGroups": list(groups),
                    "decision": decision,
                },
            },
        )

    # --------------------------------------------------------------- acting and looking
    def reconcile(self, name: str = "r1", namespace: str = "team-a"):
        try:
            return self.reconciler.reconcile(namespace, name)
        finally:
            self.settle_events()

    def settle_events(self) -> None:
        """Events are posted by background threads, in order per request: wait until they caught up."""
        self.reconciler.recorder._events.flush()

    def status(self, name: str = "r1", namespace: str = "team-a") -> dict[str, Any] | None:
        req = self.kube.get(REQUEST, namespace, name)
        return None if req is None else req.get("status") or {}

    def stored_entry(self, uid: str = UID) -> dict[str, Any] | None:
        """The ledger entry as stored in the cluster (not the operator's in-memory view)."""
        cm = self.kube.get("ConfigMap", self.settings.namespace, api.ledger_name(uid))
        return entry_from_configmap(cm) if cm else None

    def audit_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_stream.getvalue().splitlines() if line.strip()]

    def grant_objects(self) -> set[tuple[str, str | None, str]]:
        return self.kube.names("RoleBinding", "Role", "Secret")
