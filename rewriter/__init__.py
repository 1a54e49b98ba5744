"""tenantgate.rewriter."""
