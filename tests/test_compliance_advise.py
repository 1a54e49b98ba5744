"""`tenantgate advise` on a fixture schema with planted risks and sensitive columns (every one found,
no sampled value printed) and on a control schema without them (nothing found); behaviour proposals
from an audit log written by the real proxy; --emit-toml and --apply (comments kept, backup, asked)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.audit.keys import generate_hmac_key_file
from tenantgate.config import load_config
from tenantgate.config.compliance import builtin_frameworks, load_framework_file
from tenantgate.keyring.kek import create_kek_file
from tenantgate.proxy.ops.compliance.advise import (
    CAPACITY,
    ENCRYPTION,
    ISOLATION,
    LEAST_PRIVILEGE,
    Proposal,
    advise,
    luhn,
)
from tenantgate.proxy.ops.rls import install_configured
from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import Backend, ProxyProcess, config_text, launch

CLI = [sys.executable, "-m", "tenantgate.proxy.cli"]

CARDS = ["4111111111111111", "5500005555555559", "4012888888881881", "378282246310005"]
BIRTHS = ["1980-04-01", "1975-12-24", "1990-07-15", "2001-01-30"]
CODES = ["E11.9", "I10", "J45.909", "K21.0"]
PHONES = ["+1 (555) 010-2000", "+44 20 7946 0958", "+49 30 901820", "555-010-3000"]
SSNS = ["123-45-6789", "987-65-4321", "078-05-1120", "219-09-9999"]
EMAILS = ["road@acme.test", "anvil@acme.test", "hank@globex.test", "cc@globex.test"]
OWNERS = ["acme", "acme", "globex", "globex"]
PLANTED_VALUES = CARDS + BIRTHS + CODES + PHONES + SSNS + EMAILS

RISKY_SCHEMA = f"""
CREATE TABLE accounts (tenant_id text NOT NULL, id int NOT NULL, email text, PRIMARY KEY (tenant_id, id),
                       UNIQUE (email));
CREATE TABLE invoices (tenant_id text NOT NULL, id int PRIMARY KEY, amount numeric);
CREATE TABLE payments (tenant_id text NOT NULL, id int NOT NULL, invoice_id int REFERENCES invoices (id),
                       pay_ref text, PRIMARY KEY (tenant_id, id));
CREATE TABLE patients (tenant_id text NOT NULL, mrn int, born date, code text, contact text, ident text);
CREATE TABLE tickets (tenant_id text NOT NULL, id int NOT NULL, subject text, PRIMARY KEY (tenant_id, id));
CREATE TABLE plans (code text PRIMARY KEY, name text);
CREATE TABLE audit_notes (org_id text, note text);
INSERT INTO accounts VALUES {", ".join(f"('{OWNERS[i]}', {i}, '{e}')" for i, e in enumerate(EMAILS))};
INSERT INTO invoices VALUES ('acme', 1, 10), ('globex', 2, 20);
INSERT INTO payments VALUES {", ".join(f"('acme', {i}, 1, '{c}')" for i, c in enumerate(CARDS))};
INSERT INTO patients VALUES {", ".join(f"('acme', {i}, '{b}', '{c}', '{p}', '{s}')"
                                      for i, (b, c, p, s) in enumerate(zip(BIRTHS, CODES, PHONES, SSNS, strict=True)))};
INSERT INTO plans VALUES ('basic', 'Basic'), ('pro', 'Professional');
INSERT INTO audit_notes VALUES ('acme', 'checked');
"""
RISKY_SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["accounts", "invoices", "payments", "patients"]\n'

CLEAN_SCHEMA = """
CREATE TABLE accounts (tenant_id text NOT NULL, id int NOT NULL, handle text, PRIMARY KEY (tenant_id, id),
                       UNIQUE (tenant_id, handle));
CREATE TABLE invoices (tenant_id text NOT NULL, id int NOT NULL, amount numeric, paid_on date,
                       PRIMARY KEY (tenant_id, id));
CREATE TABLE payments (tenant_id text NOT NULL, id int NOT NULL, invoice_id int, note text,
                       PRIMARY KEY (tenant_id, id), FOREIGN KEY (tenant_id, invoice_id) REFERENCES invoices);
