"""The audit server and its worker clients: wire codec, one chain from many clients, durability,
sink failure and loss of the server."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import stat
import struct
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import fields, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tenantgate.audit.benchmark import run_remote
from tenantgate.audit.errors import AuditConfigError, AuditKeyError, AuditUnavailable
from tenantgate.audit.reader import PostgresSource, open_sources
from tenantgate.audit.record import DECISIONS, EVENT_KINDS, AuditEvent, param_hash_key
from tenantgate.audit.remote import (
    WIRE_FIELDS,
    AuditProtocolError,
    AuditServer,
    RemoteAuditLog,
    decode_event,
    encode_event,
)
from tenantgate.audit.settings import AuditSettings
from tenantgate.audit.verify import verify_log
from tenantgate.audit.writer import AuditLog

KEY = b"K" * 32
# Clients get a key file that does not exist: they must never need it (only the server seals).
NO_KEY = "file:/nonexistent/tenantgate-audit.key"


def settings(path: Path, **overrides: object) -> AuditSettings:
    base: dict[str, object] = {"key": NO_KEY, "path": path, "durability": "strict", "checkpoint_every": 0,
                               "flush_interval_ms": 5}
    base.update(overrides)
    return AuditSettings(**base)  # type: ignore[arg-type]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def verified(path: Path) -> list[dict[str, Any]]:
    result = verify_log(open_sources([str(path)]), hmac_key=KEY)
    assert result.ok, result.problem
    return records(path)


@asynccontextmanager
async def server_and_clients(cfg: AuditSettings, sock: str, count: int, *,
                             retry_interval: float = 1.0) -> AsyncIterator[tuple[AuditServer, list[RemoteAuditLog]]]:
    server = AuditServer(cfg, sock, hmac_key=KEY, retry_interval=retry_interval)
    await server.start()
    clients = [RemoteAuditLog(cfg, sock, reconnect_min=0.02, reconnect_max=0.1) for _ in range(count)]
    try:
        for client in clients:
            await client.start()
        yield server, clients
    finally:
        for client in clients:
            await client.close()
        await server.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a state another process or task brings about."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------- the wire codec

def test_wire_carries_every_event_field() -> None:
    assert tuple(f.name for f in fields(AuditEvent)) == WIRE_FIELDS


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner,
                                                                                             max_size=3),
                     max_leaves=8)
_param = st.none() | st.text() | st.binary() | st.integers() | st.booleans() | st.floats(allow_nan=False,
                                                                                          allow_infinity=False)
_text = st.none() | st.text()
_events = st.builds(
    AuditEvent, kind=st.sampled_from(sorted(EVENT_KINDS)), tenant=_text, user=_text, client=_text, session=_text,
    database=_text, sql=_text, rewritten=_text, decision=st.none() | st.sampled_from(sorted(DECISIONS)),
    reason=_text, sqlstate=_text, rows=st.none() | st.integers(),
    duration_ms=st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    params=st.none() | st.lists(_param, max_size=5).map(tuple), encrypted_params=st.frozensets(st.integers(0, 9)),
    sql_redactions=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=3).map(tuple),
    encrypted_columns=st.lists(st.text(), max_size=3).map(tuple),
    details=st.none() | st.dictionaries(st.text(), _json, max_size=4), ts=st.text())


def _wire(event: AuditEvent) -> AuditEvent:
    return decode_event(json.loads(encode_event(event)))


@given(_events)
@hsettings(max_examples=300)
def test_event_round_trip(event: AuditEvent) -> None:
    assert _wire(event) == event


@given(_events)
@hsettings(max_examples=100)
def test_other_containers_give_the_same_record(event: AuditEvent) -> None:
    # Callers may pass lists, sets and bytearrays: the record body must not change over the wire.
    loose = replace(event, encrypted_params=set(event.encrypted_params), sql_redactions=list(event.sql_redactions),
                    encrypted_columns=list(event.encrypted_columns),
                    params=None if event.params is None else [
                        bytearray(v) if isinstance(v, bytes) else v for v in event.params])
    for mode in ("none", "hash", "full"):
        assert _wire(loose).body(mode, param_hash_key(KEY)) == event.body(mode, param_hash_key(KEY))


@pytest.mark.parametrize(("index", "value", "message"), [
    (0, "bogus", "kind must be one of"), (1, 7, "field tenant"), (11, True, "field rows"),
    (13, [{"y": "00"}], "field params"), (13, [{"x": "zz"}], "invalid hex"), (14, ["1"], "encrypted_params"),
    (15, [[1]], "sql_redactions"), (17, [], "field details"), (18, None, "kind and ts"),
])
def test_decode_rejects_malformed_fields(index: int, value: object, message: str) -> None:
    raw = json.loads(encode_event(AuditEvent("statement", sql="SELECT 1")))
    raw[index] = value
    with pytest.raises(AuditProtocolError, match=message):
        decode_event(raw)


# ---------------------------------------------------------------------- one chain, many clients

def test_three_clients_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    per_client = 40

    async def go() -> list[list[int | None]]:
        async with server_and_clients(settings(path), str(tmp_path / "audit.sock"), 3) as (_, clients):
            async def session(n: int, client: RemoteAuditLog) -> list[int | None]:
                seqs = []
                for i in range(per_client):
                    seqs.append(await client.record(AuditEvent("statement", tenant=f"t{n}", sql=f"SELECT {n}, {i}")))
                    await asyncio.sleep(0)
                return seqs

            results = await asyncio.gather(*(session(n, c) for n, c in enumerate(clients)))
            assert [c.stats().records_written for c in clients] == [per_client] * 3
            return results

    results = asyncio.run(go())
    recs = verified(path)
    by_seq = {r["seq"]: r for r in recs}
    for n, seqs in enumerate(results):
        assert [by_seq[s]["sql"] for s in seqs] == [f"SELECT {n}, {i}" for i in range(per_client)]  # type: ignore[index]
    assert Counter(r.get("tenant") for r in recs if r["kind"] == "statement") == {"t0": 40, "t1": 40, "t2": 40}
    assert [r["kind"] for r in recs if r["kind"] != "statement"] == ["chain_start", "chain_end"]
    # Interleaved: the clients' records alternate in the chain rather than coming in three blocks.
    tenants = [r["tenant"] for r in recs if r["kind"] == "statement"]
    assert sum(a != b for a, b in pairwise(tenants)) > 3


def test_every_field_reaches_the_record(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    sql = "INSERT INTO cards VALUES ($1, '4111')"
    literal = (sql.index("'"), sql.index("'") + len("'4111'"))
    event = AuditEvent("statement", tenant="acme", user="alice", client="127.0.0.1:5000", session="s1",
                       database="app", sql=sql, rewritten=sql + " -- scoped", decision="allowed", reason="ok",
                       sqlstate="00000", rows=1, duration_ms=0.25, params=("bob", b"\x01\x02", None, "x"),
                       encrypted_params=frozenset({3}), sql_redactions=(literal,),
                       encrypted_columns=("cards.number",), details={"statement": "insert", "phase": "end"})

    async def go() -> None:
        cfg = settings(path, log_parameters="full")
        async with server_and_clients(cfg, str(tmp_path / "audit.sock"), 1) as (_, [client]):
            await client.record(event)

    asyncio.run(go())
    records = verified(path)
    [record] = [r for r in records if r["kind"] == "statement"]
    # format 2: the rewritten SQL is stored once in a plan record that the statement names
    expected = event.fields("full", param_hash_key(KEY))
    [plan] = [r["details"] for r in records if r["kind"] == "plan"]
    assert plan == {"digest": record["plan"], "sql": expected.pop("rewritten")}
    assert {k: v for k, v in record.items() if k in expected} == expected
    assert record["ts"] == event.ts
    assert record["params"] == ["bob", "\\x0102", None, "***"]
    assert record["sql"] == "INSERT INTO cards VALUES ($1, '***')"


CLIENT_CHILD = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path
    from tenantgate.audit.record import AuditEvent
    from tenantgate.audit.remote import RemoteAuditLog
    from tenantgate.audit.settings import AuditSettings

    sock, durability, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    async def main():
        log = RemoteAuditLog(AuditSettings(key="file:/nonexistent", path=Path("unused"), durability=durability),
                             sock)
        await log.start()
        futures = []
        for i in range(count):
            futures.append(log.submit(AuditEvent("statement", tenant=name, session=name, sql=f"SELECT {i}")))
            if i % 7 == 0:
                await asyncio.sleep(0)  # let the other processes' records interleave
        seqs = await asyncio.gather(*futures) if durability == "strict" else []
        await log.close()
        print(json.dumps({"seqs": seqs, "written": log.stats().records_written}))

    asyncio.run(main())
""")


