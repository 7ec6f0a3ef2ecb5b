"""The demo's incident-gated story (README "Incident-gated access", "Extending an active grant"), on a
real Alertmanager (Debian's 0.25, from `hack/monitoring.sh install`): a gated policy; alice's request
waits (AlertGate AlertNotFiring); the alert fires and approves it (AlertFiring, the alert in status);
alice extends it and bob approves the extension; the alert resolves and the grant is revoked
IncidentResolved after the policy's 5 s grace. Waits are polls with deadlines."""

from __future__ import annotations

import json
import subprocess
import time

import alertmanager
import yaml
from demo_common import DIM, RESET, kb, phase, show, step
from harness import wait_for

POLICY, REQUEST, NS = "prod-db-incident", "pg-down", "team-db"
LABELS = {"alertname": "PostgresDown", "namespace": NS}
GRACE = 5  # seconds: the policy's resolveGrace


class Alertmanager(alertmanager.Alertmanager):
    """The shared Alertmanager (hack/alertmanager.py), plus what the demo shows with amtool."""

    def post(self, labels: dict, ends_in: float, annotations: dict | None = None) -> str:
        return super().post(labels, ends_in, annotations or {"summary": "primary database of team-db is down"})

    def amtool_query(self) -> str:
        cmd = [str(self.bin / "amtool"), f"--alertmanager.url={self.url}", "alert", "query", "alertname=PostgresDown"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        show(f"amtool --alertmanager.url={self.url} alert query alertname=PostgresDown", proc.stdout + proc.stderr)
        return proc.stdout


def gated_policy() -> dict:
    return {
        "apiVersion": "breakglass.dev/v1alpha1",
        "kind": "BreakGlassPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "requesters": {"groups": ["sre"]},
            "approvers": {"groups": ["sre-leads"]},
            "requiredApprovals": 1,
            "allowedNamespaces": [NS],
            "allowedClusterRoles": ["view", "edit"],
            "maxDuration": "1h",
            "autoApprove": {
                "whenAlertFiring": {"matchers": LABELS},
                "revokeOnResolve": True,
                "resolveGrace": f"{GRACE}s",
            },
            "extension": {"allowed": True, "requiredApprovals": 1, "maxTotal": "1h"},
        },
    }


