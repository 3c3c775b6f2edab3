"""Throw-away certificates for TLS tests: a CA, a server certificate it signs, a client's."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Files:
    """PEM file paths: C{key}, C{cert}, and C{both} (key then certificate, for socat and Twisted)."""

    key: str
    cert: str
    both: str


def _write(directory: str, name: str, key, cert) -> Files:
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    paths = Files(*(os.path.join(directory, f"{name}{suffix}") for suffix in ("-key.pem", ".pem", "-both.pem")))
    for path, data in ((paths.key, key_pem), (paths.cert, cert_pem), (paths.both, key_pem + cert_pem)):
        with open(path, "wb") as f:
            f.write(data)
    return paths


def _certificate(subject: str, key, issuer_name=None, issuer_key=None, ca=False,
                 names=(), client=False, days=1):
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        alt = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    if client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@dataclass
class PKI:
    """A CA (C{ca}), a server certificate for localhost and 127.0.0.1 signed by it (C{server}),
    a client certificate it signs (C{client}), an expired server certificate (C{expired}),
    and a self-signed server certificate with the same names (C{self_signed})."""

    ca: Files
    server: Files
    client: Files
    expired: Files
    self_signed: Files


def make_pki(directory: str) -> PKI:
    """Write a fresh L{PKI} into C{directory}."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("netecho test CA", ca_key, ca=True)
    names = ("localhost", "127.0.0.1", "::1")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("localhost", server_key, ca_cert.subject, ca_key, names=names)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("client", client_key, ca_cert.subject, ca_key, client=True)
    expired_key = ec.generate_private_key(ec.SECP256R1())
    expired = _certificate("localhost", expired_key, ca_cert.subject, ca_key, names=names, days=-1)
    self_key = ec.generate_private_key(ec.SECP256R1())
    self_cert = _certificate("localhost", self_key, names=names)
    return PKI(
        _write(directory, "ca", ca_key, ca_cert),
        _write(directory, "server", server_key, server),
        _write(directory, "client", client_key, client),
        _write(directory, "expired", expired_key, expired),
        _write(directory, "self-signed", self_key, self_cert),
    )
