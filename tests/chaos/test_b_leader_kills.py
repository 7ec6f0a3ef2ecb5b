"""(b) SIGKILL the leader at random moments (once it leads) during 40 short grants; each killed
replica is restarted at once and comes back as a follower."""

from __future__ import annotations

import random
import threading
import time

from harness import wait_for

from tests.e2e.scenario import policy, request, unique

from .helpers import (
    DeadTokenProber,
    TokenWatcher,
    assert_clean,
    check_invariants,
    now_utc,
    parse_time,
    report,
    retrying,
)

N_REQUESTS = 40


def test_sigkill_the_leader_at_random_moments_during_forty_short_grants(env):
    ns = env.cluster.new_namespace("kills")
    pol = unique("kills")
    env.cluster.apply(policy(pol, requiredApprovals=1))
    rng = random.Random(5)
    names = [f"g{i:02d}" for i in range(N_REQUESTS)]
    durations = {n: f"{rng.randint(8, 20)}s" for n in names}
    revoke = set(rng.sample(names, 8))
    submitted = threading.Event()
    stop = threading.Event()
    kills: list[tuple[str, float]] = []
    max_overdue = [0.0]

    def killer():
        krng = random.Random(9)
        while not stop.is_set():
            try:
                lead = env.wait_leader(40)
            except TimeoutError:
                continue
            if stop.wait(krng.uniform(0.3, 5.0)):  # deliberate: a random moment of its leadership
                return
            if env.leader() is lead:
                env.kill9(lead, restart=True)
                kills.append((lead.name, time.monotonic()))
            if submitted.is_set() and len(kills) >= 4:
                return

    def monitor():  # how far past exp an Active status lagged during the kills (leaderless windows)
        while not stop.wait(1.0):
            try:
                for r in env.admin.requests(ns):
                    st = r.get("status") or {}
                    if st.get("phase") == "Active" and st.get("expiresAt"):
                        max_overdue[0] = max(max_overdue[0], (now_utc() - parse_time(st["expiresAt"])).total_seconds())
            except Exception:  # noqa: BLE001
                pass

    with TokenWatcher(env.admin) as watcher, DeadTokenProber(env, watcher) as prober:
        threads = [threading.Thread(target=killer, daemon=True), threading.Thread(target=monitor, daemon=True)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        try:
            for i, n in enumerate(names):
                retrying(
                    lambda n=n: env.alice.create_request(request(n, ns, pol, duration=durations[n])),
                    60,
                    f"request {n} admitted",
                )
                retrying(lambda n=n: env.bob.approve(ns, n), 60, f"approval of {n}")
                if i >= 3 and names[i - 3] in revoke:
                    retrying(lambda m=names[i - 3]: env.alice.revoke(ns, m), 60, f"revocation of {names[i - 3]}")
            submitted.set()
            threads[0].join(120)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        loop_s = time.monotonic() - t0
        for r in env.replicas:
            if not r.alive:
                env.start_replica(r)
        for r in env.replicas:
            env.wait_serving(r, 60)
        wait_for(
            lambda: all(
                (r.get("status") or {}).get("phase") in ("Expired", "Revoked", "Denied", "Failed")
                for r in env.admin.requests(ns)
            ),
            120,
            "every short grant to end",
            interval=1,
        )
        check = check_invariants(env, [ns], watcher, "(b) leader SIGKILL loop", all_terminal=True)
    phases = [(r.get("status") or {}).get("phase") for r in env.admin.requests(ns)]
    tally = {p: phases.count(p) for p in set(phases)}
    report(
        f"(b) {len(kills)} leader SIGKILLs in {loop_s:.0f}s ({[k[0] for k in kills]}); replica restarts "
        f"{[r.restarts for r in env.replicas]}, exits on their own {[r.unexpected_exits for r in env.replicas]}; "
        f"final phases {tally}; max Active-past-exp lag during the "
        f"kills {max_overdue[0]:.1f}s; dead-token probes {prober.probes} ({prober.errors} rounds failed), "
        f"authenticated {len(prober.violations)}"
    )
    assert len(kills) >= 3, kills
    check.violations += prober.violations
    assert_clean(check, "(b)")
