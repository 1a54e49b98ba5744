"""KEK (master key) providers: the key that wraps every tenant DEK.

A provider is anything with a ``key_id`` and ``wrap``/``unwrap`` of 32-byte DEKs
(:class:`KekProvider`). It is chosen by a URI:

- ``file:/path/kek.bin`` — 32 random bytes, raw or as 64 hex digits; the file
  must not be accessible by group or others (``chmod 600``).
- ``env:VAR`` — 32 bytes as 64 hex digits or base64 in environment variable VAR.
- ``pkcs11:token=LABEL;label=KEYLABEL;pin-env=VAR`` — an AES key inside an HSM
  (:mod:`tenantgate.keyring.hsm`); wrapping happens in the token.
- any other scheme: a plug-in registered in the entry point group
  ``tenantgate.kek_providers`` under the scheme name, whose object is called with
  the whole URI and returns a provider (Vault Transit, a cloud KMS, ...).

Wrapped blobs are self-describing: the first byte names the algorithm
(``0x01`` AES-KW RFC 3394 for file/env keys, ``0x02`` AES-256-GCM for PKCS#11).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from .errors import KekError
from .hsm import Pkcs11Kek  # importable without python-pkcs11: hsm loads it only when a token is opened
from .primitives import KEY_SIZE, AuthenticationFailed, key_unwrap, key_wrap, random_bytes
from .provider import ALG_AES_KW, KekProvider

ENTRY_POINT_GROUP = "tenantgate.kek_providers"


def kek_fingerprint(kek: bytes) -> str:
    """A one-way id for a KEK: lets the store record which KEK wrapped a DEK.

    >>> kek_fingerprint(bytes(32))
    'kek:2c99fcf25e7c0408'
    """
    return "kek:" + hmac.new(kek, b"tenantgate kek id", hashlib.sha256).hexdigest()[:16]


class AesKwKek:
    """A KEK held in process memory; wraps with AES-KW (RFC 3394)."""

    __slots__ = ("_kek", "key_id")

    def __init__(self, kek: bytes, key_id: str | None = None) -> None:
        if len(kek) != KEY_SIZE:
            raise KekError("a KEK is 32 bytes (256 bits)")
        self._kek = kek
        self.key_id = key_id or kek_fingerprint(kek)

    def __repr__(self) -> str:
        return f"AesKwKek(key_id={self.key_id!r})"

    def wrap(self, dek: bytes) -> bytes:
        if len(dek) != KEY_SIZE:
            raise KekError("a DEK is 32 bytes")
        return bytes([ALG_AES_KW]) + key_wrap(self._kek, dek)

    def unwrap(self, blob: bytes) -> bytes:
        if not blob or blob[0] != ALG_AES_KW:
            raise KekError(f"wrapped DEK is not AES-KW; KEK {self.key_id} cannot open it")
        try:
            return key_unwrap(self._kek, bytes(blob[1:]))
        except AuthenticationFailed:
            raise KekError(f"KEK {self.key_id} does not unwrap this DEK (wrapped under another KEK?)") from None


def _decode_key_text(text: str, source: str) -> bytes:
    text = text.strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_SIZE:
        raise KekError(f"{source}: expected a 256-bit key as 64 hex digits or base64")
    return raw


def load_file_kek(path: str | os.PathLike[str]) -> AesKwKek:
    """Read a KEK file (raw 32 bytes or 64 hex digits), refusing loose permissions."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise KekError(f"{p}: cannot open KEK file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise KekError(f"{p}: KEK file is not a regular file")
        if mode & 0o077:
            raise KekError(f"{p}: KEK file is accessible by group or others (mode {mode & 0o777:o}); chmod 600")
        data = fh.read(4 * KEY_SIZE + 1)
    if len(data) == KEY_SIZE:
        return AesKwKek(data)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KekError(f"{p}: expected 32 raw bytes or 64 hex digits") from None
    return AesKwKek(_decode_key_text(text, str(p)))


def create_kek_file(path: str | os.PathLike[str]) -> None:
    """Write a new random KEK as hex, mode 0600; refuses to overwrite."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KekError(f"{p}: KEK file already exists; not overwriting") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(random_bytes(KEY_SIZE).hex() + "\n")


def load_env_kek(var: str) -> AesKwKek:
    value = os.environ.get(var)
    if not value:
        raise KekError(f"environment variable {var} (KEK) is not set")
    return AesKwKek(_decode_key_text(value, f"environment variable {var}"))


def _file_provider(uri: str) -> KekProvider:
    path = uri.removeprefix("file:")
    if path.startswith("//"):
        path = path[2:]
    if not path:
        raise KekError("file: KEK URI needs a path (file:/path/kek.bin)")
    return load_file_kek(path)


def _env_provider(uri: str) -> KekProvider:
    var = uri.removeprefix("env:")
    if not var:
        raise KekError("env: KEK URI needs a variable name (env:VAR)")
    return load_env_kek(var)


def _pkcs11_provider(uri: str) -> KekProvider:
    return Pkcs11Kek.from_uri(uri)


_BUILTIN: dict[str, Callable[[str], KekProvider]] = {
    "file": _file_provider,
    "env": _env_provider,
    "pkcs11": _pkcs11_provider,
}


def provider_from_uri(uri: str) -> KekProvider:
    """Build the provider for ``uri``: built-in schemes first, then entry-point plug-ins."""
    scheme, sep, _ = uri.partition(":")
    if not sep or not scheme:
        # The value is not echoed: a key pasted here by mistake must not reach a log.
        raise KekError("KEK setting is not a URI: expected file:PATH, env:VAR, pkcs11:... or a plug-in scheme")
    builtin = _BUILTIN.get(scheme)
    if builtin is not None:
        return builtin(uri)
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=scheme):
        provider = ep.load()(uri)
        if not isinstance(provider, KekProvider):
            raise KekError(f"KEK plug-in {scheme!r} ({ep.value}) did not return a KekProvider")
        return provider
    raise KekError(
        f"unknown KEK provider scheme {scheme!r}: built-in are file, env, pkcs11; "
        f"plug-ins register in entry point group {ENTRY_POINT_GROUP}"
    )
