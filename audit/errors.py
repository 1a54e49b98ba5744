"""Exceptions raised by the audit package."""


class AuditError(Exception):
    """Base class of every audit error."""


class AuditConfigError(AuditError):
    """The [audit] section (or a command-line option) is invalid; the message names file and key."""


class AuditKeyError(AuditError):
    """An audit key could not be loaded; the message names the provider, never the key material."""


class AuditUnavailable(AuditError):
    """The audit sink cannot be written: the proxy must refuse the statement (on_failure = "refuse")."""
