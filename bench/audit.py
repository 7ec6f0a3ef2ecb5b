#!/usr/bin/env python3
"""The audit sink (POST /audit, issue #13) against the real local control plane (not a test; ~2 min).

Two control planes, started one after the other with the same operator flags (--client-ca-file):
  sink off: the TokenReview webhook only (kube-apiserver sends no audit events);
  sink on:  plus kube-apiserver's audit webhook backend (batch mode, 1 s max wait, the shipped policy).

  latency   N sequential `kubectl get pods -n NS` with a grant's kubeconfig, and N raw HTTPS GETs
            (keep-alive, no process start), p50/p99 per call, sink off vs on
  load      U grants (view in their own namespace), one thread each making list calls with its token
            over one keep-alive connection for W s: calls/s; events/s the sink recorded (its
            breakglass_audit_events_total delta) in the window and until it caught up; how long after
            the load the sink and each grant's status.usage.requests still trailed (drain); p50/p99 of
            breakglass_audit_handling_seconds per batch (quantiles from the bucket deltas); dropped;
            kube-apiserver's apiserver_audit_event_total / apiserver_audit_error_total{plugin=webhook}
  raw       the raw write ceiling of the same run: ConfigMap replaces (resourceVersion-guarded, as
            big as a grant's ledger entry after the load) from T threads with the admin client
  synthetic pre-built EventLists (E events over the U grants) POSTed straight to /audit with
            kube-apiserver's client certificate from T threads for S s: the sink's own ceiling,
            independent of kube-apiserver; its ledger writes/s as a fraction of the raw ceiling
  audit log after each of load and synthetic: how many actions got a `used` record (distinct per
            grant seq, repeats, none) and what the `used-unrecorded` records claim was lost

Results: a table on stdout and bench/last-audit-results.json.
Usage: .venv/bin/python bench/audit.py [--users 5] [--window 20] [--calls 100] [--threads 4]
  [--synthetic 10] [--events 100]   (`make bench-audit`; on a shared machine under flock /tmp/e2e.lock)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as dt
import http.client
import json
import math
import os
import pathlib
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
for _sub in ("operator", "hack", "bench"):
    sys.path.insert(0, str(ROOT / _sub))

import kubernetes  # noqa: E402
from harness import (  # noqa: E402
    Operator,
    kubeconfig,
    operator_ports,
    secret_token,
    start_control_plane,
    stop_cluster,
    wait_for,
    write_audit_webhook_config,
    write_tokenreview_webhook_config,
)
from scale import GROUP, PLURAL, VERSION, cpu_seconds, gauge, request_body  # noqa: E402

from bench import client_for, pct  # noqa: E402
from breakglass import api, tls  # noqa: E402
from breakglass.domain.durations import to_rfc3339, utcnow  # noqa: E402
from breakglass.domain.usage import GRANT_GROUP  # noqa: E402
from breakglass.ledger import entry_from_configmap  # noqa: E402

OPERATOR_NAMESPACE = "breakglass-system"
POLICY = "bench-audit"
SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# ------------------------------------------------------------------ metrics
def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def value(scraped, name: str, **labels: str) -> float:
    """Sum of the samples of `name` carrying `labels` (0 when absent)."""
    return sum(v for n, lab, v in scraped if n == name and all(lab.get(k) == x for k, x in labels.items()))


def buckets(scraped, name: str) -> dict[float, float]:
    return {float(lab["le"]): v for n, lab, v in scraped if n == f"{name}_bucket"}


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over the bucket deltas (linear within a bucket; a rank in the
    +Inf bucket answers the largest finite bound)."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cum[-1] if cum else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in zip(bounds, cum, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def quantile_bucket(q: float, before: dict[float, float], after: dict[float, float]) -> str:
    """The bucket (ms) the q-quantile falls in: what the histogram can really tell."""
    bounds = sorted(after)
    total = (after[bounds[-1]] - before.get(bounds[-1], 0.0)) if bounds else 0.0
    lower = 0.0
    for bound in bounds:
        if total > 0 and after[bound] - before.get(bound, 0.0) >= q * total:
            return f"({1000 * lower:g}, {1000 * bound:g}]"
        lower = bound
    return "n/a"


def operator_metrics(op: Operator):
    return samples(op.metrics_text() or "")


def apiserver_metrics(cluster):
    return samples(cluster.kubectl("get", "--raw", "/metrics").stdout)


# ------------------------------------------------------------------ grant traffic
class GrantConnection:
    """One keep-alive HTTPS connection to kube-apiserver with a grant's bearer token (no kubectl, so
    no discovery requests and no process start in the count)."""

    def __init__(self, cluster, token: str):
        url = urllib.parse.urlsplit(cluster.server)
        self.host, self.port = url.hostname, url.port
        self.ctx = ssl.create_default_context(cafile=cluster.ca_file)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.conn: http.client.HTTPSConnection | None = None

    def get(self, path: str) -> int:
        """HTTP status, or 0 when the connection failed (it is opened again on the next call)."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)
            self.conn.request("GET", path, headers=self.headers)
            resp = self.conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException):
            self.close()
            return 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Grant:
    def __init__(self, cluster, ns: str, name: str, uid: str, token: str, workdir: pathlib.Path):
        self.cluster, self.ns, self.name, self.uid, self.token = cluster, ns, name, uid, token
        self.kubeconfig = workdir / f"kubeconfig-{name}"
        self.kubeconfig.write_text(kubeconfig(cluster.server, cluster.ca_file, {"token": token}))
        self.kubeconfig.chmod(0o600)

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.ns}/pods"


