"""proxy/encoding.py against PostgreSQL itself: the encoding names and aliases it accepts, and the
proof obligation of the encoding rule. Whenever the proxy accepts bytes in a client encoding,
PostgreSQL converts them into the same number of characters with the ASCII characters (quotes,
backslashes, everything that matters to the lexer) at the same positions.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.proxy import encoding
from tenantgate.proxy.encoding import EncodingError, canonical_name, client_encoding
from tenantgate.proxy.sandbox.pgcluster import PgServer

TRY_CONVERT = """
CREATE FUNCTION try_convert(b bytea, enc name) RETURNS text LANGUAGE plpgsql AS $$
BEGIN RETURN convert_from(b, enc); EXCEPTION WHEN others THEN RETURN NULL; END $$;
"""
MULTIBYTE = ["SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB", "EUC_JP", "EUC_JIS_2004",
             "EUC_KR", "EUC_CN"]
SINGLE_BYTE = [n for n in encoding._SUPPORTED if n not in MULTIBYTE and n not in ("UTF8", "SQL_ASCII")]


@pytest.fixture(scope="module")
def db(pg: PgServer) -> str:
    """A database with try_convert(): PostgreSQL's own client-to-server conversion, NULL if it refuses."""
    pg.create_database("encoding_split")
    pg.execute(TRY_CONVERT, dbname="encoding_split")
    return "encoding_split"


def test_every_alias_is_the_encoding_postgresql_means(pg: PgServer) -> None:
    aliases = sorted(encoding._ALIASES)
    rows = pg.fetch("SELECT a, pg_encoding_to_char(pg_char_to_encoding(a)) FROM unnest(%s::text[]) AS a"
                    .replace("%s", "ARRAY[" + ", ".join(f"'{a}'" for a in aliases) + "]"))
    assert {a: n for a, n in rows} == {a: canonical_name(a) for a in aliases}


def test_every_client_encoding_of_postgresql_is_known(pg: PgServer) -> None:
    names = {n for (n,) in pg.fetch("SELECT pg_encoding_to_char(i) FROM generate_series(0, 63) AS i") if n}
    assert names <= set(encoding._CODECS), names - set(encoding._CODECS)
    with pytest.raises(EncodingError):
        client_encoding("MULE_INTERNAL")


def _samples(name: str, count: int, rng: random.Random) -> list[bytes]:
    """Byte strings dense in what matters: lead bytes, ASCII trail bytes, quotes and backslashes."""
    alphabet = [0x27, 0x5C, 0x22, 0x24, 0x30, 0x39, 0x40, 0x41, 0x7E, 0x80, 0x81, 0x8E, 0x8F, 0x9F, 0xA0, 0xA1,
                0xB0, 0xDF, 0xE0, 0xEF, 0xFC, 0xFE, 0xFF]
    return [bytes(rng.choice(alphabet) if rng.random() < 0.8 else rng.randrange(256)
                  for _ in range(rng.randrange(1, 9))) for _ in range(count)]


def _agree(pg: PgServer, db: str, name: str, samples: list[bytes]) -> None:
    enc = client_encoding(name)
    accepted = {}
    for raw in samples:
        try:
            accepted[raw] = enc.decode(raw)
        except EncodingError:
            continue  # refused by the proxy: nothing reaches the backend
    assert accepted, f"no sample of {name} was accepted"
    values = ", ".join(f"('\\x{raw.hex()}'::bytea)" for raw in accepted)
    rows = pg.fetch(f"SELECT b, try_convert(b, '{name}') FROM (VALUES {values}) AS v(b)", dbname=db)
    compared = 0
    for raw, converted in rows:
        ours = accepted[bytes(raw)]
        if converted is None:
            continue  # PostgreSQL refuses it: the statement fails, nothing runs
        compared += 1
        assert len(converted) == len(ours), (name, bytes(raw), ours, converted)
        for a, b in zip(ours, converted, strict=True):
            assert (a == b) if (a.isascii() or b.isascii()) else True, (name, bytes(raw), ours, converted)
    assert compared >= len(accepted) // 2, f"{name}: PostgreSQL refused most of what the proxy accepts"


@pytest.mark.parametrize("name", MULTIBYTE)
def test_multibyte_bytes_split_as_postgresql_splits_them(pg: PgServer, db: str, name: str) -> None:
    _agree(pg, db, name, _samples(name, 3000, random.Random(name)))


@pytest.mark.parametrize("name", SINGLE_BYTE)
def test_single_byte_encodings_keep_ascii_where_postgresql_does(pg: PgServer, db: str, name: str) -> None:
    _agree(pg, db, name, [bytes([b]) + b"'\\" for b in range(1, 256)])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(encoding._SUPPORTED)),
       st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20))
def test_what_the_proxy_sends_decodes_back_to_exactly_the_verified_text(name: str, text: str) -> None:
    enc = client_encoding(name)
    try:
        raw = enc.encode(text)
    except EncodingError:
        return  # not representable: the statement is refused, nothing is sent
    assert enc.decode(raw) == text