@pytest.mark.parametrize("durability", ["strict", "batched"])
def test_clients_in_separate_processes(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "a.jsonl"
    sock = str(tmp_path / "audit.sock")
    counts = {"w0": 300, "w1": 200, "w2": 250}

    async def go() -> dict[str, Any]:
        server = AuditServer(settings(path, durability=durability), sock, hmac_key=KEY)
        await server.start()
        try:
            procs = {name: await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLIENT_CHILD, sock, durability, name, str(n),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) for name, n in counts.items()}
            outputs = {}
            for name, proc in procs.items():
                out, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                outputs[name] = json.loads(out)
            return outputs
        finally:
            await server.close()

    outputs = asyncio.run(go())
    recs = verified(path)
    statements = [r for r in recs if r["kind"] == "statement"]
    assert Counter(r["tenant"] for r in statements) == counts
    for name, n in counts.items():
        assert outputs[name]["written"] == n
        mine = [r for r in statements if r["tenant"] == name]
        assert [r["sql"] for r in mine] == [f"SELECT {i}" for i in range(n)]  # each worker's order is kept
        if durability == "strict":
            assert outputs[name]["seqs"] == [r["seq"] for r in mine]


# ---------------------------------------------------------------------- durability

def test_strict_future_resolves_when_the_record_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    seen: list[bool] = []

    def on_disk(sql: str, future: asyncio.Future[int | None]) -> None:
        # Runs the moment the future resolves: the record must already be in the file.
        seen.append(any(r["seq"] == future.result() and r["sql"] == sql for r in records(path)))

    async def go() -> None:
        async with server_and_clients(settings(path), str(tmp_path / "audit.sock"), 2) as (_, clients):
            futures = []
            for i in range(30):
                sql = f"SELECT {i}"
                future = clients[i % 2].submit(AuditEvent("statement", sql=sql))
                assert future is not None
                future.add_done_callback(lambda f, sql=sql: on_disk(sql, f))
                futures.append(future)
            await asyncio.gather(*futures)

    asyncio.run(go())
    assert seen == [True] * 30