def issue_grants(cluster, names: list[str], workdir: pathlib.Path) -> list[Grant]:
    """One auto-approved grant (view) per name, in its own namespace `bench-audit-<name>`, requested by
    alice; returns them Active with their tokens."""
    alice = kubernetes.client.CustomObjectsApi(client_for(cluster, "alice"))
    custom = kubernetes.client.CustomObjectsApi(client_for(cluster, "admin"))
    for name in names:
        cluster.kubectl("create", "namespace", f"bench-audit-{name}")
        alice.create_namespaced_custom_object(
            GROUP, VERSION, f"bench-audit-{name}", PLURAL, request_body(name, f"bench-audit-{name}", POLICY, "1h")
        )
    grants = []
    for name in names:
        ns = f"bench-audit-{name}"

        def active(ns=ns, name=name):
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            status = obj.get("status") or {}
            return obj if status.get("phase") == "Active" and status.get("secretRef") else None

        obj = wait_for(active, 60, f"grant {ns}/{name} Active", interval=0.2)
        ref = obj["status"]["secretRef"]
        token = secret_token(cluster.get("secret", ref["name"], ref["namespace"]))
        grants.append(Grant(cluster, ns, name, obj["metadata"]["uid"], token, workdir))
    return grants


def usage_requests(custom, grant: Grant) -> int:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, grant.ns, PLURAL, grant.name)
    return int(((obj.get("status") or {}).get("usage") or {}).get("requests", 0))


