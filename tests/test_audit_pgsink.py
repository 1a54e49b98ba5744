"""The PostgreSQL table sink against a real server: write, verify, tamper, connection loss."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import asyncpg
import pytest

from tenantgate.audit.errors import AuditUnavailable
from tenantgate.audit.pgsink import PostgresSink
from tenantgate.audit.reader import PostgresSource
from tenantgate.audit.record import AuditEvent
from tenantgate.audit.settings import AuditSettings
from tenantgate.audit.verify import verify_log
from tenantgate.audit.writer import AuditLog

KEY = b"K" * 32


@pytest.fixture
def audit_dsn(pg: Any) -> str:
    name = "audit_" + secrets.token_hex(4)
    pg.create_database(name)
    dsn: str = pg.dsn(dbname=name)
    return dsn


def run_log(dsn: str, n: int, *, table: str = "tenantgate_audit") -> list[int | None]:
    async def go() -> list[int | None]:
        settings = AuditSettings(key="env:UNUSED", sink="postgres", dsn=dsn, durability="strict",
                                 checkpoint_every=5)
        log = AuditLog(settings, sink=PostgresSink(dsn, table=table), hmac_key=KEY)
        await log.start()
        seqs = [await log.record(AuditEvent("statement", tenant="acme", user="alice", sql=f"SELECT {i}",
                                            decision="allowed")) for i in range(n)]
        await log.close()
        return seqs

    return asyncio.run(go())


def sql(dsn: str, query: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(query)
        finally:
            await conn.close()

    asyncio.run(go())


def test_table_sink_verifies_across_restarts(audit_dsn: str) -> None:
    run_log(audit_dsn, 12)
    run_log(audit_dsn, 3)
    result = verify_log([PostgresSource(audit_dsn)], hmac_key=KEY)
    assert result.ok, result.problem
    # 2 x (chain_start + chain_end) + 15 statements + 2 checkpoints (the counter restarts per run)
    assert (result.records, result.chains) == (21, 2)


def test_table_tampering_is_named(audit_dsn: str) -> None:
    run_log(audit_dsn, 8)
    sql(audit_dsn, "UPDATE tenantgate_audit SET record = replace(record, 'SELECT 3', 'SELECT 4') WHERE seq = 5")
    problem = verify_log([PostgresSource(audit_dsn)], hmac_key=KEY).problem
    assert problem is not None and problem.seq == 5 and "hash" in problem.message
    sql(audit_dsn, "DELETE FROM tenantgate_audit WHERE seq IN (5, 6)")
    problem = verify_log([PostgresSource(audit_dsn)], hmac_key=KEY).problem
    assert problem is not None and problem.seq == 7 and "seq jumps" in problem.message


def test_lost_connection_refuses_then_recovers(audit_dsn: str) -> None:
    async def go() -> None:
        settings = AuditSettings(key="env:UNUSED", sink="postgres", dsn=audit_dsn, durability="strict",
                                 checkpoint_every=0, table="audit_conn")
        log = AuditLog(settings, hmac_key=KEY, retry_interval=0.0, instance_id="conn-test")
        await log.start()
        await log.record(AuditEvent("statement", sql="SELECT 1"))
        admin = await asyncpg.connect(audit_dsn)
        try:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await admin.close()
        with pytest.raises(AuditUnavailable, match="postgres table audit_conn"):
            await log.record(AuditEvent("statement", sql="SELECT 2"))
        assert not log.stats().available
        assert isinstance(await log.record(AuditEvent("statement", sql="SELECT 3")), int)
        await log.close()
        assert log.stats().records_refused == 1

    asyncio.run(go())
    source = PostgresSource(audit_dsn, "audit_conn")
    result = verify_log([source], hmac_key=KEY)
    assert result.ok, result.problem
    kinds = [line.data.split(b'"kind":"')[1].split(b'"')[0] for line in source.lines()]
    assert kinds == [b"chain_start", b"statement", b"gap", b"statement", b"chain_end"]
