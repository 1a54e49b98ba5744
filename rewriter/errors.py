"""The one exception the rewriter raises: a statement that must not reach the backend."""

from __future__ import annotations

from tenantgate.keyring.errors import SqlStateError


class Refused(SqlStateError):
    """A statement (or whole message) refused before anything reaches the backend.

    ``sqlstate`` is what the proxy puts in the ErrorResponse: 42501 for policy refusals, 42601
    for syntax errors, 0A000 for legitimate constructs the rewriter does not support.
    ``reason`` is a short stable code for metrics and audit; ``message`` one sentence saying why
    (it names tables, functions and settings, never values).

    >>> err = Refused("42501", "CREATE TABLE is not allowed for tenants", "ddl")
    >>> (err.sqlstate, err.reason, str(err))
    ('42501', 'ddl', 'CREATE TABLE is not allowed for tenants')
    """
