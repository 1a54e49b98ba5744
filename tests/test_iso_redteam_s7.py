"""Red-team pass (session 7): the planner evaluates a tenant's conditions on other tenants' rows.

PostgreSQL orders the conditions of a scan by their estimated cost, not by their place in the
query, and pulls derived tables and CTEs up into the outer query. Without RLS (whose policies run
first as security quals) a condition cheaper than the proxy's ``tenant_id = 'acme'`` -- a CASE
over ``= ANY('{..}')`` or ``IS NULL`` whose branch raises, or a cast in a derived table's output
that an outer condition pushes down -- runs on globex's rows before the tenant filter does. Its
error (or its absence) answers a question about globex's data, and some errors echo the value
("invalid input syntax for type integer: "GLOBEX-7"").

Every case below must give acme's own answer (the same as on a database holding only acme's
rows), through the real proxy in session and transaction pooling, with RLS and without.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from .harness import Backend, ProxyProcess, launch
from .iso_sites import POOLS, install_rls, iso_backends

__all__ = ["iso_backends"]  # fixture

# ledger has no index that starts with the tenant column, so the planner scans it sequentially and
# orders the scan's conditions by cost. acme's notes are digits; globex's are not, or NULL.
SCHEMA = """
CREATE TABLE ledger (tenant_id text NOT NULL, id int NOT NULL, note text, flag boolean);
CREATE TABLE countries (code text PRIMARY KEY, name text);
INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France');
INSERT INTO ledger VALUES ('acme', 1, '1', false), ('acme', 2, '2', false);
INSERT INTO ledger SELECT 'globex', g, CASE WHEN g % 2 = 0 THEN 'GLOBEX-' || g END, true
  FROM generate_series(1, 400) g;
