"""A real Prometheus (Debian's 2.42, installed by hack/monitoring.sh) scrapes the e2e operator with the
chart's alert rules loaded: an emergency grant nobody reviews takes BreakGlassReviewOverdue to `firing`
in Prometheus's own HTTP API, and the review resolves it."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from harness import ROOT, free_port, wait_for

from ..rules import render
from .scenario import approve, policy, request, unique, wait_phase

MONITORING_SH = ROOT / "hack" / "monitoring.sh"
ALERT = "BreakGlassReviewOverdue"
# The chart's default `for:` is 5m; the test shortens it through the chart value metrics.prometheusRule.for.
FOR_SECONDS = 5


def monitoring_bin() -> pathlib.Path:
    """Prometheus's binaries, installed (cached) by hack/monitoring.sh. Under hack/test.sh
    (BREAKGLASS_MONITORING_BIN set) they must be there; elsewhere a failed install skips the test."""
    required = os.environ.get("BREAKGLASS_MONITORING_BIN")
    if required and (pathlib.Path(required) / "prometheus").is_file():
        return pathlib.Path(required)
    proc = subprocess.run([str(MONITORING_SH), "install"], capture_output=True, text=True, timeout=600)
    bin_dir = pathlib.Path(subprocess.run([str(MONITORING_SH), "bin"], capture_output=True, text=True).stdout.strip())
    if proc.returncode != 0 or not (bin_dir / "prometheus").is_file():
        reason = f"Debian's prometheus could not be installed (hack/monitoring.sh install): {proc.stderr.strip()}"
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    return bin_dir


class Prometheus:
    def __init__(self, binary: pathlib.Path, workdir: pathlib.Path, metrics_port: int):
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self.rules = render.rules({ALERT: f"{FOR_SECONDS}s"})
        (workdir / "alerts.rules.yaml").write_text(yaml.safe_dump(self.rules, sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "alerts.rules.yaml")],
            "scrape_configs": [
                {"job_name": "breakglass-operator", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            str(self.binary),
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=info",
        ]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.workdir), start_new_session=True
            )

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200

        wait_for(ready, 30, "prometheus to be ready", interval=0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no prometheus log)"

    def api(self, path: str, **params: str):
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def alerts(self, name: str) -> list[dict]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def rule(self, name: str) -> dict:
        (rule,) = [r for g in self.api("rules")["groups"] for r in g["rules"] if r["name"] == name]
        return rule


@pytest.fixture
def prometheus(e2e_dir, running_operator):
    prom = Prometheus(
        monitoring_bin() / "prometheus", e2e_dir / f"prometheus-{unique('run')}", running_operator.metrics_port
    )
    prom.start()
    yield prom
    prom.stop()


def _rfc3339_seconds(ts: str) -> float:
    """Prometheus's activeAt (RFC 3339, nanoseconds, Z or offset) -> unix seconds."""
    import datetime as dt

    head, _, frac = ts.rstrip("Z").partition(".")
    offset = "+00:00"
    for sign in ("+", "-"):
        if sign in frac:
            frac, _, rest = frac.partition(sign)
            offset = sign + rest
    base = dt.datetime.fromisoformat(head + offset).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def test_an_unreviewed_emergency_grant_fires_review_overdue_in_a_real_prometheus(cluster, running_operator, prometheus):
    prom = prometheus
    target = f"127.0.0.1:{running_operator.metrics_port}"
    try:
        # The chart's rules loaded and healthy; the operator scraped.
        loaded = {r["name"] for g in prom.api("rules")["groups"] for r in g["rules"]}
        assert loaded == {r["alert"] for r in render.alerts(prom.rules)}
        assert prom.rule(ALERT)["duration"] == FOR_SECONDS
        wait_for(
            lambda: any(s["value"][1] == "1" for s in prom.query(f'up{{instance="{target}"}}')),
            30,
            "prometheus to scrape the operator",
            interval=0.25,
        )
        baseline = wait_for(
            lambda: prom.query(f'breakglass_reviews_overdue{{instance="{target}"}}'),
            30,
            "breakglass_reviews_overdue in prometheus",
            interval=0.25,
        )
        baseline = int(float(baseline[0]["value"][1]))
        if baseline == 0:
            # Silent while no review is overdue: evaluated (twice, after the sample) and inactive.
            t0 = time.time()
            wait_for(
                lambda: _rfc3339_seconds(prom.rule(ALERT)["lastEvaluation"]) > t0 + 1,
                30,
                "two more rule evaluations",
                interval=0.25,
            )
            rule = prom.rule(ALERT)
            assert rule["health"] == "ok" and rule["state"] == "inactive", rule
            assert prom.alerts(ALERT) == []

        ns = cluster.new_namespace("monitoring")
        pol = unique("monitoring")
        cluster.apply(policy(pol, emergency={"allowed": True, "reviewWithin": "3s"}))
        cluster.apply(request("unreviewed", ns, pol, emergency=True), user="alice", verb="create")
        wait_phase(cluster, "unreviewed", ns, "Active")

        def firing():
            return next((a for a in prom.alerts(ALERT) if a["state"] == "firing"), None)

        alert = wait_for(firing, 90, f"{ALERT} to fire in prometheus", interval=0.25)
        fired_seen = time.time()
        assert alert["labels"] == {
            "alertname": ALERT,
            "severity": "warning",
            "job": "breakglass-operator",
            "instance": target,
        }
        assert float(alert["value"]) >= baseline + 1
        assert alert["annotations"]["summary"] == (
            f"{float(alert['value']):g} emergency grant(s) await their overdue review"
        )
        # It was pending for at least its `for:` before firing.
        assert fired_seen - _rfc3339_seconds(alert["activeAt"]) >= FOR_SECONDS

        approve(cluster, "carol", "unreviewed", ns, decision="Review")
        if baseline == 0:
            wait_for(lambda: prom.alerts(ALERT) == [], 60, f"{ALERT} to resolve once reviewed", interval=0.25)
    except BaseException as exc:
        raise AssertionError(f"{exc}\n--- prometheus log (tail) ---\n{prom.log_tail()}") from exc
