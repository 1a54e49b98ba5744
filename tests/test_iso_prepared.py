"""Issue 12 families 3-5: protocol-level prepared statements through the real proxy.

Every attack runs in session and transaction pooling (a pool of ONE backend, so tenants share it),
with the proxy's RLS policies installed and without them (the proxy alone must hold):

- family 3/5: a statement lives on the backend only under a proxy-owned name, so SQL-level
  EXECUTE cannot run a protocol statement with other arguments, and a Bind/Describe/Close of a
  name the session did not prepare (another session's backend name included) reaches nothing;
- family 4: the proxy's records follow what the backend acknowledged: a re-Parse the backend (or
  PostgreSQL's rules) reject, or one it skipped after an earlier error, keeps the old checks;
- family 5: DEALLOCATE ALL / DISCARD ALL / DISCARD PLANS / Close of foreign names by one tenant
  leave the other tenant's statements on the shared backend working.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.codec import Bind, Close, Describe, Execute, Parse, Sync
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import USERS, Backend, ProxyProcess, RawClient, config_text, errors, start_proxy

SCHEMA = """
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
INSERT INTO orders VALUES ('acme', 1, 'a1'), ('globex', 1, 'g1');
"""
SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["orders"]\n'
INSERT = "INSERT INTO orders (tenant_id, id, note) VALUES ($1, $2::int, 'via protocol')"
MODES = ("session", "transaction")
Setup = tuple[ProxyProcess, Backend, str]


def proxy_text(backend: Backend, port: int, mode: str, extra: str = "", scoping: str = SCOPING) -> str:
    text = config_text(backend, port, scoping=scoping, extra=extra)
    if mode == "transaction":
        text = text.replace('sslmode = "prefer"', 'sslmode = "prefer"\npool_mode = "transaction"\npool_size = 1\n'
                            "pool_timeout = 10", 1)
    return text


def install_rls(proxy: ProxyProcess, backend: Backend) -> None:
    out = subprocess.run([sys.executable, "-m", "tenantgate.proxy.cli", "rls", "install", "--config",
                          str(proxy.config_path), "--dsn", backend.direct_dsn()],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module", params=[(m, r) for m in MODES for r in ("no_rls", "rls")], ids=lambda p: "-".join(p))
def setup(request: pytest.FixtureRequest, pg: PgServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Backend, str]]:
    mode, rls = request.param
    backend = Backend.create(pg, f"isoprep_{mode[0]}_{rls.replace('_', '')}")
    with psycopg.connect(backend.direct_dsn(), autocommit=True) as conn:  # the backend role owns the tables
        conn.execute(SCHEMA)
    port = free_port()
    proxy = start_proxy(tmp_path_factory.mktemp(f"isoprep-{mode}-{rls}"), proxy_text(backend, port, mode), port)
    if rls == "rls":
        install_rls(proxy, backend)
    yield proxy, backend, mode
    proxy.stop()


def login(proxy: ProxyProcess, user: str) -> RawClient:
    raw = RawClient(proxy.port)
    assert not errors(raw.login(user, USERS[user][1]))
    return raw


def run(raw: RawClient, *messages: object) -> list[object]:
    """Send the messages (Sync appended) in one write; everything up to that Sync's ReadyForQuery."""
    raw.send(b"".join(m.encode() for m in (*messages, Sync())))  # type: ignore[attr-defined]
    return raw.until_ready()


def rows_of(pg: PgServer, backend: Backend, sql: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in pg.fetch(sql, dbname=backend.database)]


def sqlstates(messages: list[object]) -> list[str]:
    return [e.sqlstate for e in errors(messages)]


@pytest.mark.parametrize("execute", [
    "EXECUTE s1('globex', 901)",
    "EXECUTE s1 ('globex', 902)",
    "PREPARE other AS SELECT 1; EXECUTE s1('globex', 903)",
])
def test_sql_execute_cannot_run_a_protocol_statement(setup: Setup, execute: str,
                                                    pg: PgServer) -> None:
    proxy, backend, _mode = setup
    alice = login(proxy, "alice")
    try:
        assert not errors(run(alice, Parse("s1", INSERT)))
        out = alice.query(execute)
        assert sqlstates(out), out  # the backend has no statement of that name (or the proxy refuses)
        # the protocol statement itself still works, with its Bind-time check
        ok = run(alice, Bind("", "s1", (), (b"acme", b"900")), Execute(""))
        assert not errors(ok), ok
        refused = run(alice, Bind("", "s1", (), (b"globex", b"904")), Execute(""))
        assert sqlstates(refused) == ["42501"]
    finally:
        alice.close()
    assert rows_of(pg, backend, "SELECT id FROM orders WHERE tenant_id = 'globex' AND id > 1") == []
    pg.execute("DELETE FROM orders WHERE id >= 900", dbname=backend.database)


