"""Which client startup parameters reach the backend.

The client's ``user`` is a proxy user and ``database`` is routed by config; every
other setting, given directly or through ``options=-c name=value``, must be on an
allow-list of harmless session settings. Anything that could change identity,
visibility or lexing (role, session_authorization, search_path, row_security,
standard_conforming_strings, ``tenantgate.*``) or the plans the backend chooses (planner
switches: side channels on other tenants' volume) is refused: the tenant comes from
authentication only. ``client_encoding`` is allowed here, and only here: it is fixed for the
session (proxy/encoding.py).

>>> filter_params({"user": "a", "database": "d", "application_name": "x", "options": "-c TimeZone=UTC"})
({'application_name': 'x', 'TimeZone': 'UTC'}, [])
>>> try:
...     filter_params({"user": "a", "options": "-c role=postgres"})
... except StartupRefused as e:
...     print(e)
setting "role" may not be set by a client (42501)
>>> try:
...     filter_params({"user": "a", "options": "-c enable_indexscan=off"})
... except StartupRefused as e:
...     print(e)
setting "enable_indexscan" may not be set by a client (42501)
>>> try:
...     filter_params({"user": "a", "Client_Encoding": "UTF8", "options": "-c client_encoding=SJIS"})
... except StartupRefused as e:
...     print(e)
setting "client_encoding" is given more than once with different values (08P01)
"""

from __future__ import annotations

import shlex

from tenantgate.keyring.errors import SqlStateError

# Session settings a tenant may choose; compared case-insensitively like PostgreSQL does.
ALLOWED_SETTINGS = frozenset(
    s.lower()
    for s in (
        "application_name",
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "extra_float_digits",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "client_min_messages",
        "bytea_output",
        "default_transaction_isolation",
        "default_transaction_read_only",
        "default_transaction_deferrable",
        "transaction_isolation",
        "transaction_read_only",
        "transaction_deferrable",
        "work_mem",
        "lc_messages",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "jit",
        "xmloption",
        "timezone_abbreviations",
        "vacuum_cost_delay",
    )
)
# Deliberately absent: planner switches and costs (enable_*, random_page_cost, geqo, ...) and
# gin_fuzzy_search_limit (it caps index matches of every tenant before the tenant filter). They force
# plans whose timing or row counts measure every tenant's rows, not just the session's (issue 12, family 7).

# Startup keys that are protocol, not settings.
_ROUTING = {"user", "database"}


class StartupRefused(SqlStateError):
    """A startup packet refused before any backend is involved."""

    def __str__(self) -> str:
        return f"{self.message} ({self.sqlstate})"


def _parse_options(options: str) -> list[tuple[str, str]]:
    """``-c a=b --c=d -ce=f`` as libpq/PostgreSQL split them (backslash escapes spaces)."""
    try:
        words = shlex.split(options.replace("\\ ", "\x00"), posix=True)
    except ValueError:
        raise StartupRefused("08P01", "invalid command-line options in startup packet") from None
    words = [w.replace("\x00", " ") for w in words]
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-c" and i + 1 < len(words):
            setting = words[i + 1]
            i += 2
        elif (w.startswith("-c") and len(w) > 2) or (w.startswith("--") and "=" in w):
            setting = w[2:]
            i += 1
        else:
            raise StartupRefused("08P01", f"invalid command-line option {w!r} in startup packet")
        name, sep, value = setting.partition("=")
        if not sep:
            raise StartupRefused("08P01", f"option {name!r} requires a value")
        out.append((name.replace("-", "_"), value))
    return out


def filter_params(params: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(settings to send to the backend, protocol extensions to report as unrecognised)."""
    settings: dict[str, str] = {}
    extensions: list[str] = []
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if key in _ROUTING:
            continue
        if key.startswith("_pq_."):
            extensions.append(key)
        elif key == "options":
            pairs.extend(_parse_options(value))
        elif key == "replication":
            if value.lower() not in ("false", "off", "no", "0"):
                raise StartupRefused("42501", "replication connections are not allowed through tenantgate")
        else:
            pairs.append((key, value))
    seen: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if key not in ALLOWED_SETTINGS:
            raise StartupRefused("42501", f'setting "{name}" may not be set by a client')
        if key in seen and settings[seen[key]] != value:
            # which one the backend applies depends on its processing order: never guess (client_encoding!)
            raise StartupRefused("08P01", f'setting "{name}" is given more than once with different values')
        seen.setdefault(key, name)
        settings[seen[key]] = value
    return settings, extensions
