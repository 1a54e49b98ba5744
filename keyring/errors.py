"""Exceptions of tenantgate.keyring.

Every error carries a PostgreSQL SQLSTATE (``.sqlstate``) so the proxy can turn
it into an ErrorResponse. Messages name tenants, tables, columns, key versions and
KEK ids, never plaintext values or key material.
"""

from __future__ import annotations

from typing import Literal

DecryptReason = Literal["malformed", "tampered", "unknown_version", "destroyed", "not_loaded"]


class KeyringError(Exception):
    """Base class; ``sqlstate`` is the SQLSTATE the proxy reports."""

    sqlstate = "XX000"


class KekError(KeyringError):
    """A KEK provider could not be built or refused to wrap/unwrap."""

    sqlstate = "58000"


class KeyStoreError(KeyringError):
    """The DEK store is missing, unreadable or inconsistent."""

    sqlstate = "58000"


class KeysNotLoadedError(KeyringError):
    """The hot path was asked for a tenant whose keys are not (or no longer) cached."""

    sqlstate = "55000"


class ShreddedError(KeyringError):
    """Encryption was asked for a tenant whose keys are destroyed."""

    sqlstate = "55000"


class DecryptError(KeyringError):
    """A ciphertext could not be opened; ``reason`` says why.

    ``unknown_version`` may mean another process rotated the tenant's key after
    this one loaded it: reload with ``ensure_loaded(tenant, force=True)`` and retry.
    """

    def __init__(self, message: str, reason: DecryptReason) -> None:
        super().__init__(message)
        self.reason: DecryptReason = reason

    @property
    def sqlstate(self) -> str:  # type: ignore[override]
        # data_corrupted for damaged/mis-bound values; prerequisite state for key problems.
        return "XX001" if self.reason in ("malformed", "tampered") else "55000"


class CodecError(KeyringError, ValueError):
    """A value is not valid input for its PostgreSQL type (text or binary format)."""

    def __init__(self, message: str, sqlstate: str = "22P02") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
