"""hack/cluster.sh gives a clear message for bad input (no cluster is started by these tests)."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "cluster.sh"


def run(*args, env=None):
    return subprocess.run(
        ["/bin/bash", str(SCRIPT), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60
    )


def test_an_unknown_command_prints_usage_and_exits_2():
    out = run("bogus")
    assert out.returncode == 2 and "usage:" in out.stderr


def test_a_machine_without_apt_is_told_what_to_install(tmp_path):
    out = run("install", env={"PATH": str(tmp_path), "BREAKGLASS_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 1
    assert "apt-get not found" in out.stderr and "etcd-server" in out.stderr


def test_a_port_in_use_is_named(tmp_path):
    if not (
        pathlib.Path(os.environ.get("BREAKGLASS_CACHE", pathlib.Path.home() / ".cache/breakglass"))
        / "k8s-1.20.2"
        / "bin"
        / "kube-apiserver"
    ).exists():
        import pytest

        pytest.skip("control plane binaries not built yet (make cluster-build)")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = run("start", str(tmp_path / "c"), env={"APISERVER_PORT": str(port)})
    assert out.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in out.stderr


def test_a_failed_build_names_its_log(tmp_path):
    # A cache directory that cannot hold a build: the build step fails and points at its log.
    cache = tmp_path / "cache"
    (cache / "k8s-1.20.2").mkdir(parents=True)
    (cache / "k8s-1.20.2" / "work").write_text("not a directory")  # the build's work dir is blocked
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("etcd", "go", "dpkg-source", "openssl", "curl"):
        (fake_bin / tool).write_text("#!/bin/sh\nexit 0\n")
        (fake_bin / tool).chmod(0o755)
    (fake_bin / "apt-get").write_text("#!/bin/sh\nexit 1\n")  # apt-get source fails: no network needed
    (fake_bin / "apt-get").chmod(0o755)
    gocode = pathlib.Path("/usr/share/gocode/src/github.com")
    if not ((gocode / "modern-go/reflect2").exists() and (gocode / "json-iterator/go").exists()):
        import pytest

        pytest.skip("Debian Go sources not installed")
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "BREAKGLASS_CACHE": str(cache)}
    (fake_bin / "grep").symlink_to("/bin/grep")
    out = run("build", env=env)
    assert out.returncode == 1
    assert "kubernetes build failed; see" in out.stderr and "build.log" in out.stderr
