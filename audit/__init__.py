"""tenantgate.audit: tamper-evident, durable audit trail (hash chain + HMAC, signed markers, sinks)."""

from .errors import AuditConfigError, AuditError, AuditKeyError, AuditUnavailable
from .record import AuditEvent
from .remote import AuditServer, RemoteAuditLog
from .settings import AuditSettings, parse_audit_settings
from .sink import Sink
from .writer import AuditLog, AuditStats

__all__ = [
    "AuditConfigError", "AuditError", "AuditEvent", "AuditKeyError", "AuditLog", "AuditServer", "AuditSettings",
    "AuditStats", "AuditUnavailable", "RemoteAuditLog", "Sink", "parse_audit_settings",
]
