"""Which tables are scoped (and by which column), which are read-only reference tables, and which
of their columns are encrypted."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

from .catalog import CATALOG_SCHEMAS, MASKED_RELATIONS, relation_denial, unqualified_catalog_relation

RelationKind = Literal["scoped", "reference", "catalog", "unlisted", "owned", "foreign"]


@dataclass(frozen=True)
class Relation:
    """A table reference resolved the way the backend resolves it (search_path pinned to public, or to
    the tenant's own schema for a schema-tier tenant: its tables there are ``owned``, every other
    non-catalog schema is ``foreign``)."""

    kind: RelationKind
    schema: str
    name: str
    column: str | None = None  # the tenant column of a scoped table
    denial: str | None = None  # reason code when a catalog relation is denied
    masked: bool = False  # a catalog relation read through a derived table that hides other tenants' volume


@dataclass(frozen=True)
class Policy:
    """Tenant scoping configuration (one Rewriter, and so one plan cache, per Policy).

    >>> p = Policy(scoped={("public", "invoices"): "org_id"}, reference=frozenset({("public", "countries")}))
    >>> p.resolve(None, "INVOICES".lower())
    Relation(kind='scoped', schema='public', name='invoices', column='org_id', denial=None, masked=False)
    >>> p.resolve("public", "countries").kind, p.resolve(None, "pg_class").kind, p.resolve(None, "x").kind
    ('reference', 'catalog', 'unlisted')

    ``encrypted`` maps (schema, table, column) to (mode, type name) of an encrypted column.
    """

    column: str = "tenant_id"
    scoped: dict[tuple[str, str], str] = field(default_factory=dict)
    reference: frozenset[tuple[str, str]] = frozenset()
    encrypted: dict[tuple[str, str, str], tuple[str, str]] = field(default_factory=dict)
    homes: dict[str, str] = field(default_factory=dict)  # schema-tier tenant -> its schema
    home: str | None = None  # set on the per-tenant policy of a schema-tier tenant (for_tenant)
    ddl_tenants: frozenset[str] = frozenset()  # dedicated tenants whose policy allows DDL in their own database
    allow_explain: bool = False  # [scoping] allow_explain: EXPLAIN without ANALYZE (estimates span all tenants)
    # scoped table -> its column names in order, read from the [backend] database's catalog at start
    # (INSERT without a column list); a table missing here keeps needing a column list
    columns: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    dedicated: frozenset[str] = frozenset()  # tenants in their own database (whose columns may differ)

    def __hash__(self) -> int:
        return hash((self.column, tuple(sorted(self.scoped.items())), self.reference,
                     tuple(sorted(self.encrypted.items())), tuple(sorted(self.homes.items())), self.home,
                     self.ddl_tenants, self.allow_explain, tuple(sorted(self.columns.items())), self.dedicated))

    def for_tenant(self, tenant: str) -> Policy:
        """The policy one tenant's statements are planned under.

        A schema-tier tenant owns the tables of its schema (no row predicate) and nothing else; its
        encrypted columns are the configured ones, in its schema.

        >>> p = Policy(scoped={("public", "orders"): "tenant_id"}, homes={"acme": "t_acme"},
        ...            encrypted={("public", "orders", "card"): ("randomized", "text")})
        >>> p.for_tenant("bob") is p
        True
        >>> q = p.for_tenant("acme")
        >>> q.resolve(None, "orders").kind, q.resolve("public", "orders").kind, q.resolve("t_acme", "x").schema
        ('owned', 'foreign', 't_acme')
        >>> q.encrypted
        {('t_acme', 'orders', 'card'): ('randomized', 'text')}
        """
        home = self.homes.get(tenant)
        if home is None and (tenant not in self.dedicated or not self.columns):
            return self
        cache = self._tenant_policies
        found = cache.get(tenant)
        if found is not None:
            return found
        if home is None:  # a dedicated tenant: the column lists describe [backend]'s database only
            found = replace(self, columns={}, dedicated=frozenset())
        else:
            encrypted = {(home, table, column): spec for (_, table, column), spec in self.encrypted.items()}
            found = Policy(column=self.column, encrypted=encrypted, home=home,
                           allow_explain=self.allow_explain)
        cache[tenant] = found
        return found

    @cached_property
    def _tenant_policies(self) -> dict[str, Policy]:
        return {}

    @cached_property
    def encrypted_tables(self) -> dict[tuple[str, str], dict[str, tuple[str, str]]]:
        """(schema, table) -> {column: (mode, type name)}."""
        tables: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
        for (schema, table, column), spec in self.encrypted.items():
            tables.setdefault((schema, table), {})[column] = spec
        return tables

    @classmethod
    def from_config(cls, scoping: Any, encryption: Any = None, tenants: Any = None) -> Policy:
        """Build from tenantgate.config's Scoping (column, tables, reference) and EncryptionSettings
        (columns: table as [schema.]name, column, mode, type); schema None = public. ``tenants``
        (config Tenant objects) gives the schema-tier tenants' schemas.

        An encrypted column must belong to a scoped table (its key is the row's tenant's) and must
        not be the tenant column.
        """
        scoped = {(t.schema or "public", t.name): (t.column or scoping.column) for t in scoping.tables}
        reference = frozenset((schema or "public", name) for schema, name in scoping.reference)
        overlap = set(scoped) & reference
        if overlap:
            schema, name = sorted(overlap)[0]
            raise ValueError(f"table {schema}.{name} is both scoped and a reference table")
        encrypted: dict[tuple[str, str, str], tuple[str, str]] = {}
        for col in encryption.columns if encryption is not None else ():
            schema, _, name = col.table.rpartition(".")
            key = (schema or "public", name)
            if key not in scoped:
                raise ValueError(f"encrypted column {col.table}.{col.column}: table {key[0]}.{key[1]} is not a "
                                 "scoped table ([scoping] tables)")
            if col.column == scoped[key]:
                raise ValueError(f"encrypted column {col.table}.{col.column} is the table's tenant column")
            encrypted[(*key, col.column)] = (str(col.mode), col.type.name)
        tenants = list(tenants or ())
        homes = {t.name: t.schema for t in tenants if t.tier == "schema" and t.schema}
        ddl = frozenset(t.name for t in tenants if t.tier == "dedicated" and getattr(t, "allow_ddl", False))
        dedicated = frozenset(t.name for t in tenants if t.tier == "dedicated")
        return cls(column=scoping.column, scoped=scoped, reference=reference, encrypted=encrypted,
                   homes=homes, ddl_tenants=ddl, dedicated=dedicated,
                   allow_explain=bool(getattr(scoping, "allow_explain", False)))

    @property
    def search_path(self) -> str:
        """The one schema the proxy pins search_path to for this policy's tenant."""
        return self.home or "public"

    def resolve(self, schema: str | None, name: str) -> Relation:
        """Resolve a relation name (already case-folded by the parser)."""
        if schema is None:
            schema = "pg_catalog" if unqualified_catalog_relation(name) else self.home or "public"
        if schema in CATALOG_SCHEMAS:
            return Relation("catalog", schema, name, denial=relation_denial(schema, name),
                            masked=(schema, name) in MASKED_RELATIONS)
        if self.home is not None:
            return Relation("owned" if schema == self.home else "foreign", schema, name)
        column = self.scoped.get((schema, name))
        if column is not None:
            return Relation("scoped", schema, name, column=column)
        if (schema, name) in self.reference:
            return Relation("reference", schema, name)
        return Relation("unlisted", schema, name)
