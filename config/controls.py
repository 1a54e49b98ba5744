"""Config facts and load-time enforcement of the enabled frameworks (data types: compliance.py).

Each fact is computed from a loaded `Config` together with the config key an operator changes to move
it, so a refusal names the key: ``tls.mode: weaker than pci-dss-4.0 4.2.1 requires (...)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .compliance import FACT_NAMES, Control, Requirement
from .schema import Config

__all__ = ["FACTS", "Fact", "enforce", "evaluate", "violations"]

log = logging.getLogger("tenantgate.config")


@dataclass(frozen=True, slots=True)
class Fact:
    value: Any
    key: str  # the config key an operator changes to move this value


_SSL_STRENGTH = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _weakest_backend(c: Config) -> Fact:
    backends = [("backend", c.backend)] + [
        (f"tenants.{t.name}.backend", t.backend) for t in c.tenants.values() if t.backend is not None
    ]
    where, weakest = min(backends, key=lambda kb: _SSL_STRENGTH.index(kb[1].sslmode))
    return Fact(weakest.sslmode, f"{where}.sslmode")


def _superuser_allowed(c: Config) -> Fact:
    allowed = [f"tenants.{t.name}.backend" for t in c.tenants.values() if t.backend and t.backend.allow_superuser]
    if c.backend.allow_superuser:
        allowed.insert(0, "backend")
    return Fact(bool(allowed), f"{allowed[0] if allowed else 'backend'}.allow_superuser")


def _audit(attr: str) -> Callable[[Config], Fact]:
    def get(c: Config) -> Fact:
        if c.audit is None:
            return Fact(None, "audit")
        return Fact(getattr(c.audit, attr), f"audit.{attr}")

    return get


def _retention(attr: str) -> Callable[[Config], Fact]:
    """Days a record is kept (hot, or in all): without [audit.retention] nothing is ever deleted, and
    archive_days = 0 means kept forever, so both count as unbounded (inf)."""
    def get(c: Config) -> Fact:
        retention = c.audit.retention if c.audit is not None else None
        if retention is None:
            return Fact(math.inf, "audit.retention")
        days: int = getattr(retention, attr)
        return Fact(math.inf if attr == "archive_days" and days == 0 else days, f"audit.retention.{attr}")

    return get


def _md5_logins(c: Config) -> Fact:
    weak = [f"users.{u.name}.auth" for u in c.users.values() if u.auth == "md5"]
    weak += [f"admins.{a.name}.auth" for a in c.admins.values() if a.auth == "md5"]
    return Fact(len(weak), weak[0] if weak else "server.auth_method")


def _trusted_writers(c: Config) -> Fact:
    writers = [f"users.{u.name}.role" for u in c.users.values() if u.trusted and u.role != "readonly"]
    return Fact(len(writers), writers[0] if writers else "users")


def _unlimited_tenants(c: Config) -> Fact:
    if c.limits.statements_per_second is None:
        unlimited = [f"tenants.{t.name}.statements_per_second" for t in c.tenants.values()
                     if t.limits.statements_per_second is None]
        if not c.tenants or c.oidc is not None:  # tenants known only from a token get [limits]
            unlimited.insert(0, "limits.statements_per_second")
    else:
        unlimited = []
    return Fact(len(unlimited), unlimited[0] if unlimited else "limits.statements_per_second")


def _unencrypted_sensitive(c: Config) -> Fact:
    sensitive = c.compliance.sensitive_columns if c.compliance is not None else ()
    missing = [name for name in sensitive
               if c.encryption is None or c.encryption.column(*name.rsplit(".", 1)) is None]
    return Fact(len(missing), "encryption.columns" if c.encryption else "encryption")


FACTS: Mapping[str, Callable[[Config], Fact]] = {
    "tls.mode": lambda c: Fact(c.tls.mode, "tls.mode"),
    "backend.sslmode": _weakest_backend,
    "backend.allow_superuser": _superuser_allowed,
    "audit.enabled": lambda c: Fact(c.audit is not None, "audit"),
    "audit.durability": _audit("durability"),
    "audit.flush_interval_ms": _audit("flush_interval_ms"),
    "audit.on_failure": _audit("on_failure"),
    "audit.log_parameters": _audit("log_parameters"),
    "audit.checkpoint_every": _audit("checkpoint_every"),
    "audit.retention.hot_days": _retention("hot_days"),
    "audit.retention.archive_days": _retention("archive_days"),
    "audit.signed": lambda c: Fact(c.audit is not None and c.audit.signing_key is not None, "audit.signing_key"),
    "encryption.enabled": lambda c: Fact(c.encryption is not None, "encryption.kek"),
    "encryption.unencrypted_sensitive": _unencrypted_sensitive,
    "server.auth_method": lambda c: Fact(c.server.auth_method, "server.auth_method"),
    "users.md5_logins": _md5_logins,
    "users.trusted_writers": _trusted_writers,
    "limits.unlimited_tenants": _unlimited_tenants,
}
assert set(FACTS) == FACT_NAMES, "config/compliance.py FACT_NAMES and FACTS must list the same facts"


def evaluate(req: Requirement, config: Config) -> tuple[bool, Fact]:
    fact = FACTS[req.fact](config)
    return req.holds(fact.value), fact


def violations(config: Config, controls: Sequence[Control]) -> list[tuple[str, str]]:
    """(key, message) for each config requirement of ``controls`` that ``config`` does not meet."""
    out = []
    for control in controls:
        for req in control.config:
            ok, fact = evaluate(req, config)
            if not ok:
                out.append((fact.key, f"weaker than {control.name} requires ({control.requirement}): "
                                      f"needs {req.describe()}, is {fact.value!r}"))
    return out


def enforce(config: Config) -> tuple[Config, list[tuple[str, str]]]:
    """Problems to refuse the config with (enforce = true), or the config carrying them as warnings."""
    if config.compliance is None:
        return config, []
    found = violations(config, config.compliance.controls())
    if config.compliance.enforce or not found:
        return config, found
    for key, message in found:
        log.warning("%s: %s: %s (compliance enforce = false)", config.source, key, message)
    warned = replace(config.compliance, warnings=tuple(f"{key}: {message}" for key, message in found))
    return replace(config, compliance=warned), []
