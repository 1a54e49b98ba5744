"""tenantgate.rewriter: SQL in, tenant-scoped SQL out.

PostgreSQL's own parser (pglast) lexes, splits, classifies, rewrites (on its AST) and verifies;
every plan is checked again on its output text before it is cached or used.
"""

from .channels import strip_channel
from .classify import statement_names
from .errors import Refused
from .policy import Policy
from .rewriter import Plan, Rewriter

__all__ = ["Plan", "Policy", "Refused", "Rewriter", "statement_names", "strip_channel"]