# ------------------------------------------------------------------ one control plane + operator
class Session:
    def __init__(self, work: pathlib.Path, audit: bool):
        self.work, self.audit = work, audit
        work.mkdir(parents=True, exist_ok=True)
        self.ports = operator_ports()
        self.certs = tls.generate(str(work / "tls"), ["127.0.0.1"])
        self.client = tls.generate_client(str(work / "apiserver-client"), "kube-apiserver")
        self.cluster = self.op = None

    def __enter__(self) -> Session:
        flags = write_tokenreview_webhook_config(
            self.work / "tokenreview.kubeconfig", self.ports["https"], self.certs.ca_file, client=self.client
        )
        if self.audit:
            flags += write_audit_webhook_config(
                self.work / "audit.kubeconfig", self.ports["https"], self.certs.ca_file, client=self.client
            )
        try:
            self.cluster = start_control_plane(self.work / "cluster", flags)
            self.apiserver_pid = int((self.work / "cluster" / "kube-apiserver.pid").read_text())
            self.op = Operator.on_ports(
                self.cluster,
                self.work / "operator",
                self.ports,
                self.certs,
                extra_args=["--client-ca-file", self.client.ca_file],
            )
            self.op.start()
            wait_for(lambda: gauge(self.op, "breakglass_leader") == 1.0, 60, "leadership", interval=0.2)
            spec = {"requesters": {"groups": ["sre"]}, "requiredApprovals": 0, "allowedNamespaces": ["bench-audit-*"]}
            spec.update({"allowedClusterRoles": ["view"], "maxDuration": "2h"})
            self.cluster.apply(
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BreakGlassPolicy", "metadata": {"name": POLICY}}
                | {"spec": spec}
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.op is not None:
            self.op.stop()
        stop_cluster(self.work / "cluster")


# ------------------------------------------------------------------ phases
def latency(session: Session, grant: Grant, calls: int) -> dict:
    """N sequential kubectl calls (own discovery cache, warmed) and N raw keep-alive GETs."""
    cmd = [session.cluster.kubectl_bin, "--kubeconfig", str(grant.kubeconfig)]
    cmd += ["--cache-dir", str(session.work / "kubectl-cache"), "get", "pods", "-n", grant.ns]
    times, failed = [], 0
    for i in range(calls + 3):  # the first calls fill kubectl's discovery cache
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if i >= 3:
            times.append(time.perf_counter() - t0)
            failed += proc.returncode != 0
    conn, raw, raw_failed = GrantConnection(session.cluster, grant.token), [], 0
    for i in range(calls + 5):
        t0 = time.perf_counter()
        code = conn.get(grant.path)
        if i >= 5:
            raw.append(time.perf_counter() - t0)
            raw_failed += code != 200
    conn.close()

    def ms(values, p):
        return round(1000 * pct(values, p), 2)

    return {
        "kubectl_p50_ms": ms(times, 50),
        "kubectl_p99_ms": ms(times, 99),
        "kubectl_failed": failed,
        "raw_get_p50_ms": ms(raw, 50),
        "raw_get_p99_ms": ms(raw, 99),
        "raw_get_failed": raw_failed,
    }


def load(session: Session, grants: list[Grant], window: float, drain_timeout: float) -> dict:
    op, cluster = session.op, session.cluster
    custom = kubernetes.client.CustomObjectsApi(client_for(cluster, "admin"))
    hist = "breakglass_audit_handling_seconds"
    made: dict[str, dict[int, int]] = {g.name: {} for g in grants}
    m0, a0 = operator_metrics(op), apiserver_metrics(cluster)
    cpu0 = cpu_seconds(op.proc.pid), cpu_seconds(session.apiserver_pid)
    start = threading.Barrier(len(grants) + 1)

    def hammer(grant: Grant) -> None:
        conn, codes = GrantConnection(cluster, grant.token), made[grant.name]
        start.wait()
        stop_at = time.monotonic() + window
        while time.monotonic() < stop_at:
            code = conn.get(grant.path)
            codes[code] = codes.get(code, 0) + 1
        conn.close()

    threads = [threading.Thread(target=hammer, args=(g,)) for g in grants]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    span = time.monotonic() - t0
    cpu1 = cpu_seconds(op.proc.pid), cpu_seconds(session.apiserver_pid)
    m1, a1 = operator_metrics(op), apiserver_metrics(cluster)
    ended = time.monotonic()
    # A call kube-apiserver answered (not 401, not a broken connection) is one audit event of the grant.
    expected = {g.name: sum(n for c, n in made[g.name].items() if c not in (0, 401)) for g in grants}
    total = sum(expected.values())
    recorded0 = value(m0, "breakglass_audit_events_total", result="recorded")

    def recorded() -> float:
        return value(operator_metrics(op), "breakglass_audit_events_total", result="recorded") - recorded0

    sink_drain = status_drain = None
    seen: dict[str, int] = {}
    deadline = ended + drain_timeout
    while time.monotonic() < deadline and (sink_drain is None or status_drain is None):
        if sink_drain is None and recorded() >= total:
            sink_drain = time.monotonic() - ended
        if status_drain is None:
            seen = {g.name: usage_requests(custom, g) for g in grants}
            if all(seen[g.name] >= expected[g.name] for g in grants):
                status_drain = time.monotonic() - ended
        time.sleep(0.1)
    m2, a2 = operator_metrics(op), apiserver_metrics(cluster)
    seen = {g.name: usage_requests(custom, g) for g in grants}
    codes: dict[str, int] = {}
    for per in made.values():
        for c, n in per.items():
            codes[str(c)] = codes.get(str(c), 0) + n

    def delta(after, before, name, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    handled = delta(m2, m0, f"{hist}_count")
    return {
        "grants": len(grants),
        "window_s": round(span, 2),
        "calls": sum(codes.values()),
        "calls_by_code": codes,
        "calls_per_s": round(sum(codes.values()) / span, 1),
        "sink_recorded_in_window_per_s": round(
            delta(m1, m0, "breakglass_audit_events_total", result="recorded") / span, 1
        ),
        "sink_recorded_total": int(delta(m2, m0, "breakglass_audit_events_total", result="recorded")),
        "sink_recorded_per_s_until_caught_up": round(total / (span + sink_drain), 1)
        if sink_drain is not None
        else None,
        "sink_drain_s": round(sink_drain, 2) if sink_drain is not None else None,
        "status_usage_drain_s": round(status_drain, 2) if status_drain is not None else None,
        "status_usage_missing": {k: expected[k] - seen[k] for k in expected if seen[k] != expected[k]},
        "sink_dropped": int(delta(m2, m0, "breakglass_audit_events_total", result="dropped")),
        "sink_ignored": int(delta(m2, m0, "breakglass_audit_events_total", result="ignored")),
        "sink_batches": int(handled),
        "sink_events_per_batch": round(total / handled, 1) if handled else None,
        "sink_batch_p50_ms": round(1000 * quantile(0.5, buckets(m0, hist), buckets(m2, hist)), 2),
        "sink_batch_p99_ms": round(1000 * quantile(0.99, buckets(m0, hist), buckets(m2, hist)), 2),
        "sink_batch_p50_bucket_ms": quantile_bucket(0.5, buckets(m0, hist), buckets(m2, hist)),
        "sink_batch_p99_bucket_ms": quantile_bucket(0.99, buckets(m0, hist), buckets(m2, hist)),
        "sink_batch_mean_ms": round(1000 * delta(m2, m0, f"{hist}_sum") / handled, 2) if handled else None,
        "sink_lag_gauge_s": value(m1, "breakglass_audit_sink_lag_seconds"),
        "apiserver_audit_events_in_window": int(delta(a1, a0, "apiserver_audit_event_total")),
        "apiserver_audit_events": int(delta(a2, a0, "apiserver_audit_event_total")),
        "apiserver_audit_webhook_errors": int(delta(a2, a0, "apiserver_audit_error_total", plugin="webhook")),
        "apiserver_audit_rejected": int(delta(a2, a0, "apiserver_audit_requests_rejected_total")),
        "operator_cpu_pct": round(100 * (cpu1[0] - cpu0[0]) / span, 1),
        "apiserver_cpu_pct": round(100 * (cpu1[1] - cpu0[1]) / span, 1),
    }


def raw_write_ceiling(session: Session, threads: int, seconds: float, size: int) -> dict:
    """ConfigMap replaces guarded by resourceVersion (what every ledger write is), `size` bytes of
    data each, one ConfigMap per thread, admin client."""
    core = kubernetes.client.CoreV1Api(client_for(session.cluster, "admin"))
    ns = "bench-raw"
    session.cluster.kubectl("create", "namespace", ns)
    blob = "x" * size

    def writer(i: int) -> int:
        name = f"raw-{i}"
        cm = core.create_namespaced_config_map(ns, {"metadata": {"name": name}, "data": {"blob": blob, "n": "0"}})
        rv, n = cm.metadata.resource_version, 0
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            body = {"metadata": {"name": name, "resourceVersion": rv}, "data": {"blob": blob, "n": str(n)}}
            rv = core.replace_namespaced_config_map(name, ns, body).metadata.resource_version
            n += 1
        return n

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(writer, range(threads)))
    return {"raw_configmap_updates_per_s": round(done / (time.monotonic() - t0), 1), "raw_configmap_bytes": size}


def event_list_template(grants: list[Grant], usernames: dict[str, str], events: int) -> str:
    """An audit.k8s.io/v1 EventList shaped like kube-apiserver's (Metadata level, ResponseComplete),
    `events` list calls spread over the grants; every auditID starts with @@ (made unique per POST)."""
    now = to_rfc3339(utcnow())
    items = []
    for k in range(events):
        g = grants[k % len(grants)]
        items.append(
            {
                "kind": "Event",
                "apiVersion": "audit.k8s.io/v1",
                "level": "Metadata",
                "auditID": f"@@-{k}",
                "stage": "ResponseComplete",
                "requestURI": g.path,
                "verb": "list",
                "user": {"username": usernames[g.uid], "groups": [GRANT_GROUP, "system:authenticated"]},
                "sourceIPs": ["127.0.0.1"],
                "userAgent": "bench/audit.py",
                "objectRef": {"resource": "pods", "namespace": g.ns, "apiVersion": "v1"},
                "responseStatus": {"metadata": {}, "code": 200},
                "requestReceivedTimestamp": now,
                "stageTimestamp": now,
            }
        )
    return json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items})


