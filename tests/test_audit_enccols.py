"""Exact encrypted-column access in the audit log, through the real proxy and real PostgreSQL.

Each statement record names the encrypted columns whose values the proxy decrypted for the client
(``details.encrypted_read``) or encrypted for the statement (``details.encrypted_written``: Bind values
and literals, stored or compared) and their union in ``encrypted_columns``; nothing when there were none.
Cases are the ones a count from the statement's text gets wrong: a column named only in ``IS NULL``, a
comment or a string, an alias, a CTE or subquery, ``*`` over NULLs, an empty result, a multi-statement
query (matched per statement), a prepared statement executed N times, a portal fetched in chunks.
Session and transaction pooling, batched and strict durability, record formats 1 and 2.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tenantgate.audit.reader import expand, iter_records, open_sources
from tenantgate.audit.record import AuditEvent
from tenantgate.audit.settings import AuditSettings
from tenantgate.audit.verify import verify_log
from tenantgate.audit.writer import AuditLog
from tenantgate.keyring.cli import register
from tenantgate.keyring.kek import create_kek_file
from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import PREFER, Backend, ProxyProcess, RawClient, config_text, errors, start_proxy

SETUP = """
CREATE TABLE customers (id int PRIMARY KEY, tenant_id text NOT NULL, name text, ssn bytea, note bytea);
"""
SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["customers"]\n'
ENCRYPTION = """
[encryption]
kek = "file:kek.bin"
store = "file:keys.json"

[[encryption.columns]]
table = "customers"
column = "ssn"
mode = "deterministic"

[[encryption.columns]]
table = "customers"
column = "note"
"""
SSN, NOTE = "customers.ssn", "customers.note"
# plaintexts the proxy encrypts: none may ever appear in the log
SECRETS = ("ssn-secret-one", "ssn-secret-two", "note-secret-one", "note-secret-three", "ssn-inserted",
           "ssn-bound", "note-bound", "ssn-nobody")
_tags = itertools.count(1000 + secrets.randbelow(10**6) * 1000)


@dataclass
class Setup:
    proxy: ProxyProcess
    log: Path
    pool_mode: str
    durability: str
    fmt: int


VARIANTS = [("session", "batched", 2), ("transaction", "batched", 2), ("transaction", "strict", 2),
            ("session", "batched", 1)]


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "enccols", SETUP, owner=False)


@pytest.fixture(scope="module", params=VARIANTS, ids=["-".join(map(str, v)) for v in VARIANTS])
def setup(request: pytest.FixtureRequest, backend: Backend, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Setup]:
    pool_mode, durability, fmt = request.param
    tmp = tmp_path_factory.mktemp(f"enccols-{pool_mode}-{durability}-{fmt}")
    create_kek_file(tmp / "kek.bin")
    key = tmp / "audit.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    log = tmp / "log" / "audit.jsonl"
    audit = (f'\n[audit]\npath = "{log}"\nkey = "file:{key}"\nflush_interval_ms = 20\nlog_parameters = "full"\n'
             f'durability = "{durability}"\nformat = {fmt}\n')
    port = free_port()
    text = config_text(backend, port, scoping=SCOPING, extra=ENCRYPTION + audit,
                       backend_extra=f'{PREFER}\npool_mode = "{pool_mode}"')
    proxy = start_proxy(tmp, text, port)
    try:
        parser = argparse.ArgumentParser()  # `tenantgate keys init`: the key file
        register(parser.add_subparsers(dest="command"))
        ns = parser.parse_args(["keys", "init", "--config", str(proxy.config_path)])
        assert ns.func(ns) == 0
        backend.pg.execute("DELETE FROM customers", dbname=backend.database)
        client = login(proxy)
        try:  # 1: both set; 2: ssn only; 3: note only (ciphertext only the proxy can make)
            ok(client.query("INSERT INTO customers (id, tenant_id, name, ssn, note) VALUES "
                            "(1, 'acme', 'one', 'ssn-secret-one', 'note-secret-one'), "
                            "(2, 'acme', 'two', 'ssn-secret-two', NULL), "
                            "(3, 'acme', 'three', NULL, 'note-secret-three')"))
        finally:
            client.close()
        yield Setup(proxy, log, pool_mode, durability, fmt)
    finally:
        proxy.stop()


def login(proxy: ProxyProcess) -> RawClient:
    client = RawClient(proxy.port)
    ok(client.login("alice", "alice-pw", "enccols"))
    return client


def ok(messages: list[object]) -> list[object]:
    assert not errors(messages), errors(messages)
    return messages


def records(setup: Setup, tag: int, count: int) -> list[dict[str, Any]]:
    """The statement records (end records in strict mode) whose SQL holds ``tag``, once ``count`` are on disk."""
    deadline = time.monotonic() + 10
    while True:
        found = [rec for rec in expand(r for _raw, r in iter_records(open_sources([str(setup.log)])) if r is not None)
                 if rec.get("kind") == "statement" and str(tag) in str(rec.get("sql"))]
        ends = [r for r in found if (r.get("details") or {}).get("phase") != "start"]
        if len(ends) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(ends) == count, ends
    if setup.durability == "strict":  # the write-ahead record knows what was encrypted, not yet what is read
        starts = [r for r in found if r["details"].get("phase") == "start"]
        assert len(starts) == count, starts
        for start, end in zip(starts, ends, strict=True):
            read, written = access(start)
            assert not read, start
            if "reason" not in end:  # a statement the backend skipped records no access at its end
                assert written == access(end)[1], (start, end)
    return ends


def access(rec: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(read, written) of a record, checking that encrypted_columns is their union."""
    details = rec.get("details") or {}
    read, written = set(details.get("encrypted_read", ())), set(details.get("encrypted_written", ()))
    union = sorted(read | written)
    if union:
        assert rec["encrypted_columns"] == union, rec
    else:  # lean: nothing added; format 1 says "none" explicitly (older releases wrote no field at all)
        assert rec.get("encrypted_columns") == ([] if rec.get("v") == 1 else None), rec
    return read, written


