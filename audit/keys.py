"""Audit key material: the HMAC key and the Ed25519 checkpoint signing key.

Providers are URIs, like a KEK: `file:PATH` (the file must not be group/world accessible) or
`env:VAR`. An HMAC key is at least 32 bytes, given as hex, base64 or (files only) raw bytes.
A signing key is a PKCS#8 PEM Ed25519 private key or a 32-byte seed (hex/base64).
This is the only audit module that imports `cryptography`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import AuditKeyError

MIN_HMAC_KEY = 32


def _read_provider(uri: str, what: str) -> bytes:
    if uri.startswith("file:"):
        path = Path(uri[5:])
        try:
            st = path.stat()
            if st.st_mode & 0o077:
                raise AuditKeyError(f"{what} file {path} is accessible by group/others: chmod 600 it")
            return path.read_bytes()
        except OSError as exc:
            raise AuditKeyError(f"{what} file {path}: {exc.strerror}") from None
    if uri.startswith("env:"):
        value = os.environ.get(uri[4:])
        if not value:
            raise AuditKeyError(f"{what}: environment variable {uri[4:]} is not set")
        return value.encode()
    raise AuditKeyError(f"{what}: unknown provider {uri.split(':', 1)[0]!r} (use file:PATH or env:VAR)")


def _decode_text(data: bytes) -> bytes | None:
    text = data.strip()
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def load_hmac_key(uri: str) -> bytes:
    """Load the audit HMAC key from `file:PATH` or `env:VAR`."""
    data = _read_provider(uri, "audit key")
    key = _decode_text(data)
    if key is None and uri.startswith("file:"):
        key = data
    if key is None or len(key) < MIN_HMAC_KEY:
        raise AuditKeyError(f"audit key from {uri.split(':', 1)[0]}: must be at least {MIN_HMAC_KEY} bytes "
                            "(hex, base64 or raw)")
    return key


def _signature_message(hash_hex: str) -> bytes:
    # Domain separation: a checkpoint signature can never be replayed as another protocol's signature.
    return b"tenantgate-audit-v1:" + bytes.fromhex(hash_hex)


class Signer:
    """Signs record hashes with an Ed25519 private key (never shown in repr)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.verifier = Verifier(key.public_key())

    def sign(self, hash_hex: str) -> str:
        return self._key.sign(_signature_message(hash_hex)).hex()

    def __repr__(self) -> str:
        return f"Signer(public={self.verifier.fingerprint})"


class Verifier:
    """Checks Ed25519 signatures made by `Signer`."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.fingerprint = hashlib.sha256(raw).hexdigest()[:16]

    def verify(self, hash_hex: str, sig_hex: str) -> bool:
        try:
            self._key.verify(bytes.fromhex(sig_hex), _signature_message(hash_hex))
        except (InvalidSignature, ValueError):
            return False
        return True

    def __reduce__(self) -> tuple[object, tuple[bytes]]:
        # picklable, so segments can be verified in worker processes
        return _verifier_from_raw, (self._key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),)

    def public_pem(self) -> bytes:
        return self._key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def __repr__(self) -> str:
        return f"Verifier({self.fingerprint})"


def _verifier_from_raw(raw: bytes) -> Verifier:
    return Verifier(Ed25519PublicKey.from_public_bytes(raw))


def load_signing_key(uri: str) -> Signer:
    """Load the Ed25519 signing key from `file:PATH` or `env:VAR` (PEM or 32-byte seed)."""
    data = _read_provider(uri, "audit signing key")
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise AuditKeyError("audit signing key: unreadable PEM (expected an unencrypted "
                                "PKCS#8 Ed25519 key)") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditKeyError("audit signing key: not an Ed25519 key")
        return Signer(key)
    seed = _decode_text(data)
    if seed is None or len(seed) != 32:
        raise AuditKeyError("audit signing key: expected a PEM key or a 32-byte seed (hex/base64)")
    return Signer(Ed25519PrivateKey.from_private_bytes(seed))


def load_public_key(spec: str) -> Verifier:
    """Load a public key: a PEM file path (optionally `file:`-prefixed) or 32 raw bytes in hex/base64."""
    path = Path(spec[5:] if spec.startswith("file:") else spec)
    if path.exists():
        data = path.read_bytes()
        if b"-----BEGIN" in data:
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError:
                raise AuditKeyError(f"public key {path}: unreadable PEM") from None
            if not isinstance(key, Ed25519PublicKey):
                raise AuditKeyError(f"public key {path}: not an Ed25519 key")
            return Verifier(key)
    else:
        data = spec.encode()
    raw = _decode_text(data)
    if raw is None or len(raw) != 32:
        raise AuditKeyError(f"public key {spec}: expected a PEM file or 32 bytes in hex/base64")
    return Verifier(Ed25519PublicKey.from_public_bytes(raw))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def generate_hmac_key_file(path: Path) -> None:
    """Write a new random 256-bit HMAC key (hex) to `path`, mode 0600; refuses to overwrite."""
    _write_private(path, secrets.token_hex(32).encode() + b"\n")


def generate_signing_key_files(path: Path) -> Path:
    """Write a new Ed25519 private key (PKCS#8 PEM, 0600) to `path` and its public key to `path`.pub."""
    key = Ed25519PrivateKey.generate()
    pub = path.with_name(path.name + ".pub")
    if pub.exists():
        raise FileExistsError(f"{pub} already exists")
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pub.write_bytes(Signer(key).verifier.public_pem())
    return pub
