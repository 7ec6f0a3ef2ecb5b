"""(a) Two replicas; 30 requests approved and revoked 0-0.3 s apart."""

from __future__ import annotations

import concurrent.futures
import random
import time

from harness import wait_for

from tests.e2e.scenario import policy, request, unique

from .helpers import TokenWatcher, assert_clean, check_invariants, report, retrying


def test_thirty_requests_approved_and_revoked_moments_apart(env):
    ns = env.cluster.new_namespace("race")
    pol = unique("race")
    env.cluster.apply(policy(pol, requiredApprovals=1))
    names = [f"r{i:02d}" for i in range(30)]
    rng = random.Random(11)
    gaps = {n: rng.uniform(0.0, 0.3) for n in names}
    with TokenWatcher(env.admin) as watcher:
        for n in names:
            retrying(lambda n=n: env.alice.create_request(request(n, ns, pol)), 30, f"request {n} admitted")
        wait_for(
            lambda: (
                len(reqs := env.admin.requests(ns)) == 30
                and all((r.get("status") or {}).get("phase") == "Pending" for r in reqs)
            ),
            60,
            "30 Pending requests",
            interval=0.5,
        )

        def race(n: str) -> None:
            retrying(lambda: env.bob.approve(ns, n), 30, f"approval of {n}")
            time.sleep(gaps[n])  # deliberate: the approve-to-revoke gap of the scenario
            retrying(lambda: env.alice.revoke(ns, n), 30, f"revocation of {n}")

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            list(pool.map(race, names))
        check = check_invariants(env, [ns], watcher, "(a) approve/revoke race, 2 replicas", all_terminal=True)
    phases = [(r.get("status") or {}).get("phase") for r in env.admin.requests(ns)]
    tally = {p: phases.count(p) for p in set(phases)}
    report(
        f"(a) final phases: {tally}; "
        f"lb webhook connections per replica {dict(env.lb_webhook.connections)}, "
        f"TokenReview connections {dict(env.lb_https.connections)}"
    )
    assert set(phases) == {"Revoked"}, phases
    assert_clean(check, "(a)")
