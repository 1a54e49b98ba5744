"""tenantgate.proxy."""
