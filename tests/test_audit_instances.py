"""``audit verify --per-instance``: several instances' chains verified together, reported per instance."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tenantgate.audit.multi import verify_instances
from tenantgate.audit.reader import open_sources
from tenantgate.audit.record import AuditEvent
from tenantgate.audit.settings import AuditSettings
from tenantgate.audit.writer import AuditLog
from tenantgate.proxy.cli import main

KEY = b"K" * 32


def write_log(folder: Path, instance: str, n: int = 5) -> Path:
    async def go() -> None:
        settings = AuditSettings(key="env:UNUSED", path=folder / "audit.jsonl", durability="strict")
        log = AuditLog(settings, hmac_key=KEY, instance_id=instance)
        await log.start()
        for i in range(n):
            await log.record(AuditEvent("statement", tenant="acme", user="alice", sql=f"SELECT {i}",
                                        decision="allowed", rows=1, duration_ms=0.1))  # fmt: skip
        await log.close()

    asyncio.run(go())
    return folder


def check(*folders: Path) -> list[tuple[str | None, str | None]]:
    results = verify_instances([(str(f), open_sources([str(f)])) for f in folders], hmac_key=KEY)
    return [(r.instance, None if r.result.problem is None else r.result.problem.message) for r in results]


def test_each_instance_verified_and_named(tmp_path: Path) -> None:
    logs = [write_log(tmp_path / n, n) for n in ("a", "b", "c")]
    assert check(*logs) == [("a", None), ("b", None), ("c", None)]


def test_one_broken_chain_fails_only_its_line(tmp_path: Path) -> None:
    a, b = write_log(tmp_path / "a", "a"), write_log(tmp_path / "b", "b")
    lines = (b / "audit.jsonl").read_bytes().splitlines(keepends=True)
    (b / "audit.jsonl").write_bytes(b"".join(lines[:2] + lines[3:]))  # a record deleted
    (ok, _), (name, problem) = check(a, b)
    assert ok == "a" and name == "b" and problem is not None and "seq jumps" in problem


@pytest.mark.parametrize("case", ["same instance twice", "mixed instances"])
def test_shared_or_mixed_instance_ids_fail(tmp_path: Path, case: str) -> None:
    a = write_log(tmp_path / "a", "a")
    if case == "same instance twice":
        shutil.copytree(a, tmp_path / "copy")
        assert check(a, tmp_path / "copy")[1][1] == f"instance a also owns {a}"
    else:
        write_log(tmp_path / "b", "b")
        (tmp_path / "b" / "audit.jsonl").rename(tmp_path / "a" / "zz.jsonl")  # b's chain beside a's
        assert check(a)[0][1] is not None


def test_cli_reports_per_instance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = [write_log(tmp_path / n, n) for n in ("a", "b")]
    key = tmp_path / "key"
    key.write_text(KEY.hex())
    key.chmod(0o600)
    code = main(["audit", "verify", "--key", f"file:{key}", "--per-instance", *map(str, logs)])
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("instance ")]
    assert code == 0 and [line.split(" ")[1] for line in out] == ["a", "b"] and all(": OK:" in line for line in out)
