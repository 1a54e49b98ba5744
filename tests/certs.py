"""Test PKI: a throwaway CA and certificates it issues (EC P-256, valid 1 day back to 30 days ahead),
built with the demo's certificate pieces (proxy/sandbox/selfsigned.py)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tenantgate.proxy.sandbox.selfsigned import LOOPBACK, certificate, write_pair

CertPair = tuple[str, str]
"""(certificate path, private key path), both PEM."""

_DAY = datetime.timedelta(days=1)


def _pair(paths: tuple[Path, Path]) -> CertPair:
    return str(paths[0]), str(paths[1])


def make_ca(directory: str | os.PathLike[str], name: str = "tenantgate test CA") -> CertPair:
    """Create a self-signed CA in ``directory``; returns (ca.crt, ca.key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    extensions = [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (usage, True),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
    ]
    cert = certificate(name, key, sans=(), extensions=extensions, valid_before=_DAY)
    return _pair(write_pair(cert, key, Path(directory), "ca"))


def issue_cert(ca: CertPair, directory: str | os.PathLike[str], name: str, sans: Sequence[str] = LOOPBACK) -> CertPair:
    """Issue a certificate with CN ``name`` signed by ``ca``; returns (NAME.crt, NAME.key).

    ``sans`` become IP or DNS subjectAltNames. The certificate is good for both TLS
    server and client authentication (a client certificate's CN is the user name).
    """
    ca_cert = x509.load_pem_x509_certificate(Path(ca[0]).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(ca[1]).read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca[1]}: CA key must be an EC key made by make_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    extensions = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
    ]
    cert = certificate(
        name, key, issuer=(ca_cert.subject, ca_key), sans=sans, extensions=extensions, valid_before=_DAY
    )
    return _pair(write_pair(cert, key, Path(directory), name))


@dataclass(frozen=True)
class Pki:
    """A CA with one server and one client certificate, all in ``directory``."""

    directory: Path
    ca: CertPair
    server: CertPair
    client: CertPair

    @property
    def ca_cert(self) -> str:
        return self.ca[0]

    def issue(self, name: str, sans: Sequence[str] = LOOPBACK) -> CertPair:
        """Issue another certificate from this CA (e.g. a client certificate with CN = user)."""
        return issue_cert(self.ca, self.directory, name, sans)


def make_pki(directory: str | os.PathLike[str]) -> Pki:
    """CA + ``server`` (SANs 127.0.0.1, localhost) + ``client`` (CN client) certificates."""
    out = Path(directory)
    ca = make_ca(out)
    return Pki(out, ca, issue_cert(ca, out, "server"), issue_cert(ca, out, "client", sans=()))
