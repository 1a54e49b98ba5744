"""Literal lifting for the plan cache, with PostgreSQL's own scanner (ProxySQL's digest idea).

``WHERE aid = 17`` and ``WHERE aid = 42`` share one digest; the cached plan is a template whose
slots take the original literal tokens back. A literal token is self-contained (with
standard_conforming_strings on, which the proxy enforces), so putting another token of the same
class into the same slot cannot change how the rest of the statement parses.

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
"""

from __future__ import annotations

from dataclasses import dataclass

from pglast import parser

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


def lift(sql: str) -> Lifted | None:
    """Split out string and numeric literals; None when the text does not scan or when a literal's
    value changes how something else lexes (UESCAPE)."""
    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        return None
    gaps: list[str] = []
    digest: list[str] = []
    literals: list[str] = []
    kinds: list[str] = []
    pos = 0
    for token in tokens:
        if token.name == "UESCAPE":
            return None
        placeholder = _PLACEHOLDER.get(token.name)
        if placeholder is None:
            continue
        gap = sql[pos:token.start]
        gaps.append(gap)
        digest.append(gap)
        digest.append(placeholder)
        literals.append(sql[token.start:token.end + 1])
        kinds.append(token.name)
        pos = token.end + 1
    gaps.append(sql[pos:])
    digest.append(sql[pos:])
    return Lifted("".join(digest), tuple(literals), tuple(kinds), tuple(gaps))


@dataclass(frozen=True)
class Template:
    """Rewritten SQL with slots where the sentinels of the lifted literals came out."""

    parts: tuple[str, ...]
    slots: tuple[int, ...]

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
        pos = 0
        for token in tokens:
            if token.name not in _PLACEHOLDER:
                continue
            index = wanted.get(rewritten[token.start:token.end + 1])
            if index is None:
                continue
            parts.append(rewritten[pos:token.start])
            slots.append(index)
            pos = token.end + 1
        parts.append(rewritten[pos:])
        if sorted(slots) != list(range(count)):
            return None
        return cls(tuple(parts), tuple(slots))

    def fill(self, literals: tuple[str, ...]) -> str:
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            out.append(literals[slot])
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
