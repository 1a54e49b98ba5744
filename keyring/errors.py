"""Exceptions of tenantgate.keyring, and :class:`SqlStateError`, the base of every exception of
the project that carries a SQLSTATE (keyring is the lowest layer that has one; the rewriter's
Refused and the proxy's refusals, limits and admin errors subclass it).

Every error carries a PostgreSQL SQLSTATE (``.sqlstate``) so the proxy can turn
it into an ErrorResponse. Messages name tenants, tables, columns, key versions and
KEK ids, never plaintext values or key material.

>>> err = KekError("KEK file is missing")
>>> (err.sqlstate, err.message, err.reason, isinstance(err, SqlStateError))
('58000', 'KEK file is missing', '', True)
"""

from __future__ import annotations

from typing import Literal

DecryptReason = Literal["malformed", "tampered", "unknown_version", "destroyed", "not_loaded"]


class SqlStateError(Exception):
    """An error the proxy answers with an ErrorResponse: always (sqlstate, message, reason).

    ``sqlstate`` goes in the ErrorResponse; ``message`` is one sentence saying why (``str(err)``
    too); ``reason`` is a short stable code for metrics and audit ("" when there is none).

    >>> SqlStateError("42501", "no", "policy")
    SqlStateError('42501', 'no', 'policy')
    """

    def __init__(self, sqlstate: str, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sqlstate!r}, {self.message!r}, {self.reason!r})"


class KeyringError(SqlStateError):
    """Base class of the keyring's errors; each kind has its own SQLSTATE (``code``)."""

    code = "XX000"

    def __init__(self, message: str) -> None:
        super().__init__(self.code, message)


class KekError(KeyringError):
    """A KEK provider could not be built or refused to wrap/unwrap."""

    code = "58000"


class KeyStoreError(KeyringError):
    """The DEK store is missing, unreadable or inconsistent."""

    code = "58000"


class KeysNotLoadedError(KeyringError):
    """The hot path was asked for a tenant whose keys are not (or no longer) cached."""

    code = "55000"


class ShreddedError(KeyringError):
    """Encryption was asked for a tenant whose keys are destroyed."""

    code = "55000"


class DecryptError(KeyringError):
    """A ciphertext could not be opened; ``reason`` says why.

    ``unknown_version`` may mean another process rotated the tenant's key after
    this one loaded it: reload with ``ensure_loaded(tenant, force=True)`` and retry.
    """

    def __init__(self, message: str, reason: DecryptReason) -> None:
        # data_corrupted for damaged/mis-bound values; prerequisite state for key problems.
        SqlStateError.__init__(self, "XX001" if reason in ("malformed", "tampered") else "55000", message, reason)
        self.reason: DecryptReason = reason


class CodecError(KeyringError, ValueError):
    """A value is not valid input for its PostgreSQL type (text or binary format)."""

    def __init__(self, message: str, sqlstate: str = "22P02") -> None:
        SqlStateError.__init__(self, sqlstate, message)
