#!/usr/bin/env python3
"""`make demo`: the break-glass story on a real local control plane, each step read back from the apiserver.

Starts etcd + kube-apiserver (with the operator as its TokenReview webhook) + kube-controller-manager,
applies the CRDs and an example policy, runs the operator, and walks through: alice requests,
bob approves, the token Secret appears in the operator namespace (breakglass-system, named by the
request uid, found through status.secretRef; claims shown, never the token) where only alice can read
it (dave is refused), the grant works in its namespace and nowhere else, revocation deletes the Secret
and bites, a deleted and re-filed request of the same name gets nothing until a new approval (under a
new identity; the old token stays dead), a short grant expires, and then (hack/demo_incident.py, on a
real Alertmanager the operator polls) a firing alert approves a request under an incident-gated policy,
the grant is extended, and the alert's resolution revokes it. Everything is stopped at the end, also on
failure (DEMO_KEEP=1 keeps it running and prints how to reach it). The demo uses the TokenReview
webhook path only (no OIDC flags).
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "hack"))


import demo_incident  # noqa: E402
from demo_common import (  # noqa: E402
    BOLD,
    DIM,
    RESET,
    grant_client,
    kb,
    kb_start,
    ledger_state,
    phase,
    policy_ready,
    secret_ref,
    show,
    show_ledger,
    step,
)
from harness import (  # noqa: E402
    Operator,
    operator_ports,
    start_control_plane,
    stop_cluster,
    wait_for,
    write_audit_webhook_config,
    write_tokenreview_webhook_config,
)

from breakglass import tls  # noqa: E402


def main() -> int:
    work = pathlib.Path(tempfile.mkdtemp(prefix="breakglass-demo-"))
    ports = operator_ports()
    certs = tls.generate(str(work / "operator-tls"), ["127.0.0.1", "localhost"])
    op = None
    am = demo_incident.Alertmanager(work / "alertmanager")
    cluster_dir = work / "cluster"
    try:
        step(1, "Start the local control plane (etcd + kube-apiserver + kube-controller-manager, Kubernetes 1.20.2)")
        # kube-apiserver calls /authenticate (TokenReview) and /audit (audit webhook: what grants did) with
        # a client certificate the operator trusts (--client-ca-file)
        client = tls.generate_client(str(work / "apiserver-client"), "kube-apiserver")
        flags = write_tokenreview_webhook_config(work / "tokenreview.kubeconfig", ports["https"], certs.ca_file, client)
        flags += write_audit_webhook_config(work / "audit-webhook.kubeconfig", ports["https"], certs.ca_file, client)
        cluster = start_control_plane(cluster_dir, flags)
        show("kubectl version --short", cluster.kubectl("version", "--short").stdout)
        cluster.kubectl("create", "namespace", "team-db")
        cluster.kubectl("create", "namespace", "payments")

        step(2, "Start a real Alertmanager, then breakglass-operator (webhooks, TokenReview, metrics) polling it")
        am.start()
        print(f"alertmanager up: {am.url}, log {am.log_path}")
        alert_gate = ["--alertmanager-url", am.url, "--alertmanager-poll-interval", "1s"]
        extra = [*alert_gate, "--client-ca-file", client.ca_file]
        op = Operator.on_ports(cluster, work / "operator", ports, certs, extra_args=extra)
        op.start()
        print(f"operator up: issuer {op.issuer}, log {op.log_path}   (flags: {' '.join(alert_gate)})")

        step(3, "An admin applies the policy prod-db: sre may request, one sre-lead must approve, max 1h")
        cluster.kubectl("apply", "-f", str(ROOT / "examples/policy-prod-db.yaml"))
        wait_for(lambda: policy_ready(cluster), 10, "policy Ready")
        show("kubectl get breakglasspolicy prod-db", cluster.kubectl("get", "bgp", "prod-db").stdout)

        step(4, "It's 3 a.m.: alice (group sre) asks for view in team-db for 30m")
        kb(cluster, "alice", "-n", "team-db", "explain", "-f", str(ROOT / "examples/request-alice.yaml"))
        kb(
            cluster,
            "alice",
            "-n",
            "team-db",
            "request",
            "--policy",
            "prod-db",
            "--name",
            "db-outage",
            "--reason",
            "Primary database is down, need to inspect pods and restart the operator",
            "--ticket",
            "INC-4242",
            "--duration",
            "30m",
            "--namespace-access",
            "team-db",
            "--role",
            "view",
            "--scope",
            "db:read",
        )
        wait_for(lambda: phase(cluster, "db-outage") == "Pending", 10, "Pending")
        kb(cluster, "alice", "-n", "team-db", "list")
        req = cluster.get("bgr", "db-outage", "team-db")
        print(
            f"requester stamped by admission from the API server's user info: {req['spec']['requester']} "
            f"{req['spec']['requesterGroups']}"
        )
        kb(cluster, "alice", "-n", "team-db", "approve", "db-outage")

        step(5, "bob (sre-leads) approves")
        t0 = time.monotonic()
        kb(cluster, "bob", "-n", "team-db", "approve", "db-outage", "--comment", "go, page me when done")
        ref = wait_for(lambda: secret_ref(cluster, "db-outage"), 10, "status.secretRef", interval=0.05)
        wait_for(lambda: cluster.get("secret", ref[1], ref[0]), 10, "the token Secret", interval=0.05)
        print(f"token Secret {ref[0]}/{ref[1]} appeared {time.monotonic() - t0:.2f}s after the approval command")
        wait_for(lambda: phase(cluster, "db-outage") == "Active", 10, "Active")
        kb(cluster, "alice", "-n", "team-db", "status", "db-outage")
        first = cluster.get("bgr", "db-outage", "team-db")
        first_uid, first_user = first["metadata"]["uid"], first["status"]["username"]
        print(f"grant identity (never reused: it carries the request uid): {first_user}")
        show_ledger(cluster, first_uid)

        step(
            6,
            "The token Secret lives in the operator namespace, found through status.secretRef; "
            "claims shown, the token itself never printed",
        )
        show(
            "kubectl get bgr db-outage -n team-db -o jsonpath={.status.secretRef}   # as alice",
            cluster.kubectl(
                "get", "bgr", "db-outage", "-n", "team-db", "-o", "jsonpath={.status.secretRef}", user="alice"
            ).stdout,
        )
        secret = cluster.get("secret", ref[1], ref[0], user="alice")  # her per-request reader Role allows this
        token = base64.b64decode(secret["data"]["token"]).decode()
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        print(json.dumps(claims, indent=2))
        print(f"k8s_user/k8s_groups are prefixed 'breakglass:' by the apiserver: {first_user}")
        kb(cluster, "alice", "verify", "--secret", f"{ref[0]}/{ref[1]}")
        dave = cluster.kubectl("get", "secret", ref[1], "-n", ref[0], user="dave", check=False)
        show(f"kubectl get secret {ref[1]} -n {ref[0]}   # as dave (sre, not the requester)", dave.stderr)
        dave_list = cluster.kubectl("get", "secrets", "-n", ref[0], user="dave", check=False)
        show(f"kubectl get secrets -n {ref[0]}   # as dave", dave_list.stderr or dave_list.stdout)
        assert dave.returncode != 0 and "forbidden" in dave.stderr.lower(), "dave must not read alice's token"
        assert dave_list.returncode != 0, "dave must not list the token namespace"

        step(7, "The grant works against the cluster: allowed in team-db, forbidden elsewhere")
        kc = work / "grant.kubeconfig"
        kb(cluster, "alice", "-n", "team-db", "token", "db-outage", "--kubeconfig-out", str(kc))
        grant = grant_client(cluster, kc)
        r = grant("auth", "can-i", "list", "pods", "-n", "team-db")
        show("kubectl --kubeconfig <grant> auth can-i list pods -n team-db", r.stdout or r.stderr)
        r = grant("get", "pods", "-n", "team-db")
        show("kubectl --kubeconfig <grant> get pods -n team-db", r.stdout or r.stderr)
        r = grant("get", "pods", "-n", "payments")
        show("kubectl --kubeconfig <grant> get pods -n payments", r.stderr)
        r = grant("delete", "serviceaccount", "default", "-n", "team-db")
        show("kubectl --kubeconfig <grant> delete sa default -n team-db", r.stderr)
        print("What did the grant do? kube-apiserver's audit webhook told the operator (one event per request):")
        wait_for(lambda: _used(cluster, "db-outage") >= 4, 20, "the grant's requests in status.usage")
        kb(cluster, "bob", "-n", "team-db", "usage", "db-outage")

        step(
            8, "Incident over: alice revokes. The Secret in breakglass-system goes at once and the token stops working"
        )
        t0 = time.monotonic()
        kb(cluster, "alice", "-n", "team-db", "revoke", "db-outage")
        wait_for(lambda: cluster.get("secret", ref[1], ref[0]) is None, 10, "Secret deleted", interval=0.05)
        print(f"Secret {ref[0]}/{ref[1]} deleted {time.monotonic() - t0:.2f}s after the revoke command")
        r = grant("get", "pods", "-n", "team-db")
        show("kubectl --kubeconfig <grant> get pods -n team-db   # at once: its RoleBinding is gone", r.stderr)
        wait_for(
            lambda: "Unauthorized" in grant("get", "pods", "-n", "team-db").stderr, 15, "the token to be refused (401)"
        )
        r = grant("get", "pods", "-n", "team-db")
        show("kubectl --kubeconfig <grant> get pods -n team-db   # once kube-apiserver's auth cache lapses", r.stderr)
        reuse = wait_for(lambda: _events(cluster, "db-outage", "RevokedTokenUsed"), 20, "the leaked-token alarm")
        show("kubectl get events -n team-db   # a revoked token presented again: treat it as leaked", reuse[-1])
        kb(cluster, "alice", "verify", "-", stdin=token)  # token on stdin: never on a command line
        wait_for(lambda: ledger_state(cluster, first_uid) == "Revoked", 10, "ledger entry Revoked")
        show_ledger(cluster, first_uid)
        show("kubectl get bgr -n team-db", cluster.kubectl("get", "bgr", "-n", "team-db").stdout)

        step(
            9,
            "Same name, new request: alice deletes db-outage and files it again asking for more. "
            "bob's old approval does not carry over",
        )
        show(
            "kubectl delete bgr db-outage -n team-db   # as alice",
            cluster.kubectl("delete", "bgr", "db-outage", "-n", "team-db", user="alice").stdout,
        )
        wait_for(lambda: cluster.get("bgr", "db-outage", "team-db") is None, 20, "db-outage deleted")
        kb(
            cluster,
            "alice",
            "-n",
            "team-db",
            "request",
            "--policy",
            "prod-db",
            "--name",
            "db-outage",
            "--reason",
            "Primary database is down again, need to restart it",
            "--ticket",
            "INC-4242",
            "--duration",
            "30m",
            "--namespace-access",
            "team-db",
            "--role",
            "edit",
        )
        wait_for(lambda: phase(cluster, "db-outage") == "Pending", 10, "Pending")
        time.sleep(3)  # give the operator every chance to (wrongly) issue on the old approval
        second = cluster.get("bgr", "db-outage", "team-db")
        second_uid = second["metadata"]["uid"]
        st = second.get("status") or {}
        print(
            f"new uid {second_uid} (was {first_uid}); after 3 s: phase {st.get('phase')}, "
            f"secretRef {st.get('secretRef')}, ledger entry {ledger_state(cluster, second_uid)}"
        )
        assert st.get("phase") == "Pending" and not st.get("secretRef"), "issued without a new approval"
        assert cluster.get("configmap", f"breakglass-grant-{second_uid}", "breakglass-system") is None
        show(
            "kubectl get bga -n team-db",
            cluster.kubectl(
                "get",
                "bga",
                "-n",
                "team-db",
                "-o",
                "custom-columns=NAME:.metadata.name,"
                "APPROVER:.spec.approver,DECISION:.spec.decision,REQUEST-UID:.spec.requestUID",
            ).stdout,
        )
        kb(cluster, "alice", "-n", "team-db", "status", "db-outage")
        kb(cluster, "bob", "-n", "team-db", "approve", "db-outage", "--comment", "ok, edit this time")
        ref2 = wait_for(lambda: secret_ref(cluster, "db-outage"), 10, "status.secretRef", interval=0.05)
        second_user = cluster.get("bgr", "db-outage", "team-db")["status"]["username"]
        print(f"issued only now, on bob's new approval: Secret {ref2[0]}/{ref2[1]}, identity {second_user}")
        assert ref2 != ref and second_user != first_user
        wait_for(lambda: "Unauthorized" in grant("get", "pods", "-n", "team-db").stderr, 15, "old token refused")
        r = grant("get", "pods", "-n", "team-db")
        show("kubectl --kubeconfig <old grant> get pods -n team-db   # the revoked token does not come back", r.stderr)
        kb(cluster, "alice", "-n", "team-db", "revoke", "db-outage")
        wait_for(lambda: cluster.get("secret", ref2[1], ref2[0]) is None, 10, "Secret deleted", interval=0.05)

        step(10, "A 10-second grant expires on its own (`request --wait` prints where its token is)")
        waiter = kb_start(
            cluster,
            "alice",
            "-n",
            "team-db",
            "request",
            "--policy",
            "prod-db",
            "--name",
            "quick-look",
            "--reason",
            "One more look at the replica lag",
            "--ticket",
            "INC-4242",
            "--duration",
            "10s",
            "--namespace-access",
            "team-db",
            "--role",
            "view",
            "--wait",
            "--timeout",
            "60",
        )
        print(
            f"{DIM}$ kubectl breakglass -n team-db request ... --name quick-look --duration 10s --wait &"
            f"   # as alice, in the background{RESET}"
        )
        wait_for(lambda: phase(cluster, "quick-look") == "Pending", 20, "Pending")
        kb(cluster, "carol", "-n", "team-db", "approve", "quick-look")
        out, err = waiter.communicate(timeout=60)
        show("# the background request --wait returns (progress on stderr, then the Secret on stdout)", err + out)
        ref3 = tuple(out.strip().splitlines()[-1].split("/", 1))
        assert ref3 == secret_ref(cluster, "quick-look"), f"--wait printed {out!r}"
        wait_for(lambda: phase(cluster, "quick-look") == "Active", 10, "Active")
        exp = cluster.get("bgr", "quick-look", "team-db")["status"]["expiresAt"]
        print(f"quick-look is Active until {exp}; waiting...")
        wait_for(lambda: phase(cluster, "quick-look") == "Expired", 30, "Expired", interval=0.2)
        wait_for(lambda: cluster.get("secret", ref3[1], ref3[0]) is None, 10, "Secret deleted at expiry")
        print(f"Secret {ref3[0]}/{ref3[1]} present after expiry: {cluster.get('secret', ref3[1], ref3[0]) is not None}")
        kb(cluster, "alice", "-n", "team-db", "list")
        events = cluster.kubectl(
            "get",
            "events",
            "-n",
            "team-db",
            "--sort-by=.lastTimestamp",
            "-o",
            "custom-columns=REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message",
        )
        show("kubectl get events -n team-db", events.stdout)

        demo_incident.run(cluster, op, am, 11)

        audit_lines = op.audit_log.read_text().splitlines()
        print(f"\naudit log: {len(audit_lines)} hash-chained records")
        kb(cluster, "admin", "audit", "verify", str(op.audit_log))
        print(f"\n{BOLD}demo finished: every step above was read back from the apiserver.{RESET}")
        print(
            f"final phase of db-outage: {phase(cluster, 'db-outage')}; "
            f"quick-look: {phase(cluster, 'quick-look')}; "
            f"{demo_incident.REQUEST}: {phase(cluster, demo_incident.REQUEST)}"
        )
        if os.environ.get("DEMO_KEEP") == "1":
            print(f"\nDEMO_KEEP=1: still running. export KUBECONFIG={cluster.kubeconfig()}  (Ctrl-C to stop)")
            print(f"Alertmanager: {am.url}")
            while True:
                time.sleep(3600)
        return 0
    except BaseException:
        if op:  # the work directory (and the logs in it) goes away below: show the tail first
            print(f"\n--- operator log (tail) ---\n{op.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        if op:
            op.stop()
        am.stop()
        stop_cluster(cluster_dir)
        if os.environ.get("DEMO_KEEP") != "1":
            import shutil

            shutil.rmtree(work, ignore_errors=True)


def _used(cluster, name):
    return (((cluster.get("bgr", name, "team-db") or {}).get("status") or {}).get("usage") or {}).get("requests", 0)


def _events(cluster, name, reason):
    return [
        f"{e['type']}  {e['reason']}  {e['message']}" for e in cluster.events("team-db", name) if e["reason"] == reason
    ]


if __name__ == "__main__":
    # make's SIGTERM (or a CI timeout) unwinds like Ctrl-C: main()'s finally stops everything it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
