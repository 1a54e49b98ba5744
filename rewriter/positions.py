"""Error positions: what PostgreSQL reports as ``P`` for the text the client sent.

The backend runs the proxy's text (scoped, deparsed, literals re-rendered, statements re-joined),
so the 1-based character position in its ErrorResponse points into that text. Both texts lex with
PostgreSQL's own scanner; the token streams are aligned and the position moves to the client's
token that produced the backend's. A position inside text the proxy added (a tenant predicate, a
schema qualifier) has no client token: it is dropped rather than guessed, and a mapped position
is never outside the client's text. Only the error path pays for this.

>>> client = "select  nosuch from orders o where o.x = 1"
>>> sent = "SELECT nosuch FROM public.orders o WHERE o.tenant_id = 'acme' AND o.x = 1"
>>> map_position(client, sent, sent.index("nosuch") + 1) == client.index("nosuch") + 1
True
>>> map_position(client, sent, sent.index("o.x") + 3) == client.index("o.x") + 3  # inside the client's tokens
True
>>> map_position(client, sent, sent.index("tenant_id") + 1) is None  # the proxy's own predicate
True
>>> map_position("SELECT 1 +", "SELECT 1 +", 11)  # end of input
11
"""

from __future__ import annotations

from bisect import bisect_right
from difflib import SequenceMatcher

from pglast import parser

from tenantgate.keyring.quoting import unquote_ident

from .errors import Refused

_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})
# Literals the proxy may re-render (E'\\x41' as 'A', 1e3 as 1000): aligned by class, not spelling.
_LITERALS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})


def _tokens(sql: str) -> tuple[list[int], list[int], list[tuple[str, str]]]:
    """Starts, ends (exclusive, character offsets) and comparable keys of the tokens of ``sql``:
    keywords and plain identifiers compare case-folded and quoted ones unquoted, as the parser
    reads them; literals by their class.

    >>> _tokens('SELECT "Ö", ö, ' + "E'a'")[2]
    [('SELECT', 'select'), ('IDENT', 'Ö'), ('ASCII_44', ','), ('IDENT', 'ö'), ('ASCII_44', ','), ('SCONST', '')]
    """
    starts: list[int] = []
    ends: list[int] = []
    keys: list[tuple[str, str]] = []
    for tok in parser.scan(sql):
        if tok.name in _COMMENTS:
            continue
        text = sql[tok.start : tok.end + 1]
        if tok.name in _LITERALS:
            key = ""
        elif tok.name == "IDENT" and text.startswith('"'):
            key = unquote_ident(text)
        elif tok.kind != "NO_KEYWORD" or tok.name == "IDENT":
            key = text.lower()
        else:
            key = text
        starts.append(tok.start)
        ends.append(tok.end + 1)
        keys.append((tok.name, key))
    return starts, ends, keys


def syntax_error(sql: str, exc: parser.ParseError) -> Refused:
    """PostgreSQL's own answer to a text its parser rejects: message and position (pglast reports
    the character index 0-based, and none at the end of the input, where PostgreSQL points past
    the last character).

    >>> def refusal(sql):
    ...     try:
    ...         parser.parse_sql(sql)
    ...     except parser.ParseError as exc:
    ...         err = syntax_error(sql, exc)
    ...         return err.sqlstate, err.message, err.position
    >>> refusal("SELECT 1; SELEC 2")
    ('42601', 'syntax error at or near "SELEC"', 11)
    >>> refusal("SELECT 'é' +")
    ('42601', 'syntax error at end of input', 13)
    """
    message = str(exc.args[0])
    index = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(index, int):
        position: int | None = index + 1
    else:
        position = len(sql) + 1 if message.endswith("at end of input") else None
    return Refused("42601", message, "unparseable", position)


def map_position(client: str, sent: str, position: int) -> int | None:
    """The 1-based character position in ``client`` for ``position`` in ``sent``, or None when it
    falls in text only the proxy's version has (or cannot be placed).

    >>> map_position("SELECT 'x'::int", "SELECT 'x'::int", 8)  # identity when nothing changed
    8
    >>> map_position("/* c */ SELECT 1; SELECT E'a' + 1", "SELECT 1; SELECT 'a' + 1", 18)
    26
    """
    if client == sent:
        return position if 1 <= position <= len(client) + 1 else None
    offset = position - 1
    if offset >= len(sent):  # PostgreSQL's "at end of input"
        return len(client) + 1
    try:
        cstarts, cends, ckeys = _tokens(client)
        sstarts, sends, skeys = _tokens(sent)
    except parser.ParseError:
        return None
    j = bisect_right(sstarts, offset) - 1
    if j < 0 or offset >= sends[j]:  # between tokens: PostgreSQL points at tokens, never there
        return None
    for tag, i1, _, j1, j2 in SequenceMatcher(None, ckeys, skeys, autojunk=False).get_opcodes():
        if not j1 <= j < j2:
            continue
        if tag == "equal":  # the same token; inside it only where both spell it alike
            i = i1 + j - j1
            same = client[cstarts[i] : cends[i]] == sent[sstarts[j] : sends[j]]
            return cstarts[i] + (offset - sstarts[j] if same else 0) + 1
        if tag == "replace":  # the client's spelling of the same thing (a re-rendered literal, a cast)
            return cstarts[i1] + 1
        return None  # inserted by the proxy
    return None