def synthetic(session: Session, grants: list[Grant], threads: int, seconds: float, events: int) -> dict:
    core = kubernetes.client.CoreV1Api(client_for(session.cluster, "admin"))
    usernames = {}
    for g in grants:
        cm = core.read_namespaced_config_map(api.ledger_name(g.uid), OPERATOR_NAMESPACE)
        usernames[g.uid] = entry_from_configmap({"data": cm.data, "metadata": {}})["username"]
    template = event_list_template(grants, usernames, events)
    ctx = ssl.create_default_context(cafile=session.certs.ca_file)
    ctx.load_cert_chain(session.client.cert_file, session.client.key_file)
    hist = "breakglass_audit_handling_seconds"
    m0 = operator_metrics(session.op)
    run = uuid.uuid4().hex[:8]
    start = threading.Barrier(threads)

    def poster(worker: int) -> tuple[list[float], dict[int, int]]:
        conn = http.client.HTTPSConnection("127.0.0.1", session.ports["https"], context=ctx, timeout=60)
        headers = {"Content-Type": "application/json"}
        times: list[float] = []
        codes: dict[int, int] = {}
        start.wait()
        stop_at, i = time.monotonic() + seconds, 0
        while time.monotonic() < stop_at:
            body = template.replace("@@", f"{run}-{worker}-{i}").encode()
            i += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/audit", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                code = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                code = 0
            times.append(time.perf_counter() - t0)
            codes[code] = codes.get(code, 0) + 1
        conn.close()
        return times, codes

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(poster, range(threads)))
    span = time.monotonic() - t0
    m1 = operator_metrics(session.op)
    times = [t for r in results for t in r[0]]
    codes: dict[str, int] = {}
    for _, per in results:
        for c, n in per.items():
            codes[str(c)] = codes.get(str(c), 0) + n
    ok = codes.get("200", 0)
    return {
        "threads": threads,
        "events_per_batch": events,
        "grants_per_batch": len(grants),
        "body_kb": round(len(template) / 1024, 1),
        "seconds": round(span, 2),
        "posts": len(times),
        "posts_by_code": codes,
        "batches_per_s": round(ok / span, 1),
        "events_per_s": round(ok * events / span, 1),
        "ledger_writes_per_s": round(ok * len(grants) / span, 1),
        "response_p50_ms": round(1000 * pct(times, 50), 2),
        "response_p99_ms": round(1000 * pct(times, 99), 2),
        "sink_recorded": int(
            value(m1, "breakglass_audit_events_total", result="recorded")
            - value(m0, "breakglass_audit_events_total", result="recorded")
        ),
        "sink_dropped": int(
            value(m1, "breakglass_audit_events_total", result="dropped")
            - value(m0, "breakglass_audit_events_total", result="dropped")
        ),
        "sink_handling_p50_ms": round(1000 * quantile(0.5, buckets(m0, hist), buckets(m1, hist)), 2),
        "sink_handling_p99_ms": round(1000 * quantile(0.99, buckets(m0, hist), buckets(m1, hist)), 2),
        "sink_handling_p99_bucket_ms": quantile_bucket(0.99, buckets(m0, hist), buckets(m1, hist)),
    }


