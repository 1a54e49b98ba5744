"""Audit at volume (issue 16): record format 2, compressed segments, parallel verify, live logs,
retention and shipping, the daily review, the volume benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import zstandard
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tenantgate.audit.cli import main
from tenantgate.audit.keys import generate_signing_key_files, load_public_key, load_signing_key
from tenantgate.audit.lean import LeanSealer
from tenantgate.audit.reader import configured_files, expand, open_sources
from tenantgate.audit.record import AuditEvent
from tenantgate.audit.retention import MANIFEST, read_manifest, ship
from tenantgate.audit.segments import ZST, open_lines, rotated_files
from tenantgate.audit.settings import AuditSettings, RetentionSettings
from tenantgate.audit.verify import VerifyResult, verify_log
from tenantgate.audit.writer import AuditLog
from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import Backend, ProxyProcess
from .test_audit_proxy import ORDERS_SETUP, audited_proxy

KEY = b"V" * 32


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "k"
    path.write_text(KEY.hex())
    path.chmod(0o600)
    return path


def settings_for(path: Path, **extra: object) -> AuditSettings:
    base = AuditSettings(key="env:UNUSED", path=path, durability="strict", rotate_bytes=0, rotate_seconds=0,
                         checkpoint_every=10)
    return replace(base, **extra)  # type: ignore[arg-type]


def event(i: int, tenant: str = "acme", ts: int | str | None = None) -> AuditEvent:
    return AuditEvent("statement", tenant=tenant, user="alice", client="127.0.0.1:5000", session="s1",
                      database="app", sql=f"SELECT * FROM t WHERE id = {i}",
                      rewritten=f"SELECT * FROM t WHERE id = $1 AND tenant_id = '{tenant}'",
                      decision="allowed", rows=1, duration_ms=0.25,
                      **({"ts": ts} if ts is not None else {}))  # type: ignore[arg-type]


async def _fill(log: AuditLog, n: int, make: Callable[[int], AuditEvent]) -> None:
    for i in range(n):
        await log.record(make(i))


def write(settings: AuditSettings, n: int, *, close: bool = True, signer: object = None,
          make: Callable[[int], AuditEvent] = event) -> None:
    async def go() -> None:
        log = AuditLog(settings, hmac_key=KEY, signer=signer, instance_id="t")  # type: ignore[arg-type]
        await log.start()
        await _fill(log, n, make)
        if close:
            await log.close()
        else:
            await log.sink.close()  # the process died: no chain_end, the lock released

    asyncio.run(go())


def check(*paths: Path, **kwargs: object) -> VerifyResult:
    return verify_log(open_sources([str(p) for p in paths]), hmac_key=KEY, **kwargs)  # type: ignore[arg-type]


def lines_of(path: Path) -> list[bytes]:
    return list(open_lines(path))


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write(settings_for(path), 30)
    return path


# -- format 2: a lean record, every tampering still caught and named --

def test_format2_record_is_lean_and_names_its_plan(log: Path) -> None:
    lines = lines_of(log)
    assert all(line.startswith(b'{"v":2,"seq":') for line in lines)
    statements = [json.loads(x) for x in lines if b'"kind":"statement"' in x]
    plans = [json.loads(x) for x in lines if b'"kind":"plan"' in x]
    assert len(statements) == 30 and len(plans) == 1  # the rewritten SQL stored once per plan
    assert all(s["plan"] == plans[0]["details"]["digest"] and "rewritten" not in s for s in statements)
    assert all(isinstance(s["ts"], int) and "instance" not in s and "prev" not in s for s in statements)
    result = check(log)
    assert result.ok and result.status.startswith("verified intact"), result.problem


def shaped(i: int) -> AuditEvent:
    """Simple-protocol statements: one shape, other values (every third one repeats a text)."""
    n = i - 1 if i % 3 == 2 else i
    text = f"SELECT * FROM t WHERE id = {n} AND note = 'it''s {n}' AND t.tenant_id = 'acme'"
    return replace(event(i), rewritten=text)


def test_statements_of_one_shape_share_a_template_plan(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(settings_for(path), 30, make=shaped)
    lines = lines_of(path)
    plans = [json.loads(x)["details"] for x in lines if b'"kind":"plan"' in x]
    # the first text stored whole; every other text of its shape names one template (repeats included)
    assert [sorted(p) for p in plans] == [["digest", "sql"], ["digest", "template"]]
    assert plans[1]["template"] == ["SELECT * FROM t WHERE id = ", " AND note = ", " AND t.tenant_id = ", ""]
    records = [json.loads(x) for x in lines if b'"kind":"statement"' in x]
    assert [r["plan"] for r in records] == [plans[0]["digest"]] + [plans[1]["digest"]] * 29
    assert records[1]["literals"] == ["1", "'it''s 1'", "'acme'"] and "rewritten" not in records[1]
    expanded = [r for r in expand(json.loads(x) for x in lines) if r["kind"] == "statement"]
    assert [r["rewritten"] for r in expanded] == [shaped(i).rewritten for i in range(30)]
    assert all("literals" not in r for r in expanded)
    assert check(path).ok


def test_a_template_plan_must_match_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(settings_for(path), 5, make=shaped)
    lines = lines_of(path)
    at = next(i for i, x in enumerate(lines) if b'"template"' in x)
    body = json.loads(lines[at])
    body["details"]["template"][0] = "DELETE FROM t WHERE id = "  # resealed with the key: a valid MAC
    prev = bytes.fromhex(json.loads(lines[at - 1])["mac"])
    del body["v"], body["mac"]
    lines[at] = LeanSealer(KEY).seal(body, prev)[1]
    path.write_bytes(b"".join(lines))
    problem = check(path).problem
    assert problem is not None and problem.line == at + 1 and "does not match its template" in problem.message


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("ab'1.$_ 9x\\"), max_size=24), min_size=1, max_size=6))
def test_any_rewritten_text_reads_back_exactly(texts: list[str]) -> None:
    """Whatever the split makes of a text (template or whole), the reader puts back the same text."""
    statements = [replace(event(i), rewritten=t) for i, t in enumerate(texts + texts[::-1])]
    log = AuditLog(settings_for(Path("/nonexistent/audit.jsonl")), hmac_key=KEY, instance_id="t")
    sealed = [rec for e in statements for rec in log._seal_event(e)]
    back = [r for r in expand(json.loads(rec.line) for rec in sealed) if r["kind"] == "statement"]
    assert [r.get("rewritten") for r in back] == [e.rewritten for e in statements]


TAMPER = {
    "edited byte": (lambda ls: ls.__setitem__(9, ls[9].replace(b"id = ", b"id = 9")), 10, "MAC invalid"),
    "deleted line": (lambda ls: ls.__delitem__(6), 7, "expected seq 7"),
    "inserted copy": (lambda ls: ls.insert(12, ls[3]), 13, "seq goes back"),
    "swapped lines": (lambda ls: ls.__setitem__(slice(14, 16), [ls[15], ls[14]]), 15, "seq jumps"),
    "forged without the key": (lambda ls: ls.__setitem__(5, ls[5].replace(b'"rows":1', b'"rows":7')), 6,
                               "MAC invalid"),
    "whitespace": (lambda ls: ls.__setitem__(4, ls[4].replace(b'"kind":', b'"kind": ')), 5, "malformed"),
    "signature appended": (lambda ls: ls.__setitem__(8, ls[8][:-3] + b'","sig":"00"}\n'), 9, "not a signature"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "zstd"])
def test_tampering_is_named_in_plain_and_compressed_segments(log: Path, case: str, compressed: bool) -> None:
    edit, line, message = TAMPER[case]
    lines = lines_of(log)
    edit(lines)
    data = b"".join(lines)
    target = log.with_name(log.name + ZST) if compressed else log
    if compressed:
        log.unlink()
        target.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        target.write_bytes(data)
    problem = check(target).problem
    assert problem is not None and (problem.source, problem.line) == (str(target), line), problem
    assert message in problem.message


def test_damaged_compressed_bytes_name_the_segment(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(settings_for(path, rotate_bytes=3000, compress="zstd"), 80)
    segment = next(p for p in rotated_files(path) if p.name.endswith(ZST))
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    problem = check(tmp_path).problem
    assert problem is not None and problem.source == str(segment), problem


def test_rotated_segments_are_compressed_and_verify_in_parallel(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(settings_for(path, rotate_bytes=3000, compress="zstd"), 120)
    rotated = rotated_files(path)
    assert len(rotated) >= 3 and all(p.name.endswith(ZST) for p in rotated)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in rotated)  # private like the active file
    assert not list(tmp_path.glob("*.jsonl.000*"))  # no plain leftovers
    for jobs in (1, 2):
        result = verify_log(open_sources([str(tmp_path)]), hmac_key=KEY, jobs=jobs)
        assert result.ok and result.files == len(rotated) + 1, result.problem
    # every rotated segment ends with its signed end marker and the next starts with rotate
    for seg in rotated:
        assert json.loads(lines_of(seg)[-1])["kind"] == "segment_end"


def test_cut_segment_is_caught_even_when_the_next_one_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(settings_for(path, rotate_bytes=3000, compress="none"), 80)
    first = rotated_files(path)[0]
    first.write_bytes(b"".join(lines_of(first)[:-2]))
    problem = check(tmp_path).problem
    assert problem is not None and problem.source == str(first) and "segment_end" in problem.message


def test_signed_markers_checked_with_public_key(tmp_path: Path) -> None:
    pem = tmp_path / "sign.pem"
    generate_signing_key_files(pem)
    path = tmp_path / "audit.jsonl"
    write(settings_for(path, rotate_bytes=3000), 60, signer=load_signing_key(f"file:{pem}"))
    verifier = load_public_key(str(pem) + ".pub")
    result = check(tmp_path, verifier=verifier)
    assert result.ok and result.signatures_checked > 5, result.problem
    active = lines_of(path)
    active[0] = active[0].replace(b'","sig":"', b'","sig":"0', 1)[:-4] + b'"}\n'
    path.write_bytes(b"".join(active))
    problem = check(tmp_path, verifier=verifier).problem
    assert problem is not None and problem.source == str(path) and problem.line == 1


# -- the previous release's format keeps verifying, alone and continued by format 2 --

def test_format1_log_continued_in_format2_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(settings_for(path, format=1, compress="none"), 12)
    assert b'"hmac":"' in path.read_bytes()
    write(settings_for(path, rotate_bytes=2500), 40)  # upgraded: same file, then rotation
    result = check(tmp_path)
    assert result.ok and result.chains == 2, result.problem
    lines = b"".join(b"".join(open_lines(Path(p))) for p in configured_files(path))
    assert b'"v":1' in lines and b'{"v":2,' in lines


# -- live logs: open is not failed; a cut tail of a closed log still is --

def test_live_log_is_verified_through_its_last_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def go() -> None:
        log = AuditLog(settings_for(path), hmac_key=KEY, instance_id="t")
        await log.start()
        await _fill(log, 15, event)
        result = await asyncio.to_thread(check, path)
        assert result.ok and result.open_through is not None and result.open_through[0] == result.last_seq
        assert "log open" in result.status and "FAILED" not in result.summary()
        with open(path, "ab") as fh:  # a write in progress: a line without its newline yet
            fh.write(b'{"v":2,"seq":99')
        assert (await asyncio.to_thread(check, path)).ok
        path.write_bytes(path.read_bytes()[:-len(b'{"v":2,"seq":99')])
        await log.close()

    asyncio.run(go())
    result = check(path)
    assert result.ok and result.open_through is None and "intact" in result.status


@pytest.mark.parametrize("how", ["crashed", "tail cut"])
def test_closed_log_without_chain_end_fails(tmp_path: Path, how: str) -> None:
    path = tmp_path / "audit.jsonl"
    write(settings_for(path), 20, close=how != "crashed")
    if how == "tail cut":
        path.write_bytes(b"".join(lines_of(path)[:-4]))
    problem = check(path).problem
    assert problem is not None and "truncated" in problem.message and "no writer holds" in problem.message


def test_torn_last_line_of_a_closed_log_fails(log: Path) -> None:
    log.write_bytes(log.read_bytes()[:-10])
    problem = check(log).problem
    assert problem is not None and problem.message.startswith("truncated: incomplete last line")


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "volumed", ORDERS_SETUP, owner=False)


@contextlib.contextmanager
def proxy_writing(p: ProxyProcess) -> Iterator[None]:
    """Statements run through `p` in a thread for the duration; then the proxy stops cleanly."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
                while not stop.is_set():
                    conn.execute("SELECT id FROM orders WHERE id = %s", [1]).fetchall()
        except BaseException as exc:  # reported below
            errors.append(exc)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(0.5)
        yield
    finally:
        stop.set()
        worker.join()
        assert p.stop() == 0
    assert not errors, errors


