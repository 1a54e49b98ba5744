"""The rewriter's entry point: SQL text and a tenant in, a verified Plan out (cached), or Refused.

>>> from .policy import Policy
>>> rw = Rewriter(Policy(scoped={("public", "orders"): "tenant_id"}))
>>> plan = rw.plan("SELECT id FROM orders WHERE id = 17", "acme")
>>> plan.sql
"SELECT id FROM public.orders WHERE orders.tenant_id = 'acme' AND id = 17"
>>> plan.kinds, plan.cached
(('select',), False)
>>> again = rw.plan("SELECT id FROM orders WHERE id = 42", "acme")
>>> again.cached, again.sql.endswith("AND id = 42")
(True, True)
>>> rw.stats()
{'hits': 1, 'misses': 1, 'size': 1}

Session-level setting changes and pins, for the proxy to track (see Plan):

>>> p = rw.plan("SET TimeZone = 'UTC'; SELECT set_config('datestyle', 'ISO', false) FROM orders", "acme")
>>> p.kinds, p.settings, p.pins
(('set', 'select'), (('timezone', "'UTC'"), ('datestyle', "'ISO'")), ())
>>> p = rw.plan("SELECT set_config($1, $2, false)", "acme", extended=True)  # checked at Bind: no pin
>>> p.pins, p.bound_settings
((), ((1, 2, 'false'),))
>>> rw.plan("PREPARE q AS SELECT set_config('timezone', $1, false)", "acme").pins  # a value known only later
('set_config',)
>>> rw.plan("SET LOCAL timezone = 'UTC'", "acme").settings, rw.plan("DEALLOCATE ALL", "acme").kinds
((), ('deallocate_all',))
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import pglast
from pglast import ast, parser

from .cache import LRUCache
from .crosscheck import crosscheck
from .encryption import Analyzer, Encrypt, EncryptedRef, Seal, fill_sealed, literal_redactions, seal_sql, slot_spans
from .errors import Refused
from .literals import Lifted, Template, lift, trim_comments, version_dependent_number
from .policy import Policy
from .positions import syntax_error
from .scoper import Scoper, deparse
from .settings import BoundSetConfig
from .verifier import verify

# Statement kinds whose rewrite never depends on a literal's value unless the scoper says so
# (SET values, channels and the like are always cached by their exact text).
LIFT_KINDS = frozenset({"select", "insert", "update", "delete", "merge"})
# Statements `allow_ddl` lets through for a dedicated tenant: schema changes inside its database.
# Never roles, databases, extensions, functions, languages, foreign servers or GRANT: they reach
# beyond the database or run code.
TENANT_DDL = frozenset({
    "CreateStmt", "CreateTableAsStmt", "IndexStmt", "ViewStmt", "DropStmt", "AlterTableStmt", "RenameStmt",
    "CommentStmt", "TruncateStmt", "LockStmt", "VacuumStmt", "ReindexStmt", "ClusterStmt", "CreateSeqStmt",
    "AlterSeqStmt", "CreateSchemaStmt", "CompositeTypeStmt", "CreateEnumStmt", "AlterEnumStmt",
    "CreateDomainStmt", "AlterDomainStmt", "RefreshMatViewStmt",
})


@dataclass(frozen=True)
class Plan:
    """What the proxy sends instead of the client's text.

    ``sql``: the statement(s) for the backend (a simple Query may hold several, '; '-separated).
    ``kinds``: one kind per statement (select, insert, set, reset_all, discard_all, begin, ...).
    ``tenant_params``: 1-based $n whose Bind value must equal the tenant id.
    ``cached``: served from the plan cache.
    ``encrypt_params``: ($n, "schema.table", column, type name) of Bind values bound to encrypted
    columns. ``redactions``: [start, end) spans of the original text holding literals that were
    encrypted (``sql`` has only their ciphertext); the audit log masks them.
    ``settings``: session-level setting changes the statement(s) make if they succeed, in order:
    (lower-case setting name, the value as SQL text that follows ``SET name TO``, or None for a
    RESET). Transaction-scoped changes (SET LOCAL, set_config(..., true)) are not listed.
    ``pins``: session state the statement leaves that the proxy cannot track or undo (for example
    "set_config", "advisory_lock"): a transaction-pooled session is pinned to its backend.
    A "set" kind with neither settings nor pins changes nothing that outlives its transaction
    (SET LOCAL, SET TRANSACTION, or the value the proxy pins anyway: search_path,
    standard_conforming_strings). Kind "deallocate_all": DEALLOCATE ALL.
    ``bound_settings``: set_config() calls of a Parse with $n arguments, (name, value, is_local) each
    a parameter number or a literal's text: the proxy checks the Bind's values with
    ``settings.Changes.bind_set_config`` (the same rules as the literal form) before they reach the backend.
    """

    sql: str
    kinds: tuple[str, ...]
    tenant_params: tuple[int, ...] = ()
    cached: bool = False
    encrypt_params: tuple[tuple[int, str, str, str], ...] = ()
    redactions: tuple[tuple[int, int], ...] = ()
    settings: tuple[tuple[str, str | None], ...] = ()
    pins: tuple[str, ...] = ()
    bound_settings: tuple[BoundSetConfig, ...] = ()


@dataclass(frozen=True)
class _Digest:
    """Cache entry for a literal-lifted digest: a template, or None when the digest cannot have one."""

    template: Template | None
    kinds: tuple[str, ...] = ()
    sealed: tuple[tuple[int, EncryptedRef], ...] = ()  # slots holding values of encrypted columns
    pins: tuple[str, ...] = ()  # what the statement pins, whatever its literals (Plan.pins)


@dataclass(frozen=True)
class _Refusal:
    reason: str
    message: str
    sqlstate: str
    position: int | None


@dataclass(frozen=True)
class _Built:
    plan: Plan
    value_dependent: bool
    seals: tuple[Seal, ...] = ()  # plan.sql holds their markers until encrypted


@dataclass(frozen=True)
class _Sealed:
    """Cache entry of a plan with literals to encrypt: encrypted afresh on every use."""

    plan: Plan
    seals: tuple[Seal, ...]


class Rewriter:
    """Plans statements for tenants under one Policy, with an LRU plan cache."""

    def __init__(self, policy: Policy, cache_size: int = 10_000) -> None:
        self._policy = policy
        self._cache: LRUCache[Plan | _Digest | _Refusal | _Sealed] = LRUCache(cache_size)
        self._hits = 0
        self._misses = 0

    @property
    def policy(self) -> Policy:
        """Fixed for the Rewriter's life: its cache holds plans of this policy only (a reload
        builds a new Rewriter)."""
        return self._policy

    def stats(self) -> dict[str, int]:
        return {"hits": self._hits, "misses": self._misses, "size": len(self._cache)}

    def clear(self) -> None:
        self._cache.clear()
        self._hits = self._misses = 0

    def plan(self, sql: str, tenant: str, *, extended: bool = False, encrypt: Encrypt | None = None) -> Plan:
        """Scope ``sql`` for ``tenant``; raise Refused when any part of it is not allowed.

        ``extended``: the text of a Parse message (one statement, $n parameters).
        ``encrypt(schema_table, column, literal_text) -> ciphertext`` encrypts literals bound to
        encrypted columns; it runs on every call, cache hits included (ciphertext is never reused).
        """
        if not tenant or "\x00" in tenant:
            raise ValueError("tenant id must be a non-empty string without NUL")
        exact_key = (tenant, extended, sql)
        entry = self._cache.get(exact_key)
        lifted: Lifted | None = None
        digest_key: tuple[object, ...] | None = None
        if entry is None and not extended:
            lifted = lift(sql)
            if lifted is not None and lifted.literals:
                digest_key = (tenant, "digest", lifted.digest)
                digest = self._cache.get(digest_key)
                if isinstance(digest, _Digest) and digest.template is not None:
                    self._hits += 1
                    if digest.sealed:
                        filled = fill_sealed(digest.template, lifted.literals, dict(digest.sealed), encrypt)
                        spans = slot_spans(lifted.gaps, lifted.literals, [slot for slot, _ in digest.sealed])
                        return Plan(filled, digest.kinds, cached=True, redactions=spans, pins=digest.pins)
                    return Plan(digest.template.fill(lifted.literals), digest.kinds, cached=True, pins=digest.pins)
        if entry is not None:
            self._hits += 1
            if isinstance(entry, _Refusal):
                raise Refused(entry.sqlstate, entry.message, entry.reason, entry.position)
            if isinstance(entry, _Sealed):
                return replace(entry.plan, sql=seal_sql(entry.plan.sql, entry.seals, encrypt))
            assert isinstance(entry, Plan)
            return entry
        self._misses += 1
        try:
            built = self._build(sql, tenant, extended)
            crosscheck(sql, self.policy.for_tenant(tenant))  # a second, independent parser must see the same tables
        except Refused as err:
            allowed = _allowed_ddl(sql) if tenant in self.policy.ddl_tenants else None
            if allowed is not None:
                self._cache.put(exact_key, allowed)
                return allowed
            self._cache.put(exact_key, _Refusal(err.reason, err.message, err.sqlstate, err.position))
            raise
        plan = built.plan
        sealed = replace(plan, sql=seal_sql(plan.sql, built.seals, encrypt)) if built.seals else plan
        if (digest_key is not None and lifted is not None and not built.value_dependent
                and set(plan.kinds) <= LIFT_KINDS and not plan.tenant_params and not plan.settings):
            found = self._template(lifted, tenant, built)
            template, slots = found if found is not None else (None, ())
            self._cache.put(digest_key, _Digest(template, plan.kinds, slots, plan.pins))
            if template is not None:
                return sealed
        cached = replace(plan, cached=True)
        self._cache.put(exact_key, _Sealed(cached, built.seals) if built.seals else cached)
        return sealed

    def _build(self, sql: str, tenant: str, extended: bool, sentinels: Mapping[str, int] | None = None) -> _Built:
        try:
            return self._rewrite(sql, tenant, extended, sentinels)
        except Refused:
            raise
        except pglast.parser.ParseError as exc:
            raise Refused("42601", str(exc), "unparseable") from None
        except Exception:  # fail closed: whatever could not be analysed does not run
            raise Refused("42501", "the statement could not be analysed by tenantgate", "internal") from None

    def _rewrite(self, sql: str, tenant: str, extended: bool, sentinels: Mapping[str, int] | None) -> _Built:
        """``sentinels`` (template probes): literal token -> lifted index; the seals then name their
        slots and the literals stay in place."""
        try:
            raws = pglast.parse_sql(sql)
        except parser.ParseError as exc:  # the client's own text: PostgreSQL's message and position
            raise syntax_error(sql, exc) from None
        if version_dependent_number(sql):
            raise Refused("42601", "numeric literals with a base prefix or underscores are not "
                          "supported by the backend", "unparseable")
        if extended and len(raws) > 1:
            raise Refused("42601", "cannot insert multiple commands into a prepared statement",
                          "multi_statement_extended")
        policy = self.policy.for_tenant(tenant)
        scoper = Scoper(policy, tenant, extended=extended)
        analyzer = Analyzer(policy, extended, sentinels) if policy.encrypted else None
        # unguessable: no client literal can collide with a marker
        marker = f"$tge{secrets.token_hex(8)}_" if analyzer is not None else ""
        seals: list[Seal] = []
        texts: list[str] = []
        kinds: list[str] = []
        any_modified = False
        for raw in raws:  # every statement is checked before anything is produced
            stmt: Any = raw.stmt
            kind = scoper.statement(stmt)
            kinds.append(kind)
            first_seal = len(seals)
            if analyzer is not None and not scoper.relations.isdisjoint(policy.encrypted_tables):
                analyzer.statement(stmt)
                for node, found in analyzer.seals[first_seal:]:
                    if sentinels is None:  # the literal leaves the tree; its ciphertext comes in later
                        node.val = ast.String(sval=f"{marker}{len(seals)}$")
                        found = replace(found, marker=f"'{node.val.sval}'")
                    seals.append(found)
            if scoper.modified or len(seals) > first_seal:
                any_modified = True
                texts.append(deparse(stmt))
            else:
                start = raw.stmt_location or 0
                end = start + raw.stmt_len if raw.stmt_len else len(sql)
                texts.append(trim_comments(sql[start:end]).strip())
        out = "; ".join(texts) if any_modified or len(raws) > 1 else sql
        params = frozenset(scoper.tenant_params)
        if raws and verify(out, policy, tenant, params) != len(raws):
            raise Refused("42501", "rewritten SQL has a different number of statements", "verification_failed")
        encrypt_params = tuple(sorted((n, ref.table, ref.column, ref.type)
                                      for n, ref in (analyzer.params.items() if analyzer else ())))
        redactions = literal_redactions(sql, [s.value for s in seals]) if seals and sentinels is None else ()
        plan = Plan(out, tuple(kinds), tuple(sorted(params)),
                    encrypt_params=encrypt_params, redactions=redactions,
                    settings=tuple(scoper.changes.settings), pins=tuple(scoper.changes.pins),
                    bound_settings=tuple(scoper.changes.bound))
        return _Built(plan, scoper.value_dependent, tuple(seals))

    def _template(self, lifted: Lifted, tenant: str,
                  built: _Built) -> tuple[Template, tuple[tuple[int, EncryptedRef], ...]] | None:
        """Rewrite the statement with sentinels in place of its literals and find them again in
        the output; the template must reproduce this very plan. Also returns the slots whose
        literals are encrypted (for their columns) when the template is filled."""
        plan = built.plan
        text = lifted.with_sentinels()
        sentinels = None
        if self.policy.encrypted:
            relifted = lift(text)
            if relifted is None:
                return None
            sentinels = {token: i for i, token in enumerate(relifted.literals)}
        try:
            probe = self._build(text, tenant, False, sentinels)
        except Refused:
            return None
        if (probe.value_dependent or probe.plan.kinds != plan.kinds or probe.plan.tenant_params
                or probe.plan.pins != plan.pins or probe.plan.settings):
            return None
        slots = [seal.slot for seal in probe.seals]
        if (len(probe.seals) != len(built.seals) or None in slots or len(set(slots)) != len(slots)
                or any(p.ref != b.ref for p, b in zip(probe.seals, built.seals, strict=True))):
            return None
        template = Template.build(probe.plan.sql, len(lifted.literals))
        if template is None:
            return None
        literals = list(lifted.literals)
        for p, b in zip(probe.seals, built.seals, strict=True):
            literals[p.slot] = b.marker  # type: ignore[index]
        filled = template.fill(tuple(literals))
        if filled != plan.sql and _normalised(filled) != _normalised(plan.sql):
            return None
        return template, tuple((p.slot, p.ref) for p in probe.seals)  # type: ignore[misc]


def _allowed_ddl(sql: str) -> Plan | None:
    """A dedicated tenant whose policy allows DDL: one DDL-like statement alone passes unchanged
    (its own database is the wall). Anything mixed with other statements is still refused.

    >>> _allowed_ddl("CREATE INDEX ON orders (note)").kinds, _allowed_ddl("DROP TABLE x; SELECT 1")
    (('ddl',), None)
    >>> _allowed_ddl("GRANT ALL ON orders TO public") is None, _allowed_ddl("DO $$ BEGIN END $$") is None
    (True, True)
    """
    try:
        raws = pglast.parse_sql(sql)
    except parser.ParseError:
        return None
    if len(raws) != 1 or type(raws[0].stmt).__name__ not in TENANT_DDL:
        return None
    return Plan(sql, ("ddl",), cached=True)


def _normalised(sql: str) -> tuple[str, ...] | None:
    """The deparsed form of each statement (equal trees print equally), None if it does not parse."""
    try:
        return tuple(deparse(raw.stmt) for raw in pglast.parse_sql(sql))
    except parser.ParseError:
        return None