@pytest.mark.parametrize("name", ["never_prepared", "s1", "tg_0123456789abcdef01234567"])
@pytest.mark.parametrize("what", ["bind", "describe"])
def test_a_name_the_session_did_not_prepare_does_not_exist(setup: Setup, name: str,
                                                           what: str) -> None:
    proxy, _backend, _mode = setup
    bob, alice = login(proxy, "bob"), login(proxy, "alice")
    try:
        assert not errors(run(bob, Parse("s1", "SELECT id, note FROM orders WHERE id = $1::int")))
        message = Bind("", name, (), (b"1",)) if what == "bind" else Describe("S", name)
        out = run(alice, message, Execute("") if what == "bind" else Sync())
        errs = errors(out)
        assert [e.sqlstate for e in errs] == ["26000"], out
        assert errs[0].message == f'prepared statement "{name}" does not exist'
        assert isinstance(out[-1], codec.ReadyForQuery)
        assert alice.query("SELECT 1")[-1] == codec.ReadyForQuery("I")  # the session stays usable
        # bob's statement is untouched
        mine = run(bob, Bind("", "s1", (), (b"1",)), Execute(""))
        assert [m.values for m in mine if isinstance(m, codec.DataRow)] == [(b"1", b"g1")]
    finally:
        alice.close()
        bob.close()


def test_backend_name_of_another_session_is_out_of_reach(setup: Setup) -> None:
    """The backend name of bob's statement, even when alice learns it, means nothing to her."""
    proxy, _backend, _mode = setup
    bob, alice = login(proxy, "bob"), login(proxy, "alice")
    try:
        assert not errors(run(bob, Parse("b1", "SELECT id, note FROM orders WHERE id = $1::int")))
        listed = bob.query("SELECT name FROM pg_prepared_statements")  # refused for tenants: lists nothing
        names = [m.values[0].decode() for m in listed if isinstance(m, codec.DataRow) and m.values[0]]
        assert not any(n == "b1" for n in names)  # the client's name is not the backend's
        foreign = next((n for n in names if n.startswith("tg_")), "tg_" + "0" * 24)
        assert sqlstates(run(alice, Bind("", foreign, (), (b"1",)), Execute(""))) == ["26000"]
        assert sqlstates(run(alice, Describe("S", foreign))) == ["26000"]
        closed = run(alice, Close("S", foreign), Close("S", "b1"))
        assert not errors(closed) and sum(1 for m in closed if m == codec.Simple(b"3")) == 2
        mine = run(bob, Bind("", "b1", (), (b"1",)), Execute(""))
        assert [m.values for m in mine if isinstance(m, codec.DataRow)] == [(b"1", b"g1")], mine
        out = alice.query(f"EXECUTE {foreign}(1)")
        assert sqlstates(out) and not [m for m in out if isinstance(m, codec.DataRow)], out
    finally:
        alice.close()
        bob.close()


@pytest.mark.parametrize("other", ["bob", "alice"], ids=["other-tenant", "same-tenant"])
@pytest.mark.parametrize("alice_has_one", [False, True], ids=["never-parsed", "own-unnamed"])
def test_the_unnamed_statement_left_on_a_backend_is_nobody_elses(setup: Setup, alice_has_one: bool,
                                                                 other: str) -> None:
    """PostgreSQL keeps the unnamed statement after Sync, and a pooled backend handed over without a
    settings query in between (same settings) would still hold another session's."""
    proxy, _backend, _mode = setup
    alice, bob = login(proxy, "alice"), login(proxy, other)
    note = b"g1" if other == "bob" else b"a1"
    tenant = b"globex" if other == "bob" else b"acme"
    try:
        if alice_has_one:
            assert not errors(run(alice, Parse("", "SELECT 'alice-own'")))
        got = run(bob, Parse("", "SELECT tenant_id, note FROM orders WHERE id = 1"), Bind("", ""), Execute(""))
        assert values_of(got) == [(tenant, note)]  # the other's unnamed statement stays on the backend
        described = run(alice, Describe("S", ""))
        out = run(alice, Bind("", ""), Execute(""))
        if alice_has_one:
            assert not errors(described) and values_of(out) == [(b"alice-own",)], out
        else:
            assert sqlstates(described) == ["26000"] and sqlstates(out) == ["26000"], out
            assert errors(out)[0].message == "unnamed prepared statement does not exist"
        assert values_of(run(bob, Bind("", ""), Execute(""))) == [(tenant, note)]  # the other's, again
    finally:
        alice.close()
        bob.close()


