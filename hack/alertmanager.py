"""A real Alertmanager (Debian's, installed by hack/monitoring.sh) for the demo and the e2e tests:
null receiver, a free port on 127.0.0.1, no clustering."""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import signal
import subprocess
import urllib.request

from harness import ROOT, free_port, wait_for


def monitoring_bin_dir() -> pathlib.Path:
    """Where hack/monitoring.sh put (or would put) prometheus, promtool, alertmanager and amtool."""
    out = subprocess.run([str(ROOT / "hack" / "monitoring.sh"), "bin"], capture_output=True, text=True, check=True)
    return pathlib.Path(out.stdout.strip())


class Alertmanager:
    def __init__(self, workdir: pathlib.Path, bin_dir: pathlib.Path | None = None):
        self.bin = bin_dir or monitoring_bin_dir()
        self.workdir, self.port = workdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "alertmanager.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "alertmanager.yml"
        config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
        cmd = [
            str(self.bin / "alertmanager"),
            f"--config.file={config}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited with {self.proc.returncode}: {self.log_path.read_text()}")
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200

        wait_for(ready, 30, "alertmanager to be ready", interval=0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def post(self, labels: dict, ends_in: float, annotations: dict | None = None) -> str:
        """POST one alert to /api/v2/alerts (ends_in=0: resolved now); returns the body sent."""
        now = dt.datetime.now(dt.UTC)
        alert = {
            "labels": labels,
            "annotations": annotations or {},
            "startsAt": (now - dt.timedelta(seconds=1)).isoformat(timespec="seconds"),
            "endsAt": (now + dt.timedelta(seconds=ends_in)).isoformat(timespec="seconds"),
        }
        body = json.dumps([alert])
        req = urllib.request.Request(
            f"{self.url}/api/v2/alerts", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200, r.status
        return body
