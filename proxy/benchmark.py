"""Per-stage timings of the data plane's hot path for bench/ (``python -m bench`` calls ``run()``).

Each stage is what one pgbench select-only statement costs the proxy in that stage, in µs per
call, measured on this process without sockets: framing a backend answer, a plan-cache hit,
the audit record on the worker side (SessionAudit: pending entry, completion, hand-over to the
log) and on the sealer side (the log sealing and writing what was handed over), and decrypting
one encrypted int field of a DataRow; and the whole session (``session_scoped_us``: one
transaction-pooled tenant session relaying a select-only Query and its answer through fake
transports, rewriting included, no audit; ``monitoring_cost``, for ``python -m bench
monitor-cost``: that session without and with security monitoring's counts, interleaved).
Nothing here asserts a timing; a stage that fails is reported with its error so one broken
stage does not lose the others.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tenantgate.audit.settings import AuditSettings
from tenantgate.audit.writer import AuditLog
from tenantgate.keyring import EncryptedColumn, FileKeyStore, Keyring
from tenantgate.keyring.format import Mode
from tenantgate.keyring.kek import AesKwKek
from tenantgate.keyring.pgtypes import BY_OID
from tenantgate.rewriter.benchmark import POLICY
from tenantgate.rewriter.rewriter import Rewriter

from . import codec
from .auditing import SessionAudit
from .backend import Backend, BackendTarget
from .codec import FieldDescription, MsgType, RowDescription
from .conn import PgConnection
from .counters import Metrics
from .crypto import BYTEA_OID, SessionCrypto
from .monitor.tally import UserTally
from .pool import BackendPool
from .session import Session

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {}"
TABLE_OID = 16384


def _per_call(fn: Callable[[int], object], iterations: int) -> float:
    start = time.perf_counter()
    for i in range(iterations):
        fn(i)
    return (time.perf_counter() - start) / iterations * 1e6


def _answer(type_oid: int, value: bytes) -> bytes:
    """The backend's answer to one select-only Query: RowDescription, DataRow, CommandComplete, ReadyForQuery."""
    desc = RowDescription((FieldDescription("abalance", TABLE_OID, 3, type_oid, -1, -1, 0),))
    row = codec.DataRow((value,)).encode()
    return desc.encode() + row + codec.CommandComplete("SELECT 1").encode() + codec.ready("I")


def framing(iterations: int) -> float:
    framer = codec.Framer("server")
    answer = _answer(23, b"4711")
    return _per_call(lambda _i: framer.feed(answer), iterations)


def plan_cache_hit(iterations: int) -> float:
    rewriter = Rewriter(POLICY)
    rewriter.plan(SELECT.format(1), "t01")
    return _per_call(lambda i: rewriter.plan(SELECT.format(i), "t01"), iterations)


async def _audit(iterations: int, folder: Path) -> tuple[float, float]:
    settings = AuditSettings(key="env:UNUSED", path=folder / "audit.jsonl", durability="batched",
                             flush_interval_ms=20, checkpoint_every=1000)
    log = AuditLog(settings, hmac_key=b"\x00" * 32, instance_id="bench")
    await log.start()
    session = SessionAudit(log, tenant="t01", user="t01_user", client="127.0.0.1:5000", session="s1",
                           database="bench")
    rewritten = "SELECT abalance FROM (SELECT * FROM pgbench_accounts WHERE tenant_id = 't01') AS pgbench_accounts"

    def statement(i: int) -> None:
        session.query(SELECT.format(i), rewritten + f" WHERE aid = {i}", ("select",), i + 1)
        session.complete("SELECT 1", None)
        session.cycle_done(i + 1)

    await log.flush()
    worker = _per_call(statement, iterations)  # the loop does not run: nothing is sealed yet
    started = time.perf_counter()
    await log.flush()
    sealer = (time.perf_counter() - started) / iterations * 1e6
    await log.close()
    return worker, sealer


def audit(iterations: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="tg-stage-audit-") as tmp:
        return asyncio.run(_audit(iterations, Path(tmp)))


