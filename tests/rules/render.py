#!/usr/bin/env python3
"""The chart's PrometheusRule as a plain Prometheus rules file (its `spec`: `groups`), for promtool and the
e2e Prometheus. Rendered by the real Helm engine (hack/render_chart.py) with the rule enabled.

    render.py OUT.yaml [--for ALERT=DURATION ...] [--check]

--check also fails (exit 1) when an alert's expression names a metric the operator does not export
(operator/breakglass/metrics.py), a label that metric does not carry, or an `le` bound that is not one of
its buckets, or when an alert has no unit-test file tests/rules/<alert>.test.yaml.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "hack"))
sys.path.insert(0, str(ROOT / "operator"))

import render_chart  # noqa: E402

# Labels Prometheus itself attaches to every scraped series (target labels), usable in any rule.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}


def rules(for_overrides: dict[str, str] | None = None) -> dict:
    """`spec` of the rendered PrometheusRule; `for_overrides` goes to the chart value metrics.prometheusRule.for."""
    rule_values: dict = {"enabled": True}
    if for_overrides:
        rule_values["for"] = dict(for_overrides)
    docs = render_chart.manifests({"metrics": {"prometheusRule": rule_values}})
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


def write(path: pathlib.Path, for_overrides: dict[str, str] | None = None) -> pathlib.Path:
    path.write_text(yaml.safe_dump(rules(for_overrides), sort_keys=False, width=120))
    return path


def alerts(spec: dict) -> list[dict]:
    return [r for g in spec["groups"] for r in g["rules"] if "alert" in r]


def _go_float(bound: float) -> str:
    """How prometheus_client writes a bucket bound in `le` (1.0, 300.0, +Inf)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def exported() -> dict[str, dict]:
    """Every sample name the operator exports -> {"labels": set, "le": [bucket bounds] or None}."""
    from breakglass import metrics

    out: dict[str, dict] = {}
    for collector, names in metrics.REGISTRY._collector_to_names.items():
        base = min(names, key=len)
        labels = set(getattr(collector, "_labelnames", ()))
        kind = type(collector).__name__
        if kind == "Counter":
            samples = {f"{base}_total": None, f"{base}_created": None}
        elif kind == "Histogram":
            bounds = [_go_float(b) for b in collector._upper_bounds]
            samples = {f"{base}_bucket": bounds, f"{base}_count": None, f"{base}_sum": None, f"{base}_created": None}
        else:
            samples = {base: None}
        for name, le in samples.items():
            out[name] = {"labels": labels | ({"le"} if le else set()), "le": le}
    return out


_SELECTOR = re.compile(r"\b(breakglass_[A-Za-z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def metric_problems(spec: dict, known: dict[str, dict] | None = None) -> list[str]:
    known = exported() if known is None else known
    problems = []
    for rule in alerts(spec):
        expr, name = rule["expr"], rule["alert"]
        used_labels: set[str] = set()
        for metric, braces in _SELECTOR.findall(expr):
            info = known.get(metric)
            if info is None:
                problems.append(f"{name}: the operator exports no metric {metric}")
                continue
            used_labels |= info["labels"]
            for label, op, value in _MATCHER.findall(braces or ""):
                if label not in info["labels"] | TARGET_LABELS:
                    problems.append(f"{name}: {metric} has no label {label!r} (it has {sorted(info['labels'])})")
                elif label == "le" and op in ("=", "=~"):
                    pattern = re.escape(value) if op == "=" else value.encode().decode("unicode_escape")
                    if not any(re.fullmatch(pattern, b) for b in info["le"]):
                        problems.append(f"{name}: {metric} has no bucket le{op}{value!r} (buckets {info['le']})")
        for group in _GROUPING.findall(expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                if label not in used_labels | TARGET_LABELS:
                    problems.append(f"{name}: groups by {label!r}, which none of its metrics carries")
    return problems


def test_file_problems(spec: dict, tests_dir: pathlib.Path = HERE) -> list[str]:
    names = {r["alert"] for r in alerts(spec)}
    problems = [
        f"{a}: no unit-test file {tests_dir / f'{a}.test.yaml'}"
        for a in sorted(names)
        if not (tests_dir / f"{a}.test.yaml").exists()
    ]
    for path in sorted(tests_dir.glob("*.test.yaml")):
        doc = yaml.safe_load(path.read_text())
        tested = {t["alertname"] for case in doc.get("tests", []) for t in case.get("alert_rule_test", [])}
        if path.name.removesuffix(".test.yaml") not in names:
            problems.append(f"{path.name}: no alert of that name in the chart")
        problems += [f"{path.name}: tests {a}, which the chart does not define" for a in sorted(tested - names)]
        checks = [t for case in doc.get("tests", []) for t in case.get("alert_rule_test", [])]
        if not any(t.get("exp_alerts") for t in checks):
            problems.append(f"{path.name}: never expects the alert to fire")
        if not any(not t.get("exp_alerts") for t in checks):
            problems.append(f"{path.name}: never expects the alert to stay silent")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--for", dest="for_", action="append", default=[], metavar="ALERT=DURATION")
    parser.add_argument("--check", action="store_true", help="check metric names, labels and test files")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.for_)
    write(args.out, overrides)
    print(args.out)
    if args.check:
        spec = yaml.safe_load(args.out.read_text())
        problems = metric_problems(spec) + test_file_problems(spec)
        for problem in problems:
            print(f"render.py: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(f"{len(alerts(spec))} alerts: metrics, labels and buckets exist; each alert has a unit-test file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
