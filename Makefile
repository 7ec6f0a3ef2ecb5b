# breakglass-operator — `make demo` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help demo test lint fmt unit e2e chaos venv cluster-build cluster-up cluster-down crds deploy bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

demo: venv cluster-build  ## run the break-glass story on a local control plane
	@hack/demo.sh

test:  ## install what is missing, then run every test tier (lint, unit, e2e, chaos)
	@hack/test.sh

lint: venv  ## ruff check + ruff format --check (config: ruff.toml); `make fmt` fixes what it can
	$(VENV)/bin/ruff check operator hack bench tests
	$(VENV)/bin/ruff format --check operator hack bench tests

fmt: venv  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix operator hack bench tests
	$(VENV)/bin/ruff format operator hack bench tests

unit: venv  ## unit tier only (no cluster)
	$(PY) -m pytest tests/unit -q

e2e: venv cluster-build  ## e2e tier only (starts its own control plane)
	@hack/test.sh e2e

chaos: venv cluster-build  ## chaos tier only: faults injected into two real replicas and the control plane (~6 min)
	@hack/test.sh chaos

venv: $(VENV)/.installed  ## project virtualenv with the test extra

$(VENV)/.installed: pyproject.toml
	@hack/venv.sh $(PYTHON) $(VENV)
	@touch $@

.PHONY: rules
rules: venv  ## promtool check + unit-test the chart's alerts (tests/rules/); installs Debian's prometheus (cached)
	@hack/monitoring.sh rules

cluster-build:  ## install etcd/Go and build kube-apiserver, kube-controller-manager, kubectl (cached)
	@hack/cluster.sh build

cluster-up: cluster-build  ## start a control plane in .state/cluster (KUBECONFIG in .state/cluster/kubeconfig)
	@hack/cluster.sh start .state/cluster

cluster-down:  ## stop it
	@hack/cluster.sh stop .state/cluster

crds: venv  ## regenerate crds/ and the chart's copy
	$(PY) hack/gen_crds.py

deploy: venv  ## regenerate deploy/ (the chart rendered with default values)
	$(PY) hack/render_chart.py

bench: venv cluster-build  ## performance figures; BENCH_ARGS=--scale: the 10,000-grant Scale table; --audit: the audit sink
	$(PY) bench/bench.py $(BENCH_ARGS)

.PHONY: bench-audit
bench-audit: venv cluster-build  ## audit sink (#13): throughput, drain, per-call latency sink on/off, /audit ceiling vs raw writes (~2 min)
	$(PY) bench/audit.py $(BENCH_ARGS)

clean:
	rm -rf .state build *.egg-info
