"""Issue 12 family 6 and issue 20 item 2: session state on transaction-pooled backends.

Whatever a tenant changes at session level, by any syntax, follows that tenant from backend to
backend (re-applied on every hand-over) or pins it; the next tenant on a backend always finds what
a fresh backend has. Includes the generic pooled-state test: a seeded random sequence of
state-changing statements by tenant A on a pool of ONE backend, then tenant B (and the superuser,
for what only it can read on that backend) compare the state with what a fresh backend showed.

The rewriter reports setting changes and pins in its plans (``Plan.settings`` / ``Plan.pins``); the
proxy's tracking is also unit-tested in proxy/tracked.py.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.codec import Bind, Execute, Parse, Sync
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port
from tenantgate.rewriter import Policy, Rewriter

from .harness import (
    ORDERS_SCOPING,
    ORDERS_SETUP,
    USERS,
    Backend,
    ProxyProcess,
    RawClient,
    config_text,
    errors,
    start_proxy,
)


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "isopooled", ORDERS_SETUP, owner=False)


def pooled(backend: Backend, tmp: object, size: int, timeout: float = 5) -> ProxyProcess:
    port = free_port()
    text = config_text(backend, port, scoping=ORDERS_SCOPING).replace(
        'sslmode = "prefer"',
        f'sslmode = "prefer"\npool_mode = "transaction"\npool_size = {size}\npool_timeout = {timeout}',
    )
    return start_proxy(tmp, text, port)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def one(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = pooled(backend, tmp_path_factory.mktemp("isopool1"), 1)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def two(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = pooled(backend, tmp_path_factory.mktemp("isopool2"), 2, timeout=3)
    yield p
    p.stop()


def raw_login(proxy: ProxyProcess, user: str) -> RawClient:
    raw = RawClient(proxy.port)
    assert not errors(raw.login(user, USERS[user][1]))
    return raw


def values(messages: list[object]) -> list[tuple[bytes | None, ...]]:
    return [m.values for m in messages if isinstance(m, codec.DataRow)]


def sqlstates(messages: list[object]) -> list[str]:
    return [e.sqlstate for e in errors(messages)]


# ---------------------------------------------------------------- RESET ALL / DISCARD ALL keep the proxy's settings

PROXY_SETTINGS = "SELECT current_setting('tenantgate.tenant'), current_setting('search_path')"


@pytest.mark.parametrize("reset", ["RESET ALL", "DISCARD ALL"])
def test_statements_pipelined_after_a_reset_run_with_the_sessions_settings(one: ProxyProcess, reset: str) -> None:
    alice = raw_login(one, "alice")
    try:
        alice.send(codec.Query(reset).encode() + codec.Query(PROXY_SETTINGS).encode())
        first, second = alice.until_ready(), alice.until_ready()
        assert not errors(first), first
        assert values(second) and values(second)[0][0] == b"acme", second
    finally:
        alice.close()


@pytest.mark.parametrize("sql", ["RESET ALL; SELECT 1", "DISCARD ALL; SELECT 1"])
def test_a_reset_before_other_statements_of_one_query_is_refused(one: ProxyProcess, sql: str) -> None:
    alice = raw_login(one, "alice")
    try:
        assert sqlstates(alice.query(sql)) == ["0A000"]
        assert values(alice.query(PROXY_SETTINGS))[0][0] == b"acme"  # the session stays usable
        assert not errors(alice.query("SELECT 1; RESET ALL"))  # last is fine: re-applied right after it
        assert values(alice.query(PROXY_SETTINGS))[0][0] == b"acme"
    finally:
        alice.close()


def test_extended_reset_then_execute_before_sync_is_refused(one: ProxyProcess) -> None:
    alice = raw_login(one, "alice")
    try:
        batch = [Parse("", "RESET ALL"), Bind("", ""), Execute(""),
                 Parse("", PROXY_SETTINGS), Bind("", ""), Execute(""), Sync()]
        alice.send(b"".join(m.encode() for m in batch))
        out = alice.until_ready()
        assert sqlstates(out) == ["0A000"], out
        # after the Sync the settings are back: the next batch sees them
        alice.send(b"".join(m.encode() for m in (Parse("", PROXY_SETTINGS), Bind("", ""), Execute(""), Sync())))
        assert values(alice.until_ready())[0][0] == b"acme"
        # RESET ALL as the batch's last Execute is fine
        alice.send(b"".join(m.encode() for m in (Parse("", "RESET ALL"), Bind("", ""), Execute(""), Sync(),
                                                 Parse("", PROXY_SETTINGS), Bind("", ""), Execute(""), Sync())))
        assert not errors(alice.until_ready())
        assert values(alice.until_ready())[0][0] == b"acme"
    finally:
        alice.close()


# ---------------------------------------------------------------- connect-time SETs share backends (issue 20 item 2)

STACKS = {
    "pgjdbc": ["SET extra_float_digits = 3", "SET application_name = 'PostgreSQL JDBC Driver'"],
    "activerecord": ["SET client_min_messages TO 'warning'", "SET intervalstyle = iso_8601",
                     "SET SESSION timezone TO 'UTC'"],
}


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_connect_time_sets_do_not_pin(two: ProxyProcess, stack: str) -> None:
    """Three connections on a pool of two, each with its connect-time SETs: no 53300, own values kept."""
    conns = [psycopg.connect(two.dsn(user), autocommit=True) for user in ("alice", "bob", "alice")]
    try:
        for i, conn in enumerate(conns):
            for sql in STACKS[stack]:
                conn.execute(sql)
            conn.execute(f"SET application_name = 'client-{i}'")
        for _ in range(3):
            for i, conn in enumerate(conns):
                row = conn.execute("SELECT current_setting('application_name'), current_setting('extra_float_digits'),"
                                   " current_setting('IntervalStyle'), current_setting('TimeZone')").fetchone()
                assert row is not None and row[0] == f"client-{i}"
                if stack == "pgjdbc":
                    assert row[1] == "3"
                else:
                    assert row[2:] == ("iso_8601", "UTC")
    finally:
        for conn in conns:
            conn.close()


SET_CONFIG = [
    "SELECT set_config('TimeZone', 'Pacific/Apia', false)",
    "WITH c AS (SELECT set_config('DateStyle', 'SQL, DMY', false)) SELECT * FROM c",
    "SELECT 1 FROM (SELECT set_config('default_transaction_read_only', 'on', false)) s",
    "SELECT set_config('application_name', 'leaky', false)",
    "SET TimeZone = 'Asia/Kathmandu'",
    "SET SESSION DateStyle = 'German'",
]


@pytest.mark.parametrize("sql", SET_CONFIG)
def test_setting_changes_never_reach_the_next_tenant(one: ProxyProcess, sql: str) -> None:
    probe = ("SELECT current_setting('TimeZone'), current_setting('DateStyle'), "
             "current_setting('default_transaction_read_only'), current_setting('application_name')")
    with psycopg.connect(one.dsn("bob"), autocommit=True) as bob:
        fresh = bob.execute(probe).fetchone()
    pins = bool(Rewriter(Policy(scoped={})).plan(sql, "acme").pins)  # the rewriter may pin instead of tracking
    with psycopg.connect(one.dsn("alice"), autocommit=True) as alice:
        before = alice.execute(probe).fetchone()
        alice.execute(sql)
        mine = alice.execute(probe).fetchone()
        assert mine != before  # the change holds for alice ...
        if not pins:
            with psycopg.connect(one.dsn("bob"), autocommit=True) as bob:  # ... bob gets the one backend next
                assert bob.execute(probe).fetchone() == fresh
            assert alice.execute(probe).fetchone() == mine  # ... and it is alice's again after the hand-over
    with psycopg.connect(one.dsn("bob"), autocommit=True) as bob:
        assert bob.execute(probe).fetchone() == fresh


@pytest.mark.parametrize("end", ["ROLLBACK", "SELECT 1/0", "COMMIT"])
def test_a_set_follows_its_transaction(one: ProxyProcess, end: str) -> None:
    alice = raw_login(one, "alice")
    try:
        base = values(alice.query("SHOW TimeZone"))[0]
        alice.query("BEGIN")
        alice.query("SET TimeZone = 'Asia/Kathmandu'")
        alice.query(end)
        alice.query("ROLLBACK")  # ends the failed transaction, a warning otherwise
        bob = raw_login(one, "bob")  # takes the one backend in between
        bob.query("SELECT 1")
        bob.close()
        want = [(b"Asia/Kathmandu",)] if end == "COMMIT" else [base]
        assert values(alice.query("SHOW TimeZone")) == want
    finally:
        alice.close()


@pytest.mark.parametrize("sql", ["SET LOCAL TimeZone = 'Asia/Tokyo'", "SET TimeZone = 'Asia/Tokyo'",
                                 "SET LOCAL DateStyle = 'German'", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"])
def test_a_set_inside_a_transaction_neither_pins_nor_leaks(one: ProxyProcess, sql: str) -> None:
    probe = "SELECT current_setting('TimeZone'), current_setting('DateStyle')"
    with psycopg.connect(one.dsn("bob"), autocommit=True) as bob:
        fresh = bob.execute(probe).fetchone()
    with psycopg.connect(one.dsn("alice"), autocommit=True) as alice:
        with alice.transaction():
            alice.execute(sql)
        with psycopg.connect(one.dsn("bob"), autocommit=True) as bob:  # alice idle: not pinned, one backend
            assert bob.execute(probe).fetchone() == fresh


# ---------------------------------------------------------------- the generic pooled-state test

# statements whose state the proxy follows instead of pinning (the "tracked" mix leaves them alone)
_PINNING = ("PREPARE", "EXECUTE p", "DECLARE", "LISTEN", "CREATE TEMP", "pg_advisory_lock")


def _menu(i: int, mix: str) -> list[str | tuple[str, ...]]:
    """State-changing statements (strings: one Query; tuples: pipelined in one write)."""
    menu: list[str | tuple[str, ...]] = [
        f"SET application_name = 'a{i}'",
        "SET TimeZone = 'Pacific/Apia'",
        "SET DateStyle = 'SQL, DMY'",
        "SET extra_float_digits = 1",
        "SET intervalstyle = postgres_verbose",
        "SET default_transaction_read_only = on",
        "SET LOCAL TimeZone = 'Asia/Tokyo'",
        "RESET TimeZone",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('TimeZone', 'America/Lima', false)",
        "WITH c AS (SELECT set_config('DateStyle', 'German', false)) SELECT * FROM c",
        "SELECT set_config('application_name', 'cfg', true)",
        "SELECT set_config('client_min_messages', 'error', false)",
        f"PREPARE p{i} AS SELECT {i}",
        f"EXECUTE p{i}",
        "DEALLOCATE ALL",
        f"DECLARE c{i} CURSOR WITH HOLD FOR SELECT 1",
        f"LISTEN ch{i}",
        "SELECT pg_advisory_lock(42)",
        "SELECT pg_advisory_xact_lock(7)",
        ("BEGIN", f"DECLARE k{i} CURSOR FOR SELECT 1", f"FETCH 1 FROM k{i}", "COMMIT"),
        ("BEGIN", "SET LOCAL DateStyle = 'German'", "SELECT set_config('TimeZone', 'Asia/Dubai', true)", "COMMIT"),
        f"CREATE TEMP TABLE t{i} (a int)",
        "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s", "ROLLBACK TO SAVEPOINT s",
        "SELECT 1/0",
        "SELECT note FROM orders",
        ("BEGIN", "SET TimeZone = 'Europe/Lisbon'", "ROLLBACK"),
        ("SET DateStyle = 'Postgres, MDY'", "SELECT 1/0"),
        ("RESET ALL", "SELECT current_setting('tenantgate.tenant')"),
    ]
    if mix != "all":
        menu = [m for m in menu if not (isinstance(m, str) and any(p in m for p in _PINNING))]
    if mix == "functions":  # settings changed only through functions, which no statement kind gives away
        menu = [m for m in menu if isinstance(m, str) and not m.startswith(("SET", "RESET", "DISCARD"))]
    return menu


def _protocol_statement(raw: RawClient, i: int) -> None:
    """A protocol-level named statement, bound and executed."""
    raw.send(b"".join(m.encode() for m in (Parse(f"n{i}", "SELECT $1::int"), Bind("", f"n{i}", (), (b"1",)),
                                           Execute(""), Sync())))
    raw.until_ready()


PROBES = {
    "settings": "SELECT name, setting FROM pg_settings ORDER BY name",
    "show_all": "SHOW ALL",
    # the proxy's own content-addressed statements stay on a backend by design (only its sessions reach them)
    "prepared": "SELECT name, statement FROM pg_prepared_statements WHERE name NOT LIKE 'tg\\_%' ORDER BY name",
    "cursors": "SELECT name FROM pg_cursors ORDER BY name",
    "listening": "SELECT pg_listening_channels()",
    "temp": "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()",
    "tenant": "SELECT current_setting('tenantgate.tenant'), current_setting('search_path')",
}


def probe(proxy: ProxyProcess, pg: PgServer, backend: Backend) -> dict[str, object]:
    """What bob sees of the backend he gets (a refusal is an answer too), plus what only the superuser
    can read of it: advisory locks."""
    bob = raw_login(proxy, "bob")
    try:
        seen: dict[str, object] = {}
        for name, sql in PROBES.items():
            out = bob.query(sql)
            seen[name] = sqlstates(out) or values(out)
        pid = values(bob.query("SELECT pg_backend_pid()"))
    finally:
        bob.close()
    seen["advisory_locks"] = pg.fetch("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
                                      dbname=backend.database)[0][0]
    seen["_pid"] = pid
    return seen


GENERIC = [("functions", 0), ("functions", 1), ("tracked", 2), ("tracked", 3), ("all", 4), ("all", 5)]


@pytest.mark.parametrize(("mix", "seed"), GENERIC)
def test_generic_pooled_state(one: ProxyProcess, pg: PgServer, backend: Backend, mix: str, seed: int) -> None:
    fresh = probe(one, pg, backend)
    rng = random.Random(seed)
    alice = raw_login(one, "alice")
    try:
        for i in range(rng.randint(12, 25)):
            if rng.random() < 0.15:
                _protocol_statement(alice, i)
                continue
            choice = rng.choice(_menu(i, mix))
            batch = (choice,) if isinstance(choice, str) else choice
            alice.send(b"".join(codec.Query(sql).encode() for sql in batch))
            for _ in batch:
                alice.until_ready()
        alice.query("ROLLBACK")  # whatever transaction the sequence left open
    finally:
        alice.close()
    after = probe(one, pg, backend)
    pids = fresh.pop("_pid"), after.pop("_pid")
    assert after == fresh, f"{mix} seed {seed}: {[k for k in fresh if after[k] != fresh[k]]} differ (pids {pids})"


def test_a_pinned_backend_is_not_handed_on_while_its_client_waits(one: ProxyProcess) -> None:
    """A session pinned by state the proxy cannot undo keeps the only backend; the other tenant waits."""
    alice = psycopg.connect(one.dsn("alice"), autocommit=True)
    alice.execute("LISTEN pinned_channel")
    done = threading.Event()

    def bob() -> None:
        with psycopg.connect(one.dsn("bob"), autocommit=True) as conn:
            assert conn.execute("SELECT pg_listening_channels()").fetchall() == []
        done.set()

    t = threading.Thread(target=bob)
    t.start()
    t.join(0.8)
    assert not done.is_set()
    alice.close()  # the pinned backend is dropped, bob gets a fresh one
    t.join(10)
    assert done.is_set()
