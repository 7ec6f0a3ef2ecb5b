"""`make bench` with `--scale`: every row of the Scale issue's table, measured against one local
control plane in one run (not a test; it takes minutes). Results go to bench/last-results.json.

Rows: operator RSS idle and at N active grants; idle CPU of the operator and kube-apiserver and the
LIST calls made while nothing changes; request->Secret latency and grants/s for a burst of N, with
API calls per grant (kube-apiserver's own request counter); approval->Secret at 5 approvals/s with N
active; TokenReview at concurrency 32; SIGTERM->exit; restart->admission, restart->grants_active
right (and API requests per grant on the way) and cleanup of grants that expired while down; the raw
Secret-create ceiling of the same run as the anchor.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import os
import re
import time

import kubernetes
from harness import Operator, operator_ports, start_control_plane, stop_cluster, wait_for
from tokenreview import run_tokenreview_bench

from bench import ROOT, TOKEN_NAMESPACE, SecretWatch, burst, client_for, pct, rss_mb
from breakglass import tls

GROUP, VERSION, PLURAL = "breakglass.dev", "v1alpha1", "breakglassrequests"


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api_requests(cluster) -> dict[str, float]:
    """kube-apiserver's request counter by verb and resource (all clients; one GET itself)."""
    out: dict[str, float] = {}
    for line in cluster.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if line.startswith("apiserver_request_total{"):
            verb = re.search(r'verb="([^"]*)"', line).group(1)
            resource = re.search(r'resource="([^"]*)"', line).group(1)
            scope = re.search(r'scope="([^"]*)"', line).group(1)
            # kube-apiserver 1.20 counts a GET of one custom resource as verb LIST, scope namespace.
            key = f"{verb} {resource} ({scope})" if verb == "LIST" else f"{verb} {resource}"
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def request_body(name: str, ns: str, policy: str, duration: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BreakGlassRequest",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "policy": policy,
            "reason": "benchmark burst of grants",
            "duration": duration,
            "namespaces": [ns],
            "clusterRoles": ["view"],
        },
    }


def gauge(op: Operator, name: str, labels: str = "") -> float | None:
    text = op.metrics_text() or ""
    m = re.search(rf"^{name}{{{labels}}} (\S+)$" if labels else rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def phases(custom, ns: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]:
        phase = (r.get("status") or {}).get("phase") or "-"
        out[phase] = out.get(phase, 0) + 1
    return out


def file_burst(custom, watch, ns, policy, n, duration, conc) -> dict[str, float]:
    started: dict[str, float] = {}

    def file(i):
        name = f"g{i:05d}"
        started[name] = time.time()
        created = custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, request_body(name, ns, policy, duration)
        )
        watch.uid_to_name[created["metadata"]["uid"]] = name

    burst(file, range(n), conc)
    return started


