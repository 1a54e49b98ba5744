"""The ciphertext format of an encrypted field (format version 1).

Every encrypted value is one ``bytea``::

    offset  size  field
    0       1     magic/format version: 0xE1 ("encrypted, format 1")
    1       1     mode: 0x01 randomized (AES-256-GCM), 0x02 deterministic (AES-256-SIV)
    2       4     tenant key (DEK) version, unsigned big-endian
    randomized:     6 +12 nonce (random 96 bits) | AES-256-GCM ciphertext | 16-byte tag
    deterministic:  6 +16 synthetic IV (the SIV tag) | AES-SIV ciphertext

Overhead: 34 bytes randomized, 22 bytes deterministic. The plaintext is the
value's canonical bytes (see :mod:`tenantgate.keyring.pgtypes`).

Associated data (authenticated, not stored) binds the value to its place::

    header(6 bytes) | u16 len | tenant | u16 len | table | u16 len | column   (UTF-8)

so a value copied to another tenant, table or column, or a header edited to
claim another version or mode, fails to decrypt. Table and column are the names
exactly as configured in ``[[encryption.columns]]`` (folded to lower case).

Subkeys: each 256-bit DEK is expanded with HKDF-SHA256 (no salt) into a 32-byte
AES-256-GCM key (info ``tenantgate/v1/aes-256-gcm``) and a 64-byte AES-SIV key
(info ``tenantgate/v1/aes-256-siv``), so the two modes never share a key.
Deterministic mode reveals equality of values within one tenant, table and
column (that is its purpose: equality search and unique indexes) and nothing
across them. Randomized mode uses fresh random nonces; rotate a tenant's key
well before 2**32 encryptions under one version.
"""

from __future__ import annotations

import functools
import struct
from enum import StrEnum

from .errors import DecryptError
from .primitives import GCM_NONCE_SIZE, TAG_SIZE, AuthenticationFailed, Gcm, Siv, hkdf_sha256, random_bytes

MAGIC = 0xE1
HEADER = struct.Struct(">BBI")
MAX_VERSION = 0xFFFFFFFF
_GCM_INFO = b"tenantgate/v1/aes-256-gcm"
_SIV_INFO = b"tenantgate/v1/aes-256-siv"


class Mode(StrEnum):
    RANDOMIZED = "randomized"
    DETERMINISTIC = "deterministic"


_MODE_BYTE = {Mode.RANDOMIZED: 0x01, Mode.DETERMINISTIC: 0x02}
_BYTE_MODE = {v: k for k, v in _MODE_BYTE.items()}
_MIN_SIZE = {Mode.RANDOMIZED: HEADER.size + GCM_NONCE_SIZE + TAG_SIZE, Mode.DETERMINISTIC: HEADER.size + TAG_SIZE}


class DataKey:
    """One tenant DEK version, expanded into its per-mode AEAD instances."""

    __slots__ = ("_gcm", "_siv", "version")

    def __init__(self, version: int, dek: bytes) -> None:
        if len(dek) != 32:
            raise ValueError("a DEK is 32 bytes")
        if not 1 <= version <= MAX_VERSION:
            raise ValueError("key version out of range")
        self.version = version
        self._gcm = Gcm(hkdf_sha256(dek, _GCM_INFO, 32))
        self._siv = Siv(hkdf_sha256(dek, _SIV_INFO, 64))

    def __repr__(self) -> str:
        return f"DataKey(version={self.version}, <key hidden>)"


def _field(name: str) -> bytes:
    raw = name.encode()
    if len(raw) > 0xFFFF:
        raise ValueError("tenant/table/column name too long")
    return len(raw).to_bytes(2, "big") + raw


def make_header(mode: Mode, version: int) -> bytes:
    """The 6 header bytes; a ciphertext starting with them is under ``version`` in ``mode``."""
    return HEADER.pack(MAGIC, _MODE_BYTE[mode], version)


def associated_data(header: bytes, tenant: str, table: str, column: str) -> bytes:
    return header + _names(tenant, table, column)


@functools.lru_cache(maxsize=4096)
def _names(tenant: str, table: str, column: str) -> bytes:
    """The AAD's length-prefixed names: the same few per session, built once (every field read and written)."""
    return _field(tenant) + _field(table) + _field(column)


def parse_header(ciphertext: bytes) -> tuple[Mode, int]:
    """Mode and key version of a ciphertext, checking only its framing."""
    if len(ciphertext) < HEADER.size:
        raise DecryptError("not a tenantgate ciphertext: too short", "malformed")
    magic, mode_byte, version = HEADER.unpack_from(ciphertext)
    if magic != MAGIC:
        raise DecryptError("not a tenantgate ciphertext: unknown format byte", "malformed")
    mode = _BYTE_MODE.get(mode_byte)
    if mode is None:
        raise DecryptError("not a tenantgate ciphertext: unknown mode byte", "malformed")
    if len(ciphertext) < _MIN_SIZE[mode]:
        raise DecryptError("not a tenantgate ciphertext: truncated", "malformed")
    return mode, version


def encrypt_value(
    key: DataKey, mode: Mode, tenant: str, table: str, column: str, plaintext: bytes,
    *, nonce: bytes | None = None,
) -> bytes:
    """Seal ``plaintext``; ``nonce`` is only for known-answer vectors (randomized mode)."""
    header = make_header(mode, key.version)
    aad = associated_data(header, tenant, table, column)
    if mode is Mode.DETERMINISTIC:
        if nonce is not None:
            raise ValueError("deterministic mode takes no nonce")
        return header + key._siv.seal(plaintext, aad)
    if nonce is None:
        nonce = random_bytes(GCM_NONCE_SIZE)
    elif len(nonce) != GCM_NONCE_SIZE:
        raise ValueError("nonce must be 12 bytes")
    return header + nonce + key._gcm.seal(nonce, plaintext, aad)


def decrypt_value(key: DataKey, tenant: str, table: str, column: str, ciphertext: bytes) -> bytes:
    """Open a ciphertext whose header names ``key.version``."""
    mode, version = parse_header(ciphertext)
    if version != key.version:
        raise ValueError("ciphertext is for another key version")
    header = ciphertext[: HEADER.size]
    aad = associated_data(header, tenant, table, column)
    try:
        if mode is Mode.DETERMINISTIC:
            return key._siv.open(ciphertext[HEADER.size :], aad)
        body = HEADER.size + GCM_NONCE_SIZE
        return key._gcm.open(ciphertext[HEADER.size : body], ciphertext[body:], aad)
    except AuthenticationFailed:
        raise DecryptError(
            f"ciphertext does not authenticate for tenant {tenant!r}, {table}.{column}: "
            "tampered, or copied from another tenant, table or column",
            "tampered",
        ) from None
