#!/usr/bin/env python3
"""`make demo`: the break-glass story on a real local control plane, each step read back from the apiserver.

Starts etcd + kube-apiserver (with the operator as its TokenReview webhook) + kube-controller-manager,
applies the CRDs and an example policy, runs the operator, and walks through: alice requests,
bob approves, the token Secret appears (claims shown, never the token), the grant works in its
namespace and nowhere else, revocation bites, and a short grant expires. Everything is stopped at
the end (DEMO_KEEP=1 keeps it running and prints how to reach it).
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT))


from breakglass import tls  # noqa: E402
from tests.e2e.harness import (Operator, operator_ports, install_crds, start_cluster, stop_cluster,  # noqa: E402
                               wait_for, write_tokenreview_webhook_config)

BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def step(n, text):
    print(f"\n{BOLD}[{n}] {text}{RESET}", flush=True)


def show(cmd_text, out):
    print(f"{DIM}$ {cmd_text}{RESET}")
    print(out.rstrip())


def main() -> int:
    work = pathlib.Path(tempfile.mkdtemp(prefix="breakglass-demo-"))
    ports = operator_ports()
    certs = tls.generate(str(work / "operator-tls"), ["127.0.0.1", "localhost"])
    op = None
    cluster_dir = work / "cluster"
    try:
        step(1, "Start the local control plane (etcd + kube-apiserver + kube-controller-manager, Kubernetes 1.20.2)")
        flags = write_tokenreview_webhook_config(work / "tokenreview.kubeconfig", ports["https"], certs.ca_file)
        cluster = start_cluster(cluster_dir, flags)
        show("kubectl version --short", cluster.kubectl("version", "--short").stdout)
        install_crds(cluster)
        cluster.kubectl("apply", "-f", str(ROOT / "tests/e2e/manifests/users-rbac.yaml"))
        cluster.kubectl("create", "namespace", "team-db")
        cluster.kubectl("create", "namespace", "payments")

        step(2, "Start breakglass-operator (admission webhooks, TokenReview endpoint, metrics)")
        op = Operator.on_ports(cluster, work / "operator", ports, certs)
        op.start()
        print(f"operator up: issuer {op.issuer}, log {op.log_path}")

        step(3, "An admin applies the policy prod-db: sre may request, one sre-lead must approve, max 1h")
        cluster.kubectl("apply", "-f", str(ROOT / "examples/policy-prod-db.yaml"))
        wait_for(lambda: _ready(cluster), 10, "policy Ready")
        show("kubectl get breakglasspolicy prod-db", cluster.kubectl("get", "bgp", "prod-db").stdout)

        step(4, "It's 3 a.m.: alice (group sre) asks for view in team-db for 30m")
        kb(cluster, "alice", "-n", "team-db", "explain", "-f", str(ROOT / "examples/request-alice.yaml"))
        kb(cluster, "alice", "-n", "team-db", "request", "--policy", "prod-db", "--name", "db-outage",
           "--reason", "Primary database is down, need to inspect pods and restart the operator",
           "--ticket", "INC-4242", "--duration", "30m", "--namespace-access", "team-db", "--role", "view",
           "--scope", "db:read")
        wait_for(lambda: _phase(cluster, "db-outage") == "Pending", 10, "Pending")
        kb(cluster, "alice", "-n", "team-db", "list")
        req = cluster.get("bgr", "db-outage", "team-db")
        print(f"requester stamped by admission from the API server's user info: {req['spec']['requester']} "
              f"{req['spec']['requesterGroups']}")
        kb(cluster, "alice", "-n", "team-db", "approve", "db-outage")

        step(5, "bob (sre-leads) approves")
        t0 = time.monotonic()
        kb(cluster, "bob", "-n", "team-db", "approve", "db-outage", "--comment", "go, page me when done")
        wait_for(lambda: cluster.get("secret", "db-outage-token", "team-db"), 10, "the token Secret", interval=0.05)
        print(f"token Secret appeared {time.monotonic() - t0:.2f}s after the approval command")
        wait_for(lambda: _phase(cluster, "db-outage") == "Active", 10, "Active")
        kb(cluster, "alice", "-n", "team-db", "status", "db-outage")

        step(6, "The token Secret (read by alice; only she may): claims shown, the token itself never printed")
        secret = cluster.get("secret", "db-outage-token", "team-db", user="alice")
        token = base64.b64decode(secret["data"]["token"]).decode()
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        print(json.dumps(claims, indent=2))
        kb(cluster, "alice", "verify", "--secret", "team-db/db-outage-token")
        dave = cluster.kubectl("get", "secret", "db-outage-token", "-n", "team-db", user="dave", check=False)
        show("kubectl get secret db-outage-token -n team-db   # as dave", dave.stderr)

        step(7, "The grant works against the cluster: allowed in team-db, forbidden elsewhere")
        kc = work / "grant.kubeconfig"
        kb(cluster, "alice", "-n", "team-db", "token", "db-outage", "--kubeconfig-out", str(kc))
        grant = lambda *a: subprocess.run([cluster.kubectl_bin, "--kubeconfig", str(kc), *a],  # noqa: E731
                                          capture_output=True, text=True)
        r = grant("auth", "can-i", "list", "pods", "-n", "team-db")
        show("kubectl --kubeconfig <grant> auth can-i list pods -n team-db", r.stdout or r.stderr)
        r = grant("get", "pods", "-n", "team-db")
        show("kubectl --kubeconfig <grant> get pods -n team-db", r.stdout or r.stderr)
        r = grant("get", "pods", "-n", "payments")
        show("kubectl --kubeconfig <grant> get pods -n payments", r.stderr)
        r = grant("delete", "serviceaccount", "default", "-n", "team-db")
        show("kubectl --kubeconfig <grant> delete sa default -n team-db", r.stderr)

        step(8, "Incident over: alice revokes. The Secret goes at once and the token stops working")
        t0 = time.monotonic()
        kb(cluster, "alice", "-n", "team-db", "revoke", "db-outage")
        wait_for(lambda: cluster.get("secret", "db-outage-token", "team-db") is None, 10, "Secret deleted",
                 interval=0.05)
        print(f"Secret deleted {time.monotonic() - t0:.2f}s after the revoke command")
        r = grant("get", "pods", "-n", "team-db")
        show("kubectl --kubeconfig <grant> get pods -n team-db   # at once: its RoleBinding is gone", r.stderr)
        wait_for(lambda: "Unauthorized" in grant("get", "pods", "-n", "team-db").stderr, 15,
                 "the token to be refused (401)")
        r = grant("get", "pods", "-n", "team-db")
        show("kubectl --kubeconfig <grant> get pods -n team-db   # once kube-apiserver's 10 s auth cache lapses",
             r.stderr)
        kb(cluster, "alice", "verify", "-", stdin=token)  # token on stdin: never on a command line
        revs = cluster.get("configmap", "breakglass-revocations", "breakglass-system")["data"]["revocations.json"]
        print(f"revocation list: {revs}")
        show("kubectl get bgr -n team-db", cluster.kubectl("get", "bgr", "-n", "team-db").stdout)

        step(9, "A 10-second grant expires on its own")
        kb(cluster, "alice", "-n", "team-db", "request", "--policy", "prod-db", "--name", "quick-look",
           "--reason", "One more look at the replica lag", "--ticket", "INC-4242", "--duration", "10s",
           "--namespace-access", "team-db", "--role", "view")
        kb(cluster, "carol", "-n", "team-db", "approve", "quick-look")
        wait_for(lambda: _phase(cluster, "quick-look") == "Active", 10, "Active")
        exp = cluster.get("bgr", "quick-look", "team-db")["status"]["expiresAt"]
        print(f"quick-look is Active until {exp}; waiting...")
        wait_for(lambda: _phase(cluster, "quick-look") == "Expired", 30, "Expired", interval=0.2)
        print(f"Secret present after expiry: {cluster.get('secret', 'quick-look-token', 'team-db') is not None}")
        kb(cluster, "alice", "-n", "team-db", "list")
        events = cluster.kubectl("get", "events", "-n", "team-db", "--sort-by=.lastTimestamp",
                                 "-o", "custom-columns=REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message")
        show("kubectl get events -n team-db", events.stdout)
        audit_lines = op.audit_log.read_text().splitlines()
        print(f"\naudit log: {len(audit_lines)} hash-chained records")
        kb(cluster, "admin", "audit", "verify", str(op.audit_log))
        print(f"\n{BOLD}demo finished: every step above was read back from the apiserver.{RESET}")
        print(f"final phase of db-outage: {_phase(cluster, 'db-outage')}; quick-look: {_phase(cluster, 'quick-look')}")
        if os.environ.get("DEMO_KEEP") == "1":
            print(f"\nDEMO_KEEP=1: still running. export KUBECONFIG={cluster.kubeconfig()}  (Ctrl-C to stop)")
            while True:
                time.sleep(3600)
        return 0
    finally:
        if op:
            op.stop()
        stop_cluster(cluster_dir)
        if os.environ.get("DEMO_KEEP") != "1":
            import shutil
            shutil.rmtree(work, ignore_errors=True)


def kb(cluster, user, *args, stdin=None):
    """`kubectl breakglass ...` exactly as an SRE types it (the plugin is found on PATH)."""
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
    proc = subprocess.run([cluster.kubectl_bin, "breakglass", "--kubeconfig", cluster.kubeconfig(user), *args],
                          capture_output=True, text=True, env=env, timeout=120, input=stdin)
    show(f"kubectl breakglass {' '.join(args)}   # as {user}", (proc.stdout + proc.stderr))
    return proc


def _phase(cluster, name):
    obj = cluster.get("bgr", name, "team-db")
    return (obj or {}).get("status", {}).get("phase")


def _ready(cluster):
    obj = cluster.get("bgp", "prod-db")
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (obj or {}).get("status", {}).get("conditions", []))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
