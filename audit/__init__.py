"""tenantgate.audit."""