CREATE TABLE plans (code text PRIMARY KEY, name text);
INSERT INTO accounts VALUES ('acme', 1, 'road-runner'), ('acme', 2, 'anvil'), ('globex', 1, 'scorpio'),
                            ('globex', 2, 'cypress');
INSERT INTO invoices VALUES ('acme', 1, 12.50, '2025-06-01'), ('acme', 2, 7, '2025-06-02'),
                            ('globex', 1, 99.99, '2025-07-01'), ('globex', 2, 3, '2025-07-09');
INSERT INTO payments VALUES ('acme', 1, 1, 'paid in full'), ('acme', 2, 2, 'card on file'),
                            ('globex', 1, 1, 'wire'), ('globex', 2, 2, 'cash at desk');
INSERT INTO plans VALUES ('basic', 'Basic'), ('pro', 'Professional');
"""
CLEAN_SCOPING = ('[scoping]\ncolumn = "tenant_id"\ntables = ["accounts", "invoices", "payments"]\n'
                 'reference = ["plans"]\n')

# (category, subject, words of the reason): every planted finding
PLANTED = [
    ("risk", "accounts", "unique index accounts_email_key"),
    ("risk", "invoices", "unique index invoices_pkey (id) lacks tenant_id"),
    ("risk", "invoices", "no index leads with tenant_id"),
    ("risk", "payments", "foreign key payments_invoice_id_fkey (invoice_id) lacks tenant_id"),
    ("risk", "patients", "no index leads with tenant_id"),
    *[("risk", t, "RLS second lock missing") for t in ("accounts", "invoices", "payments", "patients", "tickets")],
    ("risk", "role app_adv_risky", "CREATEROLE"),
    ("encryption", "accounts.email", "name looks like email address"),
    ("encryption", "payments.pay_ref", "values look like card number (Luhn)"),
    ("encryption", "patients.born", "values look like date of birth"),
    ("encryption", "patients.code", "values look like health code (ICD-10)"),
    ("encryption", "patients.contact", "values look like phone number"),
    ("encryption", "patients.ident", "values look like national id"),
    ("scoping", "tickets", "has the tenant column tenant_id"),
    ("reference", "plans", "read by every tenant"),
    ("unclassified", "audit_notes", "org_id looks like an owner column"),
    ("role", "bob", "none writes"),
    ("role", "svc", "none writes"),
    ("limit", "acme", "headroom"),
    ("limit", "globex", "headroom"),
]


def audit_section(tmp: Path) -> str:
    if not (tmp / "audit.key").exists():
        generate_hmac_key_file(tmp / "audit.key")
    return f'[audit]\nkey = "file:{tmp / "audit.key"}"\npath = "{tmp / "audit" / "log.jsonl"}"\n'


@pytest.fixture(scope="module")
def risky(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    backend = Backend.create(pg, "adv_risky")
    with psycopg.connect(backend.direct_dsn(), autocommit=True) as conn:
        conn.execute(RISKY_SCHEMA)  # as the app role: it owns the tables
    pg.execute("ALTER ROLE app_adv_risky CREATEROLE")
    tmp = tmp_path_factory.mktemp("advise-risky")
    proxy = launch(tmp, backend, scoping=RISKY_SCOPING, extra=audit_section(tmp))
    try:
        with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
            conn.execute("SELECT id FROM accounts WHERE email = %s", (EMAILS[0],)).fetchall()
            conn.execute("INSERT INTO accounts (tenant_id, id, email) VALUES ('acme', 9, %s)", ("new@acme.test",))
        with psycopg.connect(proxy.dsn("bob"), autocommit=True) as conn:
            for _ in range(3):
                conn.execute("SELECT count(*) FROM invoices").fetchall()
        with psycopg.connect(proxy.dsn("svc"), autocommit=True) as conn:
            conn.execute("SELECT count(*) FROM plans").fetchall()
        time.sleep(0.5)  # batched audit durability
        yield proxy
    finally:
        proxy.stop()


def found(proposals: list[Proposal]) -> set[tuple[str, str]]:
    return {(p.category, p.subject) for p in proposals}


@pytest.mark.parametrize(("category", "subject", "reason"), PLANTED, ids=[f"{c}:{s}:{r[:24]}" for c, s, r in PLANTED])
def test_advise_finds_planted(risky: ProxyProcess, category: str, subject: str, reason: str) -> None:
    proposals = asyncio.run(advise(load_config(risky.config_path)))
    matching = [p for p in proposals if p.category == category and p.subject == subject and reason in p.reason]
    assert matching, [f"{p.category} {p.subject}: {p.reason}" for p in proposals if p.subject == subject]
    assert all(p.controls for p in matching)  # each proposal serves named controls


def test_advise_nothing_unplanted(risky: ProxyProcess) -> None:
    proposals = asyncio.run(advise(load_config(risky.config_path)))
    planted = {(c, s) for c, s, _ in PLANTED}
    assert found(proposals) - planted == set()
    email = next(p for p in proposals if p.subject == "accounts.email")
    assert email.setting["mode"] == "deterministic"  # the audit log shows `email = $1`
    assert next(p for p in proposals if p.subject == "patients.born").setting == {
        "table": "patients", "column": "born", "mode": "randomized", "type": "date"}
    assert ("role", "alice") not in found(proposals)  # alice wrote


def test_advise_never_prints_sampled_values(risky: ProxyProcess) -> None:
    for extra in ([], ["--emit-toml"]):
        out = subprocess.run([*CLI, "advise", "--config", str(risky.config_path), *extra], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "patients.ident" in out.stdout
        leaked = [v for v in PLANTED_VALUES if v in out.stdout + out.stderr]
        assert not leaked, leaked


def test_advise_apply(risky: ProxyProcess, tmp_path: Path) -> None:
    create_kek_file(tmp_path / "kek.hex")
    original = ("# operator's note: keep this comment\n" + risky.config_path.read_text()
                + f'\n[encryption]\nkek = "file:{tmp_path / "kek.hex"}"\nstore = "file:{tmp_path / "keys.json"}"\n')
    config = tmp_path / "tg.toml"
    config.write_text(original)
    declined = subprocess.run([*CLI, "advise", "--config", str(config), "--apply"], input="n\n",
                              capture_output=True, text=True, timeout=120)
    assert declined.returncode == 0 and "not applied" in declined.stdout
    assert config.read_text() == original and not (tmp_path / "tg.toml.bak").exists()
    applied = subprocess.run([*CLI, "advise", "--config", str(config), "--apply", "--yes"], capture_output=True,
                             text=True, timeout=120)
    assert applied.returncode == 0, applied.stderr
    assert (tmp_path / "tg.toml.bak").read_text() == original
    text = config.read_text()
    assert text.startswith("# operator's note: keep this comment\n")
    cfg = load_config(config)
    assert cfg.encryption is not None
    assert {(c.table, c.column, c.mode.value) for c in cfg.encryption.columns} >= {
        ("accounts", "email", "deterministic"), ("payments", "pay_ref", "randomized")}
    assert cfg.users["bob"].role == "readonly" and cfg.users["alice"].role != "readonly"
    assert cfg.tenant("acme").limits.statements_per_second is not None
    assert "tickets" in {t.name for t in cfg.scoping.tables}
    assert ("plans" in {n for _, n in cfg.scoping.reference})


@pytest.fixture(scope="module")
def clean(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend = Backend.create(pg, "adv_clean")
    with psycopg.connect(backend.direct_dsn(), autocommit=True) as conn:
        conn.execute(CLEAN_SCHEMA)
    tmp = tmp_path_factory.mktemp("advise-clean")
    path = tmp / "tg.toml"
    path.write_text(config_text(backend, 6432, scoping=CLEAN_SCOPING))
    asyncio.run(install_configured(load_config(path)))
    return path


def test_advise_finds_nothing_in_control_schema(clean: Path) -> None:
    proposals = asyncio.run(advise(load_config(clean)))
    assert [f"{p.category} {p.subject}: {p.reason}" for p in proposals] == []


def test_advise_maps_to_shipped_controls() -> None:
    shipped = {c.name for name, text in builtin_frameworks().items() for c in load_framework_file(text, name).controls}
    assert set(ISOLATION + ENCRYPTION + CAPACITY + LEAST_PRIVILEGE) <= shipped


@pytest.mark.parametrize(("digits", "valid"), [(c, True) for c in CARDS] + [("4111111111111112", False)])
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn(digits) is valid
