"""(c) kube-apiserver restarted mid-issue, then etcd paused for 10 s (SIGSTOP/SIGCONT), with grants
being approved, revoked and live around both faults."""

from __future__ import annotations

import concurrent.futures
import time

from harness import wait_for

from tests.e2e.scenario import policy, request, unique

from .helpers import (
    DeadTokenProber,
    TokenWatcher,
    assert_clean,
    check_invariants,
    report,
    retrying,
    wait_phase,
)

ETCD_PAUSE = 10.0


def _file_and_wait_pending(env, ns, pol, names):
    for n in names:
        retrying(lambda n=n: env.alice.create_request(request(n, ns, pol, duration="10m")), 60, f"request {n}")
    for n in names:
        wait_phase(env.admin, ns, n, "Pending", 60)


def _approve_all(env, ns, names):
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        list(pool.map(lambda n: retrying(lambda: env.bob.approve(ns, n), 90, f"approval of {n}"), names))


def _first_active(env, ns, names, t0, timeout=120) -> float:
    wait_for(
        lambda: any((env.admin.request(ns, n) or {}).get("status", {}).get("phase") == "Active" for n in names),
        timeout,
        "a request to become Active",
        interval=0.2,
    )
    return time.monotonic() - t0


def test_apiserver_restart_mid_issue_and_etcd_pause(env):
    ns = env.cluster.new_namespace("ctlplane")
    pol = unique("ctlplane")
    env.cluster.apply(policy(pol, requiredApprovals=1))
    first = [f"api{i:02d}" for i in range(10)]
    second = [f"etcd{i:02d}" for i in range(10)]
    with TokenWatcher(env.admin) as watcher, DeadTokenProber(env, watcher) as prober:
        # --- kube-apiserver restart while the approved requests are being issued
        _file_and_wait_pending(env, ns, pol, first)
        _approve_all(env, ns, first)
        wait_for(lambda: env.admin.ledger(), 30, "the first ledger entry (issuing has begun)", interval=0.05)
        issued_before = sum(1 for e in env.admin.ledger().values() if e["state"] == "Active")
        t0 = time.monotonic()
        api_down = env.restart_apiserver()
        for n in first:
            wait_phase(env.admin, ns, n, "Active", 120)
        all_active_api = time.monotonic() - t0
        report(
            f"(c) kube-apiserver restarted with {issued_before}/10 grants Active: ready again after {api_down:.1f}s; "
            f"all 10 Active {all_active_api:.1f}s after the restart began"
        )
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            list(pool.map(lambda n: retrying(lambda: env.alice.revoke(ns, n), 60, f"revoke {n}"), first[:5]))
        for n in first[:5]:
            wait_phase(env.admin, ns, n, "Revoked", 60)

        # --- etcd paused for 10 s right after the approvals of ten more requests
        _file_and_wait_pending(env, ns, pol, second)
        _approve_all(env, ns, second)
        live_before = [n for n in first[5:]]
        t0 = time.monotonic()
        env.pause("etcd", ETCD_PAUSE)
        t_active = (
            _first_active(env, ns, second + ["never"], t0)
            if not all((env.admin.request(ns, n) or {}).get("status", {}).get("phase") == "Active" for n in second)
            else 0.0
        )
        for n in second:
            wait_phase(env.admin, ns, n, "Active", 120)
        all_active_etcd = time.monotonic() - t0
        report(
            f"(c) etcd paused {ETCD_PAUSE:.0f}s: all 10 new grants Active {all_active_etcd:.1f}s after the pause "
            f"began (first {t_active:.1f}s); replica exits on their own {[r.unexpected_exits for r in env.replicas]}"
        )
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            list(pool.map(lambda n: retrying(lambda: env.alice.revoke(ns, n), 60, f"revoke {n}"), second[:5]))
        for n in second[:5]:
            wait_phase(env.admin, ns, n, "Revoked", 60)
        for n in live_before + second[5:]:
            wait_phase(env.admin, ns, n, "Active", 5)
        for r in env.replicas:
            env.wait_serving(r, 90)
        check = check_invariants(env, [ns], watcher, "(c) apiserver restart + etcd pause")
    report(
        f"(c) dead-token probes {prober.probes} ({prober.errors} rounds without an answer), authenticated "
        f"{len(prober.violations)}; token watcher reconnects {watcher.reconnects}"
    )
    check.violations += prober.violations
    assert_clean(check, "(c)")
