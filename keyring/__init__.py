"""tenantgate.keyring."""