def no_plaintext(setup: Setup) -> None:
    text = setup.log.read_text()
    for secret in SECRETS:
        assert secret not in text and secret.encode().hex() not in text


R, W, RW, NONE = "r", "w", "rw", ""


def expect(*per_statement: tuple[str, str]) -> list[tuple[set[str], set[str]]]:
    """(column, how) per statement record -> the (read, written) sets expected; how: r, w, rw or ''."""
    out = []
    for spec in per_statement:
        read, written = set(), set()
        for column, how in zip(spec[::2], spec[1::2], strict=True):
            if "r" in how:
                read.add(column)
            if "w" in how:
                written.add(column)
        out.append((read, written))
    return out


# (simple Query text with {t} for the tag, expected (read, written) per statement)
SIMPLE = {
    "plain_read": ("SELECT ssn, name, {t} AS tag FROM customers WHERE id = 1", expect((SSN, R))),
    "is_null_only": ("SELECT name, {t} AS tag FROM customers WHERE ssn IS NULL", expect(())),
    "named_in_comment": ("SELECT name, {t} AS tag FROM customers WHERE id = 1 /* ssn, note, * */", expect(())),
    "named_in_string": ("SELECT 'ssn note *' AS label, {t} AS tag FROM customers WHERE id = 1", expect(())),
    "aliased_table": ("SELECT c.note, {t} AS tag FROM customers c WHERE c.id = 1", expect((NOTE, R))),
    "through_cte": ("WITH x AS (SELECT ssn AS s FROM customers WHERE id = 2) SELECT s, {t} AS tag FROM x",
                    expect((SSN, R))),
    "through_subquery": ("SELECT q.n, {t} AS tag FROM (SELECT note AS n FROM customers WHERE id = 3) q",
                         expect((NOTE, R))),
    "star_over_nulls": ("SELECT {t} AS tag, * FROM customers WHERE id = 2", expect((SSN, R))),  # note is NULL
    "empty_result": ("SELECT ssn, note, {t} AS tag FROM customers WHERE id = -1", expect(())),
    "where_only_deterministic": ("SELECT id, {t} AS tag FROM customers WHERE ssn = 'ssn-secret-one'",
                                 expect((SSN, W))),
    "compared_no_match": ("SELECT id, {t} AS tag FROM customers WHERE ssn IN ('ssn-nobody', NULL)", expect((SSN, W))),
    "insert_returning": ("INSERT INTO customers (id, tenant_id, name, ssn) VALUES ({t}, 'acme', 'new', 'ssn-inserted') "
                         "RETURNING ssn, note", expect((SSN, RW))),  # note: NULL, not decrypted
    "update_null": ("UPDATE customers SET note = NULL WHERE id = {t}", expect(())),
    "multi_statement": ("SELECT name, {t} FROM customers WHERE id = 1; SELECT ssn, {t} FROM customers WHERE id = 1; "
                        "SELECT id, {t} FROM customers WHERE ssn = 'ssn-secret-two'; SELECT note, ssn, {t} "
                        "FROM customers WHERE id = 3",
                        expect((), (SSN, R), (SSN, W), (NOTE, R))),
    "multi_same_literal": ("SELECT id, {t} FROM customers WHERE ssn = 'ssn-secret-one'; SELECT {t}, 1; "
                           "SELECT note, {t} FROM customers WHERE ssn = 'ssn-secret-one'",
                           expect((SSN, W), (), (SSN, W, NOTE, R))),
    "sql_prepare_execute": ("PREPARE p{t} AS SELECT note, {t} FROM customers WHERE ssn = 'ssn-secret-one'; "
                            "EXECUTE p{t}; EXECUTE p{t}; DEALLOCATE p{t}",
                            expect((), (SSN, W, NOTE, R), (SSN, W, NOTE, R), ())),  # compared at each EXECUTE
    "multi_failing_literal": ("SELECT 1 / 0, {t}; SELECT id, {t} FROM customers WHERE ssn = 'ssn-secret-one'",
                              expect((), ())),  # the second is skipped by the backend: nothing compared
    "multi_failing": ("SELECT ssn, {t} FROM customers WHERE id = 1; SELECT 1 / 0, {t}; "
                      "SELECT ssn, {t} FROM customers WHERE id = 1",
                      expect((SSN, R), (), ())),  # the third is not executed: nothing read
}


