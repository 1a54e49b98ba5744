"""The evidence pack over several instances' audit logs (issue 19): each chain verified on its own,
counts over all of them. Logs come from a [cluster] config whose [audit] path names ``{instance}``,
or from ``compliance report --audit-log PATH`` given once per instance."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tenantgate.config import load_config
from tenantgate.proxy.cli import main
from tenantgate.proxy.ops.compliance import auditlog
from tenantgate.proxy.ops.compliance.runtime import check_audit_chain

from .test_audit_instances import KEY, write_log

WORKLOAD = {"a": 5, "b": 3, "c": 2}  # acme statements each instance recorded


def config_file(tmp: Path, cluster: bool = True) -> Path:
    key = tmp / "audit.key"
    key.write_text(KEY.hex())
    key.chmod(0o600)
    peers = ", ".join(f'{n} = "127.0.0.1:{7000 + i}"' for i, n in enumerate(WORKLOAD))
    text = (
        '[backend]\nuser = "app"\n\n[listen]\naddress = "127.0.0.1:6432"\n\n'
        '[tenants.acme]\ntier = "shared"\n\n[users.alice]\ntenant = "acme"\npassword = "alice-pw"\n\n'
        f'[audit]\npath = "{tmp}/audit/{{instance}}/audit.jsonl"\nkey = "file:{key}"\n'
    )
    if cluster:
        text += f'\n[cluster]\ninstance = "a"\npassword = "{"s" * 40}"\npeers = {{ {peers} }}\n'
    path = tmp / "tenantgate.toml"
    path.write_text(text)
    return path


def instance_logs(tmp: Path, names: dict[str, int] = WORKLOAD) -> dict[str, Path]:
    return {n: write_log(tmp / "audit" / n, n, count) for n, count in names.items()}


def report(tmp: Path, config: Path, *logs: Path) -> tuple[int, dict[str, Any]]:
    out = tmp / "pack"
    extra = [arg for log in logs for arg in ("--audit-log", str(log))]
    code = main(["compliance", "report", "--config", str(config), "--tenant", "acme", "-o", str(out), *extra])
    return code, json.loads((out / "evidence.json").read_text())


def test_a_cluster_pack_reads_every_instance_log(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    instance_logs(tmp_path)
    code, pack = report(tmp_path, config)
    integrity = pack["integrity"]
    assert code == 0 and integrity["ok"], integrity
    assert [line.split(" ")[1] for line in integrity["instances"]] == list(WORKLOAD)
    assert pack["access"]["statements"] == sum(WORKLOAD.values())  # counted across the chains
    assert pack["access"]["users"] == {"alice": sum(WORKLOAD.values())}
    assert integrity["records"] == sum(WORKLOAD.values()) + 2 * len(WORKLOAD)  # + chain_start and shutdown
    finding = asyncio.run(check_audit_chain(load_config(config)))  # `compliance check` agrees
    assert finding.passed and "3 instance logs" in finding.evidence, finding


def test_logs_given_as_paths_one_per_instance(tmp_path: Path) -> None:
    logs = instance_logs(tmp_path / "collected")  # copied off three machines, say
    code, pack = report(tmp_path, config_file(tmp_path, cluster=False), *logs.values())
    assert code == 0 and pack["integrity"]["ok"] and len(pack["integrity"]["instances"]) == 3
    assert pack["access"]["statements"] == sum(WORKLOAD.values())


@pytest.mark.parametrize("case", ["a chain broken", "an instance's log missing", "one log given twice"])
def test_one_bad_instance_log_fails_the_pack_naming_it(tmp_path: Path, case: str) -> None:
    config = config_file(tmp_path)
    logs = instance_logs(tmp_path, WORKLOAD if case != "an instance's log missing" else {"a": 5, "b": 3})
    given: list[Path] = []
    if case == "a chain broken":
        lines = (logs["b"] / "audit.jsonl").read_bytes().splitlines(keepends=True)
        (logs["b"] / "audit.jsonl").write_bytes(b"".join(lines[:2] + lines[3:]))  # a record deleted
        expected = "instance b"
    elif case == "one log given twice":
        shutil.copytree(logs["a"], tmp_path / "copy")
        given = [logs["a"], tmp_path / "copy"]
        expected = "also owns"
    else:
        expected = f"no audit log at {tmp_path}/audit/c/audit.jsonl"
    code, pack = report(tmp_path, config, *given)
    integrity = pack["integrity"]
    assert code == 0 and not integrity["ok"] and integrity["summary"].startswith("FAILED"), integrity
    assert expected in integrity["summary"], integrity
    chain = auditlog.integrity(load_config(config), [str(p) for p in given])
    assert not chain.ok and chain.summary == integrity["summary"]