def run(n: int, conc: int, expiring: int = 500, approvals: int = 100) -> dict:
    import pathlib
    import tempfile

    work = pathlib.Path(tempfile.mkdtemp(prefix="breakglass-scale-"))
    ports = operator_ports()
    certs = tls.generate(str(work / "tls"), ["127.0.0.1"])
    client = tls.generate_client(str(work / "client"), "kube-apiserver")
    cluster = start_control_plane(work / "cluster", [])
    apiserver_pid = int((work / "cluster" / "kube-apiserver.pid").read_text())
    r: dict = {"date": dt.date.today().isoformat(), "grants": n, "concurrency": conc, "cores": os.cpu_count()}
    op = Operator.on_ports(cluster, work / "operator", ports, certs, extra_args=["--client-ca-file", client.ca_file])
    try:
        # kube-apiserver's own idle cost (controller-manager, leases, compaction) before any operator.
        c_api, t0 = cpu_seconds(apiserver_pid), time.monotonic()
        time.sleep(30)
        r["idle_cpu_apiserver_without_operator_pct"] = round(
            100 * (cpu_seconds(apiserver_pid) - c_api) / (time.monotonic() - t0), 2
        )
        op.start()
        wait_for(lambda: gauge(op, "breakglass_leader") == 1.0, 30, "leadership")
        r["rss_idle_mb"] = round(rss_mb(op.proc.pid), 1)
        for name, approvers in (("bench", 0), ("bench-approve", 1)):
            spec = {"requesters": {"groups": ["sre"]}, "requiredApprovals": approvers, "allowedNamespaces": ["bench-*"]}
            spec.update({"allowedClusterRoles": ["view"], "maxDuration": "2h", "approvers": {"groups": ["sre-leads"]}})
            cluster.apply(
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "BreakGlassPolicy",
                    "metadata": {"name": name},
                    "spec": spec,
                }
            )
        admin, alice, bob = client_for(cluster, "admin"), client_for(cluster, "alice"), client_for(cluster, "bob")
        core, custom = kubernetes.client.CoreV1Api(admin), kubernetes.client.CustomObjectsApi(alice)

        # Anchor: raw Secret creates, same client and concurrency.
        cluster.kubectl("create", "namespace", "bench-raw")
        t0 = time.monotonic()
        burst(
            lambda i: core.create_namespaced_secret(
                "bench-raw", {"metadata": {"name": f"raw-{i}"}, "stringData": {"x": "y"}}
            ),
            range(1000),
            conc,
        )
        r["raw_secrets_per_s"] = round(1000 / (time.monotonic() - t0), 1)

        # Burst: N auto-approved grants.
        ns = "bench-grants"
        cluster.kubectl("create", "namespace", ns)
        watch = SecretWatch(admin, TOKEN_NAMESPACE, ns)
        calls0 = api_requests(cluster)
        t0 = time.time()
        started = file_burst(custom, watch, ns, "bench", n, "2h", conc)
        wait_for(lambda: sum(k in watch.added for k in started) >= n, 3600, "all token Secrets", interval=1)
        last = max(watch.added[k] for k in started)
        wait_for(lambda: gauge(op, "breakglass_grants_active", 'policy="bench"') == n, 600, "gauge = N", interval=1)
        calls = delta(api_requests(cluster), calls0)
        lat = [watch.added[k] - started[k] for k in started]
        r["burst_request_to_secret_p50_s"] = round(pct(lat, 50), 2)
        r["burst_request_to_secret_p99_s"] = round(pct(lat, 99), 2)
        r["burst_grants_per_s"] = round(n / (last - t0), 1)
        r["vs_raw_ceiling"] = round(r["burst_grants_per_s"] / r["raw_secrets_per_s"], 3)
        own = n + 2  # the bench's creates and its two /metrics reads
        r["api_calls_per_grant"] = round((sum(calls.values()) - own) / n, 2)
        r["api_calls_per_grant_by_kind"] = {k: round(v / n, 2) for k, v in sorted(calls.items()) if v / n >= 0.05}

        # Idle with N active: CPU and LISTs over 60 s of nothing changing.
        time.sleep(10)
        r["rss_active_mb"] = round(rss_mb(op.proc.pid), 1)
        r["rss_per_grant_kb"] = round((r["rss_active_mb"] - r["rss_idle_mb"]) * 1024 / n, 1)
        c_op, c_api, calls0, t0 = (
            cpu_seconds(op.proc.pid),
            cpu_seconds(apiserver_pid),
            api_requests(cluster),
            time.monotonic(),
        )
        time.sleep(60)
        span = time.monotonic() - t0
        r["idle_cpu_operator_pct"] = round(100 * (cpu_seconds(op.proc.pid) - c_op) / span, 2)
        r["idle_cpu_apiserver_pct"] = round(100 * (cpu_seconds(apiserver_pid) - c_api) / span, 2)
        idle = delta(api_requests(cluster), calls0)
        r["idle_list_calls"] = {k: v for k, v in idle.items() if k.startswith("LIST")}
        r["idle_api_calls"] = {k: round(v / span, 2) for k, v in sorted(idle.items())}
        r["idle_api_calls_per_s"] = round((sum(idle.values()) - 1) / span, 2)

        # Approval -> Secret at 5 approvals/s with N active.
        ans = "bench-approvals"
        cluster.kubectl("create", "namespace", ans)
        awatch = SecretWatch(admin, TOKEN_NAMESPACE, ans)
        pending = file_burst(custom, awatch, ans, "bench-approve", approvals, "2h", conc)
        wait_for(lambda: phases(custom, ans).get("Pending", 0) == approvals, 120, "Pending", interval=0.5)
        bob_custom, approved = kubernetes.client.CustomObjectsApi(bob), {}
        with cf.ThreadPoolExecutor(8) as pool:
            first = time.time()
            for i, name in enumerate(sorted(pending)):
                time.sleep(max(0.0, first + i / 5 - time.time()))  # 5 approvals per second
                body = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "BreakGlassApproval",
                    "metadata": {"generateName": f"{name}-", "namespace": ans},
                    "spec": {"request": name, "decision": "Approve"},
                }
                approved[name] = time.time()
                pool.submit(
                    bob_custom.create_namespaced_custom_object, GROUP, VERSION, ans, "breakglassapprovals", body
                )
        wait_for(lambda: sum(k in awatch.added for k in approved) >= approvals, 120, "approved Secrets", interval=0.5)
        alat = [awatch.added[k] - approved[k] for k in approved]
        r["approval_to_secret_p50_ms"] = round(1000 * pct(alat, 50), 1)
        r["approval_to_secret_p99_ms"] = round(1000 * pct(alat, 99), 1)

        # TokenReview at concurrency 32 (and 1), with N live grants in the allow-list.
        import base64

        selector = f"breakglass.dev/request-namespace={ns}"
        secret = core.list_namespaced_secret(TOKEN_NAMESPACE, label_selector=selector, limit=1).items[0]

        token = base64.b64decode(secret.data["token"]).decode()
        url = f"https://127.0.0.1:{ports['https']}/authenticate"
        for c in (32, 1):
            out = run_tokenreview_bench(
                url,
                token,
                client.cert_file,
                client.key_file,
                certs.ca_file,
                total=20000 if c > 1 else 3000,
                concurrency=c,
            )
            r[f"tokenreview_c{c}"] = {k: out[k] for k in ("reviews_per_s", "p50_ms", "p99_ms", "errors")}
        del token

        # Restart with a backlog: `expiring` grants expire while the operator is down.
        ens = "bench-expiring"
        cluster.kubectl("create", "namespace", ens)
        ewatch = SecretWatch(admin, TOKEN_NAMESPACE, ens)
        estarted = file_burst(custom, ewatch, ens, "bench", expiring, "40s", conc)
        wait_for(lambda: sum(k in ewatch.added for k in estarted) >= expiring, 300, "expiring Secrets", interval=0.5)
        wait_for(lambda: phases(custom, ens).get("Active", 0) == expiring, 120, "expiring Active", interval=0.5)
        t0 = time.monotonic()
        op.stop()
        r["sigterm_to_exit_s"] = round(time.monotonic() - t0, 2)
        wait_for(
            lambda: ewatch.exp and time.time() > max(ewatch.exp.values()) + 1,
            120,
            "all expired while down",
            interval=0.5,
        )
        calls0 = api_requests(cluster)
        t0 = time.monotonic()
        op.start(wait=False)

        def cleaned():
            gone = sum(k in ewatch.deleted for k in estarted) >= expiring
            return gone and phases(custom, ens).get("Expired", 0) == expiring

        def gauge_right():
            return gauge(op, "breakglass_grants_active", 'policy="bench"') == n

        # Each milestone polled on its own thread, timed from the process start.
        checks = {"restart_to_admission_s": op_answers(cluster), "restart_to_gauge_right_s": gauge_right}
        checks["restart_to_expired_secrets_deleted_s"] = lambda: sum(k in ewatch.deleted for k in estarted) >= expiring
        checks["restart_to_expired_cleanup_s"] = cleaned

        def timed(item):
            key, check = item
            wait_for(check, 600, key, interval=0.05)
            return key, round(time.monotonic() - t0, 2)

        with cf.ThreadPoolExecutor(len(checks)) as pool:
            r.update(dict(pool.map(timed, checks.items())))
        total = n + approvals + expiring
        r["restart_api_requests_per_grant"] = round((sum(delta(api_requests(cluster), calls0).values()) - 1) / total, 3)
        r["rss_after_restart_mb"] = round(rss_mb(op.proc.pid), 1)
        for w in (watch, awatch, ewatch):
            w.stop()
        return r
    finally:
        op.stop()
        stop_cluster(work / "cluster")


def op_answers(cluster):
    import yaml

    probe = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BreakGlassApproval",
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"request": "no-such-request-readiness", "decision": "Approve"},
    }

    def answers():
        out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(probe), check=False)
        return "no BreakGlassRequest of that name" in out.stderr

    return answers


def main(n: int, conc: int) -> int:
    env = os.environ.get
    results = run(n, conc, int(env("BENCH_EXPIRING", "500")), int(env("BENCH_APPROVALS", "300")))
    print(json.dumps(results, indent=2))
    (ROOT / "bench" / "last-results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0
