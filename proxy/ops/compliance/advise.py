"""``tenantgate advise``: rule- and statistics-based proposals from the live schema, a bounded sample
of the data and (if present) the audit log. Runs locally; nothing is sent anywhere. Sampled values are
only tested, never printed or stored: a proposal names the table, the column and the rule that matched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import asyncpg

from tenantgate.config import Config
from tenantgate.keyring.quoting import quote_ident, quote_qualified

from .. import rls
from . import auditlog
from .runtime import _connect

ISOLATION = ("pci-dss-4.0 7.2.1", "hipaa 164.312(a)(1)", "soc2 CC6.1", "gdpr Art. 32")
ENCRYPTION = ("pci-dss-4.0 3.5.1", "hipaa 164.312(a)(2)(iv)", "soc2 CC6.1", "gdpr Art. 32", "gdpr Art. 25")
CAPACITY = ("soc2 A1.1",)
LEAST_PRIVILEGE = ("pci-dss-4.0 7.2.1", "hipaa 164.312(a)(1)", "soc2 CC6.1")
MIN_MATCHES, MATCH_SHARE = 3, 0.8  # a value rule fires when >= 80% of >= 3 sampled non-null values match


@dataclass(frozen=True, slots=True)
class Proposal:
    category: str  # scoping | reference | unclassified | risk | encryption | role | limit
    subject: str  # table, table.column, user or tenant
    reason: str
    controls: tuple[str, ...] = ()
    setting: dict[str, object] = field(default_factory=dict)  # encryption/role/limit values --apply writes


def luhn(digits: str) -> bool:
    """The Luhn check digit test that every payment card number passes.

    >>> luhn("4111111111111111"), luhn("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card(v: str) -> bool:
    digits = re.sub(r"[ -]", "", v)
    return digits.isdigit() and 13 <= len(digits) <= 19 and luhn(digits)


def _birth(v: str) -> bool:
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", v[:10])
    return m is not None and 1900 <= int(m[1]) <= date.today().year - 5 and len(v) == 10


VALUE_RULES: dict[str, Callable[[str], bool]] = {
    "card number (Luhn)": _card,
    "national id": lambda v: re.fullmatch(r"\d{3}-\d{2}-\d{4}|[A-Z]{2}\d{6}[A-D]", v) is not None,
    "email address": lambda v: re.fullmatch(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}", v) is not None,
    "phone number": lambda v: re.fullmatch(r"\+?[\d ()./-]{7,20}", v) is not None and len(re.sub(r"\D", "", v)) >= 8
    and not v.isdigit() and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v) is None,
    "date of birth": _birth,
    "health code (ICD-10)": lambda v: re.fullmatch(r"[A-TV-Z]\d[0-9AB](\.[0-9A-TV-Z]{1,4})?", v) is not None,
}
NAME_RULES: dict[str, re.Pattern[str]] = {
    "card number (Luhn)": re.compile(r"(^|_)(pan|card(_?num(ber)?)?|cc_?num(ber)?|credit_?card)($|_)"),
    "national id": re.compile(r"(^|_)(ssn|national_?id|nin|passport(_?no)?|tax_?id|social_security)($|_)"),
    "email address": re.compile(r"(^|_)e?_?mail(_?address)?($|_)"),
    "phone number": re.compile(r"(^|_)(phone|mobile|tel|telephone)(_?n(umbe)?r)?($|_)"),
    "date of birth": re.compile(r"(^|_)(dob|birth_?date|date_?of_?birth|birthday)($|_)"),
    "health code (ICD-10)": re.compile(r"(^|_)(icd(_?10)?|diagnosis(_?code)?|health_?code|medical_?code)($|_)"),
}
_KEYRING_TYPES = {"text": "text", "character varying": "text", "integer": "int", "bigint": "bigint",
                  "numeric": "numeric", "date": "date", "timestamp with time zone": "timestamptz",
                  "jsonb": "jsonb", "bytea": "bytea"}

_TABLES = """
SELECT n.nspname, c.relname, c.oid,
       array_agg(a.attname::text ORDER BY a.attnum), array_agg(format_type(a.atttypid, NULL) ORDER BY a.attnum)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenantgate')
  AND n.nspname NOT LIKE 'pg\\_%' AND NOT c.relispartition
GROUP BY 1, 2, 3 ORDER BY 1, 2
"""
_INDEXES = """
SELECT i.indisunique, ic.relname, array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(n, o)
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o), i.indexprs IS NOT NULL
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = $1
"""
_FKEYS = """
SELECT conname, array(SELECT a.attname::text FROM unnest(conkey) k(n)
       JOIN pg_attribute a ON a.attrelid = conrelid AND a.attnum = k.n)
FROM pg_constraint WHERE contype = 'f' AND conrelid = $1
"""


def _table_name(schema: str, name: str) -> str:
    return name if schema == "public" else f"{schema}.{name}"


async def advise(config: Config, sample: int = 200) -> list[Proposal]:
    out: list[Proposal] = []
    column = config.scoping.column
    scoped = {_table_name(t.schema or "public", t.name) for t in config.scoping.tables}
    reference = {_table_name(s or "public", n) for s, n in config.scoping.reference}
    own_schemas = {t.schema for t in config.tenants.values() if t.schema}
    lookups = _equality_lookups(config)
    conn = await _connect(config)
    try:
        out += await _role_risks(conn)
        for schema, name, oid, columns, types in await conn.fetch(_TABLES):
            if schema in own_schemas:
                continue  # a schema-tier tenant's own copy: isolated by search_path, not by a column
            table = _table_name(schema, name)
            if column in columns:
                if table not in scoped:
                    out.append(Proposal("scoping", table, f"has the tenant column {column}", ISOLATION))
                out += await _tenant_table_risks(conn, table, oid, column, config)
            elif table not in reference:
                tenantish = [c for c in columns if re.search(r"(tenant|org(anization)?|account|customer)_?id$", c)]
                if tenantish:
                    out.append(Proposal("unclassified", table, f"no {column} but {tenantish[0]} looks like an owner "
                                        "column: decide scoping (with that column) or reference", ISOLATION))
                else:
                    out.append(Proposal("reference", table, f"no {column}: read by every tenant, read-only for "
                                        "them", ISOLATION))
            out += await _sensitive(conn, schema, name, table, columns, types, column, sample, lookups, config)
    finally:
        await conn.close()
    out += _behaviour(config)
    return out


