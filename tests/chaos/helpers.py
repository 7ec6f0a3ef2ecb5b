"""Chaos tier plumbing: a control plane whose TokenReview webhook and admission webhooks go through
TCP load balancers (tests/chaos/lb.py) to two real operator replicas, a supervisor that restarts
exited replicas like a Deployment would, a Secret watcher that sees every token ever delivered,
fault injectors, and the invariant check run after every scenario.

Everything waits by polling with deadlines (harness.wait_for); the only sleeps are the deliberate
pauses of a scenario (named as such where they happen).
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import json
import os
import pathlib
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from harness import (
    ROOT,
    Cluster,
    Operator,
    operator_ports,
    start_control_plane,
    stop_cluster,
    wait_for,
    write_audit_webhook_config,
    write_tokenreview_webhook_config,
)
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException

from breakglass import tls
from tests.e2e.tokens_helpers import forbidden, unauthorized, with_token

from .lb import TcpBalancer

sys.path.insert(0, str(ROOT / "hack"))
import render_chart  # noqa: E402

GROUP, VERSION = "breakglass.dev", "v1alpha1"
OPERATOR_NS = "breakglass-system"
TERMINAL = {"Expired", "Revoked", "Denied", "Failed"}
ENDED_STATES = {"Revoked", "Expired", "Failed"}
DEADLINE_GRACE = dt.timedelta(seconds=5)  # an Active request this far past exp is a violation

# ---------------------------------------------------------------------------------------- report
REPORT: list[str] = []


def report(line: str) -> None:
    """A measured number: printed now and again in the terminal summary of the run."""
    REPORT.append(line)
    print(f"[chaos] {line}", flush=True)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# ------------------------------------------------------------------------------ API as a user
class Api:
    """The kubernetes client as one of the cluster's static users (fast: no kubectl process)."""

    def __init__(self, cluster: Cluster, user: str = "admin"):
        self.client = k8s_config.new_client_from_config(config_file=cluster.kubeconfig(user))
        self.client.rest_client.pool_manager.connection_pool_kw["timeout"] = 20
        self.core = k8s.CoreV1Api(self.client)
        self.rbac = k8s.RbacAuthorizationV1Api(self.client)
        self.custom = k8s.CustomObjectsApi(self.client)
        self.coord = k8s.CoordinationV1Api(self.client)

    def raw(self, obj) -> dict:
        return self.client.sanitize_for_serialization(obj)

    # requests -------------------------------------------------------------
    def requests(self, namespace: str) -> list[dict]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "breakglassrequests")["items"]

    def request(self, namespace: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "breakglassrequests", name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_request(self, body: dict) -> None:
        ns = body["metadata"]["namespace"]
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "breakglassrequests", body)
        except ApiException as exc:
            if exc.status != 409:  # a retry after a lost response finds its own object
                raise

    def approve(self, namespace: str, request: str) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BreakGlassApproval",
            "metadata": {"generateName": f"{request}-", "namespace": namespace},
            "spec": {"request": request, "decision": "Approve"},
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "breakglassapprovals", body)

    def revoke(self, namespace: str, name: str) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "breakglassrequests",
            name,
            {"spec": {"revoked": True}},
            _content_type="application/merge-patch+json",
        )

    # operator state -------------------------------------------------------
    def ledger(self) -> dict[str, dict]:
        """uid -> grant.json of every ledger ConfigMap."""
        out = {}
        for cm in self.core.list_namespaced_config_map(OPERATOR_NS, label_selector="breakglass.dev/ledger=grant").items:
            entry = json.loads(cm.data["grant.json"])
            out[entry["request"]["uid"]] = entry
        return out

    def lease_holder(self, name: str = "breakglass-operator-leader") -> str | None:
        try:
            return self.coord.read_namespaced_lease(name, OPERATOR_NS).spec.holder_identity
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def exists(self, kind: str, namespace: str, name: str) -> dict | None:
        read = {
            "Secret": self.core.read_namespaced_secret,
            "Role": self.rbac.read_namespaced_role,
            "RoleBinding": self.rbac.read_namespaced_role_binding,
            "ConfigMap": self.core.read_namespaced_config_map,
        }[kind]
        try:
            return self.raw(read(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


def retrying(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call `fn` until it does not raise (admission may be down while no replica serves)."""
    return wait_for(lambda: (fn(), True)[1], timeout, what, interval=0.2)


# ------------------------------------------------------------------------------ the environment
@dataclass
class ReplicaOperator(Operator):
    """An operator replica: every replica of one deployment shares one issuer URL (the HTTPS LB, i.e.
    the Service), not its own port as a lone e2e operator does."""

    issuer_url: str = ""

    @property
    def issuer(self) -> str:
        return self.issuer_url or super().issuer


@dataclass
class Replica:
    name: str
    op: Operator
    hold: bool = False  # the supervisor leaves it down while set
    expect_exit: bool = False  # the next exit was caused by the test
    unexpected_exits: list[int] = field(default_factory=list)
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        return self.op.proc.pid if self.op.proc else None

    @property
    def alive(self) -> bool:
        return self.op.proc is not None and self.op.proc.poll() is None

    def metric(self, name: str) -> float | None:
        text = self.op.metrics_text() if self.alive else None
        if text is None:
            return None
        m = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
        return float(m.group(1)) if m else None

    def metric_names(self) -> set[str]:
        text = self.op.metrics_text() if self.alive else None
        return set(re.findall(r"^# TYPE (\S+)", text or "", re.MULTILINE))


class ChaosEnv:
    """One control plane, two operator replicas behind two TCP load balancers (webhook and HTTPS)."""

    def __init__(self, base: pathlib.Path, operator_args: list[str] | None = None, replicas: int = 2):
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.operator_args = list(operator_args or [])
        self.n_replicas = replicas
        self.webhook_config_name = "breakglass-chaos"
        self.cluster: Cluster | None = None
        self.replicas: list[Replica] = []
        self.lb_https: TcpBalancer | None = None
        self.lb_webhook: TcpBalancer | None = None
        self._lock = threading.RLock()
        self._sup_stop = threading.Event()
        self._sup_thread: threading.Thread | None = None
        self._paused_pids: list[int] = []
        self._extra_procs: list[subprocess.Popen] = []

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> ChaosEnv:
        self.certs = tls.generate(str(self.base / "tls"), ["127.0.0.1", "localhost"])
        self.client_cert = tls.generate_client(str(self.base / "apiserver-client"), "kube-apiserver")
        ports = [operator_ports() for _ in range(self.n_replicas)]
        self.lb_https = TcpBalancer(_free_port(), [p["https"] for p in ports]).start()
        self.lb_webhook = TcpBalancer(_free_port(), [p["webhook"] for p in ports]).start()
        flags = write_tokenreview_webhook_config(
            self.base / "tokenreview.kubeconfig", self.lb_https.port, self.certs.ca_file, client=self.client_cert
        )
        flags += write_audit_webhook_config(  # grant identities' requests -> whichever replica the LB picks
            self.base / "audit-webhook.kubeconfig", self.lb_https.port, self.certs.ca_file, client=self.client_cert
        )
        self.cluster = start_control_plane(self.base / "cluster", flags)
        self._apply_webhook_configurations()
        self.admin = Api(self.cluster)
        self.alice = Api(self.cluster, "alice")
        self.bob = Api(self.cluster, "bob")
        for i, p in enumerate(ports):
            op = ReplicaOperator.on_ports(
                self.cluster,
                self.base / f"replica-{i}",
                p,
                self.certs,
                local=False,
                webhook_config_name=self.webhook_config_name,
                issuer_url=f"https://127.0.0.1:{self.lb_https.port}",
                extra_args=["--client-ca-file", self.client_cert.ca_file, *self.operator_args],
            )
            self.replicas.append(Replica(f"replica-{i}", op))
        for r in self.replicas:
            r.op.start(wait=False)
        for r in self.replicas:
            self.wait_serving(r, 90)
        self.wait_admission(60)
        self.wait_leader(30)
        self._sup_thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._sup_thread.start()
        self.leaders = LeaderMonitor(self).start()
        return self

    def stop(self) -> None:
        if getattr(self, "leaders", None):
            self.leaders.stop()
        self._sup_stop.set()
        if self._sup_thread:
            self._sup_thread.join(5)
        for pid in self._paused_pids:  # never leave a stopped etcd behind
            _signal(pid, signal.SIGCONT)
        for r in self.replicas:
            r.hold = True
            try:
                r.op.stop()
            except Exception:  # noqa: BLE001 — kill what is left below
                pass
            if r.alive:
                r.op.kill9()
        for lb in (self.lb_https, self.lb_webhook):
            if lb:
                lb.stop()
        stop_cluster(self.base / "cluster")
        for p in self._extra_procs:
            if p.poll() is None:
                p.kill()
            p.wait()

    def _apply_webhook_configurations(self) -> None:
        """The chart's webhook configurations, pointing at the webhook LB by URL (no caBundle: the
        operator injects it, as with the chart)."""
        docs = [
            d
            for d in render_chart.manifests({"webhook": {"url": f"https://127.0.0.1:{self.lb_webhook.port}"}})
            if d["kind"] in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
        ]
        assert len(docs) == 2, [d["kind"] for d in docs]
        for d in docs:
            d["metadata"]["name"] = self.webhook_config_name
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    # ---------------------------------------------------------------- replicas
    def _supervise(self) -> None:
        """Restart exited replicas (a Deployment's pod restart); exits the test did not cause are counted."""
        while not self._sup_stop.wait(0.25):
            with self._lock:
                for r in self.replicas:
                    if r.hold or r.op.proc is None or r.op.proc.poll() is None:
                        continue
                    if not r.expect_exit:
                        r.unexpected_exits.append(r.op.proc.returncode)
                        report(f"{r.name} exited on its own (rc {r.op.proc.returncode}); restarted by the supervisor")
                    r.expect_exit = False
                    r.restarts += 1
                    r.op.start(wait=False)

    def kill9(self, r: Replica, restart: bool = True) -> float:
        """SIGKILL a replica; restart it at once (as a follower) unless told not to. Returns the kill time."""
        with self._lock:
            r.expect_exit = True
            r.hold = not restart
            t = time.monotonic()
            r.op.kill9()
            if restart:
                r.restarts += 1
                r.expect_exit = False
                r.op.start(wait=False)
            return t

    def terminate(self, r: Replica, restart: bool = True) -> tuple[float, float]:
        """Graceful SIGTERM; returns (signal time, seconds until the process exited)."""
        with self._lock:
            r.expect_exit = True
            r.hold = True
        t = time.monotonic()
        try:
            os.killpg(r.op.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            r.op.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            r.op.kill9()
        took = time.monotonic() - t
        with self._lock:
            r.expect_exit = False
            if restart:
                r.restarts += 1
                r.op.start(wait=False)
                r.hold = False
        return t, took

    def start_replica(self, r: Replica) -> None:
        with self._lock:
            if not r.alive:
                r.restarts += 1
                r.op.start(wait=False)
            r.hold = False
            r.expect_exit = False

    def serving(self, r: Replica) -> bool:
        """Its own endpoints answer: metrics, HTTPS /healthz (ledger synced) and the webhook port (TLS)."""
        if not r.alive or r.op.metrics_text() is None:
            return False
        ctx = ssl.create_default_context(cafile=self.certs.ca_file)
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{r.op.https_port}/healthz", context=ctx, timeout=3) as resp:
                if resp.status != 200:
                    return False
            with socket.create_connection(("127.0.0.1", r.op.webhook_port), timeout=3) as sock:
                with ctx.wrap_socket(sock, server_hostname="127.0.0.1"):
                    pass
        except (OSError, urllib.error.URLError):
            return False
        return True

    def wait_serving(self, r: Replica, timeout: float = 60) -> None:
        def ok():
            if r.op.proc is not None and r.op.proc.poll() is not None and r.hold:
                raise RuntimeError(f"{r.name} exited with {r.op.proc.returncode}; see {r.op.log_path}")
            return self.serving(r)

        wait_for(ok, timeout, f"{r.name} to serve", interval=0.25)

    def wait_admission(self, timeout: float = 60) -> None:
        """A server-side dry-run through the webhook LB reaches a replica with a trusted caBundle."""
        probe = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BreakGlassApproval",
            "metadata": {"name": "readiness-probe", "namespace": "default"},
            "spec": {"request": "no-such-request-readiness", "decision": "Approve"},
        }

        def answers():
            out = self.cluster.kubectl(
                "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(probe), check=False
            )
            return "no BreakGlassRequest of that name" in out.stderr

        wait_for(answers, timeout, "admission through the webhook load balancer", interval=0.5)

    def leader(self) -> Replica | None:
        """The replica whose breakglass_leader is 1 and whose pid holds the Lease."""
        holder = self.admin.lease_holder()
        for r in self.replicas:
            if r.alive and r.metric("breakglass_leader") == 1 and holder and holder.endswith(f"-{r.pid}"):
                return r
        return None

    def wait_leader(self, timeout: float = 30, other_than: Replica | None = None) -> Replica:
        def found():
            r = self.leader()
            return r if r is not None and r is not other_than else None

        return wait_for(found, timeout, "a leader", interval=0.1)

    def followers(self) -> list[Replica]:
        lead = self.leader()
        return [r for r in self.replicas if r is not lead]

    def all_leaders(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive and r.metric("breakglass_leader") == 1]

    # ---------------------------------------------------------------- faults
    def pid_of(self, component: str) -> int:
        return int((self.cluster.dir / f"{component}.pid").read_text().strip())

    def pause(self, component: str, seconds: float) -> None:
        """SIGSTOP a control-plane process (etcd) for `seconds` (the deliberate pause), then SIGCONT."""
        pid = self.pid_of(component)
        self._paused_pids.append(pid)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)  # deliberate: the fault itself
        finally:
            os.kill(pid, signal.SIGCONT)
            self._paused_pids.remove(pid)

    def restart_apiserver(self, down_seconds: float = 0.0) -> float:
        """Stop kube-apiserver (SIGTERM, like a rolling restart) and start it again with the same
        command line, ports and certificates. Returns the seconds until /readyz answered again."""
        pidfile = self.cluster.dir / "kube-apiserver.pid"
        pid = int(pidfile.read_text())
        argv = [a for a in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        try:  # it drains long-running requests (watches) for a long time: give it 5 s, then SIGKILL
            wait_for(lambda: not _alive(pid), 5, "kube-apiserver to stop", interval=0.1)
        except TimeoutError:
            _signal(pid, signal.SIGKILL)
            wait_for(lambda: not _alive(pid), 10, "kube-apiserver to die", interval=0.1)
        if down_seconds:
            time.sleep(down_seconds)  # deliberate: how long the API is down
        log = open(self.cluster.dir / "logs" / "kube-apiserver.log", "ab")
        proc = subprocess.Popen(
            [a.decode() for a in argv], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._extra_procs.append(proc)
        pidfile.write_text(f"{proc.pid}\n")  # so cluster.sh stop finds the new process
        ctx = ssl.create_default_context(cafile=self.cluster.ca_file)

        def ready():
            req = urllib.request.Request(
                f"{self.cluster.server}/readyz", headers={"Authorization": "Bearer admin-token"}
            )
            with urllib.request.urlopen(req, context=ctx, timeout=3) as resp:
                return resp.status == 200

        wait_for(ready, 90, "kube-apiserver to be ready again", interval=0.25)
        return time.monotonic() - t0

    # ---------------------------------------------------------------- TokenReview
    def token_review(self, token: str, port: int | None = None) -> dict:
        """POST a TokenReview to /authenticate (through the HTTPS LB by default) with the apiserver's
        client certificate."""
        ctx = ssl.create_default_context(cafile=self.certs.ca_file)
        ctx.load_cert_chain(self.client_cert.cert_file, self.client_cert.key_file)
        body = json.dumps(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        ).encode()
        req = urllib.request.Request(
            f"https://127.0.0.1:{port or self.lb_https.port}/authenticate",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}")

    def authenticated(self, token: str, port: int | None = None) -> bool:
        return bool((self.token_review(token, port).get("status") or {}).get("authenticated"))

    # ---------------------------------------------------------------- audit
    def audit_records(self) -> list[dict]:
        """Every replica's audit file, concatenated and ordered by (seq, time). A sealed record that a
        new leader re-emitted from the cluster's head (its writer may have died before writing it) is
        the same record (same seq and hash) and counts once; two different records at one seq stay
        (a fork, which verify reports)."""
        out, seen = [], set()
        for r in self.replicas:
            if not r.op.audit_log.exists():
                continue
            for line in r.op.audit_log.read_text(errors="replace").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    if (rec.get("seq"), rec.get("hash")) in seen:
                        continue
                    seen.add((rec.get("seq"), rec.get("hash")))
                    rec["_replica"] = r.name
                    out.append(rec)
        out.sort(key=lambda rec: (rec.get("seq", 0), rec.get("time", ""), rec["_replica"]))
        return out

    def merged_audit_log(self, records: list[dict] | None = None) -> pathlib.Path:
        """All replicas' records in seq order, as one file (the chain as the cluster's head sees it)."""
        path = self.base / "audit-merged.log"
        lines = []
        for rec in records if records is not None else self.audit_records():
            rec = {k: v for k, v in rec.items() if k != "_replica"}
            lines.append(json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
        path.write_text("".join(line + "\n" for line in lines))
        return path

    def audit_verify(self, path: pathlib.Path) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"))
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "breakglass.plugin.cli",
                "audit",
                "verify",
                str(path),
                "--kubeconfig",
                self.cluster.kubeconfig("admin"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    def log_tails(self, lines: int = 200) -> list[tuple[str, str]]:
        return [(f"{r.name} log (tail)", r.op.log_tail(lines)) for r in self.replicas]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (our own child, not yet reaped) counts as gone
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------ leader monitor
class LeaderMonitor:
    """Samples every replica's breakglass_leader gauge every `period` s and records each stretch in
    which more than one live replica reported 1 (two replicas reconciling at once)."""

    def __init__(self, env: ChaosEnv, period: float = 0.25):
        self.env, self.period = env, period
        self.overlaps: list[tuple[float, float, list[str]]] = []  # (start, seconds, replicas)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-monitor", daemon=True)

    def start(self) -> LeaderMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        self._began, self._who = None, []
        while not self._stop.wait(self.period):
            leaders = [r.name for r in self.env.replicas if r.alive and r.metric("breakglass_leader") == 1]
            self.samples += 1
            now = time.monotonic()
            if len(leaders) > 1:
                if self._began is None:
                    self._began, self._who = now, leaders
            elif self._began is not None:
                self.overlaps.append((self._began, now - self._began, self._who))
                self._began = None

    def all_overlaps(self, wait_end: float = 15.0) -> list[tuple[float, float, list[str]]]:
        """Every stretch with two leaders; one still going on is waited for (up to `wait_end` s) so
        that its length is known."""
        try:
            wait_for(
                lambda: getattr(self, "_began", None) is None,
                wait_end,
                "two leaders to become one",
                interval=self.period,
            )
        except TimeoutError:
            return self.overlaps + [(self._began, time.monotonic() - self._began, self._who)]
        return list(self.overlaps)


# ------------------------------------------------------------------------------ token watcher
class TokenWatcher:
    """Watches token Secrets in the token namespace and keeps every token ever delivered, per
    request uid (so a second token for one request is seen even if it lived for a moment)."""

    def __init__(self, api: Api, namespace: str = OPERATOR_NS):
        self.api, self.namespace = api, namespace
        self.tokens: dict[str, dict[str, str]] = collections.defaultdict(dict)  # uid -> jti -> token
        self.secret_uids: dict[str, set[str]] = collections.defaultdict(set)  # uid -> Secret uids seen
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="token-watcher", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> TokenWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)

    def _see(self, secret) -> None:
        meta = secret.metadata
        uid = (meta.annotations or {}).get("breakglass.dev/request-uid")
        raw = (secret.data or {}).get("token")
        if not uid or not raw:
            return
        token = base64.b64decode(raw).decode()
        jti = jwt_claims(token).get("jti")
        with self._lock:
            self.tokens[uid][jti] = token
            self.secret_uids[uid].add(meta.uid)

    def _run(self) -> None:
        sel = "type=breakglass.dev/token"
        while not self._stop.is_set():
            try:
                listed = self.api.core.list_namespaced_secret(self.namespace, field_selector=sel)
                for s in listed.items:
                    self._see(s)
                rv = listed.metadata.resource_version
                w = k8s_watch.Watch()
                while not self._stop.is_set():
                    for ev in w.stream(
                        self.api.core.list_namespaced_secret,
                        self.namespace,
                        field_selector=sel,
                        resource_version=rv,
                        timeout_seconds=5,
                        _request_timeout=15,
                    ):
                        if ev["type"] in ("ADDED", "MODIFIED"):
                            self._see(ev["object"])
                        rv = ev["object"].metadata.resource_version or rv
                        if self._stop.is_set():
                            break
            except Exception:  # noqa: BLE001 — apiserver restarts, 410 Gone: list again
                self.reconnects += 1
                self._stop.wait(0.5)

    def token_for(self, uid: str, jti: str) -> str | None:
        with self._lock:
            return self.tokens.get(uid, {}).get(jti)

    def snapshot(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {u: dict(t) for u, t in self.tokens.items()}


# ------------------------------------------------------------------------------ invariants
@dataclass
class Check:
    requests: int = 0
    issued: int = 0  # requests whose ledger entry was ever activated
    tokens_seen: int = 0  # distinct jtis seen in token Secrets
    tokens_per_request: float = 0.0  # over requests that got any token
    issued_records: int = 0
    audit_complete: int = 0  # issued jtis with exactly one `issued` record
    audit_missing: list[str] = field(default_factory=list)
    audit_duplicated: dict[str, int] = field(default_factory=dict)
    ended: int = 0  # activated grants now Revoked/Expired
    ended_complete: int = 0  # ... with exactly one terminal audit record
    duplicate_keys: dict[str, int] = field(default_factory=dict)
    audit_writers: list[str] = field(default_factory=list)
    audit_verify: str = ""
    revoked_checked: int = 0
    apiserver_401: int = 0
    apiserver_403: int = 0
    violations: list[str] = field(default_factory=list)


def check_invariants(
    env: ChaosEnv,
    namespaces: list[str],
    watcher: TokenWatcher,
    label: str,
    all_terminal: bool = False,
    settle_timeout: float = 60,
) -> Check:
    """The chaos tier's invariants, after a scenario; every violation is named."""
    api = env.admin
    c = Check()

    def settled():
        reqs = [r for ns in namespaces for r in api.requests(ns)]
        ledger = api.ledger()
        by_uid = {r["metadata"]["uid"]: r for r in reqs}
        for r in reqs:
            phase = (r.get("status") or {}).get("phase")
            if not phase or (all_terminal and phase not in TERMINAL):
                return None
        for uid, e in ledger.items():
            req = by_uid.get(uid)
            if e["request"]["namespace"] not in namespaces:
                continue
            if e["state"] == "Issuing":
                return None
            if e["state"] in ENDED_STATES and not e.get("cleaned"):
                return None
            if req is not None and e["state"] == "Active" and (req.get("status") or {}).get("phase") != "Active":
                return None
        return reqs, ledger

    try:
        reqs, ledger = wait_for(settled, settle_timeout, f"{label}: requests and ledger to settle", interval=0.5)
    except TimeoutError as exc:
        c.violations.append(str(exc))
        reqs = [r for ns in namespaces for r in api.requests(ns)]
        ledger = api.ledger()
    ledger = {u: e for u, e in ledger.items() if e["request"]["namespace"] in namespaces}
    by_uid = {r["metadata"]["uid"]: r for r in reqs}
    # for the post-mortem (BREAKGLASS_KEEP_E2E=1 keeps the directory)
    (env.base / "ledger.json").write_text(json.dumps(ledger, indent=1, sort_keys=True))
    (env.base / "requests.json").write_text(json.dumps(reqs, indent=1, sort_keys=True))
    (env.base / "tokens-seen.json").write_text(
        json.dumps({u: sorted(t) for u, t in watcher.snapshot().items()}, indent=1, sort_keys=True)
    )
    c.requests = len(reqs)
    now = now_utc()

    # 1. exactly one jti per request uid: the ledger's, in status, and in every token ever delivered
    seen = watcher.snapshot()
    got_tokens = 0
    for uid, e in ledger.items():
        if e.get("activatedAt"):
            c.issued += 1
        jtis = set(seen.get(uid, {}))
        if jtis:
            got_tokens += 1
        c.tokens_seen += len(jtis)
        if jtis - {e["jti"]}:
            c.violations.append(
                f"request uid {uid} ({_rname(e)}): tokens with jtis {sorted(jtis)} delivered, ledger says {e['jti']}"
            )
        status = (by_uid.get(uid) or {}).get("status") or {}
        if status.get("tokenId") and status["tokenId"] != e["jti"]:
            c.violations.append(f"{_rname(e)}: status.tokenId {status['tokenId']} != ledger jti {e['jti']}")
    for uid, jtis in seen.items():
        if uid not in ledger and by_uid.get(uid) is not None:
            c.violations.append(f"request uid {uid}: token(s) {sorted(jtis)} delivered without a ledger entry")
    c.tokens_per_request = (c.tokens_seen / got_tokens) if got_tokens else 0.0

    # 2. every issued jti has exactly one `issued` record across all replicas' audit logs
    records = env.audit_records()
    issued = collections.Counter(r.get("jti") for r in records if r.get("event") == "issued")
    c.issued_records = sum(issued[e["jti"]] for e in ledger.values())
    issued_jtis = {e["jti"] for e in ledger.values() if e.get("activatedAt")}
    issued_jtis |= {j for uid, t in seen.items() if uid in ledger for j in t}
    for jti in sorted(issued_jtis):
        n = issued[jti]
        if n == 1:
            c.audit_complete += 1
        elif n == 0:
            c.audit_missing.append(jti)
        else:
            c.audit_duplicated[jti] = n
    if c.audit_missing:
        by_jti = {e["jti"]: e for e in ledger.values()}
        detail = []
        for jti in c.audit_missing[:5]:
            e = by_jti.get(jti) or {}
            how = (
                "ledger Active"
                if e.get("activatedAt")
                else f"token Secret delivered while the ledger said Issuing, never Active, now {e.get('state')}"
            )
            others = sorted({r.get("event") for r in records if r.get("jti") == jti})
            detail.append(f"{jti} ({_rname(e) if e else '?'}: {how}; its records: {others or 'none'})")
        c.violations.append(
            f"{len(c.audit_missing)} issued jti(s) without an `issued` audit record: " + "; ".join(detail)
        )
    if c.audit_duplicated:
        c.violations.append(
            f"{len(c.audit_duplicated)} jti(s) with more than one `issued` record: "
            f"{dict(list(c.audit_duplicated.items())[:5])}"
        )
    # ... and every ended grant exactly one terminal record (one record per transition)
    terminal = collections.Counter(r.get("jti") for r in records if r.get("event") in ("revoked", "expired"))
    for e in ledger.values():
        if e.get("activatedAt") and e["state"] in ("Revoked", "Expired"):
            c.ended += 1
            n = terminal[e["jti"]]
            if n == 1:
                c.ended_complete += 1
            else:
                c.violations.append(
                    f"{_rname(e)} jti {e['jti']} is {e['state']} with {n} `revoked`/`expired` "
                    "audit records (want exactly one)"
                )
    keys = collections.Counter(r["key"] for r in records if r.get("key"))
    c.duplicate_keys = {k: n for k, n in keys.items() if n > 1}
    if c.duplicate_keys:
        report(
            f"{label}: {len(c.duplicate_keys)} audit idempotency key(s) recorded more than once: "
            f"{sorted(c.duplicate_keys)[:6]}"
        )
    known = {e["jti"] for e in ledger.values()}
    stray = {
        r.get("jti")
        for r in records
        if r.get("event") == "issued"
        and (r.get("request") or {}).get("namespace") in namespaces
        and r.get("jti") not in known
    }
    if stray:
        c.violations.append(f"`issued` records for jtis not in the ledger: {sorted(stray)[:5]}")

    # 3. nothing left of a terminal grant (the ledger's objects list), nor unrecorded grant objects
    for uid, e in ledger.items():
        req = by_uid.get(uid)
        terminal = req is None or (req.get("status") or {}).get("phase") in TERMINAL
        if e["state"] in ENDED_STATES or terminal:
            for ref in e.get("objects") or []:
                found = api.exists(ref["kind"], ref["namespace"], ref["name"])
                if found is not None:
                    c.violations.append(
                        f"{_rname(e)} is {e['state']}/{(req or {}).get('status', {}).get('phase')} "
                        f"but {ref['kind']} {ref['namespace']}/{ref['name']} still exists"
                    )
    for kind, items in _grant_objects(api, namespaces):
        for obj in items:
            ann = obj["metadata"].get("annotations") or {}
            uid = ann.get("breakglass.dev/request-uid")
            if uid not in ledger:
                if (obj["metadata"].get("labels") or {}).get("breakglass.dev/request-namespace") in namespaces:
                    c.violations.append(
                        f"{kind} {obj['metadata']['namespace']}/{obj['metadata']['name']} of "
                        f"request uid {uid} exists without a ledger entry"
                    )
                continue
            req = by_uid.get(uid)
            if (
                ledger[uid]["state"] in ENDED_STATES
                or req is None
                or (req.get("status") or {}).get("phase") in TERMINAL
            ):
                msg = (
                    f"{kind} {obj['metadata']['namespace']}/{obj['metadata']['name']} left behind by "
                    f"terminal {_rname(ledger[uid])}"
                )
                if msg not in c.violations:
                    c.violations.append(msg)

    # 4. every revoked jti refused by /authenticate (LB and each replica) and by kube-apiserver
    for uid, e in ledger.items():
        if e["state"] != "Revoked" or not e.get("activatedAt"):
            continue
        token = watcher.token_for(uid, e["jti"])
        if token is None:
            continue  # never delivered while watched (revoked mid-issue): nothing to present
        c.revoked_checked += 1
        if env.authenticated(token):
            c.violations.append(f"revoked {_rname(e)} jti {e['jti']}: /authenticate (via LB) authenticates it")
        for r in env.replicas:
            if r.alive and env.serving(r) and env.authenticated(token, r.op.https_port):
                c.violations.append(f"revoked {_rname(e)} jti {e['jti']}: {r.name} /authenticate authenticates it")
        ns = e["request"]["namespace"]

        def refused(token=token, ns=ns):
            out = with_token(env.cluster, token, "get", "serviceaccounts", "-n", ns)
            return out if out.returncode != 0 else None

        try:
            out = wait_for(refused, 12, f"kube-apiserver to refuse revoked jti {e['jti']}", interval=0.5)
            if unauthorized(out):
                c.apiserver_401 += 1
            elif forbidden(out):
                c.apiserver_403 += 1
            else:
                c.violations.append(f"revoked jti {e['jti']}: kubectl failed oddly: {out.stderr.strip()[:200]}")
        except TimeoutError:
            c.violations.append(f"revoked {_rname(e)} jti {e['jti']}: kube-apiserver still accepts it")

    # 5. the audit chain verifies against the published head (`kubectl breakglass audit verify`): the
    # leader's file when it holds every record, else all replicas' files merged by seq (each replica
    # appends to its own file while it leads, so after a failover the chain is split across them)
    lead = None
    try:
        lead = env.wait_leader(30)
    except TimeoutError:
        c.violations.append("no leader to verify the audit log of")
    by_seq = collections.defaultdict(set)
    for rec in records:
        by_seq[rec.get("seq")].add(rec.get("hash"))
    forks = sorted(seq for seq, hashes in by_seq.items() if len(hashes) > 1)
    if forks:
        c.violations.append(
            f"audit chain forked: {len(forks)} seq(s) written with different records by different "
            f"replicas (first: {forks[:5]})"
        )
    c.audit_writers = sorted({rec["_replica"] for rec in records})
    if lead is not None:
        for _attempt in range(3):
            if c.audit_writers in ([], [lead.name]):
                target, what = lead.op.audit_log, f"{lead.name}'s log"
            else:  # a snapshot: the head may move on meanwhile, which reads as "truncated": take a fresh one
                target, what = env.merged_audit_log(), f"the merged log of {', '.join(c.audit_writers)}"
            out = env.audit_verify(target)
            if out.returncode == 0 or "truncated" not in out.stdout:
                break
        c.audit_verify = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip()
        if out.returncode != 0:
            c.violations.append(
                f"`kubectl breakglass audit verify` on {what} failed (rc {out.returncode}): "
                f"{out.stdout.strip()} {out.stderr.strip()}"
            )
        if what != f"{lead.name}'s log":
            if lead.op.audit_log.exists():
                alone = env.audit_verify(lead.op.audit_log)
                verdict = (alone.stdout.strip().splitlines() or alone.stderr.strip().splitlines() or [""])[-1]
            else:
                verdict = "no file (it has not written a record)"
            report(
                f"{label}: the chain is split across {c.audit_writers}'s files; audit verify of the leader's "
                f"({lead.name}) own file alone: {verdict}"
            )
    discrepancies = [rec for rec in records if rec.get("event") == "audit-discrepancy"]
    if discrepancies:
        report(
            f"{label}: {len(discrepancies)} `audit-discrepancy` record(s) written (by "
            f"{sorted({d['_replica'] for d in discrepancies})}): {discrepancies[0].get('problem')}"
        )

    # 6. no request (nor ledger grant) past its deadline in a live phase
    for r in reqs:
        st = r.get("status") or {}
        if st.get("phase") == "Active" and st.get("expiresAt") and parse_time(st["expiresAt"]) + DEADLINE_GRACE < now:
            c.violations.append(
                f"{r['metadata']['namespace']}/{r['metadata']['name']} is Active past its expiresAt {st['expiresAt']}"
            )
    for e in ledger.values():
        if e["state"] in ("Active", "Issuing") and parse_time(e["expiresAt"]) + DEADLINE_GRACE < now:
            c.violations.append(f"ledger grant of {_rname(e)} is {e['state']} past its expiresAt {e['expiresAt']}")
    everything = env.leaders.all_overlaps()
    overlaps = [o for o in everything if o[1] >= 2 * env.leaders.period]
    if overlaps:
        c.violations.append(
            f"two replicas reported breakglass_leader 1 at once {len(overlaps)} time(s), longest "
            f"{max(o[1] for o in overlaps):.1f}s ({overlaps[0][2]}; see 'became leader' and 'lost the "
            "leader lease' in their logs)"
        )
    report(
        f"{label}: leader gauges sampled {env.leaders.samples} times; stretches with two leaders: "
        f"{[round(o[1], 1) for o in everything] or 'none'}"
    )

    n_issued = len(issued_jtis)
    report(
        f"{label}: {c.requests} requests, {c.issued} issued; tokens per request {c.tokens_per_request:.2f} "
        f"({c.tokens_seen} tokens seen); audit completeness {c.audit_complete}/{n_issued} issued jtis with "
        f"exactly one `issued` record (missing {len(c.audit_missing)}, duplicated {len(c.audit_duplicated)}), "
        f"{c.ended_complete}/{c.ended} ended grants with exactly one `revoked`/`expired` record; "
        f"revoked tokens refused {c.revoked_checked} (apiserver 401: {c.apiserver_401}, 403: {c.apiserver_403})"
    )
    return c


def assert_clean(c: Check, label: str) -> None:
    assert not c.violations, f"{label}: {len(c.violations)} invariant violation(s):\n  " + "\n  ".join(c.violations)


def _rname(e: dict) -> str:
    return f"{e['request']['namespace']}/{e['request']['name']}"


def _grant_objects(api: Api, namespaces: list[str]):
    sel = "app.kubernetes.io/managed-by=breakglass-operator"
    for ns in [OPERATOR_NS, *namespaces]:
        yield "RoleBinding", [api.raw(o) for o in api.rbac.list_namespaced_role_binding(ns, label_selector=sel).items]
        yield "Role", [api.raw(o) for o in api.rbac.list_namespaced_role(ns, label_selector=sel).items]
    yield (
        "Secret",
        [
            api.raw(o)
            for o in api.core.list_namespaced_secret(
                OPERATOR_NS, label_selector=sel, field_selector="type=breakglass.dev/token"
            ).items
        ],
    )


def wait_phase(api: Api, namespace: str, name: str, phases: str | set[str], timeout: float) -> dict:
    want = {phases} if isinstance(phases, str) else phases

    def reached():
        obj = api.request(namespace, name)
        return obj if obj and (obj.get("status") or {}).get("phase") in want else None

    return wait_for(reached, timeout, f"{namespace}/{name} to be {'/'.join(sorted(want))}", interval=0.1)


# ------------------------------------------------------------------------------ live prober
class DeadTokenProber:
    """While a scenario runs: every token the watcher saw whose exp has passed, or whose ledger grant
    has ended (Revoked/Expired/Failed), is presented to /authenticate through the HTTPS LB again and
    again; any `authenticated: true` is a violation (with how long after exp / the end it happened)."""

    def __init__(self, env: ChaosEnv, watcher: TokenWatcher, period: float = 1.0, probes_per_token: int = 8):
        self.env, self.watcher, self.period, self.probes_per_token = env, watcher, period, probes_per_token
        self.probes = 0
        self.errors = 0
        self.violations: list[str] = []
        self._count: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dead-token-prober", daemon=True)

    def __enter__(self) -> DeadTokenProber:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        import http.client

        ctx = ssl.create_default_context(cafile=self.env.certs.ca_file)
        ctx.load_cert_chain(self.env.client_cert.cert_file, self.env.client_cert.key_file)
        while not self._stop.wait(self.period):
            try:
                ended = {e["jti"]: e for e in self.env.admin.ledger().values() if e["state"] in ENDED_STATES}
            except Exception:  # noqa: BLE001 — the API may be down (scenario c)
                ended = {}
            now = time.time()
            due = []
            for tokens in self.watcher.snapshot().values():
                for jti, token in tokens.items():
                    exp = jwt_claims(token).get("exp", 0)
                    if (exp < now or jti in ended) and self._count[jti] < self.probes_per_token:
                        due.append((jti, token, exp, ended.get(jti)))
            if not due:
                continue
            conn = http.client.HTTPSConnection("127.0.0.1", self.env.lb_https.port, context=ctx, timeout=5)
            try:
                for jti, token, exp, entry in due:
                    body = json.dumps(
                        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
                    )
                    conn.request("POST", "/authenticate", body, {"Content-Type": "application/json"})
                    answer = json.loads(conn.getresponse().read() or b"{}")
                    self.probes += 1
                    self._count[jti] += 1
                    if (answer.get("status") or {}).get("authenticated"):
                        why = (
                            f"{time.time() - exp:.1f}s after exp"
                            if exp < time.time()
                            else f"its grant is {entry['state']} since {entry.get('endedAt')}"
                        )
                        self.violations.append(f"jti {jti} authenticated by /authenticate {why}")
            except Exception:  # noqa: BLE001 — no replica serving right now: next round
                self.errors += 1
            finally:
                conn.close()