@pytest.mark.parametrize("case", list(SIMPLE))
def test_simple_query(setup: Setup, case: str) -> None:
    sql, expected = SIMPLE[case]
    tag = next(_tags)
    client = login(setup.proxy)
    try:
        out = client.query(sql.format(t=tag))
        assert bool(errors(out)) == case.startswith("multi_failing"), out
    finally:
        client.close()
    assert [access(r) for r in records(setup, tag, len(expected))] == expected
    no_plaintext(setup)


def test_sql_prepare_then_execute_in_later_queries(setup: Setup) -> None:
    """SQL-level PREPARE and EXECUTE in separate Query messages: each EXECUTE uses the literal encrypted at
    PREPARE; a re-PREPARE of the name without one uses none."""
    tag = next(_tags)
    client = login(setup.proxy)
    try:
        ok(client.query(f"PREPARE q{tag} AS SELECT id, {tag} FROM customers WHERE ssn = 'ssn-secret-two'"))
        for _ in range(2):
            ok(client.query(f"EXECUTE q{tag}"))
        ok(client.query(f"DEALLOCATE q{tag}"))
        ok(client.query(f"PREPARE q{tag} AS SELECT id, {tag} FROM customers WHERE ssn IS NULL"))
        ok(client.query(f"EXECUTE q{tag}"))
    finally:
        client.close()
    assert [access(r) for r in records(setup, tag, 6)] == expect((), (SSN, W), (SSN, W), (), (), ())


def extended(client: RawClient, *messages: Any) -> list[object]:
    client.send(b"".join(m.encode() for m in messages) + codec.Sync().encode())
    return ok(client.until_ready())


