"""Field-level encryption through the real proxy: real PostgreSQL, psycopg (text) and asyncpg (binary).

The backend only ever holds ciphertext; the proxy encrypts parameters and literals, decrypts
results, refuses what it cannot do on ciphertext, and fails closed on values that do not
belong where they are found. Keys are managed with the ``tenantgate keys`` CLI meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import secrets
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg.types.json import Jsonb

from tenantgate.keyring.cli import register
from tenantgate.keyring.kek import create_kek_file
from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import Backend, ProxyProcess, RawClient, config_text, errors, start_proxy

SETUP = """
CREATE TABLE customers (
    id int PRIMARY KEY, tenant_id text NOT NULL, name text,
    ssn bytea, note bytea, age bytea, big bytea, amount bytea, born bytea, seen bytea, doc bytea);
CREATE UNIQUE INDEX customers_ssn ON customers (tenant_id, ssn);  -- deterministic ciphertext is unique too
CREATE TABLE contacts (id int PRIMARY KEY, tenant_id text NOT NULL, ssn bytea);
"""
SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["customers", "contacts"]\n'
COLUMNS = [("customers", "ssn", "deterministic", "text"), ("customers", "note", "randomized", "text"),
           ("customers", "age", "randomized", "int4"), ("customers", "big", "deterministic", "bigint"),
           ("customers", "amount", "randomized", "numeric"), ("customers", "born", "randomized", "date"),
           ("customers", "seen", "randomized", "timestamptz"), ("customers", "doc", "randomized", "jsonb"),
           ("contacts", "ssn", "deterministic", "text")]
TTL = 2  # seconds: sessions reload keys after half of it, so CLI key changes show up quickly
_ids = iter(range(1, 1_000_000))


def encryption_toml(kek: str = "kek.bin", store: str = "file:keys.json") -> str:
    cols = "".join(f'\n[[encryption.columns]]\ntable = "{t}"\ncolumn = "{c}"\nmode = "{m}"\ntype = "{ty}"\n'
                   for t, c, m, ty in COLUMNS)
    return f'\n[encryption]\nkek = "file:{kek}"\nstore = "{store}"\ncache_ttl = {TTL}\n{cols}'


def audit_toml(tmp: Path) -> str:
    key = tmp / "audit.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    return (f'\n[audit]\npath = "{tmp}/log/audit.jsonl"\nkey = "file:{key}"\nflush_interval_ms = 20\n'
            'log_parameters = "full"\n')


def launch(backend: Backend, tmp: Path, *, kek: str = "kek.bin", audit: bool = False,
           store: str = "file:keys.json") -> ProxyProcess:
    kek_path = tmp / kek
    if not kek_path.exists():
        create_kek_file(kek_path)
    extra = encryption_toml(kek, store) + (audit_toml(tmp) if audit else "")
    port = free_port()
    proxy = start_proxy(tmp, config_text(backend, port, scoping=SCOPING, extra=extra), port)
    if store.startswith("file:"):
        keys(proxy, "init")  # creates the key file (kept when it exists)
    return proxy


def keys(proxy: ProxyProcess, *args: str) -> None:
    """``tenantgate keys ARGS --config <the proxy's>``, in this process (a subprocess costs seconds)."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["keys", *args, "--config", str(proxy.config_path)])
    assert ns.func(ns) == 0


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "encrypted", SETUP, owner=False)


