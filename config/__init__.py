"""tenantgate.config: the TOML schema, loading and validation.

`load_config(path)` returns a frozen `Config` or raises `ConfigError` listing every problem as
`<file>: <dotted.key>: <what is wrong>`.
"""

from .load import EXTERNAL_SECTIONS, check_config, load_config
from .schema import (
    TLS,
    Admin,
    Backend,
    Config,
    ConfigError,
    Listen,
    Logging,
    Problem,
    ScopedTable,
    Scoping,
    Secret,
    Server,
    Tenant,
    User,
)

__all__ = [
    "EXTERNAL_SECTIONS",
    "TLS",
    "Admin",
    "Backend",
    "Config",
    "ConfigError",
    "Listen",
    "Logging",
    "Problem",
    "ScopedTable",
    "Scoping",
    "Secret",
    "Server",
    "Tenant",
    "User",
    "check_config",
    "load_config",
]