async def _role_risks(conn: asyncpg.Connection) -> list[Proposal]:
    row = await conn.fetchrow("SELECT current_user::text, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb "
                              "FROM pg_roles WHERE rolname = current_user")
    assert row is not None
    found = [what for what, on in zip(("SUPERUSER", "BYPASSRLS", "CREATEROLE", "CREATEDB"), row[1:], strict=True)
             if on]
    if not found:
        return []
    return [Proposal("risk", f"role {row[0]}", f"backend role has {', '.join(found)}: more than the proxy needs "
                     "(superuser/BYPASSRLS also defeat RLS); use a plain role", ISOLATION)]


async def _tenant_table_risks(conn: asyncpg.Connection, table: str, oid: int, column: str,
                              config: Config) -> list[Proposal]:
    out = []
    leading = False
    for unique, index, keys, expression in await conn.fetch(_INDEXES, oid):
        leading = leading or (bool(keys) and keys[0] == column)
        if unique and column not in keys and not expression:
            out.append(Proposal("risk", table, f"unique index {index} ({', '.join(keys)}) lacks {column}: a "
                                "conflict reveals that another tenant holds the value; add it", ISOLATION))
    if not leading:
        out.append(Proposal("risk", table, f"no index leads with {column}: every scoped query scans all "
                            "tenants' rows", CAPACITY))
    for name, keys in await conn.fetch(_FKEYS, oid):
        if column not in keys:
            out.append(Proposal("risk", table, f"foreign key {name} ({', '.join(keys)}) lacks {column}: a row may "
                                "reference another tenant's row", ISOLATION))
    schema, _, bare = table.rpartition(".")
    state = await rls.table_state(conn, quote_qualified(schema or "public", bare))
    drift = state.drift(column)
    if drift:
        out.append(Proposal("risk", table, "RLS second lock missing or drifted: " + "; ".join(d.split(": ", 1)[1]
                            for d in drift) + " (tenantgate rls install)", ISOLATION))
    return out


async def _sensitive(conn: asyncpg.Connection, schema: str, name: str, table: str, columns: list[str],
                     types: list[str], tenant_column: str, sample: int, lookups: set[str],
                     config: Config) -> list[Proposal]:
    out = []
    for col, type_ in zip(columns, types, strict=True):
        if col == tenant_column or (config.encryption and config.encryption.column(table, col)):
            continue
        by_name = next((kind for kind, rx in NAME_RULES.items() if rx.search(col.lower())), None)
        values = [v for (v,) in await conn.fetch(
            f"SELECT {quote_ident(col)}::text FROM {quote_qualified(schema, name)} "
            f"WHERE {quote_ident(col)} IS NOT NULL LIMIT {int(sample)}")]
        by_value = None
        for kind, rule in VALUE_RULES.items():
            hits = sum(1 for v in values if rule(v.strip()))
            if hits >= MIN_MATCHES and hits >= MATCH_SHARE * len(values):
                by_value = f"{kind} ({hits} of {len(values)} sampled values)"
                break
        if by_name is None and by_value is None:
            continue
        deterministic = col in lookups
        reason = " and ".join(filter(None, [f"name looks like {by_name}" if by_name else None,
                                            f"values look like {by_value}" if by_value else None]))
        reason += ("; deterministic: the audit log shows equality lookups on it" if deterministic
                   else "; randomized: no equality lookups in the audit log")
        out.append(Proposal("encryption", f"{table}.{col}", reason, ENCRYPTION,
                            {"table": table, "column": col, "mode": "deterministic" if deterministic else "randomized",
                             "type": _KEYRING_TYPES.get(type_, "text")}))
    return out


def _equality_lookups(config: Config) -> set[str]:
    """Column names compared with = to a literal or parameter in logged statements."""
    found: set[str] = set()
    for sql in auditlog.statement_texts(config):
        found.update(m.lower() for m in re.findall(r'"?([A-Za-z_][A-Za-z0-9_]*)"?\s*=\s*(?:\$\d+|\'|\d)', sql))
    return found


def _behaviour(config: Config) -> list[Proposal]:
    if config.audit is None:
        return []
    act = auditlog.summarize(auditlog.records(config), config)
    out = []
    for user in sorted(act.users):
        u = config.users.get(user)
        if u is not None and u.role != "readonly" and act.writes_by_user[user] == 0:
            out.append(Proposal("role", user, f"{act.users[user]} logged statement(s), none writes: least "
                                "privilege says read-only", LEAST_PRIVILEGE,
                                {"role": "readonly"}))
    for tenant, peak in sorted(act.per_second_peak.items()):
        if tenant in config.tenants and config.tenant(tenant).limits.statements_per_second is None:
            limit = max(10, math.ceil(peak * 2))
            out.append(Proposal("limit", tenant, f"peak {peak} statement(s) in one second in the audit log; "
                                f"{limit}/s leaves 2x headroom", CAPACITY, {"statements_per_second": limit}))
    return out
