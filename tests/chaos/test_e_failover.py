"""(e) Leader failover time: SIGKILL the leader, and stop it gracefully (SIGTERM, lease released).

Measured from the signal: until the other replica's breakglass_leader is 1, and until a request
created right after the signal is Active (SIGKILL <= 15 s, graceful <= 2 s)."""

from __future__ import annotations

import time

from harness import wait_for

from tests.e2e.scenario import policy, request, unique

from .helpers import (
    TokenWatcher,
    assert_clean,
    check_invariants,
    report,
    retrying,
    wait_phase,
)

SIGKILL_LIMIT, GRACEFUL_LIMIT = 15.0, 2.0


def _failover(env, ns, pol, how: str, name: str) -> tuple[float, float, float | None]:
    lead = env.wait_leader(30)
    other = next(r for r in env.replicas if r is not lead)
    env.wait_serving(other, 60)
    took = None
    if how == "SIGKILL":
        t0 = env.kill9(lead, restart=False)
    else:
        t0, took = env.terminate(lead, restart=False)
    retrying(lambda: env.alice.create_request(request(name, ns, pol, duration="10m")), 30, f"request {name} admitted")
    wait_for(lambda: other.metric("breakglass_leader") == 1, 60, f"{other.name} to lead", interval=0.05)
    t_leader = time.monotonic() - t0
    wait_phase(env.admin, ns, name, "Active", 60)
    t_active = time.monotonic() - t0
    env.start_replica(lead)
    env.wait_serving(lead, 60)
    return t_leader, t_active, took


def test_leader_failover_after_sigkill_and_graceful_stop(env):
    ns = env.cluster.new_namespace("failover")
    pol = unique("failover")
    env.cluster.apply(policy(pol, requiredApprovals=0))
    with TokenWatcher(env.admin) as watcher:
        retrying(lambda: env.alice.create_request(request("warm", ns, pol)), 30, "first request")
        wait_phase(env.admin, ns, "warm", "Active", 30)
        kills, graceful = [], []
        for i in range(2):
            kills.append(_failover(env, ns, pol, "SIGKILL", f"after-kill-{i}"))
            report(
                f"(e) SIGKILL leader -> other replica leads after {kills[-1][0]:.2f}s, "
                f"new request Active after {kills[-1][1]:.2f}s (limit {SIGKILL_LIMIT:.0f}s)"
            )
        for i in range(2):
            graceful.append(_failover(env, ns, pol, "SIGTERM", f"after-stop-{i}"))
            report(
                f"(e) graceful SIGTERM -> leader shut down in {graceful[-1][2]:.2f}s; other replica leads after "
                f"{graceful[-1][0]:.2f}s, new request Active after {graceful[-1][1]:.2f}s "
                f"(limit {GRACEFUL_LIMIT:.0f}s)"
            )
        check = check_invariants(env, [ns], watcher, "(e) failover")
    assert_clean(check, "(e)")
    assert all(t_leader <= SIGKILL_LIMIT and t_active <= SIGKILL_LIMIT for t_leader, t_active, _ in kills), kills
    assert all(t_leader <= GRACEFUL_LIMIT and t_active <= GRACEFUL_LIMIT for t_leader, t_active, _ in graceful), (
        graceful
    )