def test_prepared_statement_executed_n_times(setup: Setup) -> None:
    """Each Execute is one record: N runs of a statement comparing a bound value and a literal count N."""
    tag, n = next(_tags), 3
    client = login(setup.proxy)
    try:
        runs = [m for _ in range(n) for m in (codec.Bind("", "s", (), (b"ssn-bound",)), codec.Execute(""))]
        extended(client, codec.Parse("s", f"SELECT note, {tag} AS tag FROM customers WHERE ssn = $1 OR ssn = "
                                          "'ssn-secret-one'"), *runs)
        # a literal in the Parse is encrypted once and compared on every run; the NULL bound here is not
        literal = [m for _ in range(n) for m in (codec.Bind("", "u", (), (None,)), codec.Execute(""))]
        extended(client, codec.Parse("u", f"UPDATE customers SET note = $1 WHERE id = {tag} AND ssn = 'ssn-nobody'"),
                 *literal)
    finally:
        client.close()
    assert [access(r) for r in records(setup, tag, 2 * n)] == expect(*[(SSN, W, NOTE, R)] * n, *[(SSN, W)] * n)
    no_plaintext(setup)


def test_portal_fetched_in_chunks(setup: Setup) -> None:
    """One record per Execute message: each names what its own rows decrypted; the Bind's encrypted value
    is used by the run the first Execute starts."""
    tag = next(_tags)
    client = login(setup.proxy)
    try:
        sql = (f"SELECT ssn, {tag} AS tag FROM customers WHERE id BETWEEN 1 AND 3 AND (ssn IS NULL OR ssn <> $1) "
               "ORDER BY id")
        out = extended(client, codec.Parse("", sql), codec.Bind("", "", (), (b"ssn-bound",)),
                       *[codec.Execute("", 1)] * 3, codec.Execute("", 0))
        assert sum(isinstance(m, codec.Simple) and m.kind == b"s" for m in out) == 3
    finally:
        client.close()
    # rows 1 and 2 have an ssn, row 3's is NULL, the last Execute finds no more rows
    assert [access(r) for r in records(setup, tag, 4)] == expect((SSN, RW), (SSN, R), (), ())


def test_bound_values_are_written(setup: Setup) -> None:
    tag = next(_tags)
    client = login(setup.proxy)
    try:
        extended(client, codec.Parse("", f"INSERT INTO customers (id, tenant_id, ssn, note) VALUES ({tag}, 'acme', "
                                          "$1, $2)"),
                 codec.Bind("", "", (), (b"ssn-bound", b"note-bound")), codec.Execute(""),
                 codec.Parse("", f"SELECT note, ssn, {tag} FROM customers WHERE id = {tag}"), codec.Bind("", ""),
                 codec.Execute(""))
    finally:
        client.close()
    assert [access(r) for r in records(setup, tag, 2)] == expect((SSN, W, NOTE, W), (SSN, R, NOTE, R))
    no_plaintext(setup)


@pytest.mark.parametrize("fmt", [2, 1])
def test_record_field_round_trip(tmp_path: Path, fmt: int) -> None:
    """Written by the real writer, read back by audit/reader.py (format 2: audit/lean.py's lines), the chain
    verifies: the field and its details as logged; format 2 adds nothing without access, format 1 says []."""
    path, key = tmp_path / "audit.jsonl", b"K" * 32
    touched = AuditEvent("statement", tenant="acme", sql="SELECT ssn FROM customers WHERE note = '***'",
                         rewritten="SELECT ssn FROM (...) customers", encrypted_columns=(NOTE, SSN),
                         details={"statement": "select", "encrypted_read": [SSN], "encrypted_written": [NOTE]})
    bare = AuditEvent("statement", tenant="acme", sql="SELECT 1", details={"statement": "select"})

    async def write() -> None:
        log = AuditLog(AuditSettings(key="env:UNUSED", path=path, durability="strict", checkpoint_every=0,
                                     format=fmt), hmac_key=key)
        await log.start()
        for event in (touched, bare):
            await log.record(event)
        await log.close()

    asyncio.run(write())
    assert verify_log(open_sources([str(path)]), hmac_key=key).ok
    got = [r for r in expand(r for _raw, r in iter_records(open_sources([str(path)])) if r is not None)
           if r["kind"] == "statement"]
    assert [r["v"] for r in got] == [fmt, fmt]
    assert got[0]["encrypted_columns"] == [NOTE, SSN] and access(got[0]) == ({SSN}, {NOTE})
    assert access(got[1]) == (set(), set())  # format 2: no key at all; format 1: []
    if fmt == 2:
        line = next(raw for raw in path.read_bytes().splitlines() if b'"sql":"SELECT 1"' in raw)
        assert b"encrypted" not in line  # lean: nothing added when no encrypted column was touched