ANALYZE ledger;
"""
SCOPING = ('[scoping]\ncolumn = "tenant_id"\ntables = ["ledger"]\nreference = ["countries"]\n')

# A branch that raises only when it is reached: an uncorrelated scalar subquery with two rows is an
# InitPlan (no per-row cost), evaluated the first time its CASE branch needs it.
BOOM = "(SELECT true UNION ALL SELECT true)"
PROBES = {  # a condition true for some of globex's rows, never for acme's
    "any": "note = ANY('{GLOBEX-8}')",
    "is_null": "note IS NULL",
    "bool": "flag",
    "like_any": "note LIKE ANY('{GLOBEX%}')",
}


def reads(probe: str) -> dict[str, tuple[str, list[tuple[Any, ...]]]]:
    """Reading statements and acme's answer."""
    cond = f"CASE WHEN {probe} THEN {BOOM} ELSE true END"
    lcond = cond.replace("note", "l.note").replace("flag", "l.flag")
    jcond = cond.replace("note", "j.note").replace("flag", "j.flag")  # behind a join's alias
    return {
        "where": (f"SELECT count(*) FROM ledger WHERE {cond}", [(2,)]),
        "where_and": (f"SELECT id FROM ledger WHERE id > 0 AND {cond} ORDER BY id", [(1,), (2,)]),
        "where_or": (f"SELECT count(*) FROM ledger WHERE id < 0 OR {cond}", [(2,)]),
        "inner_join_on": (f"SELECT count(*) FROM countries c JOIN ledger l ON {lcond}", [(4,)]),
        "left_join_on": (f"SELECT count(*) FROM countries c LEFT JOIN ledger l ON {lcond}", [(4,)]),
        "left_join_where": (f"SELECT count(*) FROM countries c LEFT JOIN ledger l ON l.id = 1 WHERE {lcond}",
                            [(2,)]),
        "self_join": (f"SELECT count(*) FROM ledger a JOIN ledger l ON a.id = 1 AND {lcond}", [(2,)]),
        "derived": (f"SELECT count(*) FROM (SELECT * FROM ledger) l WHERE {lcond}", [(2,)]),
        "derived_nested": (f"SELECT count(*) FROM (SELECT * FROM (SELECT note, flag FROM ledger) x) l WHERE {lcond}",
                           [(2,)]),
        "cte": (f"WITH l AS (SELECT * FROM ledger) SELECT count(*) FROM l WHERE {lcond}", [(2,)]),
        "union": (f"SELECT count(*) FROM (SELECT note, flag FROM ledger UNION ALL SELECT note, flag FROM ledger) l "
                  f"WHERE {lcond}", [(4,)]),
        "lateral": (f"SELECT count(*) FROM countries c, LATERAL (SELECT * FROM ledger) l WHERE {lcond}", [(4,)]),
        "exists": (f"SELECT count(*) FROM countries c WHERE EXISTS (SELECT 1 FROM ledger l WHERE {lcond})", [(2,)]),
        "exists_correlated": (f"SELECT count(*) FROM ledger l WHERE EXISTS (SELECT 1 WHERE {lcond})", [(2,)]),
        "in_correlated": (f"SELECT count(*) FROM ledger l WHERE true IN (SELECT {lcond})", [(2,)]),
        "in_subquery": (f"SELECT count(*) FROM countries c WHERE 1 IN (SELECT id FROM ledger l WHERE {lcond})",
                        [(2,)]),
        "nested_join_on": (f"SELECT count(*) FROM (countries c LEFT JOIN ledger l ON l.id = 1) "
                           f"JOIN countries d ON {lcond}", [(4,)]),
        "alias_columns": (f"SELECT count(*) FROM ledger AS l(t, i, note, flag) WHERE {lcond}", [(2,)]),
        "join_alias_inner": (f"SELECT count(*) FROM (countries c JOIN ledger l ON true) AS j WHERE {jcond}", [(4,)]),
        "join_alias_left": (f"SELECT count(*) FROM (countries c LEFT JOIN ledger l ON true) AS j WHERE {jcond}",
                            [(4,)]),
        "full_join": (f"SELECT count(*) FROM ledger a FULL JOIN ledger l ON a.id = l.id WHERE {lcond}", [(2,)]),
        "tablesample": (f"SELECT count(*) FROM ledger TABLESAMPLE SYSTEM (100) WHERE {cond}", [(2,)]),
        "in_testexpr": (f"SELECT count(*) FROM ledger WHERE ({cond}) IN (SELECT true)", [(2,)]),
        "not_in_testexpr": (f"SELECT count(*) FROM ledger WHERE ({cond}) NOT IN (SELECT false)", [(2,)]),
        "having": (f"SELECT note, flag FROM ledger GROUP BY note, flag HAVING {cond} ORDER BY 1", [("1", False),
                                                                                                  ("2", False)]),
    }


# The derived table's output is a cast; the outer condition is plain, but pulled up it runs the
# cast on globex's notes (and the error would quote one).
CASTS = {
    "derived_cast": ("SELECT n FROM (SELECT note::int AS n FROM ledger) s WHERE s.n = 1", [(1,)]),
    "cte_cast": ("WITH s AS (SELECT CAST(note AS int) AS n FROM ledger) SELECT n FROM s WHERE n = 1", [(1,)]),
    "derived_cast_join": ("SELECT s.n FROM countries c JOIN (SELECT note::int AS n FROM ledger) s ON s.n = 1 "
                          "WHERE c.code = 'de'", [(1,)]),
    "union_cast": ("SELECT n FROM (SELECT note::int AS n FROM ledger UNION ALL SELECT 5) s WHERE n = 1", [(1,)]),
    "left_join_strict": ("SELECT count(*) FROM countries c LEFT JOIN ledger l ON l.id = 1 "
                         "WHERE (10 / (l.id - 400)) IS NOT NULL", [(2,)]),
    "where_cast": ("SELECT id FROM ledger WHERE note::int = 1", [(1,)]),
    "lateral_cast": ("SELECT x.n FROM countries c, LATERAL (SELECT note::int AS n FROM ledger) x "
                     "WHERE x.n = 2 AND c.code = 'fr'", [(2,)]),
}


