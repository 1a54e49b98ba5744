"""Issue 12, families 3/5/6 (rewriter half): which statements and settings a tenant may use.

Through the real proxy against real PostgreSQL, in session and transaction pooling, with RLS and
without; simple and extended protocol where the statement allows both. Every refusal must be a
42501 that leaves the session usable.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tenantgate.proxy.pool import backend_name
from tenantgate.rewriter import Policy, Refused, Rewriter

from .iso_sites import Site, iso_backends, refused, site

__all__ = ["iso_backends", "site"]  # fixtures

PROTOCOLS = pytest.mark.parametrize("simple", [True, False], ids=["simple", "extended"])


# ------------------------------------------------------------- proxy-owned statement names (tg_)

RESERVED = [
    "EXECUTE tg_0123abcd",
    "execute TG_0123abcd(1, 'x')",
    'EXECUTE "tg_0123abcd"',
    'EXECUTE "TG_Upper"',
    "DEALLOCATE tg_0123abcd",
    "DEALLOCATE PREPARE Tg_0123abcd",
    "PREPARE tg_mine AS SELECT 1",
    "PREPARE tg_mine(int) AS SELECT id FROM orders WHERE id = $1",
    "FETCH ALL FROM tg_portal",
    "MOVE NEXT IN tg_portal",
    "CLOSE tg_portal",
]


@PROTOCOLS
@pytest.mark.parametrize("sql", RESERVED)
def test_sql_never_names_a_proxy_statement(site: Site, sql: str, simple: bool) -> None:
    with site.connect(simple=simple) as conn:
        err = refused(conn, sql)
        assert "tg_" in str(err)


def test_sql_cannot_reach_a_protocol_prepared_statement(site: Site) -> None:
    """The statement a client prepared by Parse exists on the backend under its tg_ name (transaction
    pooling): EXECUTE, EXPLAIN EXECUTE and DEALLOCATE of that name never reach it."""
    query = "SELECT id, note FROM orders WHERE id = $1"
    with site.connect("bob") as bob, site.connect() as alice:
        for _ in range(3):  # psycopg prepares server-side from the second run on; prepare=True at once
            bob.execute(query.replace("$1", "%s"), [1], prepare=True)
        rewritten = Rewriter(Policy(scoped={("public", "orders"): "tenant_id"})).plan(query, "globex",
                                                                                       extended=True).sql
        for oid in (0, 20, 21, 23):  # whatever type psycopg declared for the integer
            name = backend_name(rewritten, (oid,))
            for sql in (f"EXECUTE {name}(1)", f"EXECUTE {name.upper()}(2)", f"EXPLAIN EXECUTE {name}(1)",
                        f"DEALLOCATE {name}", "SELECT 1; EXECUTE " + name + "(1)"):
                with psycopg.ClientCursor(alice) as cur:
                    with pytest.raises(psycopg.Error) as info:
                        cur.execute(sql)
                    assert info.value.sqlstate == "42501", (sql, str(info.value))
        assert bob.execute(query.replace("$1", "%s"), [1], prepare=True).fetchall() == [(1, "GLOBEX")]


@pytest.mark.parametrize("sql", [
    "SELECT * FROM pg_prepared_statements",
    "SELECT name, statement FROM pg_catalog.pg_prepared_statements",
    "SELECT * FROM pg_cursors",
    "SELECT count(*) FROM pg_catalog.pg_cursors",
    "WITH p AS (SELECT statement FROM pg_prepared_statements) SELECT * FROM p",
    "SELECT (SELECT count(*) FROM pg_prepared_statements)",
    "SELECT id FROM orders WHERE note IN (SELECT statement FROM pg_prepared_statements)",
    "VALUES ((SELECT name FROM pg_cursors LIMIT 1))",
    "SELECT * FROM pg_prepared_statement()",
    "SELECT pg_catalog.pg_prepared_statement()",
    "SELECT * FROM pg_cursor()",
    "SELECT name FROM pg_catalog.pg_cursor() c",
])
@PROTOCOLS
def test_catalogs_of_other_sessions_statements_are_denied(site: Site, sql: str, simple: bool) -> None:
    with site.connect(simple=simple) as conn:
        refused(conn, sql)


def test_sql_prepare_keeps_its_own_names_working(site: Site) -> None:
    with site.connect(simple=True) as conn:
        conn.execute("PREPARE mine(int) AS SELECT note FROM orders WHERE id = $1")
        assert conn.execute("EXECUTE mine(1)").fetchall() == [("a1",)]
        assert conn.execute("EXECUTE mine(5)").fetchall() == []  # globex has an order 5
        conn.execute("DEALLOCATE mine")
        conn.execute("DEALLOCATE ALL")


@pytest.mark.parametrize("sql", [
    "PREPARE p(text) AS INSERT INTO orders (tenant_id, id) VALUES ($1, 9)",
    "PREPARE p(text, int) AS INSERT INTO orders (id, tenant_id) VALUES ($2, $1)",
    "PREPARE p(text) AS INSERT INTO orders (tenant_id, id) SELECT $1, 9",
])
def test_sql_prepare_never_binds_the_tenant_column(site: Site, sql: str) -> None:
    with site.connect(simple=True) as conn:
        refused(conn, sql)


def test_sql_prepare_never_binds_an_encrypted_column() -> None:
    """EXECUTE's values would reach the column unencrypted: refused wherever the $n sits."""
    policy = Policy(scoped={("public", "orders"): "tenant_id"},
                    encrypted={("public", "orders", "note"): ("randomized", "text")})
    rw = Rewriter(policy)
    for sql in ("PREPARE p(text) AS INSERT INTO orders (id, note) VALUES (1, $1)",
                "PREPARE p(text) AS UPDATE orders SET note = $1",
                "PREPARE p(text) AS SELECT id FROM orders WHERE note = $1",
                "PREPARE p AS WITH x AS (SELECT $1::text AS v) INSERT INTO orders (id, note) SELECT 1, v FROM x"):
        with pytest.raises(Refused):
            rw.plan(sql, "acme")


