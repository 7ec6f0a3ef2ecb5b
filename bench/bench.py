#!/usr/bin/env python3
"""Performance figures against the local control plane (not a test; numbers go to the README).

  request->Secret latency p50/p99 and grants/s for a burst of N auto-approved requests (token Secrets
  are watched in the token namespace, breakglass-system, and mapped back to their requests by the
  breakglass.dev/request-uid annotation, else the breakglass.dev/request label),
  the raw ceiling (N Secrets created directly with the same concurrency),
  expiry lag (exp -> Secret deleted) for N grants expiring together,
  operator memory (RSS) idle and with N active grants.

Usage: .venv/bin/python bench/bench.py [--grants 500] [--concurrency 8] [--duration 90s]
  (defaults also from $BENCH_GRANTS, $BENCH_CONCURRENCY, $BENCH_DURATION, e.g. `BENCH_GRANTS=20 make bench`)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import pathlib
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "hack"))

import kubernetes  # noqa: E402
from harness import Operator, operator_ports, start_control_plane, stop_cluster, wait_for  # noqa: E402

from breakglass import tls  # noqa: E402


def client_for(cluster, user):
    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=cluster.kubeconfig(user), client_configuration=cfg)
    cfg.connection_pool_maxsize = 64
    return kubernetes.client.ApiClient(cfg)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children_rss_mb(pid):
    total = rss_mb(pid)
    for p in pathlib.Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if f"PPid:\t{pid}\n" in (p / "status").read_text():
                    total += rss_mb(int(p.name))
            except OSError:
                pass
    return total


TOKEN_NAMESPACE = "breakglass-system"  # the operator's namespace: token Secrets live there by default
REQUEST_LABEL = "breakglass.dev/request"
REQUEST_NS_LABEL = "breakglass.dev/request-namespace"
REQUEST_UID_ANNOTATION = "breakglass.dev/request-uid"
EXPIRES_AT_ANNOTATION = "breakglass.dev/expires-at"


class SecretWatch:
    """Record when each token Secret of the requests in `request_namespace` is ADDED / DELETED (server
    events, client clock), keyed by request name. The Secrets live in `token_namespace`, named by
    request uid; each one is mapped back to its request through the request-uid annotation (via
    `uid_to_name`, filled as requests are created) or, failing that, the request label."""

    def __init__(self, api_client, token_namespace, request_namespace):
        self.added, self.deleted, self.exp = {}, {}, {}
        self.uid_to_name: dict[str, str] = {}
        self._stop = False
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.ns = token_namespace
        self.selector = f"{REQUEST_NS_LABEL}={request_namespace}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _request_of(self, meta):
        uid = (meta.annotations or {}).get(REQUEST_UID_ANNOTATION)
        return self.uid_to_name.get(uid) or (meta.labels or {}).get(REQUEST_LABEL)

    def _run(self):
        rv = None  # resume where the last stream ended so no DELETED event is lost between streams
        while not self._stop:
            w = kubernetes.watch.Watch()
            try:
                kwargs = {"resource_version": rv} if rv else {}
                for ev in w.stream(
                    self.core.list_namespaced_secret,
                    self.ns,
                    label_selector=self.selector,
                    timeout_seconds=30,
                    **kwargs,
                ):
                    now = time.time()
                    meta = ev["object"].metadata
                    rv = meta.resource_version
                    name = self._request_of(meta)
                    if not name:
                        continue
                    ann = meta.annotations or {}
                    if EXPIRES_AT_ANNOTATION in ann:
                        self.exp[name] = dt.datetime.fromisoformat(
                            ann[EXPIRES_AT_ANNOTATION].replace("Z", "+00:00")
                        ).timestamp()
                    if ev["type"] == "ADDED":
                        self.added.setdefault(name, now)
                    elif ev["type"] == "DELETED":
                        self.deleted.setdefault(name, now)
                    if self._stop:
                        return
            except Exception:
                time.sleep(0.2)

    def stop(self):
        self._stop = True


def burst(fn, items, concurrency):
    with cf.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(fn, items))


def main():
    if "--audit" in sys.argv:  # `make bench BENCH_ARGS=--audit`: the audit sink (bench/audit.py, its own flags)
        import audit

        sys.argv.remove("--audit")
        return audit.main()
    ap = argparse.ArgumentParser()
    env = os.environ.get
    ap.add_argument("--grants", type=int, default=int(env("BENCH_GRANTS", "500")))
    ap.add_argument("--concurrency", type=int, default=int(env("BENCH_CONCURRENCY", "8")))
    ap.add_argument("--duration", default=env("BENCH_DURATION", "90s"), help="grant duration for the expiry phase")
    ap.add_argument(
        "--scale",
        action="store_true",
        default=env("BENCH_SCALE") == "1",
        help="the Scale table: N (default 10000) active grants, idle cost, restart, TokenReview (bench/scale.py)",
    )
    args = ap.parse_args()
    if args.scale:
        import scale

        grants = args.grants if any(a.startswith("--grants") for a in sys.argv) else int(env("BENCH_GRANTS", "10000"))
        return scale.main(grants, args.concurrency)
    n, conc = args.grants, args.concurrency
    work = pathlib.Path(tempfile.mkdtemp(prefix="breakglass-bench-"))
    ports = operator_ports()
    certs = tls.generate(str(work / "tls"), ["127.0.0.1"])
    cluster = start_control_plane(work / "cluster", [])
    op = None
    results = {"grants": n, "concurrency": conc}
    try:
        op = Operator.on_ports(cluster, work / "operator", ports, certs)
        op.start()
        time.sleep(2)
        results["rss_idle_mb"] = round(rss_mb(op.proc.pid), 1)
        cluster.apply(
            {
                "apiVersion": "breakglass.dev/v1alpha1",
                "kind": "BreakGlassPolicy",
                "metadata": {"name": "bench"},
                "spec": {
                    "requesters": {"groups": ["sre"]},
                    "requiredApprovals": 0,
                    "allowedNamespaces": ["bench-*"],
                    "allowedClusterRoles": ["view"],
                    "maxDuration": "1h",
                },
            }
        )
        admin, alice = client_for(cluster, "admin"), client_for(cluster, "alice")

        # Raw ceiling: N Secrets straight into the apiserver, same concurrency.
        cluster.kubectl("create", "namespace", "bench-raw")
        core = kubernetes.client.CoreV1Api(admin)
        t0 = time.monotonic()
        burst(
            lambda i: core.create_namespaced_secret(
                "bench-raw", {"metadata": {"name": f"raw-{i}"}, "stringData": {"x": "y"}}
            ),
            range(n),
            conc,
        )
        raw = time.monotonic() - t0
        results["raw_secrets_per_s"] = round(n / raw, 1)

        # Burst of auto-approved requests: time from create call to the token Secret's ADDED event
        # (in the token namespace, mapped back to the request).
        ns = "bench-grants"
        cluster.kubectl("create", "namespace", ns)
        watch = SecretWatch(admin, TOKEN_NAMESPACE, ns)
        time.sleep(1)
        custom = kubernetes.client.CustomObjectsApi(alice)
        started = {}

        def file(i):
            name = f"g{i:04d}"
            body = {
                "apiVersion": "breakglass.dev/v1alpha1",
                "kind": "BreakGlassRequest",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "policy": "bench",
                    "reason": "benchmark burst of grants",
                    "duration": args.duration,
                    "namespaces": [ns],
                    "clusterRoles": ["view"],
                },
            }
            started[name] = time.time()
            created = custom.create_namespaced_custom_object(
                "breakglass.dev", "v1alpha1", ns, "breakglassrequests", body
            )
            watch.uid_to_name[created["metadata"]["uid"]] = name

        t0 = time.time()
        burst(file, range(n), conc)
        wait_for(lambda: len([k for k in watch.added if k in started]) >= n, 600, "all token Secrets", interval=0.2)
        last = max(watch.added[k] for k in started)
        lat = [watch.added[k] - started[k] for k in started]
        results["request_to_secret_p50_s"] = round(pct(lat, 50), 3)
        results["request_to_secret_p99_s"] = round(pct(lat, 99), 3)
        results["grants_per_s"] = round(n / (last - t0), 1)
        results["vs_raw_ceiling"] = round(results["grants_per_s"] / results["raw_secrets_per_s"], 2)
        wait_for(
            lambda: (
                sum(
                    1
                    for r in custom.list_namespaced_custom_object(
                        "breakglass.dev", "v1alpha1", ns, "breakglassrequests"
                    )["items"]
                    if (r.get("status") or {}).get("phase") == "Active"
                )
                >= n
            ),
            600,
            "all Active",
            interval=0.5,
        )
        results["rss_active_mb"] = round(rss_mb(op.proc.pid), 1)

        # Expiry: every grant's Secret deletion vs its own exp.
        last_exp = max(watch.exp[k] for k in started)
        wait_for(
            lambda: len([k for k in watch.deleted if k in started]) >= n,
            last_exp - time.time() + 300,
            "all Secrets deleted at expiry",
            interval=0.5,
        )
        lags = [watch.deleted[k] - watch.exp[k] for k in started]
        results["expiry_lag_p50_s"] = round(pct(lags, 50), 3)
        results["expiry_lag_p99_s"] = round(pct(lags, 99), 3)
        results["expiry_lag_max_s"] = round(max(lags), 3)
        results["expiry_window_s"] = round(max(watch.exp.values()) - min(watch.exp.values()), 1)
        watch.stop()
        print(json.dumps(results, indent=2))
        (ROOT / "bench" / "last-results.json").write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if op:
            op.stop()
        stop_cluster(work / "cluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
