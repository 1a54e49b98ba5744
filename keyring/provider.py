"""What a KEK provider is, shared by kek.py (file/env keys, the URI registry) and hsm.py (PKCS#11).

Its own module so that the registry can name the HSM provider and the HSM provider the blob
tags without importing each other. Wrapped blobs are self-describing: the first byte names
the algorithm.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["ALG_AES_GCM", "ALG_AES_KW", "KekProvider"]

ALG_AES_KW = 0x01  # AES-KW (RFC 3394): file and env keys
ALG_AES_GCM = 0x02  # AES-256-GCM inside a PKCS#11 token


@runtime_checkable
class KekProvider(Protocol):
    """Wraps and unwraps DEKs. ``key_id`` names the KEK (never its material)."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, dek: bytes) -> bytes: ...

    def unwrap(self, blob: bytes) -> bytes: ...
