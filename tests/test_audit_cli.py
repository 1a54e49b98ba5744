"""`tenantgate audit ...`: keygen, verify, checkpoints, report (md/html), tail; [audit] settings."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import threading
import time
from pathlib import Path

import pytest

from tenantgate.audit.cli import main
from tenantgate.audit.errors import AuditConfigError
from tenantgate.audit.record import AuditEvent
from tenantgate.audit.settings import AuditSettings, parse_audit_settings
from tenantgate.audit.tail import tail
from tenantgate.audit.writer import AuditLog


def write_config(tmp_path: Path, **extra: object) -> Path:
    assert main(["audit", "keygen", "--hmac", str(tmp_path / "audit.key"),
                 "--ed25519", str(tmp_path / "sign.pem")]) == 0
    lines = ["[audit]", 'key = "file:audit.key"', 'signing_key = "file:sign.pem"', 'path = "logs/tg.jsonl"',
             'durability = "strict"', "checkpoint_every = 4"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    cfg = tmp_path / "tenantgate.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def load(cfg: Path) -> AuditSettings:
    import tomllib

    return parse_audit_settings(tomllib.loads(cfg.read_text()), source=str(cfg), base_dir=cfg.parent)


EVENTS = [
    AuditEvent("auth_ok", tenant="acme", user="alice", client="127.0.0.1:5001", ts="2025-03-01T10:00:00.000000Z"),
    AuditEvent("statement", tenant="acme", user="alice", sql="SELECT ssn FROM customers", decision="allowed",
               rows=2, duration_ms=1.2, encrypted_columns=["customers.ssn"], ts="2025-03-01T10:05:00.000000Z"),
    AuditEvent("refusal", tenant="acme", user="alice", sql="DROP TABLE customers", decision="refused",
               reason="DDL is not allowed <script>alert(1)</script>", sqlstate="42501",
               ts="2025-03-01T11:00:00.000000Z"),
    AuditEvent("statement", tenant="acme", user="alice", sql="SELECT pg_read_file('x')", decision="refused",
               reason="function pg_read_file is not allowed", sqlstate="42501", ts="2025-03-01T11:30:00.000000Z"),
    AuditEvent("auth_fail", tenant="acme", user="mallory", client="10.0.0.9:4000", reason="password mismatch",
               ts="2025-03-01T12:00:00.000000Z"),
    AuditEvent("key_event", tenant="acme", user="dba", reason="rotate", details={"version": 2},
               ts="2025-03-01T12:30:00.000000Z"),
    AuditEvent("statement", tenant="globex", user="gina", sql="SELECT 1", decision="allowed",
               ts="2025-03-01T12:40:00.000000Z"),
    AuditEvent("statement", tenant="acme", user="alice", sql="SELECT 2", decision="allowed",
               ts="2025-03-05T09:00:00.000000Z"),
]


def write_events(settings: AuditSettings, events: list[AuditEvent]) -> None:
    async def go() -> None:
        log = AuditLog(settings)
        await log.start()
        for event in events:
            await log.record(event)
        await log.close()

    asyncio.run(go())


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path)
    write_events(load(cfg), EVENTS)
    return cfg


def test_keygen_files_are_private_and_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "keygen", "--hmac", str(tmp_path / "k"), "--ed25519", str(tmp_path / "s")]) == 0
    for name in ("k", "s"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert (tmp_path / "s.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    before = (tmp_path / "k").read_bytes()
    assert main(["audit", "keygen", "--hmac", str(tmp_path / "k")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "k").read_bytes() == before


def test_verify_via_config_and_explicit_key(cfg: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["audit", "verify", "--config", str(cfg), "--public-key", str(cfg.parent / "sign.pem.pub")]) == 0
    assert capsys.readouterr().out.startswith("OK: 12 records")
    log = cfg.parent / "logs" / "tg.jsonl"
    monkeypatch.setenv("TG_AUDIT_KEY", (cfg.parent / "audit.key").read_text().strip())
    assert main(["audit", "verify", str(log), "--key", "env:TG_AUDIT_KEY"]) == 0
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:3] + lines[4:]))
    assert main(["audit", "verify", str(log), "--key", "env:TG_AUDIT_KEY"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"FAILED: {log}:4: seq 5: seq jumps")


def test_verify_usage_errors(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--config", str(cfg), "--allow-open"]) == 2
    assert "--allow-open needs --checkpoints" in capsys.readouterr().err
    (cfg.parent / "audit.key").chmod(0o644)
    assert main(["audit", "verify", "--config", str(cfg)]) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_checkpoint_export_and_verify(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = cfg.parent / "elsewhere.jsonl"
    assert main(["audit", "checkpoints", "--config", str(cfg), "-o", str(out)]) == 0
    kinds = [json.loads(line)["kind"] for line in out.read_text().splitlines()]
    assert kinds == ["chain_start", "checkpoint", "checkpoint", "chain_end"]
    assert main(["audit", "verify", "--config", str(cfg), "--checkpoints", str(out),
                 "--public-key", str(cfg.parent / "sign.pem.pub")]) == 0
    assert "4 exported checkpoint(s) checked" in capsys.readouterr().out


def test_report_markdown(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "report", "--config", str(cfg), "--tenant", "acme", "--until", "2025-03-02"]) == 0
    md = capsys.readouterr().out
    assert "Integrity: verified intact" in md
    assert "- Events: 6" in md  # globex and the March 5 statement are outside
    assert "| statement | allowed | 1 |" in md and "| statement | refused | 1 |" in md
    assert "| function pg_read_file is not allowed | 1 |" in md
    assert "| customers.ssn | alice | 1 |" in md
    assert "## Authentication failures (1)" in md and "mallory" in md
    assert "| rotate | version=2 |" in md
    assert "gina" not in md


def test_report_html_has_svg_chart_and_escapes(cfg: Path) -> None:
    out = cfg.parent / "report.html"
    assert main(["audit", "report", "--config", str(cfg), "--format", "html", "-o", str(out),
                 "--since", "2025-03-01T00:00:00Z"]) == 0
    page = out.read_text()
    assert "<svg" in page and 'class="allowed"' in page and 'class="refused"' in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    assert "per day" in page  # the span of 4+ days is bucketed by day


def test_tail_prints_readable_lines(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "tail", "--config", str(cfg), "-n", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert out[0] == "2025-03-01T12:40:00.000000Z #9 statement globex/gina allowed SELECT 1"
    assert [line.split()[2] for line in out[1:]] == ["statement", "checkpoint", "chain_end"]


@pytest.mark.parametrize("poll", [0.01, 0.5])  # 0.5: the rotated files are compressed before it looks
def test_tail_follows_across_rotation(tmp_path: Path, poll: float) -> None:
    path = tmp_path / "tg.jsonl"
    settings = AuditSettings(key="env:UNUSED", path=path, durability="strict", rotate_bytes=1500,
                             rotate_seconds=0, checkpoint_every=0)

    async def run(n: int) -> None:
        log = AuditLog(settings, hmac_key=b"K" * 32)
        await log.start()
        for i in range(n):
            await log.record(AuditEvent("statement", tenant="acme", sql=f"SELECT {i}"))
        await log.close()

    asyncio.run(run(1))
    out = io.StringIO()
    stop = threading.Event()
    follower = threading.Thread(target=tail, args=(path, out),
                                kwargs={"follow": True, "poll": poll, "stop": stop.is_set})
    follower.start()
    try:
        asyncio.run(run(20))
        deadline = time.monotonic() + 30
        while "SELECT 19" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        follower.join()
    text = out.getvalue()
    assert [f"SELECT {i}" in text for i in range(20)] == [True] * 20
    assert len(list(tmp_path.glob("tg.0*.jsonl*"))) >= 2  # it really did rotate meanwhile (.zst: compressed)


@pytest.mark.parametrize(("raw", "message"), [
    ({"key": "env:K", "colour": "red"}, "[audit] colour: unknown key"),
    ({"key": "env:K", "queue_max": 0}, "[audit] queue_max: must be an integer >= 1"),
    ({"key": "env:K", "sink": "postgres"}, "[audit] dsn: required"),
    ({"key": "vault:x"}, "[audit] key: must be a provider URI"),
    ({"key": "env:K", "enabled": "yes"}, "[audit] enabled: must be true or false"),
    ({}, "[audit] key: required"),
])
def test_settings_errors_name_file_and_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(AuditConfigError) as info:
        parse_audit_settings({"audit": raw}, source="/etc/tg.toml")
    assert str(info.value).startswith("/etc/tg.toml: " + message)


def test_settings_resolve_relative_paths(tmp_path: Path) -> None:
    s = parse_audit_settings({"audit": {"key": "file:k", "path": "a/b.jsonl"}}, source="x", base_dir=tmp_path)
    assert (s.key, s.path) == (f"file:{tmp_path}/k", tmp_path / "a" / "b.jsonl")
    assert "dsn" not in repr(parse_audit_settings(
        {"audit": {"key": "env:K", "sink": "postgres", "dsn": "postgresql://u:hunter2@h/db"}}, source="x"))
