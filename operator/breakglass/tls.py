"""A local CA and serving/client certificates made with `cryptography` (no kopf certbuilder extras)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TLSFiles:
    ca_file: str | None
    cert_file: str
    key_file: str


def write_private(path: str, data: bytes) -> None:
    """Write a file readable by its owner only (keys, certificates, kubeconfigs)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))


def _ca(common_name: str, days: int):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    directory: str,
    names: tuple[str, str, str],
    ca_common_name: str,
    common_name: str,
    usage,
    sans: list[x509.GeneralName] | None,
    days: int,
) -> TLSFiles:
    """A fresh CA and one leaf signed by it, written 0600 into `directory` under `names`."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    ca, ca_key = _ca(ca_common_name, days)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(*(os.path.join(directory, n) for n in names))
    for path, data in (
        (files.ca_file, ca.public_bytes(serialization.Encoding.PEM)),
        (files.cert_file, cert.public_bytes(serialization.Encoding.PEM)),
        (files.key_file, _key_pem(key)),
    ):
        write_private(path, data)
    return files


def generate(directory: str, hosts: list[str], days: int = 365) -> TLSFiles:
    """CA + serving certificate for `hosts` (IPs or DNS names)."""
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    return _issue(
        directory,
        ("ca.crt", "tls.crt", "tls.key"),
        "breakglass-operator local CA",
        hosts[0],
        ExtendedKeyUsageOID.SERVER_AUTH,
        sans,
        days,
    )


def generate_client(directory: str, common_name: str, days: int = 365) -> TLSFiles:
    """A client CA and one client certificate (e.g. kube-apiserver calling /authenticate)."""
    return _issue(
        directory,
        ("client-ca.crt", "client.crt", "client.key"),
        "breakglass-operator client CA",
        common_name,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        None,
        days,
    )
