"""The audit log as the proxy writes it: counts, verification, durability, failure, secrets."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tenantgate.audit.reader import expand
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import (
    ORDERS_SCOPING,
    ORDERS_SETUP,
    Backend,
    ProxyProcess,
    RawClient,
    config_text,
    errors,
    start_proxy,
)


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "audited", ORDERS_SETUP, owner=False)


def audited_proxy(
    backend: Backend, tmp: Path, *, durability: str = "batched", params: str = "none", sink: str = "",
    pool_mode: str = "session", pool_size: int = 20,
) -> ProxyProcess:
    key = tmp / "audit.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    (tmp / "log").mkdir(exist_ok=True)
    audit = (
        f'\n[audit]\npath = "{tmp}/log/audit.jsonl"\nkey = "file:{key}"\ndurability = "{durability}"\n'
        f'flush_interval_ms = 20\nlog_parameters = "{params}"\n{sink}\n'
    )
    port = free_port()
    pooling = f'pool_mode = "{pool_mode}"\npool_size = {pool_size}'
    text = config_text(backend, port, scoping=ORDERS_SCOPING, extra=audit, backend_extra=pooling)
    return start_proxy(tmp, text, port)


def records(tmp: Path) -> list[dict[str, object]]:
    out = []
    for path in sorted((tmp / "log").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return list(expand(out))


def verify(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tenantgate.proxy.cli",
            "audit",
            "verify",
            "--key",
            f"file:{tmp}/audit.key",
            *extra,
            *sorted(str(p) for p in (tmp / "log").glob("*.jsonl")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_mixed_workload_counts_and_verifies(backend: Backend, tmp_path: Path) -> None:
    p = audited_proxy(backend, tmp_path)
    try:
        for password in ("wrong-1", "wrong-2"):  # two auth failures
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(p.dsn("alice").replace("alice-pw", password))
        with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:  # auth_ok 1
            cur = psycopg.ClientCursor(conn)
            cur.execute("SELECT id FROM orders")  # simple: 1 statement
            cur.execute("SELECT 1; SELECT count(*) FROM orders")  # simple: 2 statements
            conn.execute("SELECT note FROM orders WHERE id = %s", [1])  # extended: 1 execute
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM pg_stat_activity")  # refusal 1
            with pytest.raises(psycopg.errors.DivisionByZero):
                cur.execute("SELECT 1/0")  # statement with an error: 1
            with cur.copy("COPY (SELECT id FROM orders) TO STDOUT") as copy:  # 1 statement
                assert len(list(copy)) == 2
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                cur.execute("TRUNCATE orders")  # refusal 2

        async def extended() -> None:  # auth_ok 2
            conn = await asyncpg.connect(p.dsn("bob"))
            try:
                stmt = await conn.prepare("SELECT id FROM orders WHERE id = $1")
                for i in range(3):  # 3 executes of one prepared statement
                    await stmt.fetch(i)
            finally:
                await conn.close()

        import asyncio

        asyncio.run(extended())
        time.sleep(0.3)
    finally:
        assert p.stop() == 0
    recs = records(tmp_path)
    kinds = Counter(str(r["kind"]) for r in recs)
    assert kinds["auth_fail"] == 2
    assert kinds["auth_ok"] == 2
    assert kinds["refusal"] == 2
    statements = [r for r in recs if r["kind"] == "statement"]
    alice = [r for r in statements if r["user"] == "alice"]
    assert len(alice) == 6, [r.get("sql") for r in alice]
    bob = [r for r in statements if r["user"] == "bob" and "$1" in str(r.get("sql"))]
    assert len(bob) == 3
    assert all(r["tenant"] == "globex" and r["rewritten"] for r in bob)
    failed = [r for r in alice if r.get("sqlstate") == "22012"]
    assert len(failed) == 1 and failed[0]["sql"] == "SELECT 1/0"
    first = next(r for r in alice if r["sql"] == "SELECT id FROM orders")
    assert first["rows"] == 2 and "acme" in str(first["rewritten"]) and first["decision"] == "allowed"
    refusal = next(r for r in recs if r["kind"] == "refusal" and "pg_stat_activity" in str(r["sql"]))
    assert refusal["sqlstate"] == "42501" and refusal["decision"] == "refused"
    result = verify(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # no secrets: passwords never, parameters not by default
    text = "\n".join(path.read_text() for path in (tmp_path / "log").glob("*.jsonl"))
    for secret in ("alice-pw", "bob-pw", "wrong-1", backend.password):
        assert secret not in text
    assert not any("params" in r for r in statements)


def test_tampering_is_named(backend: Backend, tmp_path: Path) -> None:
    p = audited_proxy(backend, tmp_path)
    with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
        for i in range(5):
            conn.execute("SELECT id FROM orders WHERE id = %s", [i])
    p.stop()
    log = next((tmp_path / "log").glob("*.jsonl"))
    lines = log.read_text().splitlines()
    lines[3] = lines[3].replace('"rows":', '"rows":1')  # edit one record
    log.write_text("\n".join(lines) + "\n")
    result = verify(tmp_path)
    assert result.returncode == 1
    assert "audit.jsonl:4: seq 4" in result.stdout + result.stderr


def test_strict_durability_survives_kill(backend: Backend, tmp_path: Path) -> None:
    p = audited_proxy(backend, tmp_path, durability="strict")
    seen: list[int] = []
    stop = threading.Event()

    def load() -> None:
        try:
            with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
                i = 1000
                while not stop.is_set():
                    conn.execute(f"INSERT INTO orders (id, note) VALUES ({i}, 'strict')")
                    seen.append(i)  # the client saw this statement complete
                    i += 1
        except psycopg.Error:
            pass

    t = threading.Thread(target=load)
    t.start()
    time.sleep(1.5)
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait()
    stop.set()
    t.join(10)
    assert len(seen) > 10
    logged = " ".join(str(r.get("sql")) for r in records_tolerant(tmp_path))
    missing = [i for i in seen if f"VALUES ({i}," not in logged]
    assert not missing, f"{len(missing)} completed statements have no record"
    backend.pg.execute("DELETE FROM orders WHERE note = 'strict'", dbname=backend.database)


def records_tolerant(tmp: Path) -> list[dict[str, object]]:
    """Records of a log whose last line a kill may have torn."""
    out = []
    for path in sorted((tmp / "log").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return list(expand(out))


def test_audit_database_down_refuses_statements_then_recovers(backend: Backend, tmp_path: Path) -> None:
    pg = backend.pg
    pg.create_role("auditw", "auditw-pw")
    pg.create_database("auditdb", owner="auditw")
    sink = f'sink = "postgres"\ndsn = "{pg.dsn("auditw", "auditw-pw", "auditdb")}"'
    p = audited_proxy(backend, tmp_path, durability="strict", sink=sink)
    try:
        c = RawClient(p.port)
        c.login("alice", "alice-pw")
        assert not errors(c.query("SELECT 1"))
        # the audit database goes down
        pg.execute("ALTER DATABASE auditdb ALLOW_CONNECTIONS false")
        pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'auditdb'")
        outcomes = []
        for i in range(3):
            msgs = c.query(f"INSERT INTO orders (id, note) VALUES ({2000 + i}, 'unlogged')")
            outcomes.append(errors(msgs))
            if c.closed_now():  # the statement that met the failure: result withheld, session closed
                c = RawClient(p.port)
                c.login("alice", "alice-pw")
        assert all(e and e[0].sqlstate == "58030" for e in outcomes), outcomes
        assert "audit log" in outcomes[-1][0].message
        rows = backend.pg.fetch("SELECT count(*) FROM orders WHERE note = 'unlogged'", dbname=backend.database)
        # strict: a statement is sent only once its write-ahead record is on disk, so none of them ran
        assert rows[0][0] == 0
        pg.execute("ALTER DATABASE auditdb ALLOW_CONNECTIONS true")
        time.sleep(1.5)  # the writer retries every second
        assert not errors(c.query("INSERT INTO orders (id, note) VALUES (2100, 'logged again')"))
    finally:
        pg.execute("ALTER DATABASE auditdb ALLOW_CONNECTIONS true")
        p.stop()
    logged = pg.fetch("SELECT count(*) FROM tenantgate_audit WHERE record LIKE '%logged again%' AND kind <> 'plan'",
                      dbname="auditdb")
    assert logged == [(2,)]  # strict: its write-ahead (phase start) and completion (phase end) records
    backend.pg.execute("DELETE FROM orders WHERE note IN ('unlogged', 'logged again')", dbname=backend.database)


def test_parameters_hashed_or_full(backend: Backend, tmp_path: Path) -> None:
    p = audited_proxy(backend, tmp_path, params="full")
    with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
        conn.execute("SELECT note FROM orders WHERE note = %s", ["needle-value"])
    p.stop()
    assert any("needle-value" in json.dumps(r.get("params")) for r in records(tmp_path))
