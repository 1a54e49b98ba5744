"""The one exception the rewriter raises: a statement that must not reach the backend."""

from __future__ import annotations

from tenantgate.keyring.errors import SqlStateError


class Refused(SqlStateError):
    """A statement (or whole message) refused before anything reaches the backend.

    ``sqlstate`` is what the proxy puts in the ErrorResponse: 42501 for policy refusals, 42601
    for syntax errors, 0A000 for legitimate constructs the rewriter does not support.
    ``reason`` is a short stable code for metrics and audit; ``message`` one sentence saying why
    (it names tables, functions and settings, never values). ``position``: PostgreSQL's error
    position (1-based character index into the client's text), when the refusal has one.

    >>> err = Refused("42501", "CREATE TABLE is not allowed for tenants", "ddl")
    >>> (err.sqlstate, err.reason, str(err))
    ('42501', 'ddl', 'CREATE TABLE is not allowed for tenants')
    """

    def __init__(self, sqlstate: str, message: str, reason: str = "", position: int | None = None) -> None:
        super().__init__(sqlstate, message, reason)
        self.position = position
