"""Keyring against a real PostgreSQL: the key table, column migration, rotation, rewrap, shred, CLI."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tenantgate.keyring import (
    AesKwKek,
    DatabaseKeyStore,
    DecryptError,
    Keyring,
    KeyStoreError,
    Mode,
    load_encryption,
    provider_from_uri,
)
from tenantgate.keyring.cli import register
from tenantgate.keyring.format import parse_header
from tenantgate.keyring.pgtypes import DATE, NUMERIC


@pytest.fixture(scope="module")
def dsn(pg: Any) -> str:
    name = "kr_" + secrets.token_hex(4)
    pg.create_database(name)
    return str(pg.dsn(dbname=name))


def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def execute(dsn: str, sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tenantgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", *argv])
    return int(args.func(args))


def test_missing_table_is_a_clear_error(dsn: str) -> None:
    store = DatabaseKeyStore(dsn, schema="tg_missing")
    with pytest.raises(KeyStoreError, match="keys init"):
        asyncio.run(store.load("acme"))


def test_concurrent_first_use_creates_one_key(dsn: str) -> None:
    kek = AesKwKek(os.urandom(32))

    async def go() -> tuple[bytes, bytes, int]:
        # Own schema: these keys are under a throwaway KEK, unlike the CLI test's.
        a = Keyring(kek, DatabaseKeyStore(dsn, schema="tg_race"))
        b = Keyring(kek, DatabaseKeyStore(dsn, schema="tg_race"))
        await a.store.initialize()
        await asyncio.gather(a.store.initialize(), b.store.initialize())
        await asyncio.gather(a.ensure_loaded("race"), b.ensure_loaded("race"))
        ct_a = a.encrypt("race", "t", "c", Mode.DETERMINISTIC, b"same")
        ct_b = b.encrypt("race", "t", "c", Mode.DETERMINISTIC, b"same")
        count = len(await a.store.load("race"))
        await a.close()
        await b.close()
        return ct_a, ct_b, count

    ct_a, ct_b, count = asyncio.run(go())
    assert ct_a == ct_b and count == 1


@pytest.fixture(scope="module")
def setup(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A config with [backend] from the test server, three encrypted columns and plaintext tables."""
    tmp = tmp_path_factory.mktemp("cli")
    url = urlsplit(dsn)
    config = tmp / "tenantgate.toml"
    config.write_text(f"""
[backend]
host = "{url.hostname}"
port = {url.port}
user = "{url.username}"
password = "{url.password or ''}"
database = "{url.path.lstrip('/')}"

[scoping]
column = "tenant_id"
tables = ["customers", {{name = "orders", column = "org"}}]

[encryption]
kek = "file:kek.bin"
store = "database"
cache_ttl = 60

[[encryption.columns]]
table = "customers"
column = "ssn"
mode = "deterministic"
type = "text"

[[encryption.columns]]
table = "customers"
column = "birthday"
type = "date"

[[encryption.columns]]
table = "orders"
column = "amount"
mode = "randomized"
type = "numeric"
""")
    execute(dsn, """
        CREATE TABLE customers (id serial PRIMARY KEY, tenant_id text NOT NULL, name text,
                                ssn text NOT NULL, birthday date);
        CREATE TABLE orders (order_no int, line int, org text NOT NULL, amount numeric(12, 2),
                             PRIMARY KEY (order_no, line));
    """)
    rows = [
        (t, f"{t}-{i}", f"{i % 5:03d}-00-0000", f"19{50 + i}-0{1 + i % 9}-1{i % 9}")
        for t in ("acme", "globex")
        for i in range(12)
    ]
    for tenant, name, ssn, birthday in rows:
        fetch(dsn, "INSERT INTO customers (tenant_id, name, ssn, birthday) VALUES ($1, $2, $3, $4::text::date)",
              tenant, name, ssn, birthday)
    fetch(dsn, "UPDATE customers SET birthday = NULL WHERE name = 'acme-3'")
    for i in range(10):
        fetch(dsn, "INSERT INTO orders VALUES ($1, $2, $3, $4::text::numeric)", i // 3, i % 3,
              "acme" if i % 2 else "globex", f"{i}.5")
    yield config


def keyring_for(config: Path, kek: str | None = None) -> Keyring:
    settings = load_encryption(config)
    return Keyring(provider_from_uri(kek or settings.kek), DatabaseKeyStore(_dsn_of(config)))


