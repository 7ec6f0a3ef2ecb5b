"""Output and `kubectl breakglass` helpers shared by the demo's modules (hack/demo.py, hack/demo_incident.py)."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def step(n, text):
    print(f"\n{BOLD}[{n}] {text}{RESET}", flush=True)


def show(cmd_text, out):
    print(f"{DIM}$ {cmd_text}{RESET}")
    print(out.rstrip(), flush=True)


def _plugin_env():
    return dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")


def kb(cluster, user, *args, stdin=None):
    """`kubectl breakglass ...` exactly as an SRE types it (the plugin is found on PATH)."""
    proc = subprocess.run(
        [cluster.kubectl_bin, "breakglass", "--kubeconfig", cluster.kubeconfig(user), *args],
        capture_output=True,
        text=True,
        env=_plugin_env(),
        timeout=120,
        input=stdin,
    )
    show(f"kubectl breakglass {shlex.join(args)}   # as {user}", (proc.stdout + proc.stderr))
    return proc


def kb_start(cluster, user, *args):
    """Like kb(), but running in the background (for `request --wait`)."""
    return subprocess.Popen(
        [cluster.kubectl_bin, "breakglass", "--kubeconfig", cluster.kubeconfig(user), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_plugin_env(),
    )


def phase(cluster, name, namespace="team-db"):
    obj = cluster.get("bgr", name, namespace)
    return ((obj or {}).get("status") or {}).get("phase")


def grant_client(cluster, kubeconfig):
    return lambda *a: subprocess.run(
        [cluster.kubectl_bin, "--kubeconfig", str(kubeconfig), *a], capture_output=True, text=True
    )


def secret_ref(cluster, name):
    """(namespace, name) of the request's token Secret, from status.secretRef (set while Active)."""
    ref = ((cluster.get("bgr", name, "team-db") or {}).get("status") or {}).get("secretRef")
    return (ref["namespace"], ref["name"]) if ref else None


def ledger_entry(cluster, uid):
    cm = cluster.get("configmap", f"breakglass-grant-{uid}", "breakglass-system")
    return json.loads(cm["data"]["grant.json"]) if cm else None


def ledger_state(cluster, uid):
    return (ledger_entry(cluster, uid) or {}).get("state")


def show_ledger(cluster, uid):
    entry = ledger_entry(cluster, uid) or {}
    print(f"{DIM}$ kubectl get configmap breakglass-grant-{uid} -n breakglass-system   # the grant ledger{RESET}")
    print(json.dumps({k: entry.get(k) for k in ("state", "username", "jti", "expiresAt", "secret")}, indent=2))


def policy_ready(cluster):
    obj = cluster.get("bgp", "prod-db")
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in (obj or {}).get("status", {}).get("conditions", [])
    )