@pytest.mark.parametrize("pooling", ["session", "transaction"])
def test_live_log_verified_while_the_proxy_writes(backend: Backend, tmp_path: Path, pooling: str) -> None:
    with proxy_writing(audited_proxy(backend, tmp_path, pool_mode=pooling)):
        for _ in range(3):
            assert main(["audit", "verify", "--key", f"file:{tmp_path}/audit.key", str(tmp_path / "log")]) == 0
            result = verify_log(open_sources([str(tmp_path / "log")]),
                                hmac_key=bytes.fromhex((tmp_path / "audit.key").read_text()))
            assert result.ok and result.open_through is not None, result.problem
            time.sleep(0.2)
    result = verify_log(open_sources([str(tmp_path / "log")]),
                        hmac_key=bytes.fromhex((tmp_path / "audit.key").read_text()))
    assert result.ok and result.open_through is None and result.records > 20, result.problem


# -- retention and shipping --

def _aged(tmp_path: Path, hot_days: int = 1, archive_days: int = 0, dsn: str | None = None) -> AuditSettings:
    """A log of 3-day-old records in rotated segments; archived to tmp_path/archive, or with `dsn`
    to the table `archive` of that PostgreSQL database."""
    path = tmp_path / "hot" / "audit.jsonl"
    old = int((datetime.now(UTC) - timedelta(days=3)).timestamp() * 1e6)
    retention = RetentionSettings(None if dsn else tmp_path / "archive", hot_days, archive_days, dsn, "archive")
    settings = settings_for(path, rotate_bytes=3000, retention=retention)
    write(settings, 90, make=lambda i: event(i, ts=old + i))
    return settings


