"""Compliance at run time: ``tenantgate compliance check|report`` and ``tenantgate advise``.

The frameworks and the config facts they test are data in tenantgate.config.compliance; here are
the checks that need a live backend (runtime.py), the audit log (auditlog.py, the one module that
reads tenantgate.audit), the control table (check.py), the per-tenant evidence pack (evidence.py,
html.py) and the configuration assistant (advise.py, advise_apply.py).
"""