def _dsn_of(config: Path) -> str:
    from tenantgate.keyring.settings import backend_dsn, read_toml

    return backend_dsn(read_toml(config), config)


def decrypted(
    dsn: str, keyring: Keyring, table: str, column: str, tenant_col: str, key: str
) -> dict[Any, bytes | None]:
    rows = fetch(dsn, f"SELECT {key} AS k, {tenant_col} AS t, {column} AS v FROM {table}")

    async def load() -> None:
        for tenant in {r["t"] for r in rows}:
            await keyring.ensure_loaded(tenant, create=False)

    asyncio.run(load())
    return {r["k"]: None if r["v"] is None else keyring.decrypt(r["t"], table, column, r["v"]) for r in rows}


def test_cli_end_to_end(
    setup: Path, dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(setup)
    before = {r["id"]: (r["tenant_id"], r["ssn"], r["birthday"]) for r in fetch(dsn, "SELECT * FROM customers")}

    # init: table + KEK file
    assert run_cli("init", "--config", config, "--generate-kek") == 0
    assert (setup.parent / "kek.bin").stat().st_mode & 0o077 == 0
    assert fetch(dsn, "SELECT to_regclass('tenantgate.keys') IS NOT NULL AS ok")[0]["ok"]

    # encrypt-column, interrupted after 3 rows, then a concurrent change, then resumed
    partial = ("--batch-size", "2", "--max-rows", "3")
    assert run_cli("encrypt-column", "customers", "ssn", "--config", config, *partial) == 0
    assert "rerun to continue" in capsys.readouterr().out
    assert fetch(dsn, "SELECT count(*) AS n FROM customers WHERE ssn__tg_enc IS NOT NULL")[0]["n"] == 3
    changed = fetch(dsn, "SELECT id FROM customers WHERE ssn__tg_enc IS NOT NULL ORDER BY id LIMIT 1")[0]["id"]
    fetch(dsn, "UPDATE customers SET ssn = '999-99-9999' WHERE id = $1", changed)
    before[changed] = (before[changed][0], "999-99-9999", before[changed][2])
    assert run_cli("encrypt-column", "customers", "ssn", "--config", config, "--batch-size", "5") == 0
    assert "column is now bytea ciphertext" in capsys.readouterr().out
    assert run_cli("encrypt-column", "customers", "ssn", "--config", config) == 0
    assert "already encrypted" in capsys.readouterr().out
    assert run_cli("encrypt-column", "customers", "birthday", "--config", config) == 0
    assert run_cli("encrypt-column", "orders", "amount", "--config", config, "--batch-size", "4") == 0

    info = {r["attname"]: r for r in fetch(dsn, """
        SELECT attname, format_type(atttypid, atttypmod) AS type, attnotnull FROM pg_attribute
        WHERE attrelid = 'customers'::regclass AND attnum > 0 AND NOT attisdropped""")}
    assert info["ssn"]["type"] == "bytea" and info["ssn"]["attnotnull"]
    assert info["birthday"]["type"] == "bytea" and not info["birthday"]["attnotnull"]
    assert "ssn__tg_enc" not in info
    assert not fetch(dsn, "SELECT 1 FROM pg_trigger WHERE tgrelid = 'customers'::regclass AND NOT tgisinternal")

    keyring = keyring_for(setup)
    ssns = decrypted(dsn, keyring, "customers", "ssn", "tenant_id", "id")
    births = decrypted(dsn, keyring, "customers", "birthday", "tenant_id", "id")
    for id_, (_, ssn, birthday) in before.items():
        assert ssns[id_] == ssn.encode()
        assert births[id_] == (None if birthday is None else DATE.from_text(str(birthday).encode()))
    amounts = decrypted(dsn, keyring, "orders", "amount", "org", "(order_no, line)::text")
    assert amounts["(0,0)"] == NUMERIC.from_text(b"0.50") and len(amounts) == 10

    # Deterministic: equal plaintexts share a ciphertext within a tenant, so a unique index is meaningful.
    groups = fetch(dsn, "SELECT tenant_id, ssn, count(*) AS n FROM customers GROUP BY 1, 2 HAVING count(*) > 1")
    assert groups, "repeated SSNs should collide within a tenant"
    fetch(dsn, "CREATE INDEX customers_ssn ON customers (tenant_id, ssn)")
    assert not fetch(dsn, """SELECT 1 FROM customers a JOIN customers b ON a.ssn = b.ssn
                              WHERE a.tenant_id <> b.tenant_id""")

    # rotate + reencrypt (interrupted, then resumed)
    assert run_cli("rotate", "acme", "--config", config) == 0
    assert run_cli("reencrypt", "acme", "--config", config, *partial) == 0
    versions = [parse_header(r["ssn"])[1] for r in fetch(dsn, "SELECT ssn FROM customers WHERE tenant_id = 'acme'")]
    assert versions.count(2) == 3
    assert run_cli("reencrypt", "acme", "--config", config, "--batch-size", "4") == 0
    out = capsys.readouterr().out
    assert "re-encrypted to v2" in out
    for table, column, tcol in (("customers", "ssn", "tenant_id"), ("customers", "birthday", "tenant_id"),
                                ("orders", "amount", "org")):
        for r in fetch(dsn, f"SELECT {tcol} AS t, {column} AS v FROM {table} WHERE {column} IS NOT NULL"):
            assert parse_header(r["v"])[1] == (2 if r["t"] == "acme" else 1)
    keyring = keyring_for(setup)
    assert decrypted(dsn, keyring, "customers", "ssn", "tenant_id", "id") == ssns
    assert decrypted(dsn, keyring, "orders", "amount", "org", "(order_no, line)::text") == amounts

    # list never shows key material
    assert run_cli("list", "--config", config) == 0
    listing = capsys.readouterr().out
    assert "acme" in listing and "globex" in listing and "active" in listing
    for r in fetch(dsn, "SELECT wrapped FROM tenantgate.keys"):
        assert r["wrapped"].hex() not in listing

    # rewrap under an env: KEK; the old KEK file opens nothing afterwards
    new_kek = os.urandom(32).hex()
    monkeypatch.setenv("TG_TEST_NEW_KEK", new_kek)
    assert run_cli("rewrap", "--new-kek", "env:TG_TEST_NEW_KEK", "--config", config) == 0
    assert "re-wrapped 3 keys" in capsys.readouterr().out
    assert decrypted(dsn, keyring_for(setup, "env:TG_TEST_NEW_KEK"), "customers", "ssn", "tenant_id", "id") == ssns
    with pytest.raises(Exception, match="cannot be unwrapped"):
        decrypted(dsn, keyring_for(setup), "customers", "ssn", "tenant_id", "id")
    setup.write_text(setup.read_text().replace('kek = "file:kek.bin"', 'kek = "env:TG_TEST_NEW_KEK"'))

    # shred: refused without confirmation, then done; other tenant unaffected
    monkeypatch.setattr("sys.stdin", io.StringIO("acme\n"))
    assert run_cli("shred", "globex", "--config", config) == 1
    assert "nothing destroyed" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("globex\n"))
    assert run_cli("shred", "globex", "--config", config) == 0
    captured = capsys.readouterr()
    assert "event: key.shredded tenant=globex versions=[1]" in captured.err
    tomb = fetch(dsn, "SELECT wrapped, destroyed_at FROM tenantgate.keys WHERE tenant = 'globex'")
    assert tomb and all(r["wrapped"] is None and r["destroyed_at"] is not None for r in tomb)
    keyring = keyring_for(setup)
    asyncio.run(keyring.ensure_loaded("acme", create=False))
    asyncio.run(keyring.ensure_loaded("globex", create=False))
    for r in fetch(dsn, "SELECT id, tenant_id, ssn FROM customers"):
        if r["tenant_id"] == "globex":
            with pytest.raises(DecryptError, match="crypto-shredded"):
                keyring.decrypt("globex", "customers", "ssn", r["ssn"])
        else:
            assert keyring.decrypt("acme", "customers", "ssn", r["ssn"]) == ssns[r["id"]]
    assert run_cli("shred", "globex", "--config", config, "--yes") == 0
    assert "already shredded" in capsys.readouterr().out


def test_cli_reports_config_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("""
[encryption]
kek = "0011223344"
store = "s3"
cache_ttl = "soon"
colour = 1
[[encryption.columns]]
table = "customers"
column = "1bad"
mode = "fast"
type = "uuid"
""")
    assert run_cli("list", "--config", str(config)) == 1
    err = capsys.readouterr().err
    for key in ("encryption.kek", "encryption.store", "encryption.cache_ttl", "encryption.colour",
                "encryption.columns[0].column", "encryption.columns[0].mode", "encryption.columns[0].type"):
        assert f"{config}: {key}:" in err
    assert "0011223344" not in err
