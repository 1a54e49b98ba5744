"""The PostgreSQL sink at volume (issue 16): a live writer is provable (its advisory lock), a crashed
writer's or a cut tail is not; rotated file segments shipped to the PostgreSQL archive."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tenantgate.audit.cli import main
from tenantgate.audit.errors import AuditUnavailable
from tenantgate.audit.pgsink import WRITER_HOLDER_SQL, PostgresSink, create_table_sql, lock_args
from tenantgate.audit.reader import PostgresSource
from tenantgate.audit.verify import verify_log
from tenantgate.config import load_config
from tenantgate.proxy.ops.compliance import auditlog
from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import Backend, ProxyProcess
from .test_audit_pgsink import audit_dsn, sql
from .test_audit_proxy import ORDERS_SETUP, audited_proxy
from .test_audit_volume import proxy_writing

__all__ = ["audit_dsn"]  # the fixture, imported for pytest


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "pglive", ORDERS_SETUP, owner=False)


def pg_proxy(backend: Backend, tmp: Path, dsn: str, pooling: str) -> ProxyProcess:
    return audited_proxy(backend, tmp, pool_mode=pooling, sink=f'sink = "postgres"\ndsn = "{dsn}"\ntable = "live"')


def verified(tmp: Path, dsn: str) -> tuple[int, str]:
    """(exit code of `audit verify DSN`, its status line) and the same through the compliance adapter."""
    key = bytes.fromhex((tmp / "audit.key").read_text())
    result = verify_log([PostgresSource(dsn, "live")], hmac_key=key)
    code = main(["audit", "verify", "--key", f"file:{tmp}/audit.key", "--table", "live", dsn])
    integrity = auditlog.verify(load_config(tmp / "tenantgate.toml", enforce_compliance=False))
    assert (code == 0) == result.ok == integrity.ok, (result.status, integrity.summary)
    assert ("log open" in result.status) == ("log open" in integrity.summary)
    return code, result.status


def statements(p: ProxyProcess, n: int) -> None:
    with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
        for _ in range(n):
            conn.execute("SELECT id FROM orders WHERE id = %s", [1]).fetchall()


@pytest.mark.parametrize("pooling", ["session", "transaction"])
def test_live_table_log_verified_while_the_proxy_writes(backend: Backend, tmp_path: Path, audit_dsn: str,
                                                        pooling: str, capsys: pytest.CaptureFixture[str]) -> None:
    with proxy_writing(pg_proxy(backend, tmp_path, audit_dsn, pooling)):
        for _ in range(3):
            code, status = verified(tmp_path, audit_dsn)
            assert code == 0 and status.startswith("verified through seq ") and status.endswith(", log open")
            assert "log open" in capsys.readouterr().out
            time.sleep(0.2)
    code, status = verified(tmp_path, audit_dsn)
    assert code == 0 and "intact" in status


@pytest.mark.parametrize("how", ["writer killed", "tail cut", "tail cut at chain_end"])
def test_closed_table_log_without_its_tail_fails(backend: Backend, tmp_path: Path, audit_dsn: str,
                                                 how: str) -> None:
    p = pg_proxy(backend, tmp_path, audit_dsn, "session")
    statements(p, 30)
    time.sleep(0.2)  # batched durability: let the last batch commit
    if how == "writer killed":  # a crash: no chain_end, and the server drops the dead session's lock
        p.stop(signal.SIGKILL)
    else:
        assert p.stop() == 0
        cut = 3 if how == "tail cut" else 1
        sql(audit_dsn, f"DELETE FROM live WHERE seq > (SELECT max(seq) - {cut} FROM live)")
    code, status = verified(tmp_path, audit_dsn)
    assert code == 1 and "truncated" in status and "no writer holds" in status, status


def test_a_second_writer_of_one_table_is_refused(backend: Backend, tmp_path: Path, audit_dsn: str) -> None:
    """Two writers would fork the chain (same seqs): the lock that proves liveness keeps them apart."""
    p = pg_proxy(backend, tmp_path, audit_dsn, "session")
    try:
        statements(p, 2)

        async def second() -> None:
            sink = PostgresSink(audit_dsn, table="live")
            with pytest.raises(AuditUnavailable, match="another writer holds"):
                await sink.open()
            await sink.close()

        asyncio.run(second())
    finally:
        assert p.stop() == 0
    assert verified(tmp_path, audit_dsn)[0] == 0


def test_reading_the_lock_never_takes_it(audit_dsn: str) -> None:
    """Verify looks the writer up in pg_locks: a writer opening while verify runs is never turned away."""
    async def go() -> None:
        conn = await asyncpg.connect(audit_dsn)
        try:
            await conn.execute(create_table_sql("live"))
            assert await conn.fetch(WRITER_HOLDER_SQL, *lock_args("live")) == []
            assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
        finally:
            await conn.close()

    asyncio.run(go())
