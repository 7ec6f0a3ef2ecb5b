"""The test load balancer itself: round-robin, skips refused backends, passes TLS through untouched."""

from __future__ import annotations

import socket
import ssl
import threading

from breakglass import tls

from .helpers import _free_port
from .lb import TcpBalancer


def _tls_backend(certs, client_ca: str, name: bytes):
    """A one-thread TLS server answering `name` plus the client certificate's CN to each connection."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.cert_file, certs.key_file)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=client_ca)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
                    s.recv(100)
                    s.sendall(name + b" " + cn.encode())
            except (OSError, ssl.SSLError):
                pass

    threading.Thread(target=serve, daemon=True).start()
    return srv


def _close(srv):
    srv.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); a plain close() would not
    srv.close()


def test_round_robin_skips_refused_backends_and_passes_tls_through(tmp_path):
    certs = tls.generate(str(tmp_path / "srv"), ["127.0.0.1"])
    client = tls.generate_client(str(tmp_path / "cli"), "kube-apiserver")
    a, b = _tls_backend(certs, client.ca_file, b"a"), _tls_backend(certs, client.ca_file, b"b")
    dead = _free_port()  # nothing listens here: refused
    ctx = ssl.create_default_context(cafile=certs.ca_file)
    ctx.load_cert_chain(client.cert_file, client.key_file)

    def ask(port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"hi")
                return s.recv(100).decode()

    with TcpBalancer(_free_port(), [a.getsockname()[1], dead, b.getsockname()[1]]) as lb:
        answers = [ask(lb.port) for _ in range(6)]
        assert all(x.endswith(" kube-apiserver") for x in answers), answers  # client cert reached the backend
        assert {x.split()[0] for x in answers} == {"a", "b"}
        assert lb.refused[dead] >= 1
        _close(a)
        assert {ask(lb.port).split()[0] for _ in range(4)} == {"b"}
        _close(b)
        try:
            ask(lb.port)
            raise AssertionError("no backend left, the connection should be closed")
        except (OSError, ssl.SSLError):
            pass
        assert lb.dropped >= 1
