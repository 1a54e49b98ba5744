"""The only module that touches ``cryptography.hazmat``: AEADs, key wrap, HKDF.

Everything else in tenantgate.keyring is a recipe over these few calls, so an
audit of the cryptography used starts and ends here.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

GCM_NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32


class AuthenticationFailed(Exception):
    """An AEAD tag or key-wrap integrity check did not verify."""


def random_bytes(size: int) -> bytes:
    """Bytes from the OS CSPRNG."""
    return os.urandom(size)


def hkdf_sha256(key: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869) without salt: derives independent subkeys of one DEK."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


class Gcm:
    """AES-256-GCM with caller-supplied 96-bit nonces; the tag is appended."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Gcm(<key hidden>)"

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise AuthenticationFailed from None


class Siv:
    """AES-SIV (RFC 5297) with a 512-bit key: deterministic authenticated encryption.

    Output is the 16-byte synthetic IV followed by the ciphertext.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 2 * KEY_SIZE:
            raise ValueError("AES-256-SIV needs a 64-byte key")
        self._aead = AESSIV(key)

    def __repr__(self) -> str:
        return "Siv(<key hidden>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(plaintext, [aad])

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed, [aad])
        except InvalidTag:
            raise AuthenticationFailed from None


def key_wrap(kek: bytes, key: bytes) -> bytes:
    """AES Key Wrap (RFC 3394) of a 256-bit key under a 256-bit KEK: 40 bytes out."""
    return aes_key_wrap(kek, key)


def key_unwrap(kek: bytes, wrapped: bytes) -> bytes:
    try:
        return aes_key_unwrap(kek, wrapped)
    except (InvalidUnwrap, ValueError):
        raise AuthenticationFailed from None