def test_batched_submit_returns_none_and_flush_writes(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"

    async def go() -> None:
        cfg = settings(path, durability="batched", flush_interval_ms=20)
        async with server_and_clients(cfg, str(tmp_path / "audit.sock"), 2) as (_, clients):
            for i in range(10):
                assert clients[i % 2].submit(AuditEvent("statement", sql=f"SELECT {i}")) is None
            assert clients[0].stats().queue_depth == 5
            await clients[0].flush()
            await clients[1].flush()
            assert sorted(r["sql"] for r in records(path) if r["kind"] == "statement") == [
                f"SELECT {i}" for i in range(10)]
            assert [c.stats().records_written for c in clients] == [5, 5]
            assert clients[0].stats().last_seq == 11

    asyncio.run(go())
    verified(path)


@pytest.mark.parametrize("on_failure", ["refuse", "drop"])
def test_client_queue_bound(tmp_path: Path, on_failure: str) -> None:
    path = tmp_path / "a.jsonl"

    async def go() -> None:
        cfg = settings(path, durability="batched", on_failure=on_failure, queue_max=2)
        async with server_and_clients(cfg, str(tmp_path / "audit.sock"), 1) as (_, [client]):
            client.submit(AuditEvent("statement", sql="SELECT 1"))
            client.submit(AuditEvent("statement", sql="SELECT 2"))
            if on_failure == "refuse":
                with pytest.raises(AuditUnavailable, match="audit queue full"):
                    client.submit(AuditEvent("statement", sql="SELECT 3"))
                assert client.stats().records_refused == 1
            else:
                assert client.submit(AuditEvent("statement", sql="SELECT 3")) is None
                assert client.stats().records_dropped == 1
            await client.flush()  # the server took them: room again
            assert client.stats().queue_depth == 0
            assert client.submit(AuditEvent("statement", sql="SELECT 4")) is None

    asyncio.run(go())
    assert [r["sql"] for r in verified(path) if r["kind"] == "statement"] == ["SELECT 1", "SELECT 2", "SELECT 4"]


# ---------------------------------------------------------------------- sink failure (PostgreSQL sink)

@pytest.fixture
def audit_dsn(pg: Any) -> str:
    name = "audit_" + secrets.token_hex(4)
    pg.create_database(name)
    dsn: str = pg.dsn(dbname=name)
    return dsn


def test_sink_failure_reaches_every_client_then_recovery(tmp_path: Path, audit_dsn: str, pg: Any) -> None:
    table = "audit_remote"
    admin_dsn = pg.dsn(dbname="postgres")

    async def go() -> None:
        cfg = settings(tmp_path / "unused", sink="postgres", dsn=audit_dsn, table=table)
        async with server_and_clients(cfg, str(tmp_path / "audit.sock"), 2, retry_interval=2.0) as (server, clients):
            a, b = clients
            assert await a.record(AuditEvent("statement", sql="SELECT 1")) == 2
            await allow_connections_from(admin_dsn, audit_dsn, allow=False)
            with pytest.raises(AuditUnavailable, match=f"postgres table {table}"):
                await a.record(AuditEvent("statement", sql="SELECT 2"))
            await until(lambda: not b.accepting, "the state to reach the other client")
            assert not a.accepting and not a.stats().available and not b.stats().available
            with pytest.raises(AuditUnavailable, match="audit log unavailable"):
                b.submit(AuditEvent("statement", sql="SELECT 3"))
            await allow_connections_from(admin_dsn, audit_dsn, allow=True)
            await until(lambda: b.accepting, "the retry time")  # the next statement probes the sink
            assert isinstance(await b.record(AuditEvent("statement", sql="SELECT 4")), int)
            await until(lambda: a.stats().available, "the recovery to reach the other client")
            assert (a.stats().records_refused, b.stats().records_refused) == (1, 1)
            assert server.stats().available

    asyncio.run(go())
    source = PostgresSource(audit_dsn, table)
    result = verify_log([source], hmac_key=KEY)
    assert result.ok, result.problem
    recs = [json.loads(line.data) for line in source.lines()]
    assert [r["kind"] for r in recs] == ["chain_start", "statement", "gap", "statement", "chain_end"]
    assert recs[2]["details"]["lost"] == 2  # the failed record and the one the other client refused
    assert [r["sql"] for r in recs if r["kind"] == "statement"] == ["SELECT 1", "SELECT 4"]


async def allow_connections_from(admin_dsn: str, dsn: str, *, allow: bool) -> None:
    """ALTER DATABASE from another database: the audit database itself may refuse connections."""
    name = dsn.rsplit("/", 1)[1].split("?")[0]
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await conn.close()


# ---------------------------------------------------------------------- the server goes away

SERVER_CHILD = textwrap.dedent("""
    import asyncio, signal, sys
    from pathlib import Path
    from tenantgate.audit.remote import AuditServer
    from tenantgate.audit.settings import AuditSettings

    async def main():
        settings = AuditSettings(key="env:UNUSED", path=Path(sys.argv[1]), durability="strict",
                                 checkpoint_every=0)
        server = AuditServer(settings, sys.argv[2], hmac_key=b"K" * 32)
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await server.close()

    asyncio.run(main())
""")


async def start_server_process(path: Path, sock: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVER_CHILD, str(path), sock,
                                                stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    return proc


def test_server_killed_then_back(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    sock = str(tmp_path / "audit.sock")

    async def go() -> None:
        proc = await start_server_process(path, sock)
        client = RemoteAuditLog(settings(path), sock, reconnect_min=0.02, reconnect_max=0.1)
        await client.start()
        try:
            assert await client.record(AuditEvent("statement", sql="SELECT 1")) == 2
            os.kill(proc.pid, signal.SIGSTOP)  # records now wait for an answer that never comes
            futures = [client.submit(AuditEvent("statement", sql=f"SELECT {i}")) for i in range(2, 5)]
            await asyncio.sleep(0)  # sent
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            for future in futures:
                assert future is not None
                with pytest.raises(AuditUnavailable, match="connection lost"):
                    await future
            assert not client.accepting and not client.stats().available
            with pytest.raises(AuditUnavailable, match="audit server unreachable"):
                client.submit(AuditEvent("statement", sql="SELECT 5"))
            assert client.stats().records_refused == 4

            proc = await start_server_process(path, sock)  # replaces the stale socket file
            await until(lambda: client.accepting, "the reconnection")
            assert isinstance(await client.record(AuditEvent("statement", sql="SELECT 6")), int)
        finally:
            await client.close()
            proc.terminate()
            await proc.wait()

    asyncio.run(go())
    recs = verified(path)
    assert [r["kind"] for r in recs] == ["chain_start", "statement", "chain_start", "statement", "chain_end"]
    assert recs[2]["details"]["unclean"] is True
    assert [r["sql"] for r in recs if r["kind"] == "statement"] == ["SELECT 1", "SELECT 6"]


@pytest.mark.parametrize("on_failure", ["refuse", "drop"])
def test_server_closed_under_the_client(tmp_path: Path, on_failure: str) -> None:
    path = tmp_path / "a.jsonl"
    sock = str(tmp_path / "audit.sock")

    async def go() -> None:
        cfg = settings(path, on_failure=on_failure)
        server = AuditServer(cfg, sock, hmac_key=KEY)
        await server.start()
        client = RemoteAuditLog(cfg, sock, reconnect_min=0.02, reconnect_max=0.1)
        await client.start()
        try:
            await client.record(AuditEvent("statement", sql="SELECT 1"))
            await server.close()  # written, answered, chain_end; then the connection goes
            assert not os.path.exists(sock)
            await until(lambda: not client.stats().available, "the lost connection")
            if on_failure == "refuse":
                assert not client.accepting
                with pytest.raises(AuditUnavailable, match="audit server unreachable"):
                    client.submit(AuditEvent("statement", sql="SELECT 2"))
            else:  # as AuditLog: drop mode keeps serving and counts what it drops
                assert client.accepting
                assert client.submit(AuditEvent("statement", sql="SELECT 2")) is None
                assert client.stats().records_dropped == 1
            server = AuditServer(cfg, sock, hmac_key=KEY)
            await server.start()
            await until(lambda: client.stats().available, "the reconnection")
            assert isinstance(await client.record(AuditEvent("statement", sql="SELECT 3")), int)
        finally:
            await client.close()
            await server.close()

    asyncio.run(go())
    assert [r["sql"] for r in verified(path) if r["kind"] == "statement"] == ["SELECT 1", "SELECT 3"]


# ---------------------------------------------------------------------- the socket and its peers

def test_start_and_settings_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    sock = str(tmp_path / "audit.sock")

    async def go() -> None:
        with pytest.raises(AuditKeyError):
            AuditLog(settings(path))  # the key clients are given cannot be loaded ...
        with pytest.raises(AuditUnavailable, match="unreachable"):  # ... yet they get as far as connecting
            await RemoteAuditLog(settings(path), sock).start()
        server = AuditServer(settings(path), sock, hmac_key=KEY)
        await server.start()
        try:
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
            with pytest.raises(AuditConfigError, match="durability 'strict' \\(ours 'batched'\\)"):
                await RemoteAuditLog(settings(path, durability="batched"), sock).start()
            with pytest.raises(AuditUnavailable, match="exists and is not a socket"):
                await AuditServer(settings(tmp_path / "b.jsonl"), str(path), hmac_key=KEY).start()
            client = RemoteAuditLog(settings(path), sock)
            with pytest.raises(AuditUnavailable, match="not running"):
                client.submit(AuditEvent("statement"))
        finally:
            await server.close()

    asyncio.run(go())


def test_malformed_frames_close_only_that_connection(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    sock = str(tmp_path / "audit.sock")
    bad_event = json.loads(encode_event(AuditEvent("statement", sql="SELECT 1")))
    bad_event[0] = "bogus"
    frames = [struct.pack(">I", len(p)) + p for p in (
        b"not json", b"[1, 2]", json.dumps({"events": [bad_event]}).encode(),
        json.dumps({"events": [["statement"]]}).encode(), json.dumps({"lost": -1}).encode())]
    frames.append(struct.pack(">I", 1 << 31))  # beyond the frame limit

    async def go() -> None:
        async with server_and_clients(settings(path), sock, 1) as (_, [client]):
            for frame in frames:
                reader, writer = await asyncio.open_unix_connection(sock)
                await reader.readexactly(struct.unpack(">I", await reader.readexactly(4))[0])  # hello
                writer.write(frame)
                assert await reader.read() == b""  # closed by the server
                writer.close()
            assert await client.record(AuditEvent("statement", sql="SELECT ok")) == 2

    asyncio.run(go())
    assert [r["sql"] for r in verified(path) if r["kind"] == "statement"] == ["SELECT ok"]


def test_one_loop_iteration_is_one_frame(tmp_path: Path) -> None:
    """Against a hand-written server: what is submitted in one iteration travels in one frame."""
    sock = str(tmp_path / "audit.sock")
    frames: list[dict[str, Any]] = []
    finished = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = {"hello": {"v": 1, "durability": "batched", "on_failure": "refuse", "sink": "test"},
                 "state": [True, 0.0], "seq": 0, "fsync": 0.0}
        writer.write(struct.pack(">I", len(json.dumps(hello))) + json.dumps(hello).encode())
        taken = 0
        while header := await reader.read(4):  # 4 bytes arrive together: the client writes whole frames
            frame = json.loads(await reader.readexactly(struct.unpack(">I", header)[0]))
            frames.append(frame)
            taken += len(frame.get("events", []))
            answer = json.dumps({"n": taken, **({"flushed": [frame["flush"]]} if "flush" in frame else {})}).encode()
            writer.write(struct.pack(">I", len(answer)) + answer)
        finished.set()

    async def go() -> None:
        server = await asyncio.start_unix_server(serve, sock)
        client = RemoteAuditLog(settings(tmp_path / "unused", durability="batched"), sock)
        await client.start()
        for i in range(50):
            client.submit(AuditEvent("statement", sql=f"SELECT {i}"))
        await asyncio.sleep(0)
        client.submit(AuditEvent("statement", sql="SELECT 50"))
        await client.flush()
        assert client.stats().records_written == 51
        await client.close()  # flushes once more
        await finished.wait()
        server.close()

    asyncio.run(go())
    assert [(len(f.get("events", [])), "flush" in f) for f in frames] == [(50, False), (1, True), (0, True)]
    assert [decode_event(e).sql for f in frames[:2] for e in f["events"]] == [f"SELECT {i}" for i in range(51)]


def test_remote_benchmark_runs() -> None:
    result = run_remote(records=200, durability="strict")
    assert set(result) == {"in_process", "remote"}
    assert all(figures["records"] == 200 and figures["caller_us_per_record"] > 0 for figures in result.values())
