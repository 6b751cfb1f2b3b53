"""Small PKI for tests: a CA and certificates signed by it, written as PEM files.

Used by every test that needs TLS (OpenBao, nginx, tls_check) and by the broker tests for org
CAs and agent certificates. Only `cryptography`, so it runs wherever the modules run.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_key(kind: str = "ec"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _san(names) -> x509.SubjectAlternativeName:
    entries = []
    for n in names:
        if n.startswith("spiffe://"):
            entries.append(x509.UniformResourceIdentifier(n))
            continue
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


@dataclass
class Issued:
    key: object
    cert: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def serial_hex(self) -> str:
        return format(self.cert.serial_number, "x")

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path


class CA(Issued):
    """A certificate authority that can issue server, client and intermediate certificates."""

    @classmethod
    def create(cls, cn: str = "Cullis Test CA", org: str | None = None, key_kind: str = "ec",
               days: int = 3650, not_before: dt.datetime | None = None) -> "CA":
        key = new_key(key_kind)
        start = not_before or now() - dt.timedelta(minutes=5)
        name = _name(cn, org)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    def issue(self, cn: str, *, sans=(), org: str | None = None, key_kind: str = "ec",
              days: float = 365, not_before: dt.datetime | None = None, server: bool = True,
              client: bool = False, ca: bool = False, serial: int | None = None,
              key=None) -> "Issued":
        key = key or new_key(key_kind)
        start = not_before or now() - dt.timedelta(minutes=5)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        if sans:
            builder = builder.add_extension(_san(sans), critical=False)
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                              content_commitment=False, key_encipherment=False, data_encipherment=False,
                              key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        else:
            usages = []
            if server:
                usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            if client:
                usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
            if usages:
                builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cls = CA if ca else Issued
        return cls(key=key, cert=cert)

    def server_cert(self, *names: str, **kw) -> Issued:
        names = names or ("127.0.0.1", "localhost")
        return self.issue(names[0], sans=names, **kw)
