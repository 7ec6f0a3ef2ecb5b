"""Session-scoped real control plane and a real `breakglass-operator` process."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest
from harness import (
    Operator,
    control_plane,
    operator_ports,
    write_audit_webhook_config,
    write_tokenreview_webhook_config,
)

from breakglass import tls

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def e2e_dir():
    base = os.environ.get("BREAKGLASS_E2E_DIR")
    path = pathlib.Path(base) if base else pathlib.Path(tempfile.mkdtemp(prefix="breakglass-e2e-"))
    path.mkdir(parents=True, exist_ok=True)
    yield path
    if not base and os.environ.get("BREAKGLASS_KEEP_E2E") != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ports():
    return operator_ports()


@pytest.fixture(scope="session")
def operator_tls(e2e_dir):
    """The operator's serving certificate exists before the apiserver starts, so the TokenReview
    webhook config can name its CA."""
    return tls.generate(str(e2e_dir / "operator-tls"), ["127.0.0.1", "localhost"])


@pytest.fixture(scope="session")
def apiserver_client_cert(e2e_dir):
    """kube-apiserver authenticates to /authenticate and /audit with this client certificate."""
    return tls.generate_client(str(e2e_dir / "apiserver-client"), "kube-apiserver")


@pytest.fixture(scope="session")
def cluster(e2e_dir, ports, operator_tls, apiserver_client_cert):
    flags = write_tokenreview_webhook_config(
        e2e_dir / "tokenreview-webhook.kubeconfig", ports["https"], operator_tls.ca_file, client=apiserver_client_cert
    )
    # The audit webhook backend (batch mode) POSTs grant identities' events to the operator's /audit.
    flags += write_audit_webhook_config(
        e2e_dir / "audit-webhook.kubeconfig", ports["https"], operator_tls.ca_file, client=apiserver_client_cert
    )
    with control_plane(e2e_dir / "cluster", flags) as c:
        yield c


@pytest.fixture(scope="session")
def operator(cluster, e2e_dir, ports, operator_tls, apiserver_client_cert):
    op = Operator.on_ports(
        cluster,
        e2e_dir / "operator",
        ports,
        operator_tls,
        extra_args=["--client-ca-file", apiserver_client_cert.ca_file],
    )
    op.start()
    yield op
    op.stop()


@pytest.fixture
def running_operator(operator):
    """Function-scoped view that guarantees the operator is up (a previous test may have stopped it)."""
    if operator.proc is None or operator.proc.poll() is not None:
        operator.start()
    return operator


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        op = item.funcargs.get("operator") or item.funcargs.get("running_operator")
        if isinstance(op, Operator):
            op.dump_threads()
            report.sections.append(("operator log (tail)", op.log_tail(400)))