def usage_records(op: Operator, grants: list[Grant]) -> list[tuple[int, dict]]:
    """(line number, record) of the grants' `used` and `used-unrecorded` records in the operator's
    audit log, in order."""
    uids, out = {g.uid for g in grants}, []
    with contextlib.suppress(OSError):
        for i, line in enumerate(op.audit_log.read_text().splitlines()):
            if '"used' in line and (rec := json.loads(line)).get("uid") in uids:
                out.append((i, rec))
    return out


def audit_log_lines(op: Operator) -> int:
    try:
        return op.audit_log.read_text().count("\n")
    except OSError:
        return 0


def completeness(records, first: dict[str, int], last: dict[str, int], lines: tuple[int, int]) -> dict:
    """How many of the actions seq first..last (per grant uid) have a `used` record (distinct seqs,
    repeats), how many have none, and what the used-unrecorded records written in audit log lines
    [lines) claim was lost (the sum of their counts)."""
    seen: dict[str, list[int]] = {uid: [] for uid in first}
    claimed = 0
    for i, rec in records:
        uid = rec["uid"]
        if rec["event"] == "used" and first[uid] <= rec.get("useSeq", 0) <= last[uid]:
            seen[uid].append(rec["useSeq"])
        elif rec["event"] == "used-unrecorded" and lines[0] <= i < lines[1]:
            claimed += int(rec.get("count", 0))
    actions = sum(last[u] - first[u] + 1 for u in first)
    distinct = sum(len(set(v)) for v in seen.values())
    return {
        "actions": actions,
        "used_records": sum(len(v) for v in seen.values()),
        "used_distinct": distinct,
        "used_repeated": sum(len(v) - len(set(v)) for v in seen.values()),
        "actions_without_used_record": actions - distinct,
        "used_unrecorded_claimed": claimed,
    }