@pytest.fixture(scope="module")
def proxy(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("enc-proxy")
    (tmp / "log").mkdir()
    proc = launch(backend, tmp, audit=True)
    yield proc
    proc.stop()


def connect(proxy: ProxyProcess, user: str = "alice") -> psycopg.Connection:
    return psycopg.connect(proxy.dsn(user, "encrypted"), autocommit=True)


def stored(backend: Backend, table: str = "customers", where: str = "true") -> list[tuple[Any, ...]]:
    """Rows as the backend holds them (superuser, no proxy)."""
    return backend.pg.fetch(f"SELECT * FROM {table} WHERE {where} ORDER BY id", dbname=backend.database)


VALUES = {
    "ssn": "123-45-6789", "note": "randomized secret note", "age": 42, "big": 9_000_000_000_123,
    "amount": Decimal("1234.50"), "born": dt.date(1984, 2, 29),
    "seen": dt.datetime(2024, 7, 1, 12, 30, 15, 250000, tzinfo=dt.UTC), "doc": {"card": "4111-1111", "n": [1, 2]},
}
INSERT = ("INSERT INTO customers (id, tenant_id, name, ssn, note, age, big, amount, born, seen, doc) "
          "VALUES (%s, 'acme', %s, %s, %s, %s, %s, %s, %s, %s, %s)")


def test_psycopg_text_round_trip_of_every_type(proxy: ProxyProcess, backend: Backend) -> None:
    row_id, ssn = next(_ids), f"psy-{secrets.token_hex(4)}"
    values = dict(VALUES, ssn=ssn)
    with connect(proxy) as conn:
        conn.execute(INSERT, (row_id, "Ann", *[Jsonb(v) if k == "doc" else v for k, v in values.items()]))
        got = conn.execute("SELECT ssn, note, age, big, amount, born, seen, doc FROM customers WHERE id = %s",
                           (row_id,)).fetchone()
        assert got == tuple(values.values())
        found = conn.execute("SELECT id, name FROM customers WHERE ssn = %s", (ssn,)).fetchall()
        assert found == [(row_id, "Ann")]
    raw = stored(backend, where=f"id = {row_id}")[0]
    assert all(bytes(v)[:1] == b"\xe1" for v in raw[3:])  # every encrypted column holds a tenantgate ciphertext


def test_asyncpg_binary_round_trip_of_every_type(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.dsn("alice", "encrypted"))
        try:
            await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
            row_id, ssn = next(_ids), f"apg-{secrets.token_hex(4)}"
            values = dict(VALUES, ssn=ssn)
            await conn.execute(
                "INSERT INTO customers (id, tenant_id, name, ssn, note, age, big, amount, born, seen, doc) "
                "VALUES ($1, 'acme', 'Bo', $2, $3, $4, $5, $6, $7, $8, $9)", row_id, *values.values())
            row = await conn.fetchrow("SELECT ssn, note, age, big, amount, born, seen, doc FROM customers "
                                      "WHERE id = $1", row_id)
            assert tuple(row) == tuple(values.values())
            assert await conn.fetchval("SELECT id FROM customers WHERE ssn = $1 AND big = $2", ssn,
                                       values["big"]) == row_id
            rows = await conn.fetch("SELECT * FROM customers WHERE id = ANY($1::int[])", [row_id])
            assert rows[0]["doc"] == values["doc"] and rows[0]["name"] == "Bo"
            prepared = await conn.prepare("UPDATE customers SET note = $1 WHERE id = $2 RETURNING note, age")
            assert tuple(await prepared.fetchrow("changed", row_id)) == ("changed", 42)
        finally:
            await conn.close()

    asyncio.run(main())


def test_simple_protocol_literals_are_encrypted(proxy: ProxyProcess, backend: Backend) -> None:
    client = RawClient(proxy.port)
    try:
        assert not errors(client.login("alice", "alice-pw", "encrypted"))
        row_id, ssn = next(_ids), f"lit-{secrets.token_hex(4)}"
        out = client.query(f"INSERT INTO customers (id, tenant_id, name, ssn, age, born) VALUES "
                           f"({row_id}, 'acme', 'Cy', '{ssn}', 7, '2001-02-03')")
        assert not errors(out), out
        for _ in range(2):  # the second time from the plan cache: encrypted again, found again
            out = client.query(f"SELECT ssn, age, born, name FROM customers WHERE ssn = '{ssn}' AND age IS NOT NULL")
            assert not errors(out), out
            desc = next(m for m in out if isinstance(m, codec.RowDescription))
            assert [f.type_oid for f in desc.fields] == [25, 23, 1082, 25]
            rows = [m.values for m in out if isinstance(m, codec.DataRow)]
            assert rows == [(ssn.encode(), b"7", b"2001-02-03", b"Cy")]
    finally:
        client.close()
    raw = stored(backend, where=f"id = {row_id}")[0]
    assert ssn.encode() not in bytes(raw[3]) and bytes(raw[3])[:2] == b"\xe1\x02"  # deterministic header


def test_backend_never_sees_plaintext(proxy: ProxyProcess, backend: Backend) -> None:
    secret = f"needle-{secrets.token_hex(6)}"
    with connect(proxy) as conn:
        conn.execute("INSERT INTO customers (id, tenant_id, ssn, note, doc) VALUES (%s, 'acme', %s, %s, %s)",
                     (next(_ids), secret, secret, Jsonb({"k": secret})))
        conn.execute(f"INSERT INTO contacts (id, tenant_id, ssn) VALUES ({next(_ids)}, 'acme', '{secret}')")
    for table in ("customers", "contacts"):
        dump = backend.pg.fetch(f"SELECT string_agg(t::text, ' ') FROM {table} t", dbname=backend.database)[0][0]
        assert secret not in dump and secret.encode().hex() not in dump


def test_equality_search_unique_index_and_refusals(proxy: ProxyProcess) -> None:
    ssn = f"uniq-{secrets.token_hex(4)}"
    with connect(proxy) as conn, connect(proxy, "bob") as other:
        conn.execute("INSERT INTO customers (id, tenant_id, ssn) VALUES (%s, 'acme', %s)", (next(_ids), ssn))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO customers (id, tenant_id, ssn) VALUES (%s, 'acme', %s)", (next(_ids), ssn))
        other.execute("INSERT INTO customers (id, tenant_id, ssn) VALUES (%s, 'globex', %s)", (next(_ids), ssn))
        assert len(conn.execute("SELECT id FROM customers WHERE ssn IN (%s, 'x')", (ssn,)).fetchall()) == 1
        conn.execute("INSERT INTO customers (id, tenant_id, ssn, name) VALUES (%s, 'acme', %s, 'upsert') "
                     "ON CONFLICT (tenant_id, ssn) DO UPDATE SET name = EXCLUDED.name", (next(_ids), ssn))
        assert conn.execute("SELECT name FROM customers WHERE ssn = %s", (ssn,)).fetchone() == ("upsert",)
        for sql, column in (("SELECT * FROM customers WHERE ssn LIKE '1%'", "customers.ssn"),
                            ("SELECT * FROM customers ORDER BY age", "customers.age"),
                            ("SELECT * FROM customers WHERE note = 'x'", "customers.note")):
            with pytest.raises(psycopg.errors.FeatureNotSupported) as exc:
                conn.execute(sql)
            assert column in str(exc.value)
        assert conn.execute("SELECT count(*) FROM customers WHERE ssn = %s", (ssn,)).fetchone() == (1,)


def test_moved_ciphertext_fails_to_decrypt_and_the_session_survives(proxy: ProxyProcess, backend: Backend) -> None:
    mine, theirs, other_table, other_column = (next(_ids) for _ in range(4))
    with connect(proxy) as conn, connect(proxy, "bob") as bob:
        conn.execute("INSERT INTO customers (id, tenant_id, name, ssn, note) VALUES (%s, 'acme', 'keep', %s, %s)",
                     (mine, "acme-ssn", "acme-note"))
        bob.execute("INSERT INTO customers (id, tenant_id, name, ssn) VALUES (%s, 'globex', 'g', %s)",
                    (theirs, f"g-{theirs}"))
        bob.execute("INSERT INTO contacts (id, tenant_id) VALUES (%s, 'globex')", (other_table,))
        conn.execute("INSERT INTO customers (id, tenant_id, name) VALUES (%s, 'acme', 'moved')", (other_column,))
    # a DBA (or an attacker with SQL access) moves acme's ciphertext elsewhere, directly on the backend
    backend.pg.execute(
        f"UPDATE customers SET ssn = (SELECT ssn FROM customers WHERE id = {mine}) WHERE id = {theirs};"
        f"UPDATE contacts SET ssn = (SELECT ssn FROM customers WHERE id = {mine}) WHERE id = {other_table};"
        f"UPDATE customers SET note = (SELECT ssn FROM customers WHERE id = {mine}) WHERE id = {other_column}",
        dbname=backend.database)
    with connect(proxy, "bob") as bob, connect(proxy) as conn:
        for c, sql in ((bob, f"SELECT ssn FROM customers WHERE id = {theirs}"),
                       (bob, f"SELECT ssn FROM contacts WHERE id = {other_table}"),
                       (conn, f"SELECT note FROM customers WHERE id = {other_column}")):
            with pytest.raises(psycopg.errors.DataCorrupted) as exc:
                c.execute(sql).fetchall()
            assert "cannot be decrypted" in str(exc.value) and "acme-ssn" not in str(exc.value)
            assert c.execute("SELECT 1").fetchone() == (1,)  # the session goes on
        assert conn.execute("SELECT ssn FROM customers WHERE id = %s", (mine,)).fetchone() == ("acme-ssn",)
    with psycopg.connect(proxy.dsn("alice", "encrypted")) as conn:  # inside a transaction block
        with pytest.raises(psycopg.errors.DataCorrupted):
            conn.execute(f"SELECT note FROM customers WHERE id = {other_column}").fetchall()
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT name FROM customers WHERE id = %s", (mine,)).fetchone() == ("keep",)


def test_audit_log_holds_no_plaintext(proxy: ProxyProcess) -> None:
    secret_param, secret_literal = f"param-{secrets.token_hex(6)}", f"literal-{secrets.token_hex(6)}"
    with connect(proxy) as conn:
        conn.execute("INSERT INTO customers (id, tenant_id, ssn, note) VALUES (%s, 'acme', %s, %s)",
                     (next(_ids), secret_param, secret_param))
        conn.execute("SELECT id FROM customers WHERE ssn = %s", (secret_param,)).fetchall()
    client = RawClient(proxy.port)
    try:
        client.login("alice", "alice-pw", "encrypted")
        marker = f"audit-marker-{secrets.token_hex(4)}"
        assert not errors(client.query(
            f"INSERT INTO customers (id, tenant_id, name, ssn) VALUES ({next(_ids)}, 'acme', '{marker}', "
            f"'{secret_literal}')"))
        assert not errors(client.query(f"SELECT name FROM customers WHERE ssn = '{secret_literal}'"))
    finally:
        client.close()
    log_dir = proxy.config_path.parent / "log"
    deadline = time.monotonic() + 20
    text = ""
    while marker not in text and time.monotonic() < deadline:
        time.sleep(0.05)
        text = "".join(p.read_text() for p in log_dir.glob("*.jsonl"))
    assert marker in text  # the statements were recorded ...
    assert secret_param not in text and secret_literal not in text  # ... without the encrypted values


def test_rotation_reencryption_rewrap_and_shredding(pg: PgServer, tmp_path: Path) -> None:
    backend = Backend.create(pg, "encrypted_rot", SETUP, owner=False)  # its own keys: its own database
    proxy = launch(backend, tmp_path, kek="kek.bin", store="file:rotation-keys.json")
    first, second, globex_row = next(_ids), next(_ids), next(_ids)

    def versions(*ids: int) -> set[int]:
        rows = stored(backend, where=f"id IN ({', '.join(map(str, ids))})")
        return {int.from_bytes(bytes(r[3])[2:6], "big") for r in rows}

    try:
        with connect(proxy) as conn:
            conn.execute("INSERT INTO customers (id, tenant_id, ssn) VALUES (%s, 'acme', 'before')", (first,))
        with connect(proxy, "bob") as bob:
            bob.execute("INSERT INTO customers (id, tenant_id, ssn) VALUES (%s, 'globex', 'theirs')", (globex_row,))
        assert versions(first) == {1}
        keys(proxy, "rotate", "acme")
        time.sleep(TTL)  # the proxy picks the new version up when its cached keys go stale
        with connect(proxy) as conn:
            conn.execute("INSERT INTO customers (id, tenant_id, ssn) VALUES (%s, 'acme', 'after')", (second,))
            assert versions(second) == {2}
            assert conn.execute("SELECT ssn FROM customers WHERE id IN (%s, %s) ORDER BY id",
                                (first, second)).fetchall() == [("before",), ("after",)]
            keys(proxy, "reencrypt", "acme")
            assert versions(first, second) == {2}
            assert conn.execute("SELECT id FROM customers WHERE ssn = 'before'").fetchone() == (first,)

        create_kek_file(tmp_path / "kek2.bin")
        keys(proxy, "rewrap", "--new-kek", f"file:{tmp_path / 'kek2.bin'}")
        proxy.stop()
        proxy = launch(backend, tmp_path, kek="kek2.bin", store="file:rotation-keys.json")
        with connect(proxy) as conn:
            assert conn.execute("SELECT ssn FROM customers WHERE id = %s", (second,)).fetchone() == ("after",)

        keys(proxy, "shred", "globex", "--yes")
        time.sleep(TTL)
        with connect(proxy, "bob") as bob:
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as exc:
                bob.execute("SELECT ssn FROM customers WHERE id = %s", (globex_row,)).fetchall()
            assert "destroyed" in str(exc.value)
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                bob.execute("INSERT INTO customers (id, tenant_id, ssn) VALUES (%s, 'globex', 'new')", (next(_ids),))
            assert bob.execute("SELECT count(*) FROM customers").fetchone() == (1,)  # plain columns still work
        with connect(proxy) as conn:  # other tenants are unaffected
            assert conn.execute("SELECT ssn FROM customers WHERE id = %s", (first,)).fetchone() == ("before",)
    finally:
        proxy.stop()


def test_database_key_store(pg: PgServer, tmp_path: Path) -> None:
    backend = Backend.create(pg, "encrypted_db", SETUP, owner=False)
    proxy = launch(backend, tmp_path, store="database")
    try:
        keys(proxy, "init", "--dsn", pg.dsn(dbname=backend.database))
        pg.execute(f'GRANT USAGE ON SCHEMA tenantgate TO "{backend.role}"; '
                   f'GRANT SELECT, INSERT, UPDATE ON tenantgate.keys TO "{backend.role}"', dbname=backend.database)
        with connect(proxy) as conn:
            conn.execute("INSERT INTO customers (id, tenant_id, ssn) VALUES (1, 'acme', 'db-store')")
            assert conn.execute("SELECT ssn FROM customers WHERE ssn = 'db-store'").fetchone() == ("db-store",)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):  # tenants never reach the key table
                conn.execute("SELECT * FROM tenantgate.keys")
        assert pg.fetch("SELECT tenant, version FROM tenantgate.keys", dbname=backend.database) == [("acme", 1)]
    finally:
        proxy.stop()