def values_of(messages: list[object]) -> list[tuple[bytes | None, ...]]:
    return [m.values for m in messages if isinstance(m, codec.DataRow)]


def test_close_of_an_unknown_name_is_a_harmless_close_complete(setup: Setup) -> None:
    proxy, _backend, _mode = setup
    alice = login(proxy, "alice")
    try:
        out = run(alice, Close("S", "nothing_here"), Close("S", ""), Close("P", "no_portal"))
        assert not errors(out) and [m for m in out if m == codec.Simple(b"3")] == [codec.Simple(b"3")] * 3
        # a closed name can be prepared again; closing twice is fine, as in PostgreSQL
        again = (Parse("c1", "SELECT 1"), Close("S", "c1"), Close("S", "c1"), Parse("c1", "SELECT 2"))
        assert not errors(run(alice, *again))
        got = run(alice, Bind("", "c1"), Execute(""))
        assert [m.values for m in got if isinstance(m, codec.DataRow)] == [(b"2",)]
    finally:
        alice.close()


# ---------------------------------------------------------------- family 4: only what the backend acknowledged

BOOM = Parse("boom", "SELECT no_such_column FROM orders")  # the backend rejects it: the rest of its cycle is skipped
BAD = "SELECT no_such_column, $1::text, $2::int FROM orders"  # parses in the proxy, fails on the backend
REJECTED = [
    pytest.param("s", [Parse("s", "SELECT $1::text, $2::int")], True, id="named-same-name-other-sql"),  # 42P05
    pytest.param("s", [Parse("s", BAD)], True, id="named-backend-error"),
    pytest.param("s", [Parse("s", "SELEC nonsense(")], True, id="named-refused-by-proxy"),
    pytest.param("s", [BOOM, Parse("s", "SELECT $1::text, $2::int")], True, id="named-skipped-after-error"),
    pytest.param("", [BOOM, Parse("", "SELECT $1::text, $2::int")], True, id="unnamed-skipped-after-error"),
    pytest.param("", [Parse("", "SELEC nonsense(")], True, id="unnamed-refused-by-proxy"),  # never reaches it
    # PostgreSQL drops the unnamed statement before parsing the new one; the proxy cannot tell that
    # Parse's own error from an earlier one, and prepares the old statement again (what was checked runs)
    pytest.param("", [Parse("", BAD)], True, id="unnamed-backend-error"),
]


@pytest.mark.parametrize(("name", "rejected", "still_there"), REJECTED)
def test_rejected_reparse_keeps_the_original_tenant_check(setup: Setup, pg: PgServer,
                                                          name: str, rejected: list[Parse], still_there: bool) -> None:
    proxy, backend, _mode = setup
    alice = login(proxy, "alice")
    try:
        assert not errors(run(alice, Parse(name, INSERT)))
        out = run(alice, *rejected)
        assert errors(out), out
        refused = run(alice, Bind("", name, (), (b"globex", b"911")), Execute(""))
        assert sqlstates(refused) == ["42501"] if still_there else sqlstates(refused), refused
        ok = run(alice, Bind("", name, (), (b"acme", b"912")), Execute(""))
        assert not errors(ok) if still_there else sqlstates(ok) == ["26000"], ok
    finally:
        alice.close()
    expected = [("acme", 912)] if still_there else []
    assert rows_of(pg, backend, "SELECT tenant_id, id FROM orders WHERE id >= 910 ORDER BY id") == expected
    pg.execute("DELETE FROM orders WHERE id >= 910", dbname=backend.database)


