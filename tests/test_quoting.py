"""The one quoting module: PostgreSQL (its parser in pglast, and a real server) reads every quoted
form back as exactly the value quoted, whatever the value holds (quotes, backslashes, keywords,
upper case, spaces, non-ASCII), and identifiers past 63 bytes are truncated as PostgreSQL does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import ast, parser

from tenantgate.keyring.quoting import (
    quote_ident,
    quote_literal,
    quote_literal_ascii,
    quote_qualified,
    render_identifier,
)
from tenantgate.proxy.sandbox.pgcluster import PgServer

NAMEDATALEN = 64
# NUL-free text that leans on what quoting must get right (quotes, backslashes, U&/E prefixes,
# keywords, upper case, spaces, non-ASCII up to the astral planes), plus arbitrary unicode.
_TRICKY = st.sampled_from(["'", '"', "\\", "''", '\\"', "E'", "U&'", "$$", ";", " ", "\n", "é", "ß", "😀", "Ⅻ",
                           "select", "FROM", "user", "--", "/*", "*/", "\\+0000e9", "\\0041"])
_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")  # surrogates cannot be sent
_TEXT = st.lists(st.one_of(_TRICKY, st.text(_CHARS, max_size=4)), max_size=12).map("".join)
_IDENT = _TEXT.filter(bool)  # "" is no identifier (zero-length delimited identifier)
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _truncated(name: str) -> str:
    """PostgreSQL's truncate_identifier: at most NAMEDATALEN - 1 bytes, cut at a character boundary."""
    out = name
    while len(out.encode("utf-8")) >= NAMEDATALEN:
        out = out[:-1]
    return out


def _parsed_literal(sql_literal: str) -> str:
    (stmt,) = parser.parse_sql(f"SELECT {sql_literal}")
    target = stmt.stmt.targetList[0].val
    assert isinstance(target, ast.A_Const) and isinstance(target.val, ast.String)
    return target.val.sval


def _parsed_alias(sql_ident: str) -> str:
    (stmt,) = parser.parse_sql(f"SELECT 1 AS {sql_ident}")
    return stmt.stmt.targetList[0].name


@pytest.fixture(scope="module")
def conn(pg: PgServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("SET standard_conforming_strings = on")
        yield c


# ----------------------------------------------------------------------------- pglast (PostgreSQL's parser)


@given(_TEXT)
@settings(max_examples=500, deadline=None)
def test_literal_parses_back(value: str) -> None:
    assert _parsed_literal(quote_literal(value)) == value


@given(_TEXT)
@settings(max_examples=500, deadline=None)
def test_ascii_literal_parses_back_and_is_ascii(value: str) -> None:
    quoted = quote_literal_ascii(value)
    assert quoted.isascii()
    assert _parsed_literal(quoted) == value


@given(_IDENT)
@settings(max_examples=500, deadline=None)
def test_identifier_parses_back(name: str) -> None:
    assert _parsed_alias(quote_ident(name)) == _truncated(name)


@given(_IDENT, _IDENT)
@settings(max_examples=200, deadline=None)
def test_qualified_parses_back(schema: str, name: str) -> None:
    (stmt,) = parser.parse_sql(f"SELECT * FROM {quote_qualified(schema, name)}")
    rel = stmt.stmt.fromClause[0]
    assert (rel.schemaname, rel.relname) == (_truncated(schema), _truncated(name))


@given(_IDENT)
@settings(max_examples=300, deadline=None)
def test_render_identifier_parses_back(name: str) -> None:
    assert _parsed_alias(render_identifier(name)) == _truncated(name)


@pytest.mark.parametrize("quote", [quote_ident, quote_literal, quote_literal_ascii, render_identifier])
def test_nul_is_refused(quote: Any) -> None:
    with pytest.raises(ValueError, match="NUL"):
        quote("a\x00b")


@pytest.mark.parametrize(("name", "quoted"), [
    ("orders", '"orders"'), ("Orders", '"Orders"'), ("select", '"select"'), ('a"b', '"a""b"'),
    ("a b", '"a b"'), ("café", '"café"'), ("x" * 70, '"' + "x" * 70 + '"'),
])
def test_ident_examples(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted


# ----------------------------------------------------------------------------- a real server


@given(_TEXT)
@_SETTINGS
def test_literal_round_trips_through_postgres(conn: psycopg.Connection[Any], value: str) -> None:
    row = conn.execute(f"SELECT {quote_literal(value)}::text").fetchone()
    assert row is not None and row[0] == value


@pytest.mark.parametrize("encoding", ["UTF8", "LATIN1", "SJIS", "SQL_ASCII"])
@given(value=_TEXT)
@_SETTINGS
def test_ascii_literal_means_the_same_in_every_client_encoding(
    conn: psycopg.Connection[Any], encoding: str, value: str
) -> None:
    """The hand-over variant: compared server-side, so the answer does not depend on the client encoding."""
    conn.execute(f"SET client_encoding = {encoding}")
    try:
        row = conn.execute(
            f"SELECT {quote_literal_ascii(value)}::text = convert_from(decode('{value.encode().hex()}', 'hex'), 'UTF8')"
        ).fetchone()
    finally:
        conn.execute("SET client_encoding = UTF8")
    assert row == (True,)


@given(_IDENT)
@_SETTINGS
def test_identifier_round_trips_through_postgres(conn: psycopg.Connection[Any], name: str) -> None:
    cur = conn.execute(f"SELECT 1 AS {quote_ident(name)}")
    assert cur.description is not None and cur.description[0].name == _truncated(name)


def test_qualified_names_a_real_table(conn: psycopg.Connection[Any]) -> None:
    schema, table = 'Sch "1"', "select"
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    try:
        conn.execute(f"CREATE TABLE {quote_qualified(schema, table)} (v int)")
        conn.execute(f"INSERT INTO {quote_qualified(schema, table)} VALUES (1)")
        row = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                           f" WHERE c.oid = {quote_literal(quote_qualified(schema, table))}::regclass").fetchone()
        assert row == (schema, table)
    finally:
        conn.execute(f"DROP SCHEMA {quote_ident(schema)} CASCADE")
