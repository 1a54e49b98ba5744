"""LISTEN/NOTIFY channel namespacing: each tenant only hears its own channels.

A tenant's channel ``jobs`` is ``<tenant>:jobs`` on the backend. Tenant ids containing ':' are
refused for channel operations: with them the prefix would not be unambiguous.

>>> namespaced("acme", "jobs")
'acme:jobs'
>>> strip_channel("acme", "acme:jobs"), strip_channel("acme", "globex:jobs")
('jobs', None)
"""

from __future__ import annotations

from .errors import Refused

NAMEDATALEN = 64  # the backend truncates longer identifiers, which could merge channels


def channel_prefix(tenant: str) -> str:
    """The prefix of every channel of ``tenant``.

    >>> try:
    ...     channel_prefix("a:b")
    ... except Refused as err:
    ...     print(err.sqlstate, err.message)
    0A000 LISTEN/NOTIFY is not available to tenant ids containing ':'
    """
    if ":" in tenant:
        raise Refused("0A000", "LISTEN/NOTIFY is not available to tenant ids containing ':'", "channel")
    return f"{tenant}:"


def namespaced(tenant: str, channel: str) -> str:
    """The backend channel for a tenant's channel name (refused when it would be truncated)."""
    name = channel_prefix(tenant) + channel
    if len(name.encode()) >= NAMEDATALEN:
        raise Refused("42622", f"channel name is too long: at most {NAMEDATALEN - 1} bytes "
                      "including the tenant prefix", "channel")
    return name


def strip_channel(tenant: str, channel: str) -> str | None:
    """A NotificationResponse's backend channel as the tenant knows it; None: not this tenant's."""
    prefix = f"{tenant}:"
    if ":" in tenant or not channel.startswith(prefix):
        return None
    return channel[len(prefix):]
