"""Audit writer throughput: sustained records/second with strict and batched durability.

`run()` writes `records` statement records from `concurrency` concurrent tasks (like sessions)
to a JSON Lines file in a temporary directory, on the machine's real disk (fsync included).

`run_remote()` compares what one proxy worker spends per record: in-process `AuditLog.submit` (the
worker's loop also seals and writes) against `RemoteAuditLog.submit` to an `AuditServer` in another
process (the worker only encodes and sends), as CPU microseconds per record in the worker's process
and records/second.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from .record import AuditEvent
from .remote import AuditServer, RemoteAuditLog
from .settings import AuditSettings
from .writer import AuditLog

_KEY = b"\x00" * 32


async def _measure(path: Path, durability: str, records: int, concurrency: int) -> dict[str, float]:
    log = AuditLog(_settings(path, durability), hmac_key=_KEY, instance_id="bench")
    await log.start()
    per_task = records // concurrency

    async def session(n: int) -> None:
        for i in range(per_task):
            await log.record(_event(n, i))

    started = time.perf_counter()
    await asyncio.gather(*(session(n) for n in range(concurrency)))
    await log.flush()
    elapsed = time.perf_counter() - started
    stats = log.stats()
    await log.close()
    written = per_task * concurrency
    return {"records": written, "seconds": elapsed, "records_per_second": written / elapsed,
            "last_fsync_seconds": stats.last_fsync_seconds}


def _event(n: int, i: int) -> AuditEvent:
    return AuditEvent("statement", tenant=f"t{n}", user="app", client="127.0.0.1:5000", session=f"s{n}",
                      database="app", sql=f"SELECT * FROM t WHERE id = {i}",
                      rewritten=f"SELECT * FROM (SELECT * FROM t WHERE t.tenant_id = 't') AS t WHERE id = {i}",
                      decision="allowed", rows=1, duration_ms=0.4)


def run(records: int = 20_000, concurrency: int = 64) -> dict[str, dict[str, float]]:
    """Measure both durability modes; returns {"strict": {...}, "batched": {...}}."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tg-audit-bench-") as tmp:
        for durability in ("strict", "batched"):
            path = Path(tmp) / f"{durability}.jsonl"
            results[durability] = asyncio.run(_measure(path, durability, records, concurrency))
    return results


def _settings(path: Path, durability: str) -> AuditSettings:
    return AuditSettings(key="env:UNUSED", path=path, durability=durability, flush_interval_ms=20,
                         checkpoint_every=1000)


async def _submit_all(log: AuditLog | RemoteAuditLog, records: int, chunk: int) -> dict[str, float]:
    """Submit like sessions do (a chunk per loop iteration); CPU time of this process per record."""
    events = [_event(0, i) for i in range(records)]  # built beforehand: only the log's cost is measured
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, records, chunk):
        futures = [log.submit(event) for event in events[start:start + chunk]]
        pending = [f for f in futures if f is not None]
        await (asyncio.gather(*pending) if pending else asyncio.sleep(0))
    await log.flush()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"records": records, "seconds": wall, "records_per_second": records / wall,
            "caller_us_per_record": cpu / records * 1e6}


async def _in_process(path: Path, durability: str, records: int, chunk: int) -> dict[str, float]:
    log = AuditLog(_settings(path, durability), hmac_key=_KEY, instance_id="bench")
    await log.start()
    try:
        return await _submit_all(log, records, chunk)
    finally:
        await log.close()


def _serve(path: str, sock: str, durability: str, conn: Connection) -> None:
    """The AuditServer process: serves until told to stop, then reports its CPU time."""
    async def serve() -> None:
        server = AuditServer(_settings(Path(path), durability), sock, hmac_key=_KEY, instance_id="bench")
        await server.start()
        conn.send("ready")
        cpu = time.process_time()
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        cpu = time.process_time() - cpu
        await server.close()
        conn.send(cpu)

    asyncio.run(serve())


async def _remote(sock: str, durability: str, records: int, chunk: int) -> dict[str, float]:
    log = RemoteAuditLog(_settings(Path("unused"), durability), sock)
    await log.start()
    try:
        return await _submit_all(log, records, chunk)
    finally:
        await log.close()


def run_remote(records: int = 50_000, durability: str = "batched", chunk: int = 64) -> dict[str, dict[str, float]]:
    """One worker's cost per record with the in-process log and through an AuditServer process.

    Returns {"in_process": {...}, "remote": {...}}; "remote" also has "server_us_per_record".
    """
    with tempfile.TemporaryDirectory(prefix="tg-audit-bench-") as tmp:
        results = {"in_process": asyncio.run(_in_process(Path(tmp) / "in.jsonl", durability, records, chunk))}
        parent, child = multiprocessing.get_context("spawn").Pipe()
        sock = str(Path(tmp) / "audit.sock")
        server = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(str(Path(tmp) / "remote.jsonl"), sock, durability, child), daemon=True)
        server.start()
        try:
            if parent.recv() != "ready":
                raise RuntimeError("the audit server process did not start")
            results["remote"] = asyncio.run(_remote(sock, durability, records, chunk))
            parent.send("stop")
            results["remote"]["server_us_per_record"] = parent.recv() / records * 1e6
        finally:
            server.join(timeout=30)
            if server.is_alive():
                server.kill()
    return results


if __name__ == "__main__":
    for mode, figures in run().items():
        print(f"{mode:8} {figures['records_per_second']:10.0f} records/s")
    for durability in ("batched", "strict"):
        for where, figures in run_remote(durability=durability).items():
            print(f"{durability:8} {where:10} {figures['records_per_second']:10.0f} records/s "
                  f"{figures['caller_us_per_record']:7.1f} µs/record in the worker")
