"""The hash chain, HMAC, signatures and verify rules: every kind of tampering is caught and named.

These logs are written in record format 1 (the previous release's, plain rotated files): old logs
must keep verifying. Format 2 and compressed segments: tests/test_audit_volume.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantgate.audit.checkpoints import export_checkpoints, load_checkpoints
from tenantgate.audit.keys import Signer, generate_signing_key_files, load_public_key, load_signing_key
from tenantgate.audit.reader import open_sources
from tenantgate.audit.record import AuditEvent, canonical
from tenantgate.audit.settings import AuditSettings
from tenantgate.audit.verify import VerifyResult, verify_log
from tenantgate.audit.writer import AuditLog

KEY = b"K" * 32


def write_log(path: Path, n: int = 30, *, rotate_bytes: int = 0, signer: Signer | None = None,
              close: bool = True, checkpoint_every: int = 10) -> None:
    async def go() -> None:
        settings = AuditSettings(key="env:UNUSED", path=path, durability="strict", rotate_bytes=rotate_bytes,
                                 rotate_seconds=0, checkpoint_every=checkpoint_every, format=1, compress="none")
        log = AuditLog(settings, hmac_key=KEY, signer=signer, instance_id="test")
        await log.start()
        for i in range(n):
            await log.record(AuditEvent("statement", tenant="acme", user="alice", sql=f"SELECT {i}",
                                        decision="allowed", rows=1, duration_ms=0.25))
        if close:
            await log.close()
        else:
            await log.sink.close()

    asyncio.run(go())


def check(path: Path, **kwargs: object) -> VerifyResult:
    return verify_log(open_sources([str(path)]), hmac_key=KEY, **kwargs)  # type: ignore[arg-type]


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def seq_at(path: Path, line_no: int) -> int:
    return int(json.loads(lines_of(path)[line_no - 1])["seq"])


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_log(path)
    return path


def test_untouched_log_verifies(log: Path) -> None:
    result = check(log)
    assert result.ok, result.problem
    # chain_start + 30 statements + 3 checkpoints + chain_end
    assert (result.records, result.first_seq, result.last_seq, result.chains) == (35, 1, 35, 1)


def test_edited_byte_is_named(log: Path) -> None:
    lines = lines_of(log)
    lines[9] = lines[9].replace(b"SELECT ", b"SELECT 9")
    log.write_bytes(b"".join(lines))
    problem = check(log).problem
    assert problem is not None
    assert (problem.source, problem.line, problem.seq) == (str(log), 10, 10)
    assert "hash" in problem.message


def test_whitespace_edit_is_detected(log: Path) -> None:
    lines = lines_of(log)
    lines[4] = lines[4].replace(b'"kind":', b'"kind": ')
    log.write_bytes(b"".join(lines))
    problem = check(log).problem
    assert problem is not None and problem.line == 5 and "canonical" in problem.message


def test_deleted_line_is_named(log: Path) -> None:
    lines = lines_of(log)
    del lines[6]
    log.write_bytes(b"".join(lines))
    problem = check(log).problem
    assert problem is not None
    assert (problem.line, problem.seq) == (7, 8)
    assert "expected seq 7" in problem.message


def test_forged_line_without_the_key_is_named(log: Path) -> None:
    lines = lines_of(log)
    forged = json.loads(lines[5])
    forged["sql"] = "DELETE FROM audit_evidence"
    # The attacker can recompute the hash, but not the HMAC without the key.
    body = {k: v for k, v in forged.items() if k not in ("hash", "hmac")}
    forged["hash"] = hashlib.sha256(canonical(body)).hexdigest()
    lines[5] = canonical(forged) + b"\n"
    log.write_bytes(b"".join(lines))
    problem = check(log).problem
    assert problem is not None and problem.line == 6 and "HMAC" in problem.message


def test_inserted_copy_of_a_valid_line_is_named(log: Path) -> None:
    lines = lines_of(log)
    lines.insert(12, lines[3])
    log.write_bytes(b"".join(lines))
    problem = check(log).problem
    assert problem is not None and problem.line == 13 and "seq goes back" in problem.message


def test_swapped_lines_are_named(log: Path) -> None:
    lines = lines_of(log)
    lines[14], lines[15] = lines[15], lines[14]
    log.write_bytes(b"".join(lines))
    problem = check(log).problem
    assert problem is not None and problem.line == 15 and problem.seq == 16


def test_cut_tail_is_truncated_or_open(log: Path) -> None:
    lines = lines_of(log)
    log.write_bytes(b"".join(lines[:-3]))
    problem = check(log).problem
    assert problem is not None and "truncated or still open" in problem.message
    assert problem.line == len(lines) - 3


def test_torn_last_line_is_reported_as_truncated(log: Path) -> None:
    data = log.read_bytes()
    log.write_bytes(data[:-20])
    problem = check(log).problem
    assert problem is not None and problem.message.startswith("truncated: incomplete last line")


def test_record_without_hmac_is_rejected(log: Path) -> None:
    lines = lines_of(log)
    rec = json.loads(lines[7])
    del rec["hmac"]
    lines[7] = canonical(rec) + b"\n"
    log.write_bytes(b"".join(lines))
    problem = check(log).problem
    assert problem is not None and problem.line == 8 and "unsigned" in problem.message


def test_wrong_key_fails_at_first_record(log: Path) -> None:
    problem = verify_log(open_sources([str(log)]), hmac_key=b"x" * 32).problem
    assert problem is not None and problem.line == 1 and "HMAC" in problem.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_is_detected(log: Path, data: st.DataObject) -> None:
    original = log.read_bytes()
    pos = data.draw(st.integers(0, len(original) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != original[pos]))
    tampered = log.with_name("tampered.jsonl")
    tampered.write_bytes(original[:pos] + bytes([new]) + original[pos + 1:])
    assert not check(tampered).ok


# -- rotation --

@pytest.fixture
def rotated(tmp_path: Path) -> list[Path]:
    write_log(tmp_path / "audit.jsonl", n=60, rotate_bytes=2500)
    files = [s.path for s in open_sources([str(tmp_path)])]  # type: ignore[union-attr]
    assert len(files) >= 3
    return files


def test_rotated_log_verifies_and_files_start_with_rotate(rotated: list[Path]) -> None:
    result = check(rotated[0].parent)
    assert result.ok, result.problem
    assert result.files == len(rotated)
    for path in rotated[1:]:
        first = json.loads(lines_of(path)[0])
        assert first["kind"] == "rotate"
    assert rotated[-1].name == "audit.jsonl"
    assert rotated[0].name == "audit.000000000001.jsonl"


def test_cut_across_rotation_boundary_names_next_file(rotated: list[Path]) -> None:
    lines = lines_of(rotated[0])
    rotated[0].write_bytes(b"".join(lines[:-1]))
    problem = check(rotated[0].parent).problem
    assert problem is not None
    assert (problem.source, problem.line) == (str(rotated[1]), 1)


def test_edit_of_rotate_record_is_named(rotated: list[Path]) -> None:
    lines = lines_of(rotated[1])
    lines[0] = lines[0].replace(b'"previous_file":"audit.', b'"previous_file":"audiT.')
    rotated[1].write_bytes(b"".join(lines))
    problem = check(rotated[0].parent).problem
    assert problem is not None and (problem.source, problem.line) == (str(rotated[1]), 1)


def test_missing_middle_file_is_detected(rotated: list[Path]) -> None:
    rotated[1].unlink()
    problem = check(rotated[0].parent).problem
    assert problem is not None and problem.source == str(rotated[2]) and "seq jumps" in problem.message


def test_missing_first_file_is_detected(rotated: list[Path]) -> None:
    rotated[0].unlink()
    problem = check(rotated[1].parent).problem
    assert problem is not None and "starts in the middle" in problem.message


# -- restarts --

def test_restart_continues_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, n=5)
    write_log(path, n=5)
    result = check(path)
    assert result.ok, result.problem
    assert result.chains == 2


def test_crash_then_restart_is_marked_unclean(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, n=5, close=False)
    assert "still open" in str(check(path).problem)
    write_log(path, n=5)
    assert check(path).ok
    starts = [json.loads(x) for x in lines_of(path) if b'"chain_start"' in x]
    assert [s["details"]["unclean"] for s in starts] == [False, True]


# -- signatures and exported checkpoints --

@pytest.fixture
def signing(tmp_path: Path) -> tuple[Signer, Path]:
    key_path = tmp_path / "sign.pem"
    pub = generate_signing_key_files(key_path)
    return load_signing_key(f"file:{key_path}"), pub


def test_markers_are_signed_and_checked(tmp_path: Path, signing: tuple[Signer, Path]) -> None:
    signer, pub = signing
    path = tmp_path / "audit.jsonl"
    write_log(path, signer=signer)
    result = check(path, verifier=load_public_key(str(pub)))
    assert result.ok, result.problem
    assert result.signatures_checked == 5  # chain_start, 3 checkpoints, chain_end
    other = tmp_path / "other.pem"
    other_pub = generate_signing_key_files(other)
    problem = check(path, verifier=load_public_key(str(other_pub))).problem
    assert problem is not None and problem.line == 1 and "signature invalid" in problem.message


def test_unsigned_markers_rejected_when_public_key_given(log: Path, signing: tuple[Signer, Path]) -> None:
    problem = check(log, verifier=load_public_key(str(signing[1]))).problem
    assert problem is not None and problem.line == 1 and "not signed" in problem.message


def test_exported_checkpoints_catch_a_cut_at_chain_end(tmp_path: Path, signing: tuple[Signer, Path]) -> None:
    signer, pub = signing
    path = tmp_path / "audit.jsonl"
    write_log(path, n=5, signer=signer)
    first_run = path.read_bytes()
    write_log(path, n=5, signer=signer)
    exported = tmp_path / "checkpoints.jsonl"
    assert export_checkpoints(open_sources([str(path)]), exported) == 4
    markers = load_checkpoints(exported)
    verifier = load_public_key(str(pub))
    assert check(path, verifier=verifier, exported=markers).ok
    path.write_bytes(first_run)  # drop the whole second run: the log alone still looks complete
    assert check(path, verifier=verifier).ok
    problem = check(path, verifier=verifier, exported=markers).problem
    assert problem is not None and "tail cut off" in problem.message and problem.source == str(exported)


def test_allow_open_needs_and_uses_exported_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, n=25, close=False)
    exported = tmp_path / "cp.jsonl"
    export_checkpoints(open_sources([str(path)]), exported)
    with pytest.raises(ValueError, match="needs exported checkpoints"):
        check(path, allow_open=True)
    result = check(path, allow_open=True, exported=load_checkpoints(exported))
    assert result.ok and "not anchored" in result.notes[0]
    lines = lines_of(path)
    path.write_bytes(b"".join(lines[:15]))  # cut before the checkpoint after record 20
    problem = check(path, allow_open=True, exported=load_checkpoints(exported)).problem
    assert problem is not None and "tail cut off" in problem.message
