"""(f) The audit sink under faults: kube-apiserver's audit webhook reaches the replicas through the
HTTPS load balancer. The leader is SIGKILLed while a grant is in use, then both replicas are down
for a while: no acknowledged use is lost (a batch is acknowledged only once it is in the ledger;
kube-apiserver resends the others), none is counted twice, every use gets its `used` audit record,
and cluster traffic never waits for the sink."""

from __future__ import annotations

import collections
import time

from harness import secret_token, wait_for

from tests.e2e.scenario import policy, request, token_secret, unique
from tests.e2e.tokens_helpers import BearerApi

from .helpers import TokenWatcher, assert_clean, check_invariants, report, retrying, wait_phase

ADMIN_CALL_LIMIT = 2.0  # seconds: an admin call while no sink answers (it is never audited)


def _use(api: BearerApi, ns: str, seconds: float, codes: collections.Counter, during=None) -> None:
    started, done = time.monotonic(), False
    while time.monotonic() - started < seconds:
        codes[api.call("GET", f"/api/v1/namespaces/{ns}/serviceaccounts")] += 1
        if during and not done and time.monotonic() - started > seconds / 3:
            during()
            done = True
        time.sleep(0.1)


def test_no_acknowledged_use_is_lost_or_doubled_when_replicas_die_and_traffic_never_waits(env):
    ns = env.cluster.new_namespace("sink")
    pol = unique("sink")
    env.cluster.apply(policy(pol, requiredApprovals=0))
    with TokenWatcher(env.admin) as watcher:
        retrying(lambda: env.alice.create_request(request("used", ns, pol, duration="10m")), 30, "request admitted")
        obj = wait_phase(env.admin, ns, "used", "Active", 30)
        uid = obj["metadata"]["uid"]
        api = BearerApi(env.cluster, secret_token(token_secret(env.cluster, "used", ns)))
        codes: collections.Counter = collections.Counter()

        _use(api, ns, 10, codes, during=lambda: env.kill9(env.wait_leader(10)))  # restarted by the supervisor

        for r in env.replicas:  # no sink at all for a while
            env.kill9(r, restart=False)
        slowest = 0.0
        started = time.monotonic()
        while time.monotonic() - started < 6:
            t = time.monotonic()
            env.admin.requests(ns)
            slowest = max(slowest, time.monotonic() - t)
            codes[api.call("GET", f"/api/v1/namespaces/{ns}/serviceaccounts")] += 1  # kube-apiserver's auth cache
            time.sleep(0.2)
        for r in env.replicas:
            env.start_replica(r)
        for r in env.replicas:
            env.wait_serving(r, 90)
        _use(api, ns, 3, codes)

        made = sum(n for code, n in codes.items() if code != 401)  # a 401 has no grant identity: not audited
        t0 = time.monotonic()

        def counted():
            usage = (env.admin.request(ns, "used").get("status") or {}).get("usage") or {}
            return usage if usage.get("requests", 0) >= made else None

        usage = wait_for(counted, 150, f"status.usage.requests to reach {made}", interval=1)
        drained = time.monotonic() - t0
        records = [r for r in env.audit_records() if r.get("event") == "used" and r.get("uid") == uid]
        check = check_invariants(env, [ns], watcher, "(f) audit sink")
    report(
        f"(f) {made} grant calls ({dict(codes)}) with the leader SIGKILLed and both replicas down 6 s: "
        f"all counted {drained:.1f}s after the last call; admin calls took at most {slowest:.2f}s meanwhile"
    )
    assert usage["requests"] == made, (usage["requests"], made)  # none lost, none counted twice
    assert {r["useSeq"] for r in records} == set(range(1, made + 1))
    assert slowest < ADMIN_CALL_LIMIT, slowest
    assert_clean(check, "(f)")
