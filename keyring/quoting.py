r"""SQL identifier and string-literal quoting: the one place the project builds SQL text from names
and values (security code: every caller interpolates what these return, nothing else).

It lives in keyring/, the lowest layer that writes SQL (``store_db.py`` creates its schema), so
every room can import it without an upward arrow: audit/ (the table sink; keyring never imports
audit, so that arrow makes no cycle), config/, rewriter/, proxy/ and bench/. It is a leaf: it
imports nothing of the project.

All literals assume ``standard_conforming_strings = on`` (the server default, and the proxy
requires it): a backslash is an ordinary character. NUL cannot be sent in SQL text (the
protocol's strings end at it), so a NUL is refused here rather than truncated there.

>>> quote_ident('Order "lines" 2'), quote_literal("it's \\ here")
('"Order ""lines"" 2"', "'it''s \\ here'")
>>> quote_qualified("public", "orders"), quote_qualified(None, "orders")
('"public"."orders"', '"orders"')
>>> render_identifier("orders"), render_identifier("Orders"), quote_literal_ascii("café")
('orders', '"Orders"', "U&'caf\\+0000e9'")

The way back, for the tokens these functions (and PostgreSQL's own output) write:

>>> unquote_ident('"Order ""lines"" 2"'), unquote_ident("Orders"), unquote_literal("'it''s'")
('Order "lines" 2', 'orders', "it's")
"""

from __future__ import annotations

import re

# What PostgreSQL's own output leaves bare (lower-case letters, digits, _ and $, not first digit);
# keywords are not looked up: render_identifier mirrors the backend's list-setting and the config's
# rendering, which never meet a keyword as a bare name.
_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")
# One standard-conforming literal token: not 'a' 'b' continuations, E'', U&'' or $$ (the parser's job).
_PLAIN_STRING = re.compile(r"'(?:[^']|'')*'", re.DOTALL)


def _no_nul(text: str, what: str) -> str:
    if "\x00" in text:
        raise ValueError(f"SQL {what} must not contain NUL characters")
    return text


def quote_ident(name: str) -> str:
    """A double-quoted identifier that PostgreSQL reads back as exactly ``name`` (case kept).

    PostgreSQL truncates any identifier past 63 bytes (NAMEDATALEN - 1), quoted or not; callers
    that need the full name must check its length (config does, in parse_identifier).

    >>> quote_ident("select"), quote_ident('a"b'), quote_ident("Ä b")
    ('"select"', '"a""b"', '"Ä b"')
    """
    return '"' + _no_nul(name, "identifier").replace('"', '""') + '"'


def quote_qualified(*parts: str | None) -> str:
    """``"schema"."name"`` (or ``"db"."schema"."name"``) part by part; a None part (no schema:
    the search_path decides) is left out.

    >>> quote_qualified("T1", 'x"y'), quote_qualified("a", "b", "c")
    ('"T1"."x""y"', '"a"."b"."c"')
    """
    return ".".join(quote_ident(p) for p in parts if p is not None)


def render_identifier(name: str) -> str:
    """The identifier as PostgreSQL prints it in a list setting (search_path) and as the config
    renders it: bare when it is a plain lower-case name, else quoted.

    >>> [render_identifier(n) for n in ("public", "T_Acme", "a$1", "1a")]
    ['public', '"T_Acme"', 'a$1', '"1a"']
    """
    return name if _PLAIN.fullmatch(name) else quote_ident(name)


def quote_literal(value: str) -> str:
    """A standard-conforming string literal: ``'...'`` with quotes doubled, backslashes literal.

    >>> quote_literal(""), quote_literal("a'b"), quote_literal("x\\\\y")
    ("''", "'a''b'", "'x\\\\y'")
    """
    return "'" + _no_nul(value, "literal").replace("'", "''") + "'"


def quote_literal_ascii(value: str) -> str:
    r"""Like :func:`quote_literal`, but pure ASCII: non-ASCII characters as ``U&''`` escapes, so the
    text means the same in every client_encoding a backend may be in (settings replayed on a pooled
    hand-over are sent before the encoding is known to match).

    >>> quote_literal_ascii("it's"), quote_literal_ascii("café\\"), quote_literal_ascii("😀")
    ("'it''s'", "U&'caf\\+0000e9\\\\'", "U&'\\+01f600'")
    """
    if value.isascii():
        return quote_literal(value)
    escaped = "".join(
        "''" if c == "'" else "\\\\" if c == "\\" else c if c.isascii() else f"\\+{ord(c):06x}"
        for c in _no_nul(value, "literal")
    )
    return "U&'" + escaped + "'"


def unquote_ident(token: str) -> str:
    """The name one identifier token stands for: a quoted one with its ``""`` undoubled (case kept),
    a bare one folded to lower case as PostgreSQL folds it.

    >>> unquote_ident('"a""b"'), unquote_ident('"Ä b"'), unquote_ident("Public")
    ('a"b', 'Ä b', 'public')
    """
    return token[1:-1].replace('""', '"') if token.startswith('"') else token.lower()


def unquote_literal(token: str) -> str | None:
    """The value of one standard-conforming string literal token (``'it''s'`` -> ``it's``); None
    for any other token (E'', U&'', $$, continuations, numbers), which only the parser reads right.

    >>> unquote_literal("'SJIS'"), unquote_literal("''"), unquote_literal("'a\\\\b'")
    ('SJIS', '', 'a\\\\b')
    >>> unquote_literal("sjis"), unquote_literal("E'a'"), unquote_literal("'a'\\n'b'"), unquote_literal("'")
    (None, None, None, None)
    """
    return token[1:-1].replace("''", "'") if _PLAIN_STRING.fullmatch(token) else None
