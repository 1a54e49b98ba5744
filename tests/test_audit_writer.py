"""The audit writer: durability modes, parameter redaction, bounded queue, sink failure and recovery."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tenantgate.audit.errors import AuditUnavailable
from tenantgate.audit.reader import open_sources
from tenantgate.audit.record import AuditEvent
from tenantgate.audit.settings import AuditSettings
from tenantgate.audit.verify import verify_log
from tenantgate.audit.writer import AuditLog

KEY = b"K" * 32


def settings(path: Path, **overrides: object) -> AuditSettings:
    base: dict[str, object] = {"key": "env:UNUSED", "path": path, "durability": "strict",
                               "checkpoint_every": 0, "flush_interval_ms": 5}
    base.update(overrides)
    return AuditSettings(**base)  # type: ignore[arg-type]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def verified(path: Path) -> None:
    result = verify_log(open_sources([str(path)]), hmac_key=KEY)
    assert result.ok, result.problem


def test_strict_record_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"

    async def go() -> None:
        log = AuditLog(settings(path), hmac_key=KEY)
        await log.start()
        seqs = await asyncio.gather(*(log.record(AuditEvent("statement", sql=f"SELECT {i}")) for i in range(20)))
        on_disk = {r["seq"]: r for r in records(path)}
        assert all(on_disk[s]["sql"] == f"SELECT {i}" for i, s in enumerate(seqs))
        assert log.stats().last_seq == max(seqs)
        await log.close()

    asyncio.run(go())
    verified(path)


def test_batched_returns_at_once_and_flushes(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"

    async def go() -> None:
        log = AuditLog(settings(path, durability="batched", flush_interval_ms=20), hmac_key=KEY)
        await log.start()
        assert await log.record(AuditEvent("auth_ok", tenant="acme", user="alice")) is None
        await log.flush()
        assert [r["kind"] for r in records(path)] == ["chain_start", "auth_ok"]
        await log.close()

    asyncio.run(go())
    verified(path)


SECRET = "4111-1111-1111-1111"


@pytest.mark.parametrize("mode", ["none", "hash", "full"])
def test_log_parameters_and_encrypted_masking(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "a.jsonl"
    sql = f"INSERT INTO cards (owner, number) VALUES ($1, '{SECRET}')"
    start = sql.index("'")

    async def go() -> None:
        log = AuditLog(settings(path, log_parameters=mode), hmac_key=KEY)
        await log.start()
        for _ in range(2):
            await log.record(AuditEvent(
                "statement", tenant="acme", sql=sql, sql_redactions=[(start, start + len(SECRET) + 2)],
                params=["bob", SECRET, None, b"\x01\x02"], encrypted_params=frozenset({1}),
                encrypted_columns=["cards.number"], decision="allowed"))
        await log.close()

    asyncio.run(go())
    assert SECRET.encode() not in path.read_bytes()
    stmts = [r for r in records(path) if r["kind"] == "statement"]
    assert stmts[0]["sql"] == "INSERT INTO cards (owner, number) VALUES ($1, '***')"
    params = stmts[0].get("params")
    if mode == "none":
        assert params is None
    elif mode == "hash":
        assert isinstance(params, list)
        assert params[1] == "***" and params[2] is None
        assert str(params[0]).startswith("hmac-sha256:") and "bob" not in str(params[0])
        assert params == stmts[1]["params"]  # same value, same keyed hash
    else:
        assert params == ["bob", "***", None, "\\x0102"]
    verified(path)


def test_drop_mode_counts_records_that_do_not_fit_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"

    async def go() -> None:
        log = AuditLog(settings(path, durability="batched", on_failure="drop", queue_max=2), hmac_key=KEY)
        await log.start()
        for i in range(10):  # batched record() does not yield, so the writer cannot drain meanwhile
            await log.record(AuditEvent("statement", sql=f"SELECT {i}"))
        stats = log.stats()
        assert (stats.queue_depth, stats.records_dropped) == (2, 8)
        await log.close()

    asyncio.run(go())
    assert sum(r["kind"] == "statement" for r in records(path)) == 2


def test_refuse_mode_waits_for_queue_room(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"

    async def go() -> None:
        log = AuditLog(settings(path, durability="batched", queue_max=2), hmac_key=KEY)
        await log.start()
        for i in range(10):
            await log.record(AuditEvent("statement", sql=f"SELECT {i}"))
            assert log.stats().queue_depth <= 2
        await log.close()
        assert log.stats().records_dropped == 0

    asyncio.run(go())
    assert sum(r["kind"] == "statement" for r in records(path)) == 10


@pytest.mark.parametrize("blocker", ["parent-is-a-file", "log-is-a-directory"])
def test_unwritable_location_then_recovery(tmp_path: Path, blocker: str) -> None:
    # Both fail for root too (unlike chmod): ENOTDIR / EISDIR.
    if blocker == "parent-is-a-file":
        (tmp_path / "dir").write_text("in the way")
        path = tmp_path / "dir" / "a.jsonl"
    else:
        path = tmp_path / "a.jsonl"
        path.mkdir()

    async def attempt() -> None:
        log = AuditLog(settings(path), hmac_key=KEY)
        try:
            await log.start()
            await log.record(AuditEvent("admin", user="dba", sql="RELOAD"))
        finally:
            await log.sink.close()

    with pytest.raises(AuditUnavailable, match=str(path)):
        asyncio.run(attempt())
    if blocker == "parent-is-a-file":
        (tmp_path / "dir").unlink()
    else:
        path.rmdir()
    asyncio.run(attempt())
    assert [r["kind"] for r in records(path)] == ["chain_start", "admin"]


# The disk-full child: RLIMIT_FSIZE makes writes fail with EFBIG (root included) in its own process only.
DISK_FULL_CHILD = textwrap.dedent("""
    import asyncio, json, resource, signal, sys
    from dataclasses import asdict
    from pathlib import Path
    from tenantgate.audit.errors import AuditUnavailable
    from tenantgate.audit.record import AuditEvent
    from tenantgate.audit.settings import AuditSettings
    from tenantgate.audit.writer import AuditLog

    path, on_failure, durability = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    async def main():
        log = AuditLog(AuditSettings(key="env:X", path=path, durability=durability, on_failure=on_failure,
                                     flush_interval_ms=5, checkpoint_every=0),
                       hmac_key=b"K" * 32, retry_interval=1.0)
        await log.start()
        for i in range(3):
            await log.record(AuditEvent("statement", sql=f"SELECT {i}"))
        await log.flush()
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 10, hard))  # disk full
        during = []
        for i in range(3, 8):
            try:
                during.append(await log.record(AuditEvent("statement", sql=f"SELECT {i}")))
            except AuditUnavailable as exc:
                during.append("refused: " + str(exc))
            await log.flush()
        stats_during = asdict(log.stats())
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
        await asyncio.sleep(1.2)  # past the retry interval
        after = await log.record(AuditEvent("statement", sql="SELECT 8"))
        await log.close()
        print(json.dumps({"during": during, "stats_during": stats_during, "after": after,
                          "stats": asdict(log.stats())}))

    asyncio.run(main())
