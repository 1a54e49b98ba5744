"""Issue 20 item 6: an error's position (field P) is PostgreSQL's own, for the text the client sent.

The same text goes directly to PostgreSQL and through the real proxy; severity, SQLSTATE, message
and position must be equal. Syntax errors are the proxy's own answer (it refuses what its parser
rejects), other errors come from the backend, which ran the proxy's rewritten text: its position
is mapped back. Both protocols, both pool modes, a trusted and a tenant user, single-byte and
multibyte client encodings, single and multi-statement simple Query texts.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import Backend, ProxyProcess, config_text, start_proxy

SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["orders"]\n'
SCHEMA = """
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
INSERT INTO orders VALUES ('acme', 1, 'acme one'), ('globex', 1, 'globex one');
"""
# A non-ASCII character each encoding can spell: positions count characters, not bytes.
CHARS = {"UTF8": "é", "LATIN1": "é", "EUC_JP": "日"}

# {c}: the encoding's character. Errors the proxy answers itself (syntax) and the backend's.
SYNTAX = [
    "SELEC 1",
    "SELECT 1 +",
    "SELECT '{c}', note FROM orders WHERE",
    "SELECT note FROM orders WHERE note = '{c}{c}' AND AND id = 1",
    "SELECT 'unterminated {c}",
    "  /* {c} */  SELECT id FROM orders WHERE id = 1 GROUP",
]
BACKEND = [
    "select  nosuch from orders",
    "SELECT o.id FROM orders o WHERE o.note <> '{c}' AND o.nosuch = 1",
    "select id from orders where note = e'{c}\\x41' and id = 'x1'::int",
    "SELECT id + 'x'::text FROM orders WHERE note = '{c}'",
    "SELECT count(*) FROM orders   GROUP BY nosuch",
    "SELECT id FROM orders WHERE id = 1 ORDER BY   '{c}' || nosuch",
    "PREPARE pos_{n} AS SELECT note FROM orders WHERE note = '{c}' AND  nosuch = $1",
    "UPDATE orders SET note = '{c}' WHERE id =  'one'::int",
]
MULTI = [
    "SELECT 1; SELEC 2",
    "SELECT '{c}'; SELECT note FROM orders WHERE id = 1; SELECT FROM FROM",
    "/* {c} */ SELECT 1;   select nosuch from orders",
    "SELECT note FROM orders WHERE note = '{c}';\n  SELECT id FROM orders o WHERE o.id = 'zz'::int",
]
# RLS changes nothing the client's text says; both ways the rewriter's own text is what runs.
MODES = [("session", False), ("transaction", False), ("transaction", True)]
PROTOCOLS = ["simple", "extended", "prepared"]


@pytest.fixture(scope="module", params=MODES, ids=[f"{m}-{'rls' if r else 'norls'}" for m, r in MODES])
def gate(request: pytest.FixtureRequest, pg: PgServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Backend]]:
    mode, rls = request.param
    name = f"errpos_{mode[:4]}_{'rls' if rls else 'plain'}"
    backend = Backend.create(pg, name)
    with psycopg.connect(backend.direct_dsn(), autocommit=True) as conn:
        conn.execute(SCHEMA)
    port = free_port()
    text = config_text(backend, port, scoping=SCOPING)
    if mode == "transaction":
        text = text.replace('sslmode = "prefer"', 'sslmode = "prefer"\npool_mode = "transaction"\npool_size = 8', 1)
    proxy = start_proxy(tmp_path_factory.mktemp(name), text, port)
    if rls:
        out = subprocess.run([sys.executable, "-m", "tenantgate.proxy.cli", "rls", "install", "--config",
                              str(proxy.config_path), "--dsn", backend.direct_dsn()],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    yield proxy, backend
    proxy.stop()


class Conns:
    """Connections kept open for the module (an error leaves an autocommit session usable); a SQL
    PREPARE pins its session in transaction pooling, hence a pool as large as the connections."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str], psycopg.Connection] = {}

    def get(self, dsn: str, encoding: str) -> psycopg.Connection:
        conn = self.open.get((dsn, encoding))
        if conn is None or conn.closed:
            conn = psycopg.connect(dsn, autocommit=True, client_encoding=encoding)
            self.open[(dsn, encoding)] = conn
        return conn