def test_duplicate_name_fails_like_postgresql(setup: Setup) -> None:
    proxy, _backend, _mode = setup
    alice = login(proxy, "alice")
    try:
        assert not errors(run(alice, Parse("dup", "SELECT 1")))
        out = run(alice, Parse("dup", "SELECT 2"))
        assert sqlstates(out) == ["42P05"] and errors(out)[0].message == 'prepared statement "dup" already exists'
        got = run(alice, Bind("", "dup"), Execute(""))
        assert [m.values for m in got if isinstance(m, codec.DataRow)] == [(b"1",)]
        # pipelined: Parse, Close, Parse of one name in one batch is fine
        assert not errors(run(alice, Close("S", "dup"), Parse("dup", "SELECT 3")))
        got = run(alice, Bind("", "dup"), Execute(""))
        assert [m.values for m in got if isinstance(m, codec.DataRow)] == [(b"3",)]
    finally:
        alice.close()


def test_pipelined_bind_in_a_later_cycle_runs_what_was_checked(setup: Setup,
                                                              pg: PgServer) -> None:
    """The unnamed statement's new Parse is skipped (an error before it); a Bind sent in the next Sync
    cycle, before the proxy could know, must not run the older statement with the newer one's checks."""
    proxy, backend, _mode = setup
    alice = login(proxy, "alice")
    try:
        assert not errors(run(alice, Parse("", INSERT)))
        batch = [Parse("boom", "SELEC nonsense("), Parse("", "SELECT $1::text, $2::int"), Sync(),
                 Bind("", "", (), (b"globex", b"921")), Execute(""), Sync()]
        alice.send(b"".join(m.encode() for m in batch))
        first, second = alice.until_ready(), alice.until_ready()
        assert errors(first)
        assert not errors(second), second  # ran the SELECT it was checked as
        assert [m.values for m in second if isinstance(m, codec.DataRow)] == [(b"globex", b"921")]
    finally:
        alice.close()
    assert rows_of(pg, backend, "SELECT id FROM orders WHERE id >= 920") == []


# ---------------------------------------------------------------- family 5: nobody breaks another's statements

@pytest.mark.parametrize("wipe", [
    pytest.param(lambda raw: raw.query("DEALLOCATE ALL"), id="deallocate-all"),
    pytest.param(lambda raw: raw.query("DISCARD ALL"), id="discard-all"),
    pytest.param(lambda raw: raw.query("DISCARD PLANS"), id="discard-plans"),
    pytest.param(lambda raw: run(raw, Close("S", "b1"), Close("S", "nothing")), id="close-foreign-names"),
    pytest.param(lambda raw: run(raw, Parse("", "DEALLOCATE ALL"), Bind("", ""), Execute("")),
                 id="extended-deallocate"),
])
def test_wiping_statements_leaves_the_other_tenant_working(setup: Setup, wipe: Callable[[RawClient], object]) -> None:
    proxy, _backend, _mode = setup
    bob, alice = login(proxy, "bob"), login(proxy, "alice")
    try:
        assert not errors(run(bob, Parse("b1", "SELECT note FROM orders WHERE id = $1::int")))
        assert not errors(run(alice, Parse("a1", "SELECT note FROM orders WHERE id = $1::int")))
        wipe(alice)
        for _ in range(2):
            got = run(bob, Bind("", "b1", (), (b"1",)), Execute(""))
            assert [m.values for m in got if isinstance(m, codec.DataRow)] == [(b"g1",)], got
        # alice's own statement: gone after DEALLOCATE/DISCARD ALL (26000, as in PostgreSQL), else working
        mine = run(alice, Bind("", "a1", (), (b"1",)), Execute(""))
        assert sqlstates(mine) in ([], ["26000"]), mine
        assert alice.query("SELECT 1")[-1] == codec.ReadyForQuery("I")
    finally:
        alice.close()
        bob.close()


