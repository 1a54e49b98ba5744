"""rewriter/positions.py: a mapped error position never leaves the client's text, is the identity
when the proxy sent the client's text unchanged, and lands on the client's own token where the
rewrite kept it (hypothesis, over statements the real rewriter scopes)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.rewriter import Policy, Refused, Rewriter
from tenantgate.rewriter.positions import map_position

REWRITER = Rewriter(Policy(scoped={("public", "orders"): "tenant_id"}))
COLUMNS = st.sampled_from(["id", "note", "nosuch", "o.id", "o.note", "ö"])
SPACE = st.sampled_from([" ", "  ", "\n ", " /* ü */ "])
LITERAL = st.sampled_from(["1", "'x'", "E'\\x41'", "'é'::text", "'7'::int", "$$q$$"])


@st.composite
def statements(draw: st.DrawFn) -> str:
    sp = draw(SPACE)
    select = draw(st.sampled_from(["SELECT", "select"]))
    cols = ",".join(draw(st.lists(COLUMNS, min_size=1, max_size=3)))
    where = draw(st.lists(st.tuples(COLUMNS, LITERAL), max_size=3))
    sql = f"{select}{sp}{cols} FROM orders o"
    if where:
        sql += f"{sp}WHERE " + f"{sp}AND ".join(f"{c} = {v}" for c, v in where)
    return sql


@st.composite
def texts(draw: st.DrawFn) -> str:
    return ";".join(draw(st.lists(statements(), min_size=1, max_size=3)))


@settings(max_examples=200, deadline=None)
@given(texts())
def test_a_mapped_position_stays_inside_the_client_text(client: str) -> None:
    try:
        sent = REWRITER.plan(client, "acme").sql
    except Refused:
        return
    for position in range(1, len(sent) + 2):
        mapped = map_position(client, sent, position)
        assert mapped is None or 1 <= mapped <= len(client) + 1, (client, sent, position, mapped)


@settings(max_examples=200, deadline=None)
@given(texts(), st.integers(min_value=1, max_value=400))
def test_an_unchanged_text_maps_to_itself(client: str, position: int) -> None:
    expected = position if position <= len(client) + 1 else None
    assert map_position(client, client, position) == expected


@settings(max_examples=200, deadline=None)
@given(texts())
def test_a_kept_identifier_maps_to_the_client_s_spelling(client: str) -> None:
    try:
        sent = REWRITER.plan(client, "acme").sql
    except Refused:
        return
    if sent.count("nosuch") == 1 and client.count("nosuch") == 1:
        assert map_position(client, sent, sent.index("nosuch") + 1) == client.index("nosuch") + 1
