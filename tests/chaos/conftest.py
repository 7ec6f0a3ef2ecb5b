"""Chaos tier: per module, its own control plane and two operator replicas behind TCP
load balancers; faults are injected into the real processes and invariants checked afterwards.

Run one module at a time on a small machine (`make chaos` runs them in sequence)."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

from .helpers import REPORT, ChaosEnv


@pytest.fixture(scope="session")
def chaos_dir():
    base = os.environ.get("BREAKGLASS_E2E_DIR")
    path = pathlib.Path(base) / "chaos" if base else pathlib.Path(tempfile.mkdtemp(prefix="breakglass-chaos-"))
    path.mkdir(parents=True, exist_ok=True)
    yield path
    if not base and os.environ.get("BREAKGLASS_KEEP_E2E") != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def env(chaos_dir, request):
    """A fresh control plane + 2 replicas for this module; every process is stopped afterwards."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    e = ChaosEnv(chaos_dir / name, operator_args=getattr(request.module, "OPERATOR_ARGS", None))
    try:
        e.start()
        yield e
    finally:
        e.stop()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/chaos/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.chaos)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        e = item.funcargs.get("env")
        if isinstance(e, ChaosEnv):
            for title, text in e.log_tails(150):
                rep.sections.append((title, text))


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("chaos numbers")
        for line in REPORT:
            terminalreporter.write_line(line)