@pytest.mark.parametrize("wipe", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_the_session_forgets_its_own_names_as_postgresql_does(setup: Setup,
                                                              wipe: str) -> None:
    proxy, _backend, _mode = setup
    alice = login(proxy, "alice")
    try:
        assert not errors(run(alice, Parse("a1", "SELECT 1")))
        assert not errors(alice.query(wipe))
        assert sqlstates(run(alice, Bind("", "a1"), Execute(""))) == ["26000"]
        assert not errors(run(alice, Parse("a1", "SELECT 2")))  # the name is free again
        got = run(alice, Bind("", "a1"), Execute(""))
        assert [m.values for m in got if isinstance(m, codec.DataRow)] == [(b"2",)]
    finally:
        alice.close()


def test_trusted_sessions_keep_the_shared_namespace(setup: Setup) -> None:
    """A trusted service user's names reach the backend as they are (SQL EXECUTE of a Parse works)."""
    proxy, _backend, _mode = setup
    svc = login(proxy, "svc")
    try:
        assert not errors(run(svc, Parse("t1", "SELECT $1::int + 1")))
        out = svc.query("EXECUTE t1(41)")
        assert [m.values for m in out if isinstance(m, codec.DataRow)] == [(b"42",)]
    finally:
        svc.close()



# ---------------------------------------------------------------- family 4 with field encryption

@pytest.fixture(scope="module", params=MODES)
def encrypted(request: pytest.FixtureRequest, pg: PgServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Backend]]:
    from tenantgate.keyring.kek import create_kek_file

    from .test_encryption_proxy import SCOPING as ENC_SCOPING
    from .test_encryption_proxy import SETUP as ENC_SETUP
    from .test_encryption_proxy import encryption_toml, keys

    backend = Backend.create(pg, f"isoenc_{request.param[0]}", ENC_SETUP, owner=False)
    tmp = tmp_path_factory.mktemp(f"isoenc-{request.param}")
    create_kek_file(tmp / "kek.bin")
    port = free_port()
    text = proxy_text(backend, port, request.param, extra=encryption_toml(), scoping=ENC_SCOPING)
    proxy = start_proxy(tmp, text, port)
    keys(proxy, "init")
    yield proxy, backend
    proxy.stop()


ENC_INSERT = "INSERT INTO customers (id, tenant_id, ssn) VALUES ($1::int, 'acme', $2)"
ENC_REJECTED = [
    pytest.param("e", [Parse("e", "SELECT $1::int, $2::text")], id="named-same-name-other-sql"),
    pytest.param("e", [Parse("boom", "SELECT no_such_column FROM customers"), Parse("e", "SELECT $1::int, $2::text")],
                 id="named-skipped-after-error"),
    pytest.param("", [Parse("boom", "SELECT no_such_column FROM customers"), Parse("", "SELECT $1::int, $2::text")],
                 id="unnamed-skipped-after-error"),
]


@pytest.mark.parametrize(("name", "rejected"), ENC_REJECTED)
@pytest.mark.parametrize("pipelined", [False, True], ids=["synced", "pipelined"])
def test_rejected_reparse_keeps_encrypting_the_parameter(encrypted: tuple[ProxyProcess, Backend], pg: PgServer,
                                                         name: str, rejected: list[Parse], pipelined: bool) -> None:
    proxy, backend = encrypted
    row = 100 + len(rows_of(pg, backend, "SELECT id FROM customers"))
    alice = RawClient(proxy.port)
    assert not errors(alice.login("alice", USERS["alice"][1], "encrypted"))
    try:
        assert not errors(run(alice, Parse(name, ENC_INSERT)))
        secret = f"plain-secret-{row}".encode()
        bind = (Bind("", name, (), (str(row).encode(), secret)), Execute(""))
        if pipelined:  # the Bind goes out before the proxy knows the Parse before it was skipped
            alice.send(b"".join(m.encode() for m in (*rejected, Sync(), *bind, Sync())))
            assert errors(alice.until_ready())
            out = alice.until_ready()
        else:
            assert errors(run(alice, *rejected))
            out = run(alice, *bind)
        assert not errors(out), out
    finally:
        alice.close()
    stored = rows_of(pg, backend, f"SELECT ssn FROM customers WHERE id = {row}")
    # pipelined unnamed: the re-sent SELECT ran, as checked (nothing stored); otherwise the INSERT, encrypted
    assert len(stored) == (0 if pipelined and not name else 1)
    assert all(b"plain-secret" not in bytes(v[0]) for v in stored), stored  # type: ignore[arg-type]
    assert all(bytes(v[0])[:1] == b"\xe1" for v in stored)  # type: ignore[arg-type]