def writes(probe: str) -> dict[str, str]:
    """Writing statements that must change none of acme's rows (ELSE false) and raise nothing."""
    cond = f"CASE WHEN {probe} THEN {BOOM} ELSE false END"
    lcond = cond.replace("note", "l.note").replace("flag", "l.flag")
    return {
        "update": f"UPDATE ledger SET note = note WHERE {cond}",
        "update_from": f"UPDATE ledger l SET note = l.note FROM countries c WHERE c.code = 'de' AND {lcond}",
        "delete": f"DELETE FROM ledger WHERE {cond}",
        "delete_using": f"DELETE FROM ledger l USING countries c WHERE c.code = 'de' AND {lcond}",
        "merge": f"MERGE INTO ledger l USING countries c ON {lcond} WHEN MATCHED THEN DO NOTHING",
        "merge_source": f"MERGE INTO ledger t USING (SELECT * FROM ledger) l ON t.id = l.id AND {lcond} "
                        "WHEN MATCHED THEN DO NOTHING",
    }


@dataclass
class Site:
    proxy: ProxyProcess
    pool: str
    rls: bool

    def connect(self, user: str = "alice", *, simple: bool = False) -> psycopg.Connection[Any]:
        factory = psycopg.ClientCursor if simple else psycopg.Cursor
        return psycopg.connect(self.proxy.dsn(user), autocommit=True, cursor_factory=factory)


@pytest.fixture(scope="module", params=[(pool, rls) for pool in sorted(POOLS) for rls in (False, True)],
                ids=lambda p: f"{p[0]}-{'rls' if p[1] else 'norls'}")
def site(request: pytest.FixtureRequest, iso_backends: dict[bool, Backend],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    pool, rls = request.param
    proxy = launch(tmp_path_factory.mktemp(f"redteam-{pool}"), iso_backends[rls], scoping=SCOPING,
                   backend_extra=POOLS[pool])
    if rls:
        install_rls(proxy, iso_backends[rls])
    yield Site(proxy, pool, rls)
    proxy.stop()


def _answer(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]] | str:
    try:
        cur = conn.execute(sql)
    except psycopg.Error as err:  # the assertion shows what the error said (a globex value?)
        return f"{err.sqlstate}: {err}"
    return cur.fetchall() if cur.description else []


PROTOCOLS = pytest.mark.parametrize("simple", [True, False], ids=["simple", "extended"])


@PROTOCOLS
@pytest.mark.parametrize("probe", sorted(PROBES))
@pytest.mark.parametrize("shape", sorted(reads("x")))
def test_condition_never_runs_on_other_tenants_rows(site: Site, shape: str, probe: str, simple: bool) -> None:
    sql, expected = reads(PROBES[probe])[shape]
    with site.connect(simple=simple) as conn:
        assert _answer(conn, sql) == expected, sql
        assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (2,)


@PROTOCOLS
@pytest.mark.parametrize("shape", sorted(CASTS))
def test_pulled_up_expression_never_runs_on_other_tenants_rows(site: Site, shape: str, simple: bool) -> None:
    sql, expected = CASTS[shape]
    with site.connect(simple=simple) as conn:
        assert _answer(conn, sql) == expected, sql


@PROTOCOLS
@pytest.mark.parametrize("probe", sorted(PROBES))
@pytest.mark.parametrize("shape", sorted(writes("x")))
def test_write_condition_never_runs_on_other_tenants_rows(site: Site, shape: str, probe: str, simple: bool) -> None:
    sql = writes(PROBES[probe])[shape]
    with site.connect(simple=simple) as conn:
        assert _answer(conn, sql) == [], sql
        assert conn.execute("SELECT id, note FROM ledger ORDER BY id").fetchall() == [(1, "1"), (2, "2")]