def ledger_usage(core, grant: Grant) -> dict:
    cm = core.read_namespaced_config_map(api.ledger_name(grant.uid), OPERATOR_NAMESPACE)
    return entry_from_configmap({"data": cm.data, "metadata": {}}).get("usage") or {}


def leader_catch_up(session: Session, grants: list[Grant], timeout: float) -> tuple[float | None, dict[str, int]]:
    """Seconds until the leader's mark covers every action the sink stored (ledger usage.audited ==
    usage.requests for each grant; None if not within `timeout`), and usage.requests by grant uid."""
    core = kubernetes.client.CoreV1Api(client_for(session.cluster, "admin"))
    t0 = time.monotonic()
    while True:
        usage = {g.uid: ledger_usage(core, g) for g in grants}
        requests = {uid: int(u.get("requests", 0)) for uid, u in usage.items()}
        if all(int(u.get("audited", 0)) >= requests[uid] for uid, u in usage.items()):
            return round(time.monotonic() - t0, 2), requests
        if time.monotonic() - t0 > timeout:
            return None, requests
        time.sleep(0.25)


# ------------------------------------------------------------------ report
def table(r: dict) -> str:
    off, on, ld, syn = r["sink_off"], r["sink_on"], r["load"], r["synthetic"]
    rows = [
        ("per-call latency (sequential)", "sink off", "sink on", "difference"),
    ]
    for key, label in (
        ("kubectl_p50_ms", "kubectl get pods p50 ms"),
        ("kubectl_p99_ms", "kubectl get pods p99 ms"),
        ("raw_get_p50_ms", "raw HTTPS GET p50 ms"),
        ("raw_get_p99_ms", "raw HTTPS GET p99 ms"),
    ):
        rows.append((label, off[key], on[key], round(on[key] - off[key], 2)))
    out = [f"{a:<34} {b!s:>10} {c!s:>10} {d!s:>11}" for a, b, c, d in rows]
    out.append("")

    def trail(log: dict) -> str:
        return (
            f"{log['used_distinct']} of {log['actions']} actions, {log['used_repeated']} repeated, "
            f"{log['actions_without_used_record']} without; used-unrecorded claims {log['used_unrecorded_claimed']}"
        )

    raw = r["raw"]
    pairs = [
        (f"load: {ld['grants']} grants x {ld['window_s']} s, grant API calls/s", ld["calls_per_s"]),
        ("  calls made (by HTTP code)", f"{ld['calls']} {ld['calls_by_code']}"),
        ("  sink recorded events/s in window", ld["sink_recorded_in_window_per_s"]),
        ("  sink recorded events/s until caught up", ld["sink_recorded_per_s_until_caught_up"]),
        ("  sink drain after load (s)", ld["sink_drain_s"]),
        ("  status.usage drain after load (s)", ld["status_usage_drain_s"]),
        ("  status.usage short of calls", ld["status_usage_missing"] or "none"),
        ("  sink batches / events per batch", f"{ld['sink_batches']} / {ld['sink_events_per_batch']}"),
        (
            "  sink handling per batch p50 / p99 ms",
            f"{ld['sink_batch_p50_ms']} / {ld['sink_batch_p99_ms']} (buckets "
            f"{ld['sink_batch_p50_bucket_ms']} / {ld['sink_batch_p99_bucket_ms']}; mean {ld['sink_batch_mean_ms']})",
        ),
        ("  sink dropped", ld["sink_dropped"]),
        (
            "  apiserver audit events / webhook errors",
            f"{ld['apiserver_audit_events']} / {ld['apiserver_audit_webhook_errors']}",
        ),
        ("  CPU operator / kube-apiserver %", f"{ld['operator_cpu_pct']} / {ld['apiserver_cpu_pct']}"),
        ("  leader mark caught up (s after drain)", ld["leader_mark_caught_up_s_after_drain"]),
        ("  audit log `used` records", trail(ld["audit_log"])),
        (
            f"raw ConfigMap replaces/s ({raw['raw_configmap_bytes']} B, {syn['threads']} threads)",
            raw["raw_configmap_updates_per_s"],
        ),
        (
            f"synthetic: {syn['events_per_batch']} events/POST, {syn['threads']} threads, batches/s",
            syn["batches_per_s"],
        ),
        ("  events/s", syn["events_per_s"]),
        ("  ledger writes/s (vs raw ceiling)", f"{syn['ledger_writes_per_s']} ({r['synthetic_writes_vs_raw']})"),
        ("  response p50 / p99 ms", f"{syn['response_p50_ms']} / {syn['response_p99_ms']}"),
        ("  POSTs by HTTP code / dropped", f"{syn['posts_by_code']} / {syn['sink_dropped']}"),
        ("  leader mark caught up (s after)", syn["leader_mark_caught_up_s_after"]),
        ("  audit log `used` records", trail(syn["audit_log"])),
    ]
    out += [f"{a:<48} {b}" for a, b in pairs]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=5, help="concurrent grant users in the load phase")
    ap.add_argument("--window", type=float, default=20.0, help="seconds of load")
    ap.add_argument("--calls", type=int, default=100, help="sequential calls per latency series")
    ap.add_argument("--threads", type=int, default=4, help="threads of the synthetic and raw-write phases")
    ap.add_argument("--synthetic", type=float, default=10.0, help="seconds of synthetic POSTs")
    ap.add_argument("--events", type=int, default=100, help="events per synthetic EventList")
    ap.add_argument("--raw-seconds", type=float, default=5.0)
    ap.add_argument("--drain-timeout", type=float, default=60.0)
    args = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="breakglass-bench-audit-"))
    r: dict = {"date": dt.date.today().isoformat(), "cores": os.cpu_count()}
    started = time.monotonic()

    with Session(work / "off", audit=False) as off:
        (grant,) = issue_grants(off.cluster, ["lat"], off.work)
        r["sink_off"] = latency(off, grant, args.calls)
    with Session(work / "on", audit=True) as on:
        grants = issue_grants(on.cluster, ["lat"] + [f"u{i}" for i in range(args.users)], on.work)
        r["sink_on"] = latency(on, grants[0], args.calls)
        time.sleep(3)  # the latency grant's last batch is in before the load's counters are read
        load_grants = grants[1:]
        r["load"] = load(on, load_grants, args.window, args.drain_timeout)
        r["load"]["leader_mark_caught_up_s_after_drain"], after_load = leader_catch_up(on, load_grants, 30)
        load_lines = audit_log_lines(on.op)
        ledger = kubernetes.client.CoreV1Api(client_for(on.cluster, "admin")).read_namespaced_config_map(
            api.ledger_name(load_grants[0].uid), OPERATOR_NAMESPACE
        )
        size = sum(len(v) for v in (ledger.data or {}).values())
        r["raw"] = raw_write_ceiling(on, args.threads, args.raw_seconds, size)
        r["synthetic"] = synthetic(on, load_grants, args.threads, args.synthetic, args.events)
        r["synthetic"]["leader_mark_caught_up_s_after"], after_syn = leader_catch_up(on, load_grants, 30)
        r["synthetic_writes_vs_raw"] = round(
            r["synthetic"]["ledger_writes_per_s"] / r["raw"]["raw_configmap_updates_per_s"], 3
        )
        records = usage_records(on.op, load_grants)
        ones = {g.uid: 1 for g in load_grants}
        r["load"]["audit_log"] = completeness(records, ones, after_load, (0, load_lines))
        first_syn = {uid: n + 1 for uid, n in after_load.items()}
        r["synthetic"]["audit_log"] = completeness(records, first_syn, after_syn, (load_lines, 1 << 62))
    r["latency_added_ms"] = {
        k: round(r["sink_on"][k] - r["sink_off"][k], 2)
        for k in ("kubectl_p50_ms", "kubectl_p99_ms", "raw_get_p50_ms", "raw_get_p99_ms")
    }
    r["run_s"] = round(time.monotonic() - started, 1)
    print(table(r))
    print(json.dumps(r, indent=2))
    (ROOT / "bench" / "last-audit-results.json").write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