# ---------------------------------------------------------------------------------- settings

ACCEPTED_NO_OPS = [
    "SET standard_conforming_strings = on",  # Rails, on every connection
    "SET standard_conforming_strings TO 'on'",
    "SET SESSION standard_conforming_strings = true",
    "set standard_conforming_strings = 1",
    "SET standard_conforming_strings TO yes",
    "SELECT set_config('standard_conforming_strings', 'on', false)",
    "SET search_path = public",
    "SET search_path TO 'public'",
    'SET search_path TO "public"',
    "SET SCHEMA 'public'",
    "SELECT set_config('search_path', 'public', false)",
    "SELECT set_config('search_path', ' \"public\" ', false)",
    "SELECT set_config('search_path', 'PUBLIC', true)",
]


@PROTOCOLS
@pytest.mark.parametrize("sql", ACCEPTED_NO_OPS)
def test_setting_the_pinned_value_succeeds(site: Site, sql: str, simple: bool) -> None:
    with site.connect(simple=simple) as conn:
        conn.execute(sql)
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        assert conn.execute("SHOW search_path").fetchone() == ("public",)  # the proxy's own spelling
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)


CHANGES_REFUSED = [
    "SET standard_conforming_strings = off",
    "SET standard_conforming_strings TO false",
    "SET standard_conforming_strings = 0",
    "SET standard_conforming_strings TO DEFAULT",
    "RESET standard_conforming_strings",
    "SET LOCAL standard_conforming_strings = off",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT set_config('standard_conforming_strings', 'off', true)",
    "SELECT 1 FROM orders WHERE set_config('standard_conforming_strings', 'off', false) IS NOT NULL",
    "WITH x AS (SELECT set_config('Standard_Conforming_Strings', 'of' || 'f', false)) SELECT * FROM x",
    "SET backslash_quote = on",
    "SET escape_string_warning = off",
    "RESET backslash_quote",
    "SELECT set_config('backslash_quote', 'on', false)",
    "SELECT set_config('escape_string_warning', 'off', true)",
    "SET search_path = public, pg_temp",
    "SET search_path = pg_temp, public",
    "SET search_path TO \"$user\", public",
    "SET search_path TO globex",
    "SET SCHEMA 'pg_temp'",
    "RESET search_path",
    "SET search_path TO DEFAULT",
    "SET LOCAL search_path = pg_temp",
    "SELECT set_config('search_path', 'pg_temp, public', false)",
    "SELECT set_config('search_path', 'public' || ', pg_temp', false)",
    "SELECT (SELECT set_config('search_path', 'x', true))",
    "SET LOCAL client_encoding = 'SJIS'",
    "SELECT set_config('client_encoding', 'SJIS', true)",
    "SELECT set_config('client_encoding', 'SJ' || 'IS', false)",
    "SELECT set_config('client_encoding', 'SJIS', 1 = 1)",
]