def test_ship_verifies_each_copy_then_deletes_only_old_hot_segments(tmp_path: Path) -> None:
    settings = _aged(tmp_path)
    assert settings.retention is not None
    rotated = rotated_files(settings.path)
    report = ship(settings, KEY)
    assert report.ok and sorted(report.shipped) == sorted(p.name for p in rotated), report.problems
    # the records are 3 days old but the markers that close each segment are not: nothing is old yet
    assert report.deleted_hot == []
    later = ship(settings, KEY, now=datetime.now(UTC) + timedelta(days=2))
    assert later.ok and sorted(later.deleted_hot) == sorted(p.name for p in rotated), later.problems
    assert later.shipped == [] and rotated_files(settings.path) == []
    manifest = read_manifest(settings.retention.archive)
    assert set(manifest) == {p.name for p in rotated}
    assert all((settings.retention.archive / name).stat().st_mode & 0o777 == 0o600 for name in manifest)
    # verify over archived + hot segments, through the config and by paths
    assert check(settings.retention.archive, settings.path.parent).ok
    cfg = tmp_path / "tg.toml"
    key_file(tmp_path)
    cfg.write_text(f'[audit]\nkey = "file:{tmp_path}/k"\npath = "{settings.path}"\n'
                   f'[audit.retention]\narchive = "{settings.retention.archive}"\nhot_days = 1\n')
    assert main(["audit", "verify", "--config", str(cfg)]) == 0


