"""Exactly one token per request, whatever crashes: SIGKILL the operator in a loop while approving."""

from __future__ import annotations

import base64
import json
import random
import threading
import time

import yaml
from harness import wait_for

from .scenario import approval, policy, request, unique


def test_sigkill_in_a_loop_during_approvals_leaves_exactly_one_secret_and_jti_per_request(cluster, running_operator):
    ns = cluster.new_namespace("crash")
    pol = unique("crash")
    cluster.apply(policy(pol))
    names = [f"r{i:02d}" for i in range(20)]
    cluster.apply([request(n, ns, pol) for n in names], user="alice", verb="create")
    wait_for(
        lambda: (
            all((r.get("status") or {}).get("phase") == "Pending" for r in cluster.list("breakglassrequests", ns))
            and len(cluster.list("breakglassrequests", ns)) == 20
        ),
        30,
        "20 Pending requests",
    )

    stop = threading.Event()
    kills = []

    def killer():
        rng = random.Random(7)
        while not stop.is_set():
            time.sleep(rng.uniform(1.5, 4.0))  # startup takes ~1.5 s; kill mid-work
            running_operator.kill9()
            kills.append(time.monotonic())
            time.sleep(rng.uniform(0.05, 0.3))
            running_operator.start(wait=False)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        # Approvals go through the webhook, which may be down mid-kill: retry until admitted.
        pending = list(names)
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            name = pending[0]
            out = cluster.kubectl(
                "create", "-f", "-", user="bob", check=False, input=yaml.safe_dump(approval(name, ns))
            )
            if out.returncode == 0:
                pending.pop(0)
            else:
                time.sleep(0.1)
        assert not pending, f"approvals never admitted for {pending}"
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
    assert len(kills) >= 3
    if running_operator.proc.poll() is not None:
        running_operator.start(wait=False)
    running_operator.wait_ready()

    def settled():
        reqs = cluster.list("breakglassrequests", ns)
        return all((r.get("status") or {}).get("phase") == "Active" for r in reqs) and reqs

    reqs = wait_for(settled, 60, "all 20 requests Active after the kills")

    secrets = cluster.list("secrets", "breakglass-system", selector=f"breakglass.dev/request-namespace={ns}")
    assert sorted(s["metadata"]["name"] for s in secrets) == sorted(
        f"breakglass-token-{r['metadata']['uid']}" for r in reqs
    )
    ledger = [
        c
        for c in cluster.list("configmaps", "breakglass-system", selector="breakglass.dev/ledger=grant")
        if json.loads(c["data"]["grant.json"])["request"]["namespace"] == ns
    ]
    assert len(ledger) == 20 and {json.loads(c["data"]["grant.json"])["state"] for c in ledger} == {"Active"}
    by_name = {s["metadata"]["name"]: s for s in secrets}
    jtis = set()
    for r in reqs:
        st = r["status"]
        secret = by_name[st["secretRef"]["name"]]
        token = base64.b64decode(secret["data"]["token"]).decode()
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert claims["jti"] == st["tokenId"] == secret["metadata"]["annotations"]["breakglass.dev/token-id"]
        jtis.add(claims["jti"])
    assert len(jtis) == 20
