"""A development CA and the certificates of splitserve's services (tests and local use only).

`make_dev_certs(out)` writes the files `splitserve.tls` reads: ca.pem (+ ca-key.pem, to sign
more), router.pem / router-key.pem and node.pem / node-key.pem. Every leaf certificate is
valid both as a server and as a client (the router is a server to its clients and a client of
the nodes; a prefill node is a client of a decode node's KV service) and names `hosts` as
subject alternative names. Keys are ECDSA P-256, written unencrypted with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
LEAVES = ("router", "node")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "splitserve dev"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days)))


def _ca(days: int):
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("splitserve dev CA")
    cert = (_builder(name, name, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(common_name: str, hosts: tuple[str, ...], ca_cert, ca_key, days: int):
    key = ec.generate_private_key(ec.SECP256R1())
    usages = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    cert = (_builder(_name(common_name), ca_cert.subject, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usages, critical=False)
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def _write(out: Path, name: str, cert, key) -> None:
    (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = out / f"{name}-key.pem"
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)


def make_dev_certs(out: str | Path, hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 30) -> list[Path]:
    """Writes ca.pem, ca-key.pem and each service's certificate and key into `out`; returns the paths."""
    if not hosts:
        raise ValueError("at least one host name or address is required")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ca(days)
    _write(out, "ca", ca_cert, ca_key)
    for leaf in LEAVES:
        _write(out, leaf, *_leaf(f"splitserve {leaf}", tuple(hosts), ca_cert, ca_key, days))
    return sorted(out.glob("*.pem"))
