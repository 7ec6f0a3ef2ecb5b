"""Acting with a minted token against the real apiserver."""

from __future__ import annotations

import base64
import json
import pathlib
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request

from harness import Cluster, kubeconfig


def kubeconfig_for(cluster: Cluster, token: str) -> str:
    fd, path = tempfile.mkstemp(prefix="grant-", suffix=".kubeconfig")
    with open(fd, "w") as fh:
        fh.write(kubeconfig(cluster.server, cluster.ca_file, {"token": token}))
    return path


def with_kubeconfig(cluster: Cluster, kubeconfig_path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [cluster.kubectl_bin, "--kubeconfig", kubeconfig_path, *args], capture_output=True, text=True, timeout=30
    )


def with_token(cluster: Cluster, token: str, *args: str) -> subprocess.CompletedProcess:
    path = kubeconfig_for(cluster, token)
    try:
        return with_kubeconfig(cluster, path, *args)
    finally:
        pathlib.Path(path).unlink()


def secret_kubeconfig(cluster: Cluster, secret: dict) -> str:
    fd, path = tempfile.mkstemp(prefix="grant-", suffix=".kubeconfig")
    with open(fd, "wb") as fh:
        fh.write(base64.b64decode(secret["data"]["kubeconfig"]))
    return path


def unauthorized(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode != 0 and "Unauthorized" in proc.stderr


def forbidden(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode != 0 and "forbidden" in proc.stderr.lower() and "Unauthorized" not in proc.stderr


class BearerApi:
    """Raw HTTPS calls with one bearer token (kubectl would add discovery requests to the count)."""

    def __init__(self, cluster, token: str):
        self.server, self.token = cluster.server, token
        self.ctx = ssl.create_default_context(cafile=cluster.ca_file)

    def call(self, method: str, path: str, body: dict | None = None) -> int:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code
