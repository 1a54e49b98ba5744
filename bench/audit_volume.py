"""``python -m bench audit-volume [--records N]``: the audit log at production volume (issue 16).

Writes N pgbench-like statement records (TPC-B transactions: BEGIN, three UPDATEs, a SELECT, an
INSERT, END; 10 tenants, 64 sessions, random aids and deltas) through the real `AuditLog` (real
sealing, real file sink with fsync, rotation and zstd compression), then measures on the result:

- write: records/s from the first submit to the last record durable (event objects are built
  beforehand in chunks, outside the clock: that is the worker's side, see `--profile`);
- verify: records/s of `verify_log` over every segment (parallel worker processes);
- report: records/s of the DuckDB scan behind `audit report` / `audit review`;
- bytes/record on disk: compressed rotated segments, and the whole log with its active file.

`--compare-v1 N` also writes N records in format 1 (the previous release) for the same figures.
Results go to stdout and, with `--out DIR`, to DIR/audit-volume.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tenantgate.audit.columnar import scan
from tenantgate.audit.reader import configured_files, open_sources
from tenantgate.audit.record import AuditEvent
from tenantgate.audit.segments import ZST
from tenantgate.audit.settings import AuditSettings
from tenantgate.audit.verify import verify_log
from tenantgate.audit.writer import AuditLog

KEY = b"\x07" * 32
_CHUNK = 7 * 3_000  # whole transactions per chunk
_TENANTS = 10
_SESSIONS = 64
_TPCB = (
    ("BEGIN;", "BEGIN"),
    ("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};",
     "UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid} AND tenant_id = '{tenant}';"),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};",
     "SELECT abalance FROM pgbench_accounts WHERE aid = {aid} AND tenant_id = '{tenant}';"),
    ("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};",
     "UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid} AND tenant_id = '{tenant}';"),
    ("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};",
     "UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid} AND tenant_id = '{tenant}';"),
    ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({tid}, {bid}, {aid}, {delta}, "
     "CURRENT_TIMESTAMP);",
     "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, tenant_id) VALUES ({tid}, {bid}, {aid}, {delta}, "
     "CURRENT_TIMESTAMP, '{tenant}');"),
    ("END;", "END"),
)


def events(start: int, count: int, rng: random.Random) -> list[AuditEvent]:
    """Statements start .. start+count of the workload (one session runs one transaction at a time).

    The proxy logs the rewritten SQL of the plan (literals as parameters), so the pgbench-like
    record names one of seven plans; the original SQL carries the literals.
    """
    out: list[AuditEvent] = []
    now = time.time_ns() // 1000
    values: dict[str, int] = {}
    for n in range(start, start + count):
        tx, step = divmod(n, len(_TPCB))
        session = tx % _SESSIONS
        tenant = f"tenant{session % _TENANTS:02d}"
        if step == 0 or not values:
            values = {"aid": rng.randrange(1, 100_000), "tid": rng.randrange(1, 10), "bid": rng.randrange(1, 2),
                      "delta": rng.randrange(-5000, 5000)}
        sql, plan = _TPCB[step]
        out.append(AuditEvent("statement", tenant=tenant, user=f"app_{tenant}", client=f"127.0.0.1:{40000 + session}",
                              session=f"{session:08x}", database="bench", sql=sql.format(**values),
                              rewritten=plan.replace("{tenant}", tenant).replace("{delta}", "$1").replace(
                                  "{aid}", "$2").replace("{tid}", "$3").replace("{bid}", "$4"),
                              decision="allowed", rows=0 if step in (0, 6) else 1,
                              duration_ms=round(rng.uniform(0.05, 2.0), 3),
                              details={"statement": sql.split()[0].rstrip(";").lower()}, ts=now + n * 300))
    return out


async def _write(path: Path, records: int, fmt: int, rotate_bytes: int) -> float:
    settings = AuditSettings(key="env:UNUSED", path=path, durability="batched", flush_interval_ms=20,
                             rotate_bytes=rotate_bytes, rotate_seconds=0, checkpoint_every=1000,
                             format=fmt, compress="zstd", queue_max=2 * _CHUNK)
    log = AuditLog(settings, hmac_key=KEY, instance_id="bench")
    await log.start()
    rng = random.Random(16)
    spent = 0.0
    for start in range(0, records, _CHUNK):
        chunk = events(start, min(_CHUNK, records - start), rng)
        began = time.perf_counter()
        for event in chunk:
            log.submit(event)
        await log.flush()
        spent += time.perf_counter() - began
    began = time.perf_counter()
    await log.close()  # waits for the last compressions too
    return spent + time.perf_counter() - began


def measure(records: int, *, fmt: int = 2, rotate_bytes: int = 64 << 20,
            workdir: Path | None = None) -> dict[str, float]:
    """Write, verify and report `records` records; the figures of one run."""
    tmp = Path(tempfile.mkdtemp(prefix="tg-audit-volume-", dir=workdir))
    try:
        path = tmp / "tenantgate.jsonl"
        write_s = asyncio.run(_write(path, records, fmt, rotate_bytes))
        files = configured_files(path)
        sources = open_sources(files)
        began, cpu = time.perf_counter(), _cpu()
        result = verify_log(sources, hmac_key=KEY)
        verify_s, verify_cpu = time.perf_counter() - began, _cpu() - cpu
        if not result.ok:
            raise RuntimeError(f"the benchmark's own log does not verify: {result.problem}")
        began, cpu = time.perf_counter(), _cpu()
        groups = scan([Path(f) for f in files])
        report_s, report_cpu = time.perf_counter() - began, _cpu() - cpu
        reported = sum(g.count for g in groups)
        sizes = {f: os.path.getsize(f) for f in files}
        compressed = [f for f in files if f.endswith(ZST)]
        compressed_records = sum(1 for f in compressed for _ in open_sources([f])[0].lines())
        return {
            "format": fmt, "records": records, "stored_records": result.records,
            "write_records_per_second": records / write_s,
            "verify_records_per_second": result.records / verify_s,
            "report_records_per_second": result.records / report_s, "reported_events": reported,
            "segments": len(files), "compressed_segments": len(compressed),
            "bytes_per_record_compressed": (sum(sizes[f] for f in compressed) / compressed_records
                                            if compressed_records else float("nan")),
            "bytes_per_record_total": sum(sizes.values()) / records,
            "bytes_per_record_uncompressed_active": (sizes[files[-1]] / max(1, sum(
                1 for _ in open_sources([files[-1]])[0].lines()))),
            "write_seconds": write_s, "verify_seconds": verify_s, "report_seconds": report_s,
            # per CPU-second: what a quiet 2-core machine does per core (the wall figures share the CPU)
            "verify_records_per_cpu_second": result.records / verify_cpu,
            "report_records_per_cpu_second": result.records / report_cpu,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (verify's worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def sizing(figures: dict[str, float], per_day: tuple[int, ...] = (10_000_000, 100_000_000, 260_000_000)) -> list[str]:
    """README sizing rows from one run's figures."""
    rows = ["| records/day | disk/day (zstd segments) | 12 months | verify one day | report one day |",
            "|---:|---:|---:|---:|---:|"]
    for n in per_day:
        day = n * figures["bytes_per_record_compressed"]
        rows.append(f"| {n:,} | {day / 1e9:.1f} GB | {day * 365 / 1e12:.2f} TB | "
                    f"{n / figures['verify_records_per_second'] / 60:.1f} min | "
                    f"{n / figures['report_records_per_second'] / 60:.1f} min |")
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench audit-volume", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--rotate-mb", type=int, default=64, help="segment size before rotation")
    parser.add_argument("--compare-v1", type=int, default=0, metavar="N", help="also N records in format 1")
    parser.add_argument("--workdir", type=Path, help="where the log is written (default: the temp dir)")
    parser.add_argument("--out", type=Path, help="write audit-volume.json here")
    args = parser.parse_args(argv)
    runs = [measure(args.records, rotate_bytes=args.rotate_mb << 20, workdir=args.workdir)]
    if args.compare_v1:
        runs.append(measure(args.compare_v1, fmt=1, rotate_bytes=args.rotate_mb << 20, workdir=args.workdir))
    for figures in runs:
        print(f"format {figures['format']}: {figures['records']:,} records in {figures['segments']} segment(s)")
        for name in ("write_records_per_second", "verify_records_per_second", "report_records_per_second",
                     "verify_records_per_cpu_second", "report_records_per_cpu_second",
                     "bytes_per_record_compressed", "bytes_per_record_total", "bytes_per_record_uncompressed_active"):
            print(f"  {name:40} {figures[name]:14,.1f}")
    print("\n".join(sizing(runs[0])))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "audit-volume.json").write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
