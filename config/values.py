"""Parsers for the structured strings in the config: addresses and SQL identifiers.

Each raises ValueError with a message fit to follow `<file>: <key>: `.
"""

from __future__ import annotations

import ipaddress
import re

from tenantgate.keyring.quoting import render_identifier

__all__ = ["parse_address", "parse_host", "parse_identifier", "parse_qualified_name", "render_identifier"]

NAMEDATALEN = 64  # PostgreSQL truncates identifiers beyond NAMEDATALEN - 1 bytes

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?")
_DOTTED_DIGITS_RE = re.compile(r"[0-9.]+")
_UNQUOTED_RE = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")


def parse_host(text: str) -> str:
    """A host name, IPv4 address or (unbracketed) IPv6 address.

    >>> parse_host("db.internal"), parse_host("::1")
    ('db.internal', '::1')
    """
    if ":" in text:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an IPv6 address") from None
        return text
    if not _HOSTNAME_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid host name or IPv4 address")
    if _DOTTED_DIGITS_RE.fullmatch(text):
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid IPv4 address") from None
    return text


def parse_address(text: str) -> tuple[str, int]:
    """'host:port' or '[ipv6]:port' to (host, port).

    >>> parse_address("127.0.0.1:6432"), parse_address("[::1]:6432"), parse_address("db.local:5432")
    (('127.0.0.1', 6432), ('::1', 6432), ('db.local', 5432))
    >>> parse_address("::1:6432")
    Traceback (most recent call last):
    ValueError: IPv6 addresses must be written in brackets: [::1]:6432
    """
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep or ":" not in host:
            raise ValueError(f"expected [ipv6]:port, got {text!r}")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected host:port, got {text!r}")
        if ":" in host:
            raise ValueError("IPv6 addresses must be written in brackets: [::1]:6432")
    parse_host(host)
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def parse_identifier(text: str) -> str:
    """One SQL identifier: unquoted ones fold to lower case, "Quoted" ones keep their case.

    >>> parse_identifier("Tenant_ID"), parse_identifier('"MixedCase"'), parse_identifier('"a""b"')
    ('tenant_id', 'MixedCase', 'a"b')
    """
    names = _split_names(text)
    if len(names) != 1:
        raise ValueError(f"{text!r} must be a single identifier without a schema prefix")
    return names[0]


def parse_qualified_name(text: str) -> tuple[str | None, str]:
    """'table' or 'schema.table' (each part quoted or not) to (schema or None, table).

    >>> parse_qualified_name("public.Orders"), parse_qualified_name('"Sales"."Q1.data"')
    (('public', 'orders'), ('Sales', 'Q1.data'))
    """
    names = _split_names(text)
    if len(names) > 2:
        raise ValueError(f"{text!r} has more than one schema prefix")
    return (None, names[0]) if len(names) == 1 else (names[0], names[1])


def _split_names(text: str) -> list[str]:
    names: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            # Quoted part: "" is an embedded quote; the closing quote is the first lone one.
            j, buf = i + 1, []
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise ValueError(f"unterminated quoted identifier in {text!r}")
                buf.append(text[j:k])
                if text.startswith('""', k):
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            name = "".join(buf)
            if not name:
                raise ValueError(f"empty quoted identifier in {text!r}")
            if "\0" in name:
                raise ValueError("identifiers cannot contain NUL")
        else:
            m = _UNQUOTED_RE.match(text, i)
            if m is None:
                raise ValueError(
                    f"{text!r} is not a valid identifier (letters, digits, _ and $, not starting with "
                    'a digit or $; quote it with "..." otherwise)'
                )
            # PostgreSQL folds only ASCII letters in UTF-8 databases.
            name = m.group().translate(_ASCII_LOWER)
            i = m.end()
        if len(name.encode("utf-8")) >= NAMEDATALEN:
            raise ValueError(f"identifier {name!r} is longer than {NAMEDATALEN - 1} bytes")
        names.append(name)
        if i == n:
            return names
        if text[i] != ".":
            raise ValueError(f"{text!r} is not a valid identifier (unexpected {text[i]!r})")
        i += 1


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