def run(cluster, op, am: Alertmanager, n: int) -> int:
    """Steps n, n+1, ...; returns the next step number."""
    step(n, f"An admin adds {POLICY}: while PostgresDown fires for team-db the alert itself approves sre requests")
    manifest = yaml.safe_dump(gated_policy(), sort_keys=False)
    show("kubectl apply -f - <<EOF", manifest + "EOF")
    cluster.apply(manifest)
    wait_for(lambda: _condition(cluster.get("bgp", POLICY), "Ready").get("status") == "True", 10, "policy Ready")
    show(f"kubectl get bgp {POLICY}", cluster.kubectl("get", "bgp", POLICY).stdout)

    step(n + 1, "alice files a request under it; nothing fires yet, so it waits like any other (people can approve)")
    kb(cluster, "alice", "-n", NS, "request", "--policy", POLICY, "--name", REQUEST, "--reason",
       "Postgres primary unreachable, need to look at the pods", "--ticket", "INC-4343", "--duration", "30m",
       "--namespace-access", NS, "--role", "edit")  # fmt: skip
    gate = wait_for(lambda: _gate(cluster, "AlertNotFiring"), 20, "AlertGate AlertNotFiring")
    show(f"kubectl get bgr {REQUEST} -n {NS} -o json   # .status.phase and the AlertGate condition",
         json.dumps({"phase": phase(cluster, REQUEST), "AlertGate": _brief(gate)}, indent=2))  # fmt: skip
    am.amtool_query()

    step(n + 2, "The pager goes off: PostgresDown{namespace=team-db} fires in Alertmanager")
    fired = time.monotonic()
    body = am.post(LABELS, ends_in=3600)
    show(f"curl -X POST {am.url}/api/v2/alerts -H 'Content-Type: application/json' -d '{body}'", "")
    am.amtool_query()
    wait_for(lambda: phase(cluster, REQUEST) == "Active", 30, "Active", interval=0.1)
    print(f"{REQUEST} is Active {time.monotonic() - fired:.2f}s after the alert was posted (poll interval 1s)")
    obj = cluster.get("bgr", REQUEST, NS)
    st = obj["status"]
    approved = _condition(obj, "Approved")
    assert approved.get("reason") == "AlertFiring" and st["approval"]["alert"]["labels"] == LABELS, st
    assert not st.get("approvals"), "no human approved it"
    show(f"kubectl get bgr {REQUEST} -n {NS} -o json   # who approved: the alert, no person",
         json.dumps({"approval": st["approval"], "Approved": _brief(approved), "approvals": st.get("approvals", [])},
                    indent=2))  # fmt: skip
    kb(cluster, "alice", "-n", NS, "status", REQUEST)
    ref = (st["secretRef"]["namespace"], st["secretRef"]["name"])
    assert cluster.get("secret", ref[1], ref[0]) is not None

    step(n + 3, "The restore takes longer: alice asks for 15m more, bob approves; same Secret, new token")
    before = (st["expiresAt"], st["tokenId"])
    proc = kb(cluster, "alice", "-n", NS, "extend", REQUEST, "--by", "15m", "--reason",
              "restore from backup still running")  # fmt: skip
    ext = proc.stdout.strip().splitlines()[-1]
    kb(cluster, "bob", "-n", NS, "approve", REQUEST, "--extension", ext, "--comment", "ok, 15 more")
    wait_for(lambda: _extension_state(cluster, ext) == "Applied", 20, "extension Applied")
    st = cluster.get("bgr", REQUEST, NS)["status"]
    print(f"expiresAt {before[0]} -> {st['expiresAt']}; jti {before[1]} -> {st['tokenId']}; phase {st['phase']}")
    assert st["expiresAt"] != before[0] and st["tokenId"] != before[1] and st["phase"] == "Active"

    step(n + 4, f"Incident over: the alert resolves (endsAt=now); {GRACE}s later the grant is revoked by itself")
    resolved = time.monotonic()
    body = am.post(LABELS, ends_in=0)
    show(f"curl -X POST {am.url}/api/v2/alerts -H 'Content-Type: application/json' -d '{body}'", "")
    am.amtool_query()
    wait_for(lambda: phase(cluster, REQUEST) == "Revoked", GRACE + 30, "Revoked", interval=0.1)
    took = time.monotonic() - resolved
    print(f"{REQUEST} is Revoked {took:.2f}s after the alert resolved (resolveGrace {GRACE}s + up to one poll)")
    obj = cluster.get("bgr", REQUEST, NS)
    revoked = _condition(obj, "Revoked")
    assert revoked.get("reason") == "IncidentResolved" and took >= GRACE, (revoked, took)
    show(f"kubectl get bgr {REQUEST} -n {NS} -o json   # the Revoked condition", json.dumps(_brief(revoked), indent=2))
    wait_for(lambda: cluster.get("secret", ref[1], ref[0]) is None, 10, "Secret deleted")
    print(f"token Secret {ref[0]}/{ref[1]} present: {cluster.get('secret', ref[1], ref[0]) is not None}")
    _show_events(cluster)
    _show_audit(op, obj["metadata"]["uid"])
    return n + 5


def _condition(obj, kind) -> dict:
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == kind), {})


def _gate(cluster, reason):
    cond = _condition(cluster.get("bgr", REQUEST, NS), "AlertGate")
    return cond if cond.get("reason") == reason else None


def _brief(cond) -> dict:
    return {k: cond.get(k) for k in ("type", "status", "reason", "message")}


def _extension_state(cluster, ext):
    exts = (cluster.get("bgr", REQUEST, NS).get("status") or {}).get("extensions") or []
    return next((e.get("state") for e in exts if e.get("name") == ext), None)


def _show_events(cluster) -> None:
    cols = "custom-columns=REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message"
    sel = f"involvedObject.name={REQUEST}"
    events = cluster.kubectl("get", "events", "-n", NS, "--field-selector", sel, "--sort-by=.lastTimestamp", "-o", cols)
    show(f"kubectl get events -n {NS} --field-selector {sel}", events.stdout)


def _show_audit(op, uid) -> None:
    print(f"{DIM}$ grep {uid} {op.audit_log}   # its audit records (fields abridged){RESET}")
    for line in op.audit_log.read_text().splitlines():
        rec = json.loads(line)
        if (rec.get("request") or {}).get("uid") != uid:
            continue
        keep = ("seq", "event", "approval", "alert", "approvers", "reason", "outcome", "jti", "expiresAt")
        brief = {k: rec[k] for k in keep if rec.get(k) not in (None, "", [])}
        if "alert" in brief:
            brief["alert"] = brief["alert"].get("labels")
        print(json.dumps(brief))
