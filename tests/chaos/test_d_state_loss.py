"""(d) State loss while grants are live: ConfigMap breakglass-revocations and Secret
breakglass-signing-keys are deleted. Revoked tokens must stay refused throughout (and after both
replicas restart); what the operator does about the lost keyring is measured and reported, and its
alarm is asserted: every live grant signed by the lost key is revoked with reason SigningKeyLost and
a SigningKeyLost Event, and a replica counts breakglass_signing_keyring_recreated_total."""

from __future__ import annotations

import base64
import json
import time

from harness import wait_for

from tests.e2e.scenario import policy, request, unique
from tests.e2e.tokens_helpers import with_token

from .helpers import (
    OPERATOR_NS,
    DeadTokenProber,
    TokenWatcher,
    assert_clean,
    check_invariants,
    report,
    retrying,
    wait_phase,
)

ALARM_METRICS = (
    "breakglass_signing_keyring_recreated_total",
    "breakglass_grants_signing_key_lost",
)


def _kids(env) -> list[str]:
    secret = env.admin.exists("Secret", OPERATOR_NS, "breakglass-signing-keys")
    if secret is None:
        return []
    ring = json.loads(base64.b64decode(secret["data"]["keyring.json"]))
    return [k.get("kid") for k in ring.get("keys", [])]


def _revocation_view(env) -> set[str] | None:
    cm = env.admin.exists("ConfigMap", OPERATOR_NS, "breakglass-revocations")
    if cm is None:
        return None
    return {e["jti"] for e in json.loads((cm.get("data") or {}).get("revocations.json") or "[]")}


