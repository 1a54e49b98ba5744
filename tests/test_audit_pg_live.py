"""The PostgreSQL sink at volume (issue 16): a live writer is provable (its advisory lock), a crashed
writer's or a cut tail is not; rotated file segments shipped to the PostgreSQL archive."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psycopg
import pytest
import zstandard

from tenantgate.audit.cli import main
from tenantgate.audit.errors import AuditUnavailable
from tenantgate.audit.pgarchive import PgArchive
from tenantgate.audit.pgsink import WRITER_HOLDER_SQL, PostgresSink, create_table_sql, lock_args
from tenantgate.audit.reader import PostgresSource
from tenantgate.audit.retention import configured_sources, ship
from tenantgate.audit.segments import rotated_files
from tenantgate.audit.settings import AuditSettings
from tenantgate.audit.verify import VerifyResult, verify_log
from tenantgate.config import load_config
from tenantgate.proxy.ops.compliance import auditlog
from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import Backend, ProxyProcess
from .test_audit_pgsink import audit_dsn, sql
from .test_audit_proxy import ORDERS_SETUP, audited_proxy
from .test_audit_volume import KEY as VKEY
from .test_audit_volume import _aged, key_file, proxy_writing

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


# -- shipping rotated segments to the PostgreSQL archive --

def archive_rows(dsn: str) -> dict[str, asyncpg.Record]:
    async def go() -> dict[str, asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return {r["segment"]: r for r in await conn.fetch("SELECT * FROM archive")}
        finally:
            await conn.close()

    return asyncio.run(go())


def verify_configured(settings: AuditSettings, **kwargs: object) -> VerifyResult:
    return verify_log(configured_sources(settings), hmac_key=VKEY, **kwargs)  # type: ignore[arg-type]


def test_ship_to_postgres_verifies_each_copy_then_deletes_only_old_hot_segments(tmp_path: Path,
                                                                                audit_dsn: str) -> None:
    settings = _aged(tmp_path, dsn=audit_dsn)
    rotated = rotated_files(settings.path)
    report = ship(settings, VKEY)
    assert report.ok and sorted(report.shipped) == sorted(p.name for p in rotated), report.problems
    assert report.deleted_hot == []  # the markers closing each segment are not old yet
    rows = archive_rows(audit_dsn)
    assert set(rows) == {p.name for p in rotated}
    assert all(r["verified_at"] is not None and r["data"] == (settings.path.parent / n).read_bytes()
               for n, r in rows.items())
    later = ship(settings, VKEY, now=datetime.now(UTC) + timedelta(days=2))
    assert later.ok and sorted(later.deleted_hot) == sorted(p.name for p in rotated), later.problems
    assert later.shipped == [] and rotated_files(settings.path) == []
    # verify over the archived rows + the active hot file, through the config
    result = verify_configured(settings)
    assert result.ok and result.records > 90, result.problem
    key_file(tmp_path)
    cfg = tmp_path / "tg.toml"
    cfg.write_text(f'[audit]\nkey = "file:{tmp_path}/k"\npath = "{settings.path}"\n'
                   f'[audit.retention]\narchive_dsn = "{audit_dsn}"\narchive_table = "archive"\nhot_days = 1\n')
    assert main(["audit", "verify", "--config", str(cfg)]) == 0


def test_hot_copy_kept_when_the_archived_row_is_damaged(tmp_path: Path, audit_dsn: str) -> None:
    settings = _aged(tmp_path, dsn=audit_dsn)
    assert ship(settings, VKEY).ok
    victim = sorted(archive_rows(audit_dsn))[0]
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(archive_rows(audit_dsn)[victim]["data"])
    forged = zstandard.ZstdCompressor().compress(plain.replace(b'"rows":1', b'"rows":2', 1))
    sql(audit_dsn, f"UPDATE archive SET data = '\\x{forged.hex()}'::bytea WHERE segment = '{victim}'")
    report = ship(settings, VKEY, now=datetime.now(UTC) + timedelta(days=2))
    assert not report.ok and victim not in report.deleted_hot
    assert (settings.path.parent / victim).exists() and any(victim in p for p in report.problems)
    # the hot copy stands in for the damaged row in verify; with it gone, verify names the row
    (settings.path.parent / victim).unlink()
    problem = verify_configured(settings).problem
    assert problem is not None and victim in problem.source and "MAC invalid" in problem.message


@pytest.mark.parametrize("crash", ["insert rolled back", "inserted, not verified", "killed after the first"])
def test_restart_mid_shipping_to_postgres_loses_and_duplicates_nothing(tmp_path: Path, audit_dsn: str,
                                                                       crash: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _aged(tmp_path, dsn=audit_dsn)
    rotated = rotated_files(settings.path)
    table = PgArchive(audit_dsn, "archive")
    first = rotated[0]
    if crash == "insert rolled back":  # the server never commits half a segment
        with pytest.raises(AuditUnavailable, match="DivisionByZeroError"):
            table._run(("execute", "INSERT INTO {t} (segment, data, sha256) VALUES ($1, $2, 'x')",
                        (first.name, first.read_bytes()[:100])), ("execute", "SELECT 1/0", ()))
        assert archive_rows(audit_dsn) == {}
    elif crash == "inserted, not verified":
        assert table.put(first.name, first.read_bytes(), "not yet verified")
    else:
        calls: list[str] = []

        def dies_on_second(self: PgArchive, segment: str, facts: dict[str, object], when: datetime) -> None:
            calls.append(segment)
            if len(calls) == 2:
                raise KeyboardInterrupt("killed")
            real(self, segment, facts, when)

        real = PgArchive.mark_verified
        monkeypatch.setattr(PgArchive, "mark_verified", dies_on_second)
        with pytest.raises(KeyboardInterrupt):
            ship(settings, VKEY)
        monkeypatch.undo()
    report = ship(settings, VKEY)
    assert report.ok, report.problems
    assert sorted(report.shipped + report.verified) == sorted(
        p.name for p in rotated if crash != "killed after the first" or p != first)
    rows = archive_rows(audit_dsn)
    assert sorted(rows) == sorted(p.name for p in rotated)  # each segment exactly once
    assert all(r["verified_at"] is not None and r["data"] == (settings.path.parent / n).read_bytes()
               for n, r in rows.items())
    assert ship(settings, VKEY).shipped == []  # nothing left to ship, nothing shipped twice
    assert verify_configured(settings).ok


def test_postgres_archive_expiry_keeps_the_chain_verifiable(tmp_path: Path, audit_dsn: str) -> None:
    settings = _aged(tmp_path, hot_days=1, archive_days=2, dsn=audit_dsn)
    count = len(rotated_files(settings.path))
    assert ship(settings, VKEY, now=datetime.now(UTC) + timedelta(days=1, hours=1)).ok
    report = ship(settings, VKEY, now=datetime.now(UTC) + timedelta(days=3))
    assert report.ok and len(report.expired) == count, report.problems
    rows = archive_rows(audit_dsn)
    assert len(rows) == count and all(r["data"] is None and r["expired_at"] is not None for r in rows.values())
    problem = verify_configured(settings).problem
    assert problem is not None and "starts in the middle" in problem.message
    assert verify_configured(settings, allow_expired=True).ok
