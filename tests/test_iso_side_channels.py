"""Issue 12, family 7: side channels that reveal other tenants' counts or values.

globex has 3000 rows, acme 2 (iso_sites.SCHEMA, analysed). A tenant must learn nothing of globex's
volume or activity: not from EXPLAIN, pg_class's statistics, size functions, sequence state or
transaction counters, while psql's \\d and driver metadata keep working. Through the real proxy in
both pool modes, with RLS and without.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tenantgate.config import ConfigError, load_config
from tenantgate.proxy.sandbox.pgcluster import find_pg_bin
from tenantgate.rewriter import Policy, Refused
from tenantgate.rewriter.sidechannels import PG_CLASS_COLUMNS, PG_CLASS_MASKS
from tenantgate.rewriter.verifier import verify

from .harness import ProxyProcess, launch
from .iso_sites import POOLS, SCOPING, Site, iso_backends, refused, site

__all__ = ["iso_backends", "site"]  # fixtures

PROTOCOLS = pytest.mark.parametrize("simple", [True, False], ids=["simple", "extended"])
GLOBEX_ROWS = 3000


# ------------------------------------------------------------------------------------ EXPLAIN

EXPLAINS = [
    "EXPLAIN SELECT * FROM orders",
    "explain (costs on) SELECT count(*) FROM orders",
    "EXPLAIN VERBOSE SELECT id FROM orders WHERE id > 1",
    "EXPLAIN (FORMAT json) SELECT * FROM orders",
    "EXPLAIN ANALYZE SELECT * FROM orders",
    "EXPLAIN (ANALYZE) SELECT * FROM orders",
    "EXPLAIN (ANALYZE true, TIMING off) SELECT * FROM orders",
    "EXPLAIN (analyze 1, costs off, summary off) SELECT * FROM orders",
    "EXPLAIN ANALYZE UPDATE orders SET note = note",
    "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM orders WHERE id < 0",
]


@PROTOCOLS
@pytest.mark.parametrize("sql", EXPLAINS)
def test_explain_is_refused_by_default(site: Site, sql: str, simple: bool) -> None:
    with site.connect(simple=simple) as conn:
        err = refused(conn, sql)
        assert "EXPLAIN" in str(err)


@pytest.fixture(scope="module", params=sorted(POOLS))
def explaining(request: pytest.FixtureRequest, iso_backends: Any,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """A proxy whose operator opted in: [scoping] allow_explain = true."""
    proxy = launch(tmp_path_factory.mktemp("explain"), iso_backends[False],
                   scoping=SCOPING + "allow_explain = true\n", backend_extra=POOLS[request.param])
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("sql", [s for s in EXPLAINS if "ANALYZE" not in s.upper()] + [
    "EXPLAIN (ANALYZE off) SELECT * FROM orders", "EXPLAIN (ANALYZE false, COSTS off) SELECT * FROM orders"])
def test_plain_explain_behind_the_switch(explaining: ProxyProcess, sql: str) -> None:
    with psycopg.connect(explaining.dsn("alice"), autocommit=True) as conn:
        plan = json.dumps(conn.execute(sql).fetchall())
        assert "acme" in plan  # the tenant filter is in the plan


@pytest.mark.parametrize("sql", [s for s in EXPLAINS if "ANALYZE" in s.upper()])
def test_explain_analyze_never(explaining: ProxyProcess, sql: str) -> None:
    with psycopg.connect(explaining.dsn("alice"), autocommit=True) as conn:
        err = refused(conn, sql)
        assert "ANALYZE" in str(err)


@pytest.mark.parametrize(("value", "ok"), [("true", True), ("false", True), ('"yes"', False), ("1", False)])
def test_allow_explain_is_a_validated_switch(tmp_path: Path, value: str, ok: bool) -> None:
    path = tmp_path / "tenantgate.toml"
    path.write_text(f'[backend]\nuser = "app"\n\n[tenants.acme]\n\n[users.alice]\ntenant = "acme"\n'
                    f'password = "pw"\n\n[scoping]\nallow_explain = {value}\n')
    if ok:
        assert load_config(path).scoping.allow_explain is (value == "true")
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert (problem.key, str(path) in str(info.value)) == ("scoping.allow_explain", True)
    assert "expected a boolean" in problem.message


# ----------------------------------------------------------------------------------- pg_class

def test_masked_pg_class_has_the_servers_columns(site: Site) -> None:
    with psycopg.connect(site.backend.direct_dsn()) as direct:
        columns = [r[0] for r in direct.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'pg_catalog.pg_class'::regclass AND attnum > 0 "
            "ORDER BY attnum").fetchall()]
    assert tuple(columns) == PG_CLASS_COLUMNS
    with site.connect() as conn:  # the same columns in the same order, the same types, through the proxy
        cur = conn.execute("SELECT * FROM pg_class WHERE relname = 'orders'")
        assert tuple(c.name for c in cur.description or ()) == PG_CLASS_COLUMNS
        direct_types = psycopg.connect(site.backend.direct_dsn()).execute(
            "SELECT * FROM pg_class WHERE relname = 'orders'").description or ()
        assert [c.type_code for c in cur.description or ()] == [c.type_code for c in direct_types]


# (query, its answer when every table reads as never analysed): filters, joins and orderings on the
# hidden statistics must behave as on -1 / 0, not only hide the numbers.
STATISTICS = [
    ("SELECT reltuples, relpages, relallvisible FROM pg_class WHERE relname = 'orders'", [(-1.0, 0, 0)]),
    ("SELECT c.reltuples, c.relpages FROM pg_catalog.pg_class c WHERE c.relname = 'orders'", [(-1.0, 0)]),
    ("SELECT (c).reltuples FROM pg_class c WHERE relname = 'orders'", [(-1.0,)]),
    ("WITH x AS (SELECT * FROM pg_catalog.pg_class) SELECT reltuples, relpages FROM x WHERE relname = 'orders'",
     [(-1.0, 0)]),
    ("SELECT (SELECT reltuples FROM pg_class WHERE relname = 'orders')", [(-1.0,)]),
    ("SELECT relname FROM pg_class WHERE relname = 'orders' AND reltuples > 1000", []),
    ("SELECT relname FROM pg_class WHERE relname IN ('orders', 'pg_class') ORDER BY relpages DESC, relname",
     [("orders",), ("pg_class",)]),
    ("SELECT t.k, t.j FROM pg_class AS t(a, b, c, d, e, f, g, h, i, j, k, l) WHERE b = 'orders'", [(-1.0, 0)]),
    ("SELECT relname FROM pg_class NATURAL JOIN (SELECT 'orders'::name AS relname, "
     "generate_series(1, 5000)::real AS reltuples) s", []),
    ("SELECT relname FROM pg_class JOIN (SELECT generate_series(1, 5000)::real AS reltuples) s USING (reltuples) "
     "WHERE relname = 'orders'", []),
    ("SELECT x.relpages FROM (SELECT * FROM pg_class) x WHERE x.relname = 'orders'", [(0,)]),
    ("VALUES ((SELECT reltuples::int FROM pg_class WHERE relname = 'orders'))", [(-1,)]),
    ("SELECT relfrozenxid::text, relminmxid::text FROM pg_class WHERE relname = 'orders'", [("0", "0")]),
    ("SELECT count(*) FROM pg_class WHERE relname = 'orders' AND relfrozenxid::text::bigint > 0", [(0,)]),
    ("SELECT c.relname, c.reltuples FROM pg_class c JOIN orders o ON o.id = 1 WHERE c.relname = 'orders'",
     [("orders", -1.0)]),
    ("SELECT count(*) FROM pg_class c, orders o WHERE c.relname = 'orders'", [(2,)]),  # unmasked: no column read
]
WHOLE_ROWS = [
    "SELECT * FROM pg_class WHERE relname = 'orders'",
    "SELECT c.* FROM pg_class AS c WHERE relname = 'orders'",
    "SELECT c FROM pg_class c WHERE relname = 'orders'",
    "SELECT row_to_json(c) FROM pg_catalog.pg_class c WHERE c.relname = 'orders'",
    "SELECT to_jsonb(pg_class) FROM pg_class WHERE relname = 'orders'",
    "TABLE pg_class",
    "SELECT c.* FROM pg_class c JOIN orders o ON o.id = 1 WHERE c.relname = 'orders'",
]


@PROTOCOLS
@pytest.mark.parametrize(("sql", "expected"), STATISTICS)
def test_pg_class_statistics_behave_as_never_analysed(site: Site, sql: str, expected: list[Any],
                                                      simple: bool) -> None:
    with site.connect(simple=simple) as conn:
        assert conn.execute(sql).fetchall() == expected


@PROTOCOLS
@pytest.mark.parametrize("sql", WHOLE_ROWS)
def test_whole_rows_of_pg_class_hide_the_statistics(site: Site, sql: str, simple: bool) -> None:
    with site.connect(simple=simple) as conn:
        with psycopg.connect(site.backend.direct_dsn()) as direct:
            truth = direct.execute("SELECT reltuples::int, relpages FROM pg_class WHERE relname = 'orders'").fetchone()
        assert truth is not None and truth[0] == GLOBEX_ROWS + 2 and truth[1] > 1
        rows = conn.execute(sql).fetchall()
        text = json.dumps(rows, default=str)
        assert "orders" in text and str(GLOBEX_ROWS + 2) not in text
        if sql.startswith(("SELECT *", "SELECT c.*")):
            row = next(r for r in rows if "orders" in r)
            masked = {name: row[PG_CLASS_COLUMNS.index(name)] for name in ("reltuples", "relpages", "relallvisible")}
            assert masked == {"reltuples": -1.0, "relpages": 0, "relallvisible": 0}


def test_pg_class_statistics_read_as_never_analysed(site: Site) -> None:
    with site.connect() as conn:
        assert conn.execute("SELECT reltuples, relpages, relallvisible, relfrozenxid::text, relminmxid::text "
                            "FROM pg_class WHERE relname = 'orders'").fetchone() == (-1.0, 0, 0, "0", "0")
    assert set(PG_CLASS_MASKS) == {"reltuples", "relpages", "relallvisible", "relfrozenxid", "relminmxid"}


def test_copy_of_pg_class_is_masked(site: Site) -> None:
    with site.connect() as conn:
        with conn.cursor().copy("COPY (SELECT relname, reltuples FROM pg_class WHERE relname = 'orders') "
                                "TO STDOUT") as copy:
            data = b"".join(bytes(b) for b in copy)
        assert data == b"orders\t-1\n"
        with conn.cursor().copy("COPY pg_class TO STDOUT") as copy:
            data = b"".join(bytes(b) for b in copy)
        assert b"\torders\t" in data and b"\t3000\t" not in data and b"\t3002\t" not in data


def _psql(site: Site, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_pg_bin("psql"), site.proxy.dsn("alice"), "-X", "-v", "ON_ERROR_STOP=1",
                           "-c", command], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("command", "expected"), [
    ("\\d orders", "tenant_id"),
    ("\\d+ orders", "Storage"),
    ("\\dt", "orders"),
    ("\\d", "orders"),
    ("\\di", "orders_pkey"),
    ("\\dn", "public"),
    ("\\df lower", "lower"),
    ("\\l", "Name"),
    ("\\dt+", "orders"),  # sizes read as NULL
    ("\\di+ orders_pkey", "orders_pkey"),
    ("\\l+", "Name"),
])
def test_psql_introspection_keeps_working(site: Site, command: str, expected: str) -> None:
    out = _psql(site, command)
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout


def test_driver_metadata_keeps_working(site: Site) -> None:
    """The catalog reads of asyncpg/psycopg/JDBC/SQLAlchemy style metadata: pg_class with the others."""
    with site.connect() as conn:
        tables = conn.execute(
            "SELECT c.relname, n.nspname, c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v') "
            "ORDER BY 1").fetchall()
        assert ("orders", "public", "r") in tables
        columns = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid WHERE c.relname = 'orders' AND a.attnum > 0 "
            "AND NOT a.attisdropped ORDER BY a.attnum").fetchall()
        assert columns[:2] == [("tenant_id", "text", True), ("id", "integer", True)]
        index = conn.execute(
            "SELECT i.relname, ix.indisprimary FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid "
            "JOIN pg_class t ON t.oid = ix.indrelid WHERE t.relname = 'orders'").fetchall()
        assert index == [("orders_pkey", True)]
        assert conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'orders' "
                            "ORDER BY ordinal_position").fetchall() == [("tenant_id",), ("id",), ("note",)]


# ------------------------------------------------------------ sizes, sequences, transaction counters

SIZES = [
    "SELECT pg_relation_size('orders')",
    "SELECT pg_relation_size('orders', 'main')",
    "SELECT pg_catalog.pg_table_size('orders'::regclass)",
    "SELECT pg_total_relation_size('public.orders')",
    "SELECT pg_indexes_size('orders')",
    "SELECT pg_size_pretty(pg_relation_size('orders_pkey'))",
    "SELECT pg_database_size(current_database())",
    "SELECT pg_catalog.pg_database_size('postgres')",
    "SELECT pg_tablespace_size('pg_default')",
    "SELECT max(pg_total_relation_size(oid)) FROM pg_class",
    "WITH s AS (SELECT pg_table_size(c.oid) AS n FROM pg_class c WHERE relname = 'orders') SELECT n FROM s",
    "SELECT (SELECT pg_indexes_size(oid) FROM pg_class WHERE relname = 'orders')",
]


@PROTOCOLS
@pytest.mark.parametrize("sql", SIZES)
def test_sizes_read_as_null(site: Site, sql: str, simple: bool) -> None:
    with site.connect(simple=simple) as conn:
        assert conn.execute(sql).fetchall() == [(None,)]


@pytest.mark.parametrize("sql", [
    "SELECT relname FROM pg_class WHERE pg_relation_size(oid) > 100000",
    "SELECT 1 FROM orders WHERE pg_total_relation_size('orders') > 0",
])
def test_filters_on_sizes_match_nothing(site: Site, sql: str) -> None:
    with site.connect() as conn:
        assert conn.execute(sql).fetchall() == []


VOLUME_FUNCTIONS = [
    "SELECT pg_relation_filenode('orders')",
    "SELECT pg_relation_filepath('orders')",
    "SELECT * FROM currtid2('orders', '(0,6)')",  # red team: another tenant's update chain, page count
    "SELECT currtid2('public.orders'::text, '(1,1)'::tid)",
    "SELECT pg_catalog.currtid2('orders', ctid) FROM orders",
    "SELECT * FROM orders o WHERE EXISTS (SELECT FROM pg_catalog.currtid2('orders', '(5,1)'))",
    "SELECT * FROM pg_show_replication_origin_status()",
    "SELECT pg_sequence_last_value('shared_seq')",
    "SELECT * FROM pg_sequences",
    "SELECT last_value FROM pg_catalog.pg_sequences WHERE sequencename = 'shared_seq'",
    "SELECT lastval()",
    "SELECT currval('shared_seq')",
    "SELECT txid_current()",
    "SELECT txid_current_snapshot()",
    "SELECT txid_snapshot_xmax(txid_current_snapshot())",
    "SELECT pg_current_xact_id()",
    "SELECT pg_current_xact_id_if_assigned()",
    "SELECT pg_current_snapshot()",
    "SELECT pg_snapshot_xmin(pg_current_snapshot())",
    "SELECT pg_xact_status('100'::xid8)",
    "SELECT pg_last_committed_xact()",
    "SELECT pg_xact_commit_timestamp('100'::xid)",
    "SELECT pg_visible_in_snapshot('1'::xid8, pg_current_snapshot())",
    "SELECT mxid_age('1'::xid)",
    "SELECT pg_current_wal_lsn()",
    "SELECT pg_catalog.pg_current_wal_insert_lsn()",
    "SELECT setseed(0.5)",
    "SELECT id FROM orders WHERE id < (SELECT txid_current())",
]


@PROTOCOLS
@pytest.mark.parametrize("sql", VOLUME_FUNCTIONS)
def test_volume_and_activity_functions_are_refused(site: Site, sql: str, simple: bool) -> None:
    with site.connect(simple=simple) as conn:
        refused(conn, sql)


@pytest.mark.parametrize("sql", [
    "SELECT age(xmin) FROM orders",
    "SELECT age('1000'::xid)",
    "SELECT age(x) FROM (SELECT xmin AS x FROM orders) s",
])
def test_age_of_a_transaction_id_does_not_run(site: Site, sql: str) -> None:
    """age() of one argument is its timestamp form only: an xid fails in the backend (42846)."""
    with site.connect() as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        # 42703: xmin hidden by the scoping wrapper (engineer R1 brings it back; then 42846)
        assert info.value.sqlstate in ("42846", "42501", "42703"), str(info.value)
        assert conn.execute("SELECT age(timestamp '2000-01-01') > interval '1 year', "
                            "age(now(), now() - interval '1 day')").fetchone() == (True, timedelta(days=1))


def test_shared_sequences_draw_but_never_show_their_state(site: Site) -> None:
    """nextval() keeps working (ORMs draw ids explicitly); its value's gaps show other tenants'
    inserts (a known remaining channel, README threat model). Reading the state is refused."""
    with site.connect() as conn:
        row = conn.execute("SELECT nextval('shared_seq')").fetchone()
        assert row is not None and row[0] > 77
        refused(conn, "SELECT last_value FROM shared_seq")  # a relation nobody listed in [scoping]
        refused(conn, "SELECT currval('shared_seq')")  # on a pooled backend: the previous session's value


@pytest.mark.parametrize("sql", [
    "SELECT pg_advisory_xact_lock(42)",
    "SELECT pg_advisory_lock(hashtextextended('6:globex:1:' || '42', 0))",
    "SELECT reltuples FROM pg_class",
    "SELECT c.* FROM pg_catalog.pg_class c",
    "SELECT pg_table_size('orders')",
    "SELECT age(xmin) FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'acme') AS orders",
    "EXPLAIN ANALYZE SELECT 1",
    "EXPLAIN SELECT 1",
    "EXECUTE tg_0123",
    "DEALLOCATE TG_0123",
    "EXPLAIN EXECUTE tg_0123",
    "SELECT set_config('search_path', 'pg_temp', false)",
    "SET standard_conforming_strings = off",
    "SET LOCAL client_encoding = 'SJIS'",
])
def test_the_verifier_refuses_what_the_scoper_rewrites_or_refuses(sql: str) -> None:
    """The independent check on the output: a scoper that forgot a rewrite fails verification."""
    with pytest.raises(Refused) as info:
        verify(sql, Policy(scoped={("public", "orders"): "tenant_id"}), "acme", frozenset())
    assert info.value.reason == "verification_failed"