@PROTOCOLS
@pytest.mark.parametrize("sql", CHANGES_REFUSED)
def test_settings_that_change_lexing_or_name_resolution_are_refused(site: Site, sql: str, simple: bool) -> None:
    with site.connect(simple=simple) as conn:
        refused(conn, sql)
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        assert conn.execute("SHOW search_path").fetchone() == ("public",)


@pytest.mark.parametrize(("sql", "params"), [
    ("SELECT set_config('client_encoding', %s, false)", ["SJIS"]),
    ("SELECT set_config('search_path', %s, false)", ["pg_catalog, public"]),
    ("SELECT set_config('standard_conforming_strings', %s, false)", ["off"]),
    ("SELECT set_config('backslash_quote', %s, false)", ["on"]),
])
def test_bound_values_for_lexer_settings_are_refused(site: Site, sql: str, params: list[str]) -> None:
    """A value known only at Bind time is checked there, by the literal form's rules (issue 20 item 7:
    they were refused whatever the value before); these change how the proxy lexes: refused."""
    with site.connect() as conn:
        refused(conn, sql, params)
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        assert conn.execute("SHOW search_path").fetchone() == ("public",)


@pytest.mark.parametrize(("sql", "params"), [
    ("SELECT set_config('search_path', %s, false)", ["public"]),
    ("SELECT set_config('standard_conforming_strings', %s, false)", ["on"]),
])
def test_bound_pinned_values_are_no_ops(site: Site, sql: str, params: list[str]) -> None:
    """The value the proxy pins anyway, bound: accepted like its literal form."""
    with site.connect() as conn:
        conn.execute(sql, params)
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        assert conn.execute("SHOW search_path").fetchone() == ("public",)


def test_set_config_of_an_allowed_setting_works(site: Site) -> None:
    with site.connect() as conn:
        assert conn.execute("SELECT set_config('application_name', 'mine', false)").fetchone() == ("mine",)
        assert conn.execute("SELECT set_config('lock_timeout', %s, false)", ["2s"]).fetchone() == ("2s",)
        conn.execute("SET SESSION timezone = 'UTC'")


# ---------------------------------------------------------------------- Plan.settings and pins

def _plan(sql: str, **kw: Any) -> Any:
    return Rewriter(Policy(scoped={("public", "orders"): "tenant_id"})).plan(sql, "acme", **kw)


