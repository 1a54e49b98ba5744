"""Literal lifting for the plan cache, with PostgreSQL's own scanner (ProxySQL's digest idea).

``WHERE aid = 17`` and ``WHERE aid = 42`` share one digest; the cached plan is a template whose
slots take the literals back. The client's token text is never re-inserted as such: each literal
is rendered in the proxy's canonical form (a standard-conforming ``'...'`` string with doubled
quotes, an ASCII number as scanned), which lexes as one token of the slot's class wherever the
sentinel did, so filling a slot cannot change how the rest of the statement parses.

>>> lifted = lift("SELECT abalance FROM accounts WHERE aid = 17 AND note = 'it''s'")
>>> lifted.digest
'SELECT abalance FROM accounts WHERE aid = ?i AND note = ?s'
>>> lifted.literals
('17', "'it''s'")
>>> lifted.with_sentinels()
"SELECT abalance FROM accounts WHERE aid = 700000000 AND note = '$tg1$'"
>>> t = Template.build("SELECT x FROM t WHERE aid = 700000000 AND note = '$tg1$'", 2)
>>> t.fill(("42", "'b'"))
"SELECT x FROM t WHERE aid = 42 AND note = 'b'"
>>> t.fill(("42", "E'it\\\\'s'"))  # an escape string comes back as its value, in canonical form
"SELECT x FROM t WHERE aid = 42 AND note = 'it''s'"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pglast
from pglast import ast, parser

from tenantgate.keyring.quoting import quote_literal

from .errors import Refused

_PLACEHOLDER = {"SCONST": "?s", "ICONST": "?i", "FCONST": "?f"}
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_SENTINEL_BASE = 700_000_000


def _sentinel(kind: str, index: int) -> str:
    """A token of the same class as the literal it stands for, unique within the statement."""
    if kind == "SCONST":
        return f"'$tg{index}$'"
    number = str(_SENTINEL_BASE + index)
    return number + ".5" if kind == "FCONST" else number


@dataclass(frozen=True)
class Lifted:
    """A statement split into its literal tokens and the text around them."""

    digest: str  # the text with each literal replaced by a class placeholder: the cache key
    literals: tuple[str, ...]  # the literal tokens' text, in order
    kinds: tuple[str, ...]
    gaps: tuple[str, ...]  # text between literals: len(literals) + 1 pieces

    def with_sentinels(self) -> str:
        out = [self.gaps[0]]
        for i, kind in enumerate(self.kinds):
            out.append(_sentinel(kind, i))
            out.append(self.gaps[i + 1])
        return "".join(out)


# The fast path lexes only text whose lexical structure is unambiguous: no backslash, '$' (dollar
# quotes, parameters), '&' (U&) or comments; prefixed strings (E'', B'', X'', N''), string
# continuations and numbers followed by identifier characters (0x1F, 1_000: PostgreSQL 15 and 16+
# disagree) make it give up too. Everything else goes to PostgreSQL's scanner.
_IDENT_CHARS = "A-Za-z0-9_$\\x80-\\U0010ffff"
_FAST_TOKEN = re.compile(  # the lookahead first: most positions start no token (the lookbehind is dearer)
    r"""(?=['"0-9.])(?:'(?:[^']++|'')*+'|"(?:[^"]++|"")*+"|['"]"""
    rf"|(?<![{_IDENT_CHARS}])(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"  # ASCII digits, as PostgreSQL
)
_CONTINUATION = re.compile(r"[ \t\n\r\f\v]*'")


def _is_ident_char(c: str) -> bool:
    return (c.isascii() and (c.isalnum() or c in "_$")) or c >= "\x80"


def _fast_literals(sql: str) -> list[tuple[int, int, str]] | None:
    """(start, end inclusive, kind) of each literal, or None when the fast lexer must not decide."""
    if "\\" in sql or "$" in sql or "&" in sql or "--" in sql or "/*" in sql:
        return None
    found = []
    for match in _FAST_TOKEN.finditer(sql):
        start, end = match.span()
        text = match.group()
        first = text[0]
        if len(text) == 1 and first in "'\"":
            return None  # an unterminated quote
        if first == '"':
            if text == '""':
                return None  # a zero-length identifier: a scanner error
            continue
        if first == "'":
            if start and _is_ident_char(sql[start - 1]):
                return None  # E'' / B'' / X'' / N''
            if _CONTINUATION.match(sql, end):
                return None  # 'a' 'b' or a continuation across lines
            found.append((start, end - 1, "SCONST"))
            continue
        if (end < len(sql) and (sql[end] == "." or _is_ident_char(sql[end]))) or (
                start and sql[start - 1] == "."):
            return None  # 0x1F, 1_000, 1..2, t.5: left to PostgreSQL's scanner
        found.append((start, end - 1, "FCONST" if "." in text or "e" in text or "E" in text else "ICONST"))
    return found


def lift(sql: str) -> Lifted | None:
    """Split out string and numeric literals; None when the text does not scan or when a literal's
    value changes how something else lexes (UESCAPE)."""
    fast = _fast_literals(sql)
    if fast is not None:
        return _assemble(sql, fast)
    return lift_with_scanner(sql)


def _assemble(sql: str, spans: list[tuple[int, int, str]]) -> Lifted:
    gaps: list[str] = []
    digest: list[str] = []
    literals: list[str] = []
    kinds: list[str] = []
    pos = 0
    for start, end, kind in spans:
        gap = sql[pos:start]
        gaps.append(gap)
        digest.append(gap)
        digest.append(_PLACEHOLDER[kind])
        literals.append(sql[start:end + 1])
        kinds.append(kind)
        pos = end + 1
    gaps.append(sql[pos:])
    digest.append(sql[pos:])
    return Lifted("".join(digest), tuple(literals), tuple(kinds), tuple(gaps))


def lift_with_scanner(sql: str) -> Lifted | None:
    """lift() with PostgreSQL's own scanner (pglast.parser.scan): the reference the fast path
    must agree with."""
    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        return None
    spans = []
    for token in tokens:
        if token.name == "UESCAPE":
            return None
        if token.name in _PLACEHOLDER:
            spans.append((token.start, token.end, token.name))
    return _assemble(sql, spans)


# The canonical forms: a token of exactly one class, whose text is its value as PostgreSQL reads it.
_CANONICAL = {
    "SCONST": re.compile(r"'(?:[^']|'')*'"),
    "ICONST": re.compile(r"[0-9]+"),
    "FCONST": re.compile(r"(?:[0-9]+\.[0-9]+|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?"),
}


def string_value(token: str) -> str:
    r"""The value of one string literal token (E'', $$ $$, U&'', continuations), as PostgreSQL's
    parser reads it.

    >>> string_value("E'a\\tb\\''"), string_value("$q$it's$q$"), string_value("'a'\n'b'")
    ("a\tb'", "it's", 'ab')
    """
    try:
        stmt = pglast.parse_sql("SELECT " + token)[0].stmt
        const = stmt.targetList[0].val  # type: ignore[union-attr,index]
    except (parser.ParseError, AttributeError, IndexError, TypeError):
        const = None
    if not isinstance(const, ast.A_Const) or not isinstance(const.val, ast.String):
        raise Refused("0A000", "a string literal could not be read back", "literal_form")
    return str(const.val.sval)


def canonical_literal(kind: str, token: str, before: str = "", after: str = "") -> str:
    """``token`` (a literal of class ``kind`` between the texts ``before`` and ``after``) in the
    proxy's canonical form; Refused when a number cannot be written so that it lexes alone.

    >>> canonical_literal("SCONST", "$$it's$$"), canonical_literal("ICONST", "42", " ", ")")
    ("'it''s'", '42')
    >>> canonical_literal("FCONST", "1.", " ", "..")
    Traceback (most recent call last):
    ...
    rewriter.errors.Refused: the numeric literal 1. cannot be re-inserted as written; write it with digits ...

    """
    if _CANONICAL["SCONST"].fullmatch(token):
        # a number's slot may take the proxy's own string (a sealed value) unless it would continue a string
        if kind == "SCONST" or not _CONTINUATION.match(after):
            return token
    elif kind == "SCONST":
        return quote_literal(string_value(token))
    # a number must not run into the text around it (x.5, 1..2, 1e) and is ASCII digits only
    glued = (after[:1] and (after[0] == "." or _is_ident_char(after[0]))) or (
        token.startswith(".") and before[-1:] and (before[-1] == "." or _is_ident_char(before[-1])))
    if _CANONICAL[kind].fullmatch(token) and not glued:
        return token
    raise Refused(
        "0A000",
        f"the numeric literal {token} cannot be re-inserted as written; write it with digits after the point"
        if token.endswith(".") else f"the numeric literal {token} is not in a form tenantgate re-inserts",
        "literal_form",
    )


@dataclass(frozen=True)
class Template:
    """Rewritten SQL with slots where the sentinels of the lifted literals came out; ``kinds`` is
    the token class of each slot."""

    parts: tuple[str, ...]
    slots: tuple[int, ...]
    kinds: tuple[str, ...]

    @classmethod
    def build(cls, rewritten: str, count: int) -> Template | None:
        """Find each of ``count`` sentinels exactly once among the output's tokens, else None."""
        wanted = {}
        for i in range(count):
            for kind in _PLACEHOLDER:
                wanted[_sentinel(kind, i)] = i
        try:
            tokens = parser.scan(rewritten)
        except parser.ParseError:
            return None
        parts: list[str] = []
        slots: list[int] = []
        kinds: list[str] = []
        pos = 0
        for token in tokens:
            if token.name not in _PLACEHOLDER:
                continue
            index = wanted.get(rewritten[token.start:token.end + 1])
            if index is None:
                continue
            parts.append(rewritten[pos:token.start])
            slots.append(index)
            kinds.append(token.name)
            pos = token.end + 1
        parts.append(rewritten[pos:])
        if sorted(slots) != list(range(count)):
            return None
        return cls(tuple(parts), tuple(slots), tuple(kinds))

    def literal(self, i: int, token: str) -> str:
        """The canonical text of ``token`` for the template's ``i``-th slot (see canonical_literal)."""
        return canonical_literal(self.kinds[i], token, self.parts[i], self.parts[i + 1])

    def fill(self, literals: tuple[str, ...]) -> str:
        out = [self.parts[0]]
        for i, (slot, part) in enumerate(zip(self.slots, self.parts[1:], strict=True)):
            out.append(self.literal(i, literals[slot]))
            out.append(part)
        return "".join(out)


def trim_comments(statement: str) -> str:
    """Drop comments after a statement's last token, so that joining statements with '; ' can
    never comment out the next one.

    >>> trim_comments("SELECT 1 -- why")
    'SELECT 1'
    """
    tokens = [t for t in parser.scan(statement) if t.name not in _COMMENTS]
    return statement[:tokens[-1].end + 1] if tokens else ""


def version_dependent_number(sql: str) -> bool:
    """True when a numeric literal is written in a PostgreSQL 16+ form (0x1F, 0o17, 0b1, 1_000):
    PostgreSQL 15 lexes those as a number followed by an identifier, so the parser we trust and
    the backend would disagree.

    >>> version_dependent_number("SELECT 0x1F"), version_dependent_number("SELECT 1.5e3, 2")
    (True, False)
    """
    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        return False  # the parser reports it
    return any(t.name in ("ICONST", "FCONST") and sql[t.start:t.end + 1].strip("0123456789.eE+-")
               for t in tokens)