async def _decrypt(iterations: int, folder: Path) -> float:
    keyring = Keyring(AesKwKek(os.urandom(32)), FileKeyStore(str(folder / "keys.json")))
    await keyring.store.initialize()
    await keyring.ensure_loaded("t01")
    int4 = BY_OID[23]
    col = EncryptedColumn("accounts_enc", "abalance", Mode.RANDOMIZED, int4, "tenant_id")
    crypto = SessionCrypto(keyring, "t01", {(TABLE_OID, 3): col}, timezone=lambda: "UTC")
    ciphertext = keyring.encrypt("t01", col.table, col.column, col.mode, int4.from_text(b"4711"))
    frames = codec.Framer("server").feed(_answer(BYTEA_OID, b"\\x" + ciphertext.hex().encode()))
    buf, spans = frames
    (_, s0, e0), (_, s1, e1) = spans[0], spans[1]
    crypto.on_request(MsgType.QUERY, None)
    crypto.on_response(MsgType.ROW_DESCRIPTION, buf[s0 + 5 : e0])
    row = buf[s1 + 5 : e1]
    return _per_call(lambda _i: crypto.on_response(MsgType.DATA_ROW, row), iterations)


def decrypt_field(iterations: int) -> float:
    with tempfile.TemporaryDirectory(prefix="tg-stage-crypto-") as tmp:
        return asyncio.run(_decrypt(iterations, Path(tmp)))


class _Transport:
    """What a PgConnection asks of its transport; writes are dropped."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None


def _connection(side: str) -> PgConnection:
    conn = PgConnection(side)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    return conn


def _relay(monitored: bool = False) -> Callable[[int], None]:
    """One statement through a transaction-pooled tenant session (called in a running loop)."""
    client, server = _connection("client"), _connection("server")
    target = BackendTarget("127.0.0.1", 5432, "app", None)
    pool = BackendPool(target, "bench", 20, 5.0)
    pool.idle.append(Backend(server, target, "bench"))
    session = Session(client, None, user="t01_user", tenant="t01", rewriter=Rewriter(POLICY), paused=set(),
                      pool=pool, settings={"tenantgate.tenant": "t01"}, metrics=Metrics())
    if monitored:  # what a [monitoring] proxy sets at login (proxy/client.py)
        session.signals = UserTally()
    client.enter_relay(session.on_client)
    answer = _answer(23, b"4711")

    def statement(i: int) -> None:
        client.data_received(codec.Query(SELECT.format(i % 1000 + 1)).encode())
        server.data_received(answer)  # the backend is back in the pool after each answer

    return statement


async def _session(iterations: int) -> float:
    return _per_call(_relay(), iterations)


def session_scoped(iterations: int) -> float:
    return asyncio.run(_session(iterations))


async def _cost(batches: int, batch: int) -> dict[str, float]:
    off, on = _relay(), _relay(monitored=True)
    for i in range(batch):  # warm both plan caches
        off(i)
        on(i)
    times: dict[bool, list[float]] = {False: [], True: []}
    for index in range(batches):
        order = (False, True) if index % 2 == 0 else (True, False)
        for monitored in order:
            times[monitored].append(_per_call(on if monitored else off, batch))
    med_off, med_on = sorted(times[False])[batches // 2], sorted(times[True])[batches // 2]
    tally = UserTally()

    def counts(i: int) -> None:  # what a monitored select-only statement adds: its plan and its CommandComplete
        tally.planned(SELECT, True)
        tally.completed(b"SELECT 1")

    return {"off_us": round(med_off, 3), "on_us": round(med_on, 3), "ratio": round(med_on / med_off, 3),
            "counts_us": round(min(_per_call(counts, batch * 20) for _ in range(5)), 3)}


def monitoring_cost(batches: int = 101, batch: int = 500) -> dict[str, float]:
    """µs per statement of a scoped session without and with monitoring's counts: two sessions in
    one loop, batches of ``batch`` statements alternating (medians over the batches), so the
    machine's noise hits both alike: the hot path's share of monitoring, without sockets or pgbench."""
    return asyncio.run(_cost(batches, batch))


def run(iterations: int = 20_000) -> dict[str, Any]:
    """µs per call of each stage (or the error it raised)."""
    results: dict[str, Any] = {}
    stages: dict[str, Callable[[int], Any]] = {
        "framing_us": framing, "plan_cache_hit_us": plan_cache_hit, "audit": audit, "decrypt_field_us": decrypt_field,
        "session_scoped_us": session_scoped,
    }
    for name, stage in stages.items():
        try:
            figure = stage(iterations)
        except Exception as exc:  # report, keep the other stages
            results[name] = f"error: {type(exc).__name__}: {exc}"
            continue
        if name == "audit":
            results["audit_worker_us"], results["audit_sealer_us"] = figure
        else:
            results[name] = figure
    return results
