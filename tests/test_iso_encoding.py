"""Issue 12 family 1 (and issue 20 item 4): the backend parses exactly the bytes, in exactly the
encoding, that the proxy parsed and verified.

Through the real proxy against PostgreSQL, in session and transaction pooling, with the RLS
policies installed and without them (then the rewriter alone must hold). In SJIS, BIG5, GBK and
GB18030 a backslash byte can be the second byte of a character: text the proxy once read (as
UTF-8) as ``E'...\\' UNION SELECT ...'`` inside one literal ran on the backend as SQL.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.conn import PgConnection
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import Backend, ProxyProcess, RawClient, config_text, errors, start_proxy

SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["orders"]\n'
SCHEMA = """
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
CREATE TABLE internal_notes (id int PRIMARY KEY, body text);
INSERT INTO orders VALUES ('acme', 1, 'acme one'), ('globex', 1, 'GLOBEX one'), ('globex', 2, 'GLOBEX two');
INSERT INTO internal_notes VALUES (1, 'GLOBEX internal');
"""
MODES = [("session", False), ("session", True), ("transaction", False), ("transaction", True)]
# A prefix whose UTF-8 bytes end in a lead byte of the encoding, so that the backslash after it is
# the second byte of a character there (U+2019 is E2 80 99: [E2 80] [99 5C] in SJIS and GBK).
SWALLOW = {"SJIS": "\u2019", "GBK": "\u2019", "GB18030": "\u2019", "BIG5": "中"}


def _make(pg: PgServer, name: str, rls: bool, mode: str, tmp: Path) -> ProxyProcess:
    backend = Backend.create(pg, name)
    with psycopg.connect(backend.direct_dsn(), autocommit=True) as conn:  # the backend role owns the tables
        conn.execute(SCHEMA)
    port = free_port()
    text = config_text(backend, port, scoping=SCOPING)
    if mode == "transaction":
        text = text.replace('sslmode = "prefer"', 'sslmode = "prefer"\npool_mode = "transaction"\npool_size = 2', 1)
    proxy = start_proxy(tmp, text, port)
    if rls:
        out = subprocess.run([sys.executable, "-m", "tenantgate.proxy.cli", "rls", "install", "--config",
                              str(proxy.config_path), "--dsn", backend.direct_dsn()],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    return proxy


@pytest.fixture(scope="module", params=MODES, ids=[f"{m}-{'rls' if r else 'norls'}" for m, r in MODES])
def gate(request: pytest.FixtureRequest, pg: PgServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, str]]:
    mode, rls = request.param
    name = f"iso_enc_{mode[:4]}_{'rls' if rls else 'plain'}"
    proxy = _make(pg, name, rls, mode, tmp_path_factory.mktemp(name))
    yield proxy, mode
    proxy.stop()


def _query(sql: bytes) -> bytes:
    return b"Q" + struct.pack("!I", len(sql) + 5) + sql + b"\x00"


def _extended(sql: bytes) -> bytes:
    body = b"\x00" + sql + b"\x00\x00\x00"
    bind = codec.Bind("", "").encode()
    return b"P" + struct.pack("!I", len(body) + 4) + body + bind + codec.Execute().encode() + codec.Sync().encode()


def _session(proxy: ProxyProcess, user: str = "alice", **startup: str) -> RawClient:
    client = RawClient(proxy.port)
    out = client.login(user, proxy.users[user][1], **startup)
    assert not errors(out), errors(out)
    return client


def _rows(messages: list[object]) -> list[bytes | None]:
    return [v for m in messages if isinstance(m, codec.DataRow) for v in m.values]


# The injected text reads what a tenant may never read (an unlisted table, every tenant's orders) or
# switches the tenant RLS reads (the next statement then sees nothing of its own).
INJECTIONS = ["UNION SELECT body FROM internal_notes", "UNION ALL SELECT note FROM public.orders",
              "UNION SELECT set_config('tenantgate.tenant', 'globex', false)"]
SHAPES = [
    "SELECT E'{p}\\' {inj} --'",
    "SELECT note FROM orders WHERE note = E'{p}\\' {inj} --'",
    "SELECT upper(E'{p}\\') {inj} --')",
    "SELECT E'x' || E'{p}\\' {inj} /* ' */ --'",
]


@pytest.mark.parametrize("encoding", sorted(SWALLOW))
@pytest.mark.parametrize("shape", range(len(SHAPES)))
@pytest.mark.parametrize("injection", range(len(INJECTIONS)))
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_trail_byte_backslash_never_ends_a_literal_the_proxy_saw(
    gate: tuple[ProxyProcess, str], encoding: str, shape: int, injection: int, protocol: str
) -> None:
    proxy, _ = gate
    text = SHAPES[shape].format(p=SWALLOW[encoding], inj=INJECTIONS[injection])
    raw = text.encode()  # valid UTF-8: what the proxy used to lex, whatever the session's encoding
    client = _session(proxy, client_encoding=encoding)
    try:
        client.send(_query(raw) if protocol == "simple" else _extended(raw))
        out = client.until_ready()
        assert not any(b"GLOBEX" in (v or b"") for v in _rows(out)), "another tenant's data came back"
        # the session stays usable, in its encoding
        again = client.query("SELECT count(*) FROM orders")
        assert not errors(again) and _rows(again) == [b"1"]
    finally:
        client.close()


def test_a_client_encoding_with_no_faithful_codec_is_refused_at_startup(gate: tuple[ProxyProcess, str]) -> None:
    proxy, _ = gate
    for name in ("MULE_INTERNAL", "euc_tw", "klingon"):
        client = RawClient(proxy.port)
        try:
            out = client.login("alice", proxy.users["alice"][1], client_encoding=name)
            assert [(e.sqlstate, dict(e.fields)["S"]) for e in errors(out)] == [("0A000", "FATAL")], out
            assert "client_encoding" in errors(out)[0].message
        finally:
            client.close()


CHANGES = [
    "SET client_encoding = 'SJIS'", "SET client_encoding TO latin1", "SET SESSION client_encoding = 'BIG5'",
    "SET NAMES 'GBK'", "SET LOCAL client_encoding = 'SJIS'", "SELECT set_config('client_encoding', 'SJIS', false)",
    "SELECT set_config('client_encoding'::text, 'win1252'::text, true)",
    "SELECT set_config(U&'client_\\0065ncoding', 'SJIS', false)", "SELECT 1; SET client_encoding = 'LATIN1'",
    "BEGIN; SET client_encoding = 'SJIS'",
]


@pytest.mark.parametrize("statement", CHANGES)
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_client_encoding_cannot_change_during_a_session(
    gate: tuple[ProxyProcess, str], statement: str, protocol: str
) -> None:
    proxy, _ = gate
    if protocol == "extended" and ";" in statement:
        pytest.skip("one statement per Parse")
    client = _session(proxy)
    try:
        client.send(_query(statement.encode()) if protocol == "simple" else _extended(statement.encode()))
        out = client.until_ready()
        # the rewriter refuses the transaction-scoped forms itself (42501); the session refuses a change
        states = [e.sqlstate for e in errors(out)]
        assert states in (["0A000"], ["42501"]), out
        assert states == ["42501"] or "connection string" in errors(out)[0].message
        client.query("ROLLBACK")
        shown = client.query("SHOW client_encoding")
        assert _rows(shown) == [b"UTF8"]
    finally:
        client.close()


@pytest.mark.parametrize("statement", ["SET client_encoding = 'UTF8'", "SET NAMES 'utf-8'", "RESET client_encoding",
                                       "SELECT set_config('client_encoding', 'unicode', false)",
                                       "SET standard_conforming_strings = on"])
def test_setting_client_encoding_to_its_own_value_succeeds(gate: tuple[ProxyProcess, str], statement: str) -> None:
    proxy, _ = gate
    client = _session(proxy)
    try:
        out = client.query(statement)
        if statement.startswith("SET standard") and errors(out):
            pytest.xfail("engineer R2 allows SET standard_conforming_strings = on")
        assert not errors(out), errors(out)
        assert _rows(client.query("SHOW client_encoding")) == [b"UTF8"]
    finally:
        client.close()


@pytest.mark.parametrize("statement", ["RESET ALL", "DISCARD ALL", "RESET client_encoding", "SET NAMES DEFAULT"])
def test_reset_never_leaves_a_pooled_backend_in_another_encoding(
    gate: tuple[ProxyProcess, str], statement: str
) -> None:
    """A pooled backend's own encoding is UTF8: resetting a SJIS session's backend would make the next
    statements (pipelined behind it) be read as UTF-8. Session pooling resets to the startup value."""
    proxy, mode = gate
    client = _session(proxy, client_encoding="SJIS")
    try:
        attack = SHAPES[0].format(p=SWALLOW["SJIS"], inj=INJECTIONS[0]).encode("utf-8")
        client.send(_query(statement.encode()) + _query(attack))
        first, second = client.until_ready(), client.until_ready()
        if mode == "transaction":
            assert [e.sqlstate for e in errors(first)] == ["0A000"], first
        else:
            assert not errors(first), first
        assert not any(b"GLOBEX" in (v or b"") for v in _rows(second))
        assert _rows(client.query("SHOW client_encoding")) == [b"SJIS"]
    finally:
        client.close()


@pytest.mark.parametrize("encoding", ["LATIN1", "WIN1252", "ISO_8859_15", "EUC_JP", "SJIS", "utf-8"])
def test_a_non_utf8_client_round_trips_non_ascii_text(gate: tuple[ProxyProcess, str], encoding: str) -> None:
    proxy, mode = gate
    text = "Grüße, ça va? naïve" if encoding not in ("EUC_JP", "SJIS") else "日本語のテキスト ｶﾀｶﾅ \uff3c"
    row_id = 100 + abs(hash((encoding, mode))) % 100_000
    with psycopg.connect(proxy.dsn("alice", "", client_encoding=encoding), autocommit=True) as conn:
        conn.execute("INSERT INTO orders (id, note) VALUES (%s, %s)", (row_id, text))
        assert conn.execute("SELECT note FROM orders WHERE id = %s", (row_id,)).fetchone() == (text,)
        assert conn.execute(f"SELECT note FROM orders WHERE note = '{text}'").fetchone() == (text,)
        assert conn.execute("SELECT count(*) FROM orders WHERE note LIKE 'GLOBEX%'").fetchone() == (0,)
        # what the backend sends in the session's encoding is read in it too: errors, notifications
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as info:
            conn.execute(f"SELECT '{text}'::int")
        assert text in str(info.value)
        conn.execute("LISTEN news")
        conn.execute("SELECT pg_notify('news', %s)", (text,))
        assert [n.payload for n in conn.notifies(timeout=5, stop_after=1)] == [text]
        conn.execute("UNLISTEN news")
        with psycopg.connect(proxy.dsn("svc", ""), autocommit=True) as utf8:  # stored as the same characters
            assert utf8.execute("SELECT note FROM orders WHERE id = %s", (row_id,)).fetchone() == (text,)
        conn.execute("DELETE FROM orders WHERE id = %s", (row_id,))


def test_text_the_session_encoding_cannot_read_is_refused_and_the_session_stays(
    gate: tuple[ProxyProcess, str],
) -> None:
    proxy, _ = gate
    client = _session(proxy, client_encoding="SJIS")
    try:
        client.send(_query(b"SELECT '\x95"))  # a lead byte with no second byte before the end
        out = client.until_ready()
        assert [e.sqlstate for e in errors(out)] == ["22021"], out
        assert _rows(client.query("SELECT 1")) == [b"1"]
    finally:
        client.close()


def test_a_trusted_session_may_change_its_encoding_and_the_proxy_follows(gate: tuple[ProxyProcess, str]) -> None:
    """Trusted users are not rewritten (fidelity for drivers' own suites): SET client_encoding works."""
    proxy, _ = gate
    with psycopg.connect(proxy.dsn("svc", ""), autocommit=True) as conn:
        conn.execute("SET client_encoding = 'LATIN1'")
        assert conn.execute("SELECT 'Grüße'").fetchone() == ("Grüße",)
        conn.execute("RESET client_encoding")
        assert conn.execute("SELECT '日本'").fetchone() == ("日本",)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_backend_without_standard_conforming_strings_is_refused(
    pg: PgServer, tmp_path: Path, mode: str
) -> None:
    """The proxy lexes tenant statements with standard_conforming_strings on: a backend that reads
    otherwise is refused for tenants (trusted sessions are relayed unchanged and may use it)."""
    name = f"iso_enc_scs_{mode[:4]}"
    proxy = _make(pg, name, False, mode, tmp_path)
    pg.execute(f'ALTER DATABASE "{name}" SET standard_conforming_strings = off')
    try:
        for user in ("alice", "bob"):
            client = RawClient(proxy.port)
            try:
                out = client.login(user, proxy.users[user][1])
                assert [e.sqlstate for e in errors(out)] == ["55000"], out
            finally:
                client.close()
        with psycopg.connect(proxy.dsn("svc", ""), autocommit=True) as conn:
            assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("off",)
    finally:
        proxy.stop()


@pytest.mark.parametrize("name", ["LATIN1", "SJIS", "win1252"])
def test_field_encryption_refuses_a_non_utf8_session_at_startup(pg: PgServer, tmp_path: Path, name: str) -> None:
    """Ciphertext binds the plaintext's bytes: a tenant with encrypted columns must send UTF-8."""
    from .test_encryption_proxy import SETUP as ENCRYPTED_SETUP
    from .test_encryption_proxy import launch as launch_encrypted

    backend = Backend.create(pg, f"iso_enc_crypto_{name.lower()}", ENCRYPTED_SETUP, owner=False)
    proxy = launch_encrypted(backend, tmp_path)
    try:
        client = RawClient(proxy.port)
        try:
            out = client.login("alice", proxy.users["alice"][1], client_encoding=name)
            assert [(e.sqlstate, dict(e.fields)["S"]) for e in errors(out)] == [("0A000", "FATAL")], out
            assert "UTF8" in errors(out)[0].message
        finally:
            client.close()
        with psycopg.connect(proxy.dsn("alice", "", client_encoding="UTF8"), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone() is not None
        with psycopg.connect(proxy.dsn("svc", "", client_encoding=name), autocommit=True) as conn:
            assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)
    finally:
        proxy.stop()


@pytest.mark.parametrize("startup", [{"options": "-c client_encoding=SJIS"}, {"options": "--client-encoding=sjis"},
                                     {"CLIENT_ENCODING": "shift_jis"}, {"client_encoding": "Windows932"}])
def test_client_encoding_from_options_or_any_spelling_is_the_one_the_proxy_reads(
    gate: tuple[ProxyProcess, str], startup: dict[str, str]
) -> None:
    proxy, _ = gate
    client = _session(proxy, **startup)
    try:
        shown = client.query("SHOW client_encoding")
        assert _rows(shown) == [b"SJIS"], shown
        client.send(_query(SHAPES[1].format(p=SWALLOW["SJIS"], inj=INJECTIONS[0]).encode()))
        out = client.until_ready()
        assert [e.sqlstate for e in errors(out)] == ["42501"], out  # the proxy saw the UNION: refused
    finally:
        client.close()


@pytest.mark.parametrize("startup", [{"client_encoding": "UTF8", "options": "-c client_encoding=SJIS"},
                                     {"client_encoding": "SJIS", "Client_Encoding": "UTF8"}])
def test_conflicting_client_encodings_at_startup_are_refused(
    gate: tuple[ProxyProcess, str], startup: dict[str, str]
) -> None:
    proxy, _ = gate
    client = RawClient(proxy.port)
    try:
        out = client.login("alice", proxy.users["alice"][1], **startup)
        assert [e.sqlstate for e in errors(out)] == ["08P01"], out
    finally:
        client.close()


class _Client(PgConnection):
    """The client side of a session without a socket, recording what the proxy writes to it."""

    def __init__(self) -> None:
        super().__init__("client")
        self.written = b""
        self.shut = False

    @property
    def is_closed(self) -> bool:
        return self.shut

    def write(self, data: bytes) -> None:
        if not self.shut:
            self.written += data

    def close(self) -> None:
        self.shut = True


@pytest.mark.parametrize(("name", "value"), [("client_encoding", "LATIN1"), ("client_encoding", "SQL_ASCII"),
                                             ("standard_conforming_strings", "off")])
@pytest.mark.parametrize("goodbye", [False, True])
def test_a_parameter_status_changing_the_lexing_ends_a_tenant_session(name: str, value: str, goodbye: bool) -> None:
    """Backstop (no tenant statement can reach it any more): the session ends with a FATAL, unless
    the client already said goodbye, in which case nothing is written at all."""
    from tenantgate.proxy.counters import Metrics
    from tenantgate.proxy.encoding import client_encoding as lookup
    from tenantgate.proxy.session import Session

    client = _Client()
    session = Session(client, None, user="alice", tenant="acme", rewriter=None, paused=set(),
                      metrics=Metrics(), encoding=lookup("SJIS"))
    session._said_goodbye = goodbye
    same = codec.ParameterStatus("client_encoding", "SJIS").encode()
    session._parameter_status(same[5:], setup=False)
    assert not client.is_closed
    session._parameter_status(codec.ParameterStatus(name, value).encode()[5:], setup=False)
    assert client.is_closed
    if goodbye:
        assert client.written == b""
    else:
        framer = codec.Framer("server")
        buf, frames = framer.feed(client.written)
        (fatal,) = [codec.decode_backend(t, buf[s + 5 : e]) for t, s, e in frames]
        assert isinstance(fatal, codec.ErrorResponse) and fatal.sqlstate == "08P01" and name in fatal.message