def test_hot_copy_kept_when_archived_copy_is_damaged(tmp_path: Path) -> None:
    settings = _aged(tmp_path)
    assert settings.retention is not None
    assert ship(settings, KEY).ok
    victim = sorted(settings.retention.archive.glob("*.jsonl" + ZST))[0]
    victim.write_bytes(zstandard.ZstdCompressor().compress(
        b"".join(lines_of(victim)).replace(b'"rows":1', b'"rows":2', 1)))
    report = ship(settings, KEY, now=datetime.now(UTC) + timedelta(days=2))
    assert not report.ok and victim.name not in report.deleted_hot
    assert (settings.path.parent / victim.name).exists()
    assert any(victim.name in p for p in report.problems)


@pytest.mark.parametrize("crash", ["part file left", "copied, not listed", "manifest line torn"])
def test_restart_mid_shipping_loses_and_duplicates_nothing(tmp_path: Path, crash: str) -> None:
    settings = _aged(tmp_path)
    assert settings.retention is not None
    archive = settings.retention.archive
    rotated = rotated_files(settings.path)
    archive.mkdir()
    first = rotated[0]
    if crash == "part file left":
        (archive / (first.name + ".part")).write_bytes(first.read_bytes()[:100])
    elif crash == "copied, not listed":
        (archive / first.name).write_bytes(first.read_bytes())
    else:
        assert ship(settings, KEY).ok
        data = (archive / MANIFEST).read_bytes()
        (archive / MANIFEST).write_bytes(data[:-30])  # the last entry never completed
    report = ship(settings, KEY)
    assert report.ok, report.problems
    names = sorted(p.name for p in archive.iterdir() if p.name != MANIFEST)
    assert names == sorted(p.name for p in rotated)  # each segment exactly once, no .part
    entries = [json.loads(x) for x in (archive / MANIFEST).read_bytes().splitlines()]
    assert sorted(e["segment"] for e in entries) == names  # each listed exactly once
    assert check(archive, settings.path.parent).ok


