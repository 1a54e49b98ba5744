"""The one exception the rewriter raises: a statement that must not reach the backend."""

from __future__ import annotations


class Refused(Exception):
    """A statement (or whole message) refused before anything reaches the backend.

    ``sqlstate`` is what the proxy puts in the ErrorResponse: 42501 for policy refusals, 42601
    for syntax errors, 0A000 for legitimate constructs the rewriter does not support.
    ``reason`` is a short stable code for metrics and audit; ``message`` one sentence saying why
    (it names tables, functions and settings, never values). ``position``: PostgreSQL's error
    position (1-based character index into the client's text), when the refusal has one.

    >>> err = Refused("ddl", "CREATE TABLE is not allowed for tenants")
    >>> (err.sqlstate, err.reason, str(err))
    ('42501', 'ddl', 'CREATE TABLE is not allowed for tenants')
    """

    def __init__(self, reason: str, message: str, sqlstate: str = "42501", position: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.sqlstate = sqlstate
        self.position = position

    def __repr__(self) -> str:
        return f"Refused({self.reason!r}, {self.message!r}, sqlstate={self.sqlstate!r})"
