"""Audit writer throughput: sustained records/second with strict and batched durability.

`run()` writes `records` statement records from `concurrency` concurrent tasks (like sessions)
to a JSON Lines file in a temporary directory, on the machine's real disk (fsync included).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from .record import AuditEvent
from .settings import AuditSettings
from .writer import AuditLog


async def _measure(path: Path, durability: str, records: int, concurrency: int) -> dict[str, float]:
    settings = AuditSettings(key="env:UNUSED", path=path, durability=durability, flush_interval_ms=20,
                             checkpoint_every=1000)
    log = AuditLog(settings, hmac_key=b"\x00" * 32, instance_id="bench")
    await log.start()
    per_task = records // concurrency

    async def session(n: int) -> None:
        for i in range(per_task):
            await log.record(AuditEvent("statement", tenant=f"t{n}", user="app", client="127.0.0.1:5000",
                                        session=f"s{n}", database="app", sql=f"SELECT * FROM t WHERE id = {i}",
                                        rewritten="SELECT * FROM (SELECT * FROM t WHERE t.tenant_id = 't') AS t "
                                                  f"WHERE id = {i}", decision="allowed", rows=1, duration_ms=0.4))

    started = time.perf_counter()
    await asyncio.gather(*(session(n) for n in range(concurrency)))
    await log.flush()
    elapsed = time.perf_counter() - started
    stats = log.stats()
    await log.close()
    written = per_task * concurrency
    return {"records": written, "seconds": elapsed, "records_per_second": written / elapsed,
            "last_fsync_seconds": stats.last_fsync_seconds}


def run(records: int = 20_000, concurrency: int = 64) -> dict[str, dict[str, float]]:
    """Measure both durability modes; returns {"strict": {...}, "batched": {...}}."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tg-audit-bench-") as tmp:
        for durability in ("strict", "batched"):
            path = Path(tmp) / f"{durability}.jsonl"
            results[durability] = asyncio.run(_measure(path, durability, records, concurrency))
    return results


if __name__ == "__main__":
    for mode, figures in run().items():
        print(f"{mode:8} {figures['records_per_second']:10.0f} records/s")