def test_archive_expiry_keeps_the_chain_verifiable(tmp_path: Path) -> None:
    settings = _aged(tmp_path, hot_days=1, archive_days=2)
    assert settings.retention is not None
    count = len(rotated_files(settings.path))
    assert ship(settings, KEY, now=datetime.now(UTC) + timedelta(days=1, hours=1)).ok
    report = ship(settings, KEY, now=datetime.now(UTC) + timedelta(days=3))
    assert report.ok and len(report.expired) == count, report.problems
    problem = check(settings.path.parent).problem
    assert problem is not None and "starts in the middle" in problem.message
    assert check(settings.path.parent, allow_expired=True).ok


# -- the daily review --

def test_review_lists_what_pci_asks_and_records_that_it_ran(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    key_file(tmp_path)
    path = tmp_path / "log" / "audit.jsonl"
    cfg = tmp_path / "tg.toml"
    cfg.write_text(f'[audit]\nkey = "file:{tmp_path}/k"\npath = "{path}"\n')
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    at = day.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    events = [
        AuditEvent("auth_fail", user="mallory", client="10.0.0.9:4000", reason="password mismatch", ts=at),
        AuditEvent("refusal", tenant="acme", user="alice", decision="refused", reason="DDL is not allowed",
                   sqlstate="42501", ts=at),
        AuditEvent("refusal", tenant="acme", user="alice", decision="refused", reason="max_client_connections",
                   sqlstate="53300", ts=at),
        AuditEvent("admin", user="dba", sql="PAUSE", decision="allowed", ts=at),
        AuditEvent("statement", user="etl", sql="SELECT * FROM orders", decision="allowed", ts=at),
        AuditEvent("key_event", tenant="acme", reason="rotate", details={"version": 3}, ts=at),
        AuditEvent("statement", tenant="acme", user="alice", sql="SELECT 1", decision="allowed"),  # today
    ]
    write(settings_for(path), len(events), make=lambda i: events[i])
    assert main(["audit", "review", "--config", str(cfg), "--since", "yesterday", "--format", "json"]) == 0
    review = json.loads(capsys.readouterr().out)
    assert review["verification"]["ok"] and review["events"]["statement"] == 1
    assert review["auth_failures"]["count"] == 1 and review["auth_failures"]["listed"][0]["user"] == "mallory"
    assert review["refusals_by_reason"] == {"DDL is not allowed": 1, "max_client_connections": 1}
    assert review["limit_hits"] == {"max_client_connections": 1}
    assert [p["what"] for p in review["privileged_actions"]] == ["PAUSE"]
    assert review["trusted_user_access"] == {"etl": 1}
    assert [k["event"] for k in review["key_events"]] == ["rotate"]
    recorded = review["recorded"]
    reviews = Path(recorded["log"])
    assert check(reviews).ok
    [ran] = [json.loads(x) for x in lines_of(reviews) if b'"kind":"admin"' in x]
    assert ran["sql"] == "audit review" and ran["details"]["review_sha256"] == recorded["sha256"]
    assert main(["audit", "review", "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "authentication failures: 1" in text and "limit hits: 1" in text and "recorded: seq" in text


def test_report_reads_compressed_and_both_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    write(settings_for(path, format=1, compress="none"), 10, make=lambda i: event(i, tenant="old"))
    write(settings_for(path, rotate_bytes=2500), 50, make=lambda i: event(i, tenant="new"))
    assert any(p.name.endswith(ZST) for p in rotated_files(path))
    key_file(tmp_path)
    assert main(["audit", "report", "--key", f"file:{tmp_path}/k", str(tmp_path)]) == 0
    md = capsys.readouterr().out
    assert "Integrity: verified intact" in md and "- Events: 60" in md


# -- the volume benchmark, small --

def test_volume_benchmark_small_run(tmp_path: Path) -> None:
    from bench.audit_volume import measure, sizing

    figures = measure(7 * 600, rotate_bytes=200_000, workdir=tmp_path)
    assert figures["stored_records"] > 4200 and figures["compressed_segments"] >= 1
    assert figures["reported_events"] == 4200
    assert 0 < figures["bytes_per_record_compressed"] < 120
    assert len(sizing(figures)) == 5
    assert os.listdir(tmp_path) == []  # cleaned up


@pytest.mark.parametrize(("raw", "message"), [
    ({"format": 3}, "[audit] format: must be 1 or 2"),
    ({"compress": "gzip"}, "[audit] compress: must be one of 'zstd', 'none'"),
    ({"retention": {"hot_days": 90}}, "[audit] retention.archive: required"),
    ({"retention": {"archive": "a", "hot_days": -1}}, "[audit] retention.hot_days: must be an integer >= 0"),
    ({"retention": {"archive": "a", "hot_days": 90, "archive_days": 30}}, "retention.archive_days: must be 0"),
    ({"retention": {"archive": "a", "keep": 1}}, "[audit] retention.keep: unknown key"),
])
def test_retention_and_format_settings_are_validated(raw: dict[str, object], message: str) -> None:
    from tenantgate.audit.errors import AuditConfigError
    from tenantgate.audit.settings import parse_audit_settings

    with pytest.raises(AuditConfigError) as exc:
        parse_audit_settings({"audit": {"key": "env:K", **raw}}, source="tg.toml")
    assert message in str(exc.value)
    ok = parse_audit_settings({"audit": {"key": "env:K", "retention": {"archive": "arch"}}}, source="tg.toml",
                              base_dir=Path("/etc/tg"))
    assert ok.retention == RetentionSettings(Path("/etc/tg/arch"), 90, 365) and ok.format == 2