""")


@pytest.mark.parametrize(("on_failure", "durability"), [("refuse", "strict"), ("drop", "strict"),
                                                        ("refuse", "batched")])
def test_disk_full_then_recovery(tmp_path: Path, on_failure: str, durability: str) -> None:
    path = tmp_path / "a.jsonl"
    proc = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, str(path), on_failure, durability],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    during, stats = out["during"], out["stats_during"]
    if on_failure == "refuse" and durability == "strict":
        assert all(str(d).startswith("refused:") for d in during)
        assert "cannot write audit log" in during[0]
        assert (stats["records_refused"], stats["records_dropped"], stats["available"]) == (5, 0, False)
    elif on_failure == "drop":
        assert during == [None] * 5
        assert (stats["records_refused"], stats["records_dropped"]) == (0, 5)
    else:
        assert during[0] is None  # accepted at once, lost when its batch failed
        assert all(str(d).startswith("refused:") for d in during[1:])
        assert (stats["records_refused"], stats["records_dropped"]) == (4, 1)
    assert isinstance(out["after"], int) or (durability == "batched" and out["after"] is None)
    assert out["stats"]["available"] is True
    recs = records(path)
    assert [r["sql"] for r in recs if r["kind"] == "statement"] == ["SELECT 0", "SELECT 1", "SELECT 2",
                                                                     "SELECT 8"]
    gaps = [r for r in recs if r["kind"] == "gap"]
    assert len(gaps) == 1 and gaps[0]["details"]["lost"] == 5
    verified(path)


STRICT_CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from tenantgate.audit.record import AuditEvent
    from tenantgate.audit.settings import AuditSettings
    from tenantgate.audit.writer import AuditLog

    async def main():
        log = AuditLog(AuditSettings(key="env:X", path=Path(sys.argv[1]), durability="strict",
                                     checkpoint_every=50), hmac_key=b"K" * 32)
        await log.start()

        async def worker(w):
            i = 0
            while True:
                seq = await log.record(AuditEvent("statement", tenant="acme", sql=f"SELECT {w}, {i}"))
                sys.stdout.write(f"{seq}\\n")
                sys.stdout.flush()
                i += 1

        await asyncio.gather(*(worker(w) for w in range(8)))

    asyncio.run(main())
""")


def test_strict_mode_loses_nothing_acknowledged_on_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", STRICT_CHILD, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    printed: list[int] = []
    try:
        for line in proc.stdout:
            printed.append(int(line))
            if len(printed) >= 600:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    printed += [int(x) for x in rest.splitlines(keepends=True) if x.endswith(b"\n")]
    assert len(printed) >= 600
    data = path.read_bytes()
    on_disk = {json.loads(line)["seq"] for line in data.splitlines(keepends=True) if line.endswith(b"\n")}
    assert set(printed) <= on_disk
    problem = verify_log(open_sources([str(path)]), hmac_key=KEY).problem
    assert problem is not None and "truncated" in problem.message

    async def restart() -> None:
        log = AuditLog(settings(path), hmac_key=KEY)
        await log.start()
        await log.close()

    asyncio.run(restart())
    verified(path)
    assert set(printed) <= {r["seq"] for r in records(path)}