@pytest.mark.parametrize(("sql", "settings", "pins"), [
    ("SET TimeZone = 'UTC'", (("timezone", "'UTC'"),), ()),
    ("SET SESSION timezone TO 'Europe/Berlin'", (("timezone", "'Europe/Berlin'"),), ()),
    ("SET TIME ZONE 'UTC'", (("timezone", "'UTC'"),), ()),
    ("SET TIME ZONE LOCAL", (("timezone", None),), ()),
    ("SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE", (), ("set",)),
    ("SET datestyle TO iso, dmy", (("datestyle", "'iso', 'dmy'"),), ()),
    ("SET extra_float_digits = 3", (("extra_float_digits", "3"),), ()),
    ("SET application_name = ''", (("application_name", "''"),), ()),
    ("SET statement_timeout TO DEFAULT", (("statement_timeout", None),), ()),
    ("RESET lock_timeout", (("lock_timeout", None),), ()),
    ("SET NAMES 'LATIN1'", (("client_encoding", "'LATIN1'"),), ()),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
     (("default_transaction_isolation", "'serializable'"), ("default_transaction_read_only", "'on'")), ()),
    ("SET LOCAL timezone = 'UTC'", (), ()),
    ("SET TRANSACTION READ ONLY", (), ()),
    ("SET transaction_isolation = 'serializable'", (), ()),
    ("SET standard_conforming_strings = on", (), ()),
    ("SET search_path = public", (), ()),
    ("RESET ALL", (), ()),
    ("SELECT set_config('TimeZone', 'UTC', false)", (("timezone", "'UTC'"),), ()),
    ("SELECT set_config('application_name', 'it''s', false)", (("application_name", "'it''s'"),), ()),
    ("SELECT id FROM orders WHERE set_config('datestyle', 'ISO', false) <> ''", (("datestyle", "'ISO'"),), ()),
    ("WITH x AS (SELECT set_config('lock_timeout', '1s', false)) SELECT * FROM x", (("lock_timeout", "'1s'"),), ()),
    ("SELECT (SELECT set_config('lock_timeout', '1s', 'false'::boolean))", (("lock_timeout", "'1s'"),), ()),
    ("VALUES (set_config('work_mem', '8MB', false))", (("work_mem", "'8MB'"),), ()),
    ("SELECT set_config('timezone', 'UTC', true)", (), ()),
    ("SELECT set_config('timezone', 'U' || 'TC', false)", (), ("set_config",)),
    ("SELECT set_config('timezone', 'UTC', now() IS NULL)", (), ("set_config",)),
    ("SELECT set_config('timezone', NULL, false)", (), ("set_config",)),
    ("SELECT set_config('timezone', 'UTC', false), set_config('timezone', 'GMT', false)",
     (("timezone", "'UTC'"), ("timezone", "'GMT'")), ("set_config",)),
    ("PREPARE p AS SELECT set_config('timezone', 'UTC', false)", (), ("set_config",)),
    ("SET timezone = 'UTC'; SELECT 1; RESET timezone", (("timezone", "'UTC'"), ("timezone", None)), ()),
    ("SELECT pg_advisory_lock(1)", (), ("advisory_lock",)),
    ("SELECT pg_advisory_unlock_all()", (), ("advisory_lock",)),
    ("SELECT pg_advisory_xact_lock(1)", (), ()),
])
def test_plan_settings_and_pins(sql: str, settings: tuple[Any, ...], pins: tuple[str, ...]) -> None:
    plan = _plan(sql)
    assert (plan.settings, plan.pins) == (settings, pins)


def test_settings_and_pins_survive_every_cache_path() -> None:
    rw = Rewriter(Policy(scoped={("public", "orders"): "tenant_id"}))
    for sql in ("SET timezone = 'UTC'", "SELECT set_config('timezone', 'UTC', false)",
                "SELECT set_config('timezone', $1, false)", "SELECT pg_advisory_lock(5)"):
        extended = "$1" in sql
        first = rw.plan(sql, "acme", extended=extended)
        again = rw.plan(sql, "acme", extended=extended)  # exact cache
        fields = (first.settings, first.pins, first.bound_settings)
        assert again.cached and (again.settings, again.pins, again.bound_settings) == fields != ((), (), ())
    rw.plan("SELECT pg_advisory_lock(5) FROM orders WHERE id = 1", "acme")
    templated = rw.plan("SELECT pg_advisory_lock(6) FROM orders WHERE id = 2", "acme")  # digest template
    assert templated.cached and templated.pins == ("advisory_lock",) and "6" in templated.sql
    other = rw.plan("SELECT set_config('timezone', 'GMT', false)", "acme")  # literals matter: no template
    assert other.settings == (("timezone", "'GMT'"),)
    encrypted = Rewriter(Policy(scoped={("public", "orders"): "tenant_id"},
                                encrypted={("public", "orders", "note"): ("deterministic", "text")}))
    for _ in range(2):  # sealed plans (literals encrypted afresh) keep the fields too
        sealed = encrypted.plan("SELECT pg_advisory_lock(1) FROM orders WHERE note = 'x'", "acme",
                                encrypt=lambda table, column, text: b"\x00")
        assert sealed.pins == ("advisory_lock",)


