"""Certificates for loopback TLS: the demo's self-signed one, and the pieces the tests' CA builds on.

EC P-256 keys, SHA-256 signatures; a key file is written 0600 from the start.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tenantgate.keyring.private_file import write_private

__all__ = ["LOOPBACK", "certificate", "make_self_signed", "write_pair"]

LOOPBACK = ("localhost", "127.0.0.1")
Extension = tuple[x509.ExtensionType, bool]  # (extension, critical)


def _alt_names(sans: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    return names


def certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    sans: Sequence[str] = LOOPBACK,
    extensions: Sequence[Extension] = (),
    valid_before: datetime.timedelta = datetime.timedelta(minutes=5),
    days: int = 30,
) -> x509.Certificate:
    """A certificate with CN ``name`` for ``key``, signed by ``issuer`` (name, key) or by itself."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - valid_before)
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(_alt_names(sans)), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def write_pair(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, directory: Path, name: str
) -> tuple[Path, Path]:
    """Write ``<name>.crt`` and ``<name>.key`` (0600) into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(key_path, pem)
    return cert_path, key_path


def make_self_signed(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost: TLS on both sides of the demo."""
    key = ec.generate_private_key(ec.SECP256R1())
    return write_pair(certificate(name, key), key, directory, name)