@pytest.fixture(scope="module")
def conns(gate: tuple[ProxyProcess, Backend]) -> Iterator[Conns]:
    pool = Conns()
    yield pool
    for conn in pool.open.values():
        conn.close()


def _error(conn: psycopg.Connection, sql: str, protocol: str) -> tuple[str, str, str, str | None]:
    """The error's fields; ``prepared``: a named protocol-level statement, ``pipeline``: the failing
    Parse comes after another statement's in the same Sync."""
    cursor = psycopg.ClientCursor(conn) if protocol == "simple" else conn.cursor()
    with pytest.raises(psycopg.Error) as info:
        if protocol == "simple":
            cursor.execute(sql.encode(conn.info.encoding))  # type: ignore[call-overload]
            while cursor.nextset():
                pass
        elif protocol == "pipeline":
            with conn.pipeline():
                cursor.execute("SELECT id FROM orders WHERE id = %s", (1,))
                cursor.execute(sql)  # type: ignore[call-overload]
        else:
            cursor.execute(sql, prepare=protocol == "prepared")  # type: ignore[call-overload]
    diag = info.value.diag
    assert diag.sqlstate, info.value
    return (diag.severity or "", diag.sqlstate or "", diag.message_primary or "", diag.statement_position)


def _compare(gate: tuple[ProxyProcess, Backend], conns: Conns, user: str, encoding: str,
             sql: str, protocol: str) -> None:
    proxy, backend = gate
    direct = _error(conns.get(backend.direct_dsn(), encoding), sql, protocol)
    through = _error(conns.get(proxy.dsn(user), encoding), sql, protocol)
    assert direct[3] is not None, direct
    assert through == direct, (sql, through, direct)


@pytest.mark.parametrize("encoding", sorted(CHARS))
@pytest.mark.parametrize("user", ["alice", "svc"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("shape", SYNTAX + BACKEND)
def test_a_single_statement_error_points_where_postgresql_points(
    gate: tuple[ProxyProcess, Backend], conns: Conns, shape: str, protocol: str, user: str, encoding: str
) -> None:
    _compare(gate, conns, user, encoding, shape.format(c=CHARS[encoding], n=protocol), protocol)


@pytest.mark.parametrize("user", ["alice", "svc"])
@pytest.mark.parametrize("shape", SYNTAX + BACKEND)
def test_a_pipelined_parse_error_points_into_its_own_text(
    gate: tuple[ProxyProcess, Backend], conns: Conns, shape: str, user: str
) -> None:
    _compare(gate, conns, user, "UTF8", shape.format(c="ü", n="pipe"), "pipeline")


@pytest.mark.parametrize("encoding", sorted(CHARS))
@pytest.mark.parametrize("user", ["alice", "svc"])
@pytest.mark.parametrize("shape", MULTI)
def test_a_multi_statement_query_error_points_into_the_whole_text(
    gate: tuple[ProxyProcess, Backend], conns: Conns, shape: str, user: str, encoding: str
) -> None:
    _compare(gate, conns, user, encoding, shape.format(c=CHARS[encoding]), "simple")


def _psql(dsn: str, sql: str, tmp: Path) -> str:
    out = subprocess.run(["psql", "-X", "-v", "VERBOSITY=default", "-d", dsn, "-c", sql],
                         capture_output=True, text=True, timeout=30, cwd=tmp, check=False)
    assert out.returncode != 0, out
    return out.stderr


@pytest.mark.parametrize("sql", ["SELECT id FROM orders WHERE", "select  nosuch from orders o where o.id = 1"])
def test_psql_shows_the_same_caret(gate: tuple[ProxyProcess, Backend], sql: str, tmp_path: Path) -> None:
    proxy, backend = gate
    direct = _psql(backend.direct_dsn(), sql, tmp_path)
    through = _psql(proxy.dsn("alice"), sql, tmp_path)
    assert "^" in direct
    assert through == direct
