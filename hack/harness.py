"""Real control plane + real operator processes, shared by the e2e and chaos tiers, the demo and the
bench (none of them imports another's code). Waits are polls with deadlines; SIGUSR1 thread dumps."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLUSTER_SH = ROOT / "hack" / "cluster.sh"
USERS = ("admin", "alice", "dave", "bob", "carol", "mallory")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def operator_ports() -> dict[str, int]:
    return {k: free_port() for k in ("https", "webhook", "metrics", "health")}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1):
    """Poll `predicate` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error on timeout
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else "")
            )
        time.sleep(interval)


class KubectlError(RuntimeError):
    def __init__(self, args, rc, stdout, stderr):
        super().__init__(f"kubectl {' '.join(args)} failed ({rc}): {stderr.strip()}")
        self.rc, self.stdout, self.stderr = rc, stdout, stderr


@dataclass
class Cluster:
    dir: pathlib.Path
    env: dict[str, str]

    @property
    def kubectl_bin(self) -> str:
        return self.env["KUBECTL"]

    @property
    def server(self) -> str:
        return self.env["BREAKGLASS_CLUSTER_SERVER"]

    @property
    def ca_file(self) -> str:
        return self.env["BREAKGLASS_CLUSTER_CA"]

    def kubeconfig(self, user: str = "admin") -> str:
        return str(self.dir / ("kubeconfig" if user == "admin" else f"kubeconfig-{user}"))

    def kubectl(
        self, *args: str, user: str = "admin", input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        cmd = [self.kubectl_bin, "--kubeconfig", self.kubeconfig(user), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(list(args), proc.returncode, proc.stdout, proc.stderr)
        return proc

    def apply(
        self, manifest: dict | list | str, user: str = "admin", verb: str = "apply"
    ) -> subprocess.CompletedProcess:
        text = (
            manifest
            if isinstance(manifest, str)
            else yaml.safe_dump_all(manifest if isinstance(manifest, list) else [manifest])
        )
        return self.kubectl(verb, "-f", "-", user=user, input=text)

    def try_create(self, manifest: dict, user: str) -> subprocess.CompletedProcess:
        return self.kubectl("create", "-f", "-", user=user, input=yaml.safe_dump(manifest), check=False)

    def get(self, kind: str, name: str, namespace: str | None = None, user: str = "admin") -> dict | None:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        proc = self.kubectl(*args, user=user, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise KubectlError(args, proc.returncode, proc.stdout, proc.stderr)
        return json.loads(proc.stdout)

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[dict]:
        args = ["get", kind, "-o", "json"] + (["-n", namespace] if namespace else ["-A"])
        if selector:
            args += ["-l", selector]
        return json.loads(self.kubectl(*args).stdout)["items"]

    def events(self, namespace: str, name: str) -> list[dict]:
        return [e for e in self.list("events", namespace) if e["involvedObject"]["name"] == name]

    def new_namespace(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kubectl("create", "namespace", name)
        return name


def start_cluster(state_dir: pathlib.Path, extra_flags: list[str]) -> Cluster:
    proc = subprocess.run(
        [str(CLUSTER_SH), "start", str(state_dir), "--", *extra_flags], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"control plane failed to start:\n{proc.stderr}")
    env = {}
    for line in (state_dir / "cluster.env").read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    return Cluster(state_dir, env)


def stop_cluster(state_dir: pathlib.Path) -> None:
    subprocess.run([str(CLUSTER_SH), "stop", str(state_dir)], capture_output=True, text=True)


@dataclass
class Operator:
    cluster: Cluster
    workdir: pathlib.Path
    https_port: int
    webhook_port: int
    metrics_port: int
    health_port: int
    tls_cert: str
    tls_key: str
    tls_ca: str
    kubeconfig: str | None = None
    local: bool = True
    webhook_config_name: str | None = None
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @classmethod
    def on_ports(cls, cluster: Cluster, workdir: pathlib.Path, ports: dict[str, int], certs, **kwargs) -> Operator:
        """An operator listening on `operator_ports()` with the serving certificate `certs` (tls.TLSFiles)."""
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(
            cluster=cluster,
            workdir=workdir,
            https_port=ports["https"],
            webhook_port=ports["webhook"],
            metrics_port=ports["metrics"],
            health_port=ports["health"],
            tls_cert=certs.cert_file,
            tls_key=certs.key_file,
            tls_ca=certs.ca_file,
            **kwargs,
        )

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def audit_log(self) -> pathlib.Path:
        return self.workdir / "audit.log"

    @property
    def log_path(self) -> pathlib.Path:
        return self.workdir / "operator.log"

    def command(self) -> list[str]:
        mode = (
            ["--local"]
            if self.local
            else [
                "--webhook-config-name",
                self.webhook_config_name or "",
                "--tls-ca-file",
                self.tls_ca,
                "--bind-address",
                "127.0.0.1",
            ]
        )
        return [
            sys.executable,
            "-m",
            "breakglass",
            "run",
            *mode,
            "--kubeconfig",
            self.kubeconfig or self.cluster.kubeconfig("admin"),
            "--namespace",
            "breakglass-system",
            "--issuer",
            self.issuer,
            "--https-port",
            str(self.https_port),
            "--webhook-port",
            str(self.webhook_port),
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
            "--tls-cert-file",
            self.tls_cert,
            "--tls-private-key-file",
            self.tls_key,
            "--state-dir",
            str(self.workdir / "state"),
            "--cluster-server",
            self.cluster.server,
            "--cluster-ca-file",
            self.cluster.ca_file,
            "--audit-log",
            str(self.audit_log),
            *self.extra_args,
        ]

    def start(self, wait: bool = True) -> None:
        assert self.proc is None or self.proc.poll() is not None, "operator already running"
        self.starts += 1
        env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"), PYTHONUNBUFFERED="1", **self.extra_env)
        log = open(self.log_path, "a")
        log.write(f"\n===== operator start #{self.starts} =====\n")
        log.flush()
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.workdir), start_new_session=True
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        probe = {
            "apiVersion": "breakglass.dev/v1alpha1",
            "kind": "BreakGlassApproval",
            "metadata": {"name": "readiness-probe", "namespace": "default"},
            "spec": {"request": "no-such-request-readiness", "decision": "Approve"},
        }

        def webhook_answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}; see {self.log_path}")
            out = self.cluster.kubectl(
                "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(probe), check=False
            )
            return "no BreakGlassRequest of that name" in out.stderr

        wait_for(webhook_answers, timeout, "the operator's admission webhook to answer", interval=0.25)
        wait_for(lambda: self.metrics_text() is not None, timeout, "the metrics endpoint", interval=0.25)

    def metrics_text(self) -> str | None:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def dump_threads(self) -> None:
        """Ask a running operator for its thread stacks (faulthandler on SIGUSR1) before reading its log."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(0.5)

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no operator log)"


def secret_token(secret: dict) -> str:
    return base64.b64decode(secret["data"]["token"]).decode()


def secret_field(secret: dict, key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


CRD_PLURALS = (
    "breakglasspolicies",
    "breakglassrequests",
    "breakglassapprovals",
    "breakglassdrills",
    "breakglassextensions",
)


def install_crds(cluster: Cluster, crd_dir: pathlib.Path | None = None) -> None:
    cluster.kubectl("apply", "-f", str(crd_dir or ROOT / "crds"))
    for crd in CRD_PLURALS:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}.breakglass.dev", "--timeout=60s")


def kubeconfig(server: str, ca_file: str | None, user: dict | None = None) -> str:
    """The one kubeconfig builder: a server (with its CA file) and one user (token or client cert)."""
    cluster = {"server": server}
    if ca_file:
        cluster["certificate-authority"] = ca_file
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": user or {}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
        }
    )


def write_tokenreview_webhook_config(path: pathlib.Path, https_port: int, ca_file: str, client=None) -> list[str]:
    """The kubeconfig kube-apiserver uses to call the operator's /authenticate (optionally with a
    client certificate, `client` being tls.generate_client()'s files); returns the flags."""
    user = {"client-certificate": client.cert_file, "client-key": client.key_file} if client else {}
    path.write_text(kubeconfig(f"https://127.0.0.1:{https_port}/authenticate", ca_file, user))
    return [
        f"--authentication-token-webhook-config-file={path}",
        "--authentication-token-webhook-cache-ttl=1s",
        "--authentication-token-webhook-version=v1",
    ]


def write_audit_webhook_config(path: pathlib.Path, https_port: int, ca_file: str, client=None) -> list[str]:
    """The kubeconfig kube-apiserver's audit webhook backend uses to POST its EventList batches to the
    operator's /audit (same listener, CA and client certificate as /authenticate); returns the flags:
    the shipped policy (grant identities only, Metadata, one event per request) in batch mode, flushed
    at least every second."""
    user = {"client-certificate": client.cert_file, "client-key": client.key_file} if client else {}
    path.write_text(kubeconfig(f"https://127.0.0.1:{https_port}/audit", ca_file, user))
    return [
        f"--audit-policy-file={ROOT / 'deploy' / 'kube-apiserver' / 'audit-policy.yaml'}",
        f"--audit-webhook-config-file={path}",
        "--audit-webhook-mode=batch",
        "--audit-webhook-batch-max-wait=1s",
        "--audit-webhook-version=audit.k8s.io/v1",
        # a batch the sink answered 503 (busy, or a ledger write failed) comes back after 1 s, not 10 s
        "--audit-webhook-initial-backoff=1s",
        # at most 100 events a batch: even with ~1 MB request URIs (a grant can send them) a batch stays
        # far below the sink's 1 GiB spool limit; no truncation (it would drop large events unseen)
        "--audit-webhook-batch-max-size=100",
    ]


@contextlib.contextmanager
def control_plane(
    state_dir: pathlib.Path,
    apiserver_flags: list[str] | None = None,
    crd_dir: pathlib.Path | None = None,
    users: bool = True,
):
    """The one control-plane fixture: etcd + kube-apiserver + controller-manager started, the CRDs
    established and (by default) the test users' RBAC applied; always stopped afterwards."""
    try:
        yield start_control_plane(state_dir, apiserver_flags, crd_dir, users)
    finally:
        stop_cluster(state_dir)


def start_control_plane(
    state_dir: pathlib.Path,
    apiserver_flags: list[str] | None = None,
    crd_dir: pathlib.Path | None = None,
    users: bool = True,
) -> Cluster:
    """Start and prepare a control plane (for callers that stop it themselves with stop_cluster)."""
    cluster = start_cluster(state_dir, list(apiserver_flags or []))
    try:
        install_crds(cluster, crd_dir)
        if users:
            cluster.kubectl("apply", "-f", str(ROOT / "tests" / "e2e" / "manifests" / "users-rbac.yaml"))
    except BaseException:
        stop_cluster(state_dir)
        raise
    return cluster