def test_deallocate_all_has_its_own_kind() -> None:
    assert _plan("DEALLOCATE ALL").kinds == ("deallocate_all",)
    assert _plan("DEALLOCATE PREPARE ALL; DEALLOCATE mine").kinds == ("deallocate_all", "deallocate")


# ----------------------------------------------------------------------------- advisory locks

def _try(conn: psycopg.Connection[Any], sql: str) -> bool:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return bool(row[0])


@pytest.mark.parametrize(("hold", "probe"), [
    ("SELECT pg_advisory_xact_lock(42)", "SELECT pg_try_advisory_xact_lock(42)"),
    ("SELECT pg_catalog.pg_advisory_xact_lock(42)", "SELECT pg_try_advisory_xact_lock_shared(42)"),
    ("SELECT pg_advisory_xact_lock(7, 8)", "SELECT pg_try_advisory_xact_lock(7, 8)"),
    ("SELECT 1 FROM orders WHERE pg_try_advisory_xact_lock(id)", "SELECT pg_try_advisory_xact_lock(1)"),
    ("WITH l AS (SELECT pg_advisory_xact_lock_shared(9)) SELECT * FROM l", "SELECT pg_try_advisory_xact_lock(9)"),
])
def test_transaction_advisory_locks_are_namespaced_per_tenant(site: Site, hold: str, probe: str) -> None:
    with site.connect(autocommit=False) as holder:
        holder.execute(hold)
        # the same tenant in another session waits for its own lock ...
        if site.pool == "session":  # (transaction pooling with one backend: it would wait for the backend)
            with site.connect() as twin:
                assert _try(twin, probe) is False
        # ... another tenant's same key is another lock (a session-pooled tenant has its own backend)
        if site.pool == "session":
            with site.connect("bob") as other:
                assert _try(other, probe) is True
        # the raw key on the backend itself is not taken either
        with psycopg.connect(site.backend.direct_dsn(), autocommit=True) as direct:
            assert _try(direct, probe) is True
        holder.rollback()


def test_one_and_two_key_forms_stay_apart() -> None:
    one = _plan("SELECT pg_advisory_xact_lock(4294967298)").sql  # (1 << 32) + 2: the same bits as (1, 2)
    two = _plan("SELECT pg_advisory_xact_lock(1, 2)").sql
    assert "'4:acme:1:'" in one and "'4:acme:2:'" in two
    with pytest.raises(Refused):
        _plan("SELECT pg_advisory_xact_lock(1, 2, 3)")
    with pytest.raises(Refused):
        _plan("SELECT pg_advisory_xact_lock(key => 1)")


def test_session_advisory_locks_are_namespaced_and_released(site: Site) -> None:
    if site.pool == "transaction":  # a session lock pins: one backend per client, this pool has one
        _session_lock_pins_and_dies_with_its_client(site)
        return
    with site.connect() as alice, site.connect("bob") as bob:
        assert _try(alice, "SELECT pg_try_advisory_lock(99)") is True
        assert _try(bob, "SELECT pg_try_advisory_lock(99)") is True  # bob's 99 is another lock
        with site.connect() as twin:
            assert _try(twin, "SELECT pg_try_advisory_lock(99)") is False
        assert _try(alice, "SELECT pg_advisory_unlock(99)") is True
        alice.execute("SELECT pg_advisory_unlock_all()")
        bob.execute("SELECT pg_advisory_unlock_all()")


def _session_lock_pins_and_dies_with_its_client(site: Site) -> None:
    """Transaction pooling: the lock pins alice's backend; when she leaves the backend is dropped
    (not handed on), so bob never finds her lock, and bob's own key 99 is another lock."""
    with site.connect() as alice:
        assert _try(alice, "SELECT pg_try_advisory_lock(99)") is True
        assert _try(alice, "SELECT pg_try_advisory_lock(99)") is True  # the same backend: re-entrant
    with site.connect("bob") as bob:
        assert _try(bob, "SELECT pg_try_advisory_lock(99)") is True
        with psycopg.connect(site.backend.direct_dsn(), autocommit=True) as direct:
            held = direct.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
            assert held is not None and held[0] == 1  # bob's alone: alice's went with her backend
        bob.execute("SELECT pg_advisory_unlock_all()")