def test_revocation_view_and_keyring_deleted_while_grants_are_live(env):
    ns = env.cluster.new_namespace("loss")
    pol = unique("loss")
    env.cluster.apply(policy(pol, requiredApprovals=0))
    names = [f"l{i}" for i in range(8)]
    with TokenWatcher(env.admin) as watcher, DeadTokenProber(env, watcher, probes_per_token=1000) as prober:
        for n in names:
            retrying(lambda n=n: env.alice.create_request(request(n, ns, pol, duration="10m")), 30, f"request {n}")
        reqs = {n: wait_phase(env.admin, ns, n, "Active", 60) for n in names}
        tokens = {
            n: wait_for(
                lambda n=n: watcher.token_for(reqs[n]["metadata"]["uid"], reqs[n]["status"]["tokenId"]),
                30,
                f"{n}'s token",
            )
            for n in names
        }
        for n in names:
            wait_for(lambda n=n: env.authenticated(tokens[n]), 10, f"{n}'s token to authenticate")
        revoked, live = names[:4], names[4:]
        for n in revoked:
            retrying(lambda n=n: env.alice.revoke(ns, n), 30, f"revoke {n}")
        for n in revoked:
            wait_phase(env.admin, ns, n, "Revoked", 30)
        revoked_jtis = {reqs[n]["status"]["tokenId"] for n in revoked}
        wait_for(lambda: revoked_jtis <= (_revocation_view(env) or set()), 20, "the revocation view")
        old_kids = _kids(env)

        # --- the revocation view goes
        env.admin.core.delete_namespaced_config_map("breakglass-revocations", OPERATOR_NS)
        t0 = time.monotonic()
        for n in revoked:
            assert not env.authenticated(tokens[n]), f"{n}: revoked token authenticates without the revocation view"
        try:
            wait_for(
                lambda: revoked_jtis <= (_revocation_view(env) or set()),
                30,
                "the revocation view to be rebuilt",
                interval=0.25,
            )
            report(
                f"(d) ConfigMap breakglass-revocations deleted: rebuilt with all {len(revoked_jtis)} revoked jtis "
                f"after {time.monotonic() - t0:.1f}s"
            )
        except TimeoutError:
            report(
                f"(d) ConfigMap breakglass-revocations deleted: NOT rebuilt within 30s (now {_revocation_view(env)})"
            )
        for n in live:
            answer = env.token_review(tokens[n])
            assert answer.get("status", {}).get("authenticated"), (
                f"{n}: a live token stopped working after the revocation view was deleted: {answer}"
            )

        # --- the signing keyring goes
        env.admin.core.delete_namespaced_secret("breakglass-signing-keys", OPERATOR_NS)
        t1 = time.monotonic()
        new_kids = wait_for(lambda: (k := _kids(env)) and k, 30, "a keyring Secret again", interval=0.25)
        t_new = time.monotonic() - t1
        for n in revoked:
            assert not env.authenticated(tokens[n]), f"{n}: revoked token authenticates after the keyring was deleted"

        def live_settled():
            phases = {n: (env.admin.request(ns, n) or {}).get("status", {}) for n in live}
            return phases if all(p.get("phase") != "Active" for p in phases.values()) else None

        try:
            after = wait_for(live_settled, 30, "the live grants whose key was lost to leave Active", interval=0.5)
            t_ended = time.monotonic() - t1
        except TimeoutError:
            after = {n: (env.admin.request(ns, n) or {}).get("status", {}) for n in live}
            t_ended = None
        live_auth = {n: env.authenticated(tokens[n]) for n in live}
        live_kubectl = {
            n: with_token(env.cluster, tokens[n], "get", "serviceaccounts", "-n", ns).returncode == 0 for n in live
        }
        metrics = {r.name: {m: r.metric(m) for m in ALARM_METRICS if m in r.metric_names()} for r in env.replicas}
        events = sorted(
            {
                (e.reason, (e.message or "")[:90])
                for e in env.admin.core.list_namespaced_event(ns).items
                if e.involved_object.name in live and e.reason not in ("Requested", "Approved", "Issued")
            }
        )
        report(
            f"(d) Secret breakglass-signing-keys deleted: a new keyring exists after {t_new:.1f}s "
            f"(kids {old_kids} -> {new_kids}); live grants {live} then: "
            f"{ {n: (s.get('phase'), s.get('conditions', [{}])[-1].get('reason')) for n, s in after.items()} } "
            f"{f'after {t_ended:.1f}s' if t_ended is not None else '(still Active after 30s)'}; their tokens "
            f"authenticate: /authenticate {live_auth}, kube-apiserver {live_kubectl}"
        )
        report(f"(d) alarm metrics per replica: {metrics}; Events on the live grants: {events}")
        # --- both replicas restart (rolling, graceful): revoked tokens stay refused
        for r in list(env.replicas):
            env.terminate(r, restart=True)
            env.wait_serving(r, 90)
        env.wait_leader(30)
        for n in revoked:
            assert not env.authenticated(tokens[n]), f"{n}: revoked token authenticates after the restarts"
        # --- recovery: a new request works with the new key
        retrying(lambda: env.alice.create_request(request("after-loss", ns, pol, duration="10m")), 30, "new request")
        fresh = wait_phase(env.admin, ns, "after-loss", "Active", 60)
        fresh_token = wait_for(
            lambda: watcher.token_for(fresh["metadata"]["uid"], fresh["status"]["tokenId"]), 30, "the new token"
        )
        assert fresh["status"]["keyId"] in _kids(env)
        wait_for(lambda: env.authenticated(fresh_token), 10, "the new token to authenticate")
        check = check_invariants(env, [ns], watcher, "(d) revocation view + keyring deleted")
    report(f"(d) dead-token probes {prober.probes}, authenticated {len(prober.violations)}")
    check.violations += prober.violations
    for n, status in after.items():
        revoked_cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Revoked"), {})
        if status.get("phase") != "Revoked" or revoked_cond.get("reason") != "SigningKeyLost":
            check.violations.append(f"{n}: not revoked SigningKeyLost after the keyring loss: {status.get('phase')}")
    reasons = {}
    for e in env.admin.core.list_namespaced_event(ns).items:
        reasons.setdefault(e.involved_object.name, set()).add(e.reason)
    for n in live:
        if "SigningKeyLost" not in reasons.get(n, set()):
            check.violations.append(f"{n}: no SigningKeyLost Event (reasons {sorted(reasons.get(n, set()))})")
    if not any(values.get("breakglass_signing_keyring_recreated_total") for values in metrics.values()):
        check.violations.append(f"no replica counted breakglass_signing_keyring_recreated_total: {metrics}")
    assert_clean(check, "(d)")
