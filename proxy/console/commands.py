"""The admin console's commands: the table of what a DBA may type, and what each one answers.

Commands are case-insensitive, a trailing ``;`` is allowed and several may be sent in one query
string (admin.py splits them). A handler reads and steers the serving process through its caller's
``proxy`` only, so the supervisor of several workers runs the same table on each worker.

>>> parse("show  tenants;")[0].name, parse("kill session 12")[1]
('SHOW TENANTS', ['12'])
>>> try:
...     parse("SHOW NOTHING")
... except AdminError as exc:
...     print(exc.sqlstate, str(exc)[:60])
42601 unknown command "SHOW NOTHING"; valid commands: SHOW HELP, S
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Protocol

from tenantgate.config.schema import LIMIT_KEYS
from tenantgate.keyring.errors import KeyringError, SqlStateError
from tenantgate.proxy import native
from tenantgate.proxy.monitor.runtime import Monitor
from tenantgate.proxy.placement import Placement
from tenantgate.proxy.process import Proxy
from tenantgate.proxy.state import ClientView, PoolView, ProxyView, SessionSnapshot

CREATE_TIMEOUT = 300.0  # seconds CREATE TENANT waits for `tenant create` (schema tier: DDL, reference rows)


class AdminError(SqlStateError):
    """A command that failed: answered with an ErrorResponse, the session goes on."""


@dataclass
class Result:
    """What a command answers: an optional result set, its tag, notices and a follow-up action."""

    tag: str
    columns: tuple[str, ...] = ()
    rows: list[tuple[object, ...]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    after: Callable[[], None] | None = None  # runs once the reply (and ReadyForQuery) is written


class Caller(Protocol):
    """Who runs a command: an admin connection, or a worker answering its supervisor."""

    @property
    def proxy(self) -> Proxy: ...


@dataclass(frozen=True)
class ProxyCaller:
    """The Caller of a command that no admin connection typed: sent by a supervisor or a peer."""

    proxy: Proxy


Handler = Callable[[Caller, list[str]], Awaitable[Result]]


@dataclass(frozen=True)
class Command:
    name: str  # the keywords, e.g. "KILL SESSION"
    usage: str  # argument syntax for help and errors: "", "[tenant]", "<id>", "[WAIT]"
    help: str
    run: Handler

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.name.split())

    @property
    def max_args(self) -> int:
        """How many arguments at most (any number after a ``...`` one)."""
        words = self.usage.split()
        return sys.maxsize if words and words[-1].endswith("...]") else len(words)

    @property
    def min_args(self) -> int:
        return sum(1 for a in self.usage.split() if a.startswith("<"))

    @property
    def synopsis(self) -> str:
        return f"{self.name} {self.usage}".strip()


def parse(text: str) -> tuple[Command, list[str]]:
    """The command and its arguments in one statement; AdminError 42601 when neither fits."""
    tokens = text.strip().rstrip(";").split()
    upper = tuple(t.upper() for t in tokens)
    for cmd in sorted(COMMANDS, key=lambda c: -len(c.words)):
        n = len(cmd.words)
        if upper[:n] == cmd.words:
            args = tokens[n:]
            if not cmd.min_args <= len(args) <= cmd.max_args:
                raise AdminError("42601", f"wrong number of arguments: usage is {cmd.synopsis}")
            return cmd, args
    valid = ", ".join(c.synopsis for c in COMMANDS)
    raise AdminError("42601", f'unknown command "{" ".join(tokens)}"; valid commands: {valid}')


# ---------------------------------------------------------------------- formatting


def _timestamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(epoch))


def flatten(data: object, prefix: str = "") -> list[tuple[str, str | None]]:
    """Nested config data as (dotted key, text value) rows, in order.

    >>> flatten({"a": {"b": 1, "c": None}, "d": [1, "x"], "e": True})
    [('a.b', '1'), ('a.c', None), ('d', '[1, "x"]'), ('e', 'true')]
    """
    if isinstance(data, dict):
        rows: list[tuple[str, str | None]] = []
        for key, value in data.items():
            rows += flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if data is None:
        return [(prefix, None)]
    if isinstance(data, bool):
        return [(prefix, "true" if data else "false")]
    if isinstance(data, list | tuple):
        return [(prefix, json.dumps(data))]
    return [(prefix, str(data))]


def session_state(session: SessionSnapshot | None) -> str:
    """pg_stat_activity's words for what a session is doing."""
    if session is None:
        return "starting"
    if session.busy_since is not None:
        return "active"
    if session.status == "T":
        return "idle in transaction"
    if session.status == "E":
        return "idle in transaction (aborted)"
    return "idle"


# ---------------------------------------------------------------------- commands


def _tenant_arg(proxy: ProxyView, tenant: str) -> str:
    known = set(proxy.config.tenants) | {c.tenant for c in proxy.sessions if c.tenant is not None}
    if tenant not in known:
        raise AdminError("42704", f'unknown tenant "{tenant}"; valid tenants: {", ".join(sorted(known)) or "(none)"}')
    return tenant


def _sessions(proxy: ProxyView) -> list[ClientView]:
    return sorted(proxy.sessions, key=lambda c: c.id)


async def show_help(conn: Caller, args: list[str]) -> Result:
    return Result("SHOW", ("command", "description"), [(c.synopsis, c.help) for c in COMMANDS])


async def show_version(conn: Caller, args: list[str]) -> Result:
    return Result("SHOW", ("version",), [(f"tenantgate {version('tenantgate')} ({native.describe()})",)])


async def show_tenants(conn: Caller, args: list[str]) -> Result:
    proxy: ProxyView = conn.proxy
    config = proxy.config
    live: dict[str, list[ClientView]] = {}
    for c in proxy.sessions:
        if c.tenant is not None:
            live.setdefault(c.tenant, []).append(c)
    limiters = proxy.limiters
    rows: list[tuple[object, ...]] = []
    for name in sorted(set(config.tenants) | set(live)):
        t = config.tenant(name)
        placement = Placement.of(config, name)
        clients = live.get(name, [])
        snapshots = [c.snapshot for c in clients]
        limiter = limiters.get(name)
        limits = ", ".join(
            f"{key} = {getattr(t.limits, key):g}" for key in LIMIT_KEYS if getattr(t.limits, key) is not None
        )
        if t.limits.max_rows is not None:
            limits += f" ({t.limits.max_rows_action})"
        rows.append(
            (
                name,
                t.tier,
                t.schema,
                placement.describe(),
                t.region or placement.backend.region,
                len(clients),
                limiter.backends if limiter is not None else 0,
                sum(s.statements for s in snapshots if s is not None),
                sum(s.refused for s in snapshots if s is not None),
                sum(c.bytes_in for c in clients),
                sum(c.bytes_out for c in clients),
                "*" in proxy.paused or name in proxy.paused,
                limits or None,
                sum(limiter.hits.values()) if limiter is not None else 0,
            )
        )
    columns = (
        "tenant",
        "tier",
        "schema",
        "backend",
        "region",
        "sessions",
        "backend_connections",
        "statements",
        "refusals",
        "bytes_in",
        "bytes_out",
        "paused",
        "limits",
        "limit_hits",
    )
    return Result("SHOW", columns, rows)


async def show_users(conn: Caller, args: list[str]) -> Result:
    users = conn.proxy.config.users
    rows: list[tuple[object, ...]] = [(u.name, u.tenant, u.trusted, u.role, u.auth) for u in users.values()]
    return Result("SHOW", ("user", "tenant", "trusted", "role", "auth"), sorted(rows, key=lambda r: str(r[0])))


async def show_sessions(conn: Caller, args: list[str]) -> Result:
    now = time.monotonic()
    rows: list[tuple[object, ...]] = []
    for c in _sessions(conn.proxy):
        s = c.snapshot
        busy = s.busy_since if s is not None else None
        rows.append(
            (
                c.id,
                c.user,
                c.tenant,
                c.database,
                c.peer,
                session_state(s),
                s.status if s is not None else None,
                now - busy if busy is not None else None,
                c.params.get("application_name"),
                c.ssl_in_use,
                _timestamp(c.connected_at),
                s.statements if s is not None else 0,
                s.refused if s is not None else 0,
                s.held if s is not None else None,
                s.pinned if s is not None and s.pool is not None else None,
            )
        )
    columns = (
        "id",
        "user",
        "tenant",
        "database",
        "addr",
        "state",
        "tx",
        "statement_age_s",
        "application_name",
        "tls",
        "connected_at",
        "statements",
        "refused",
        "held",
        "pinned",
    )
    return Result("SHOW", columns, rows)


async def show_servers(conn: Caller, args: list[str]) -> Result:
    rows: list[tuple[object, ...]] = []
    for c in _sessions(conn.proxy):
        b = c.backend
        if b is None or b.conn.is_closed:
            continue
        rows.append(
            (c.id, b.database, b.target.user, b.target.host, b.target.port, b.pid, session_state(c.snapshot),
             b.conn.ssl_in_use)
        )
    for pool in _pools(conn.proxy):  # transaction mode: backends no session holds right now
        for b in pool.idle:
            rows.append(
                (None, b.database, b.target.user, b.target.host, b.target.port, b.pid, "idle", b.conn.ssl_in_use)
            )
    return Result("SHOW", ("id", "database", "user", "addr", "port", "pid", "state", "tls"), rows)


def _pools(proxy: ProxyView) -> list[PoolView]:
    """The transaction-mode pools (proxy.pool_for); none in session mode."""
    return list(proxy.pools.values())


async def show_pools(conn: Caller, args: list[str]) -> Result:
    """Session pooling: every client owns one backend, so a pool is a (database, user) pair.
    Transaction pools are shared by tenant users: one row each, under the backend role."""
    now = time.monotonic()
    pools: dict[tuple[str, str], list[int | float]] = {}
    proxy: ProxyView = conn.proxy
    shared = _pools(proxy)
    clients: dict[int, int] = {}
    for c in proxy.sessions:
        s = c.snapshot
        pool = s.pool if s is not None else None
        if pool is not None:
            clients[id(pool)] = clients.get(id(pool), 0) + 1
            continue
        p = pools.setdefault((c.database, c.user), [0, 0, 0, 0, 0.0])  # cl_active, cl_waiting, sv_active, sv_idle
        held_since = s.held_since if s is not None else None
        if held_since is not None:  # paused with statements held back
            p[1] += 1
            p[4] = max(p[4], now - held_since)
        else:
            p[0] += 1
        if s is not None and (s.busy_since is not None or s.status != "I"):
            p[2] += 1
        else:
            p[3] += 1
    rows: list[tuple[object, ...]] = [
        (db, user, int(a), int(w), int(sa), int(si), 0, wait, "session")
        for (db, user), (a, w, sa, si, wait) in sorted(pools.items())
    ]
    for pool in shared:
        waiting = len(pool.waiters)
        active = clients.get(id(pool), 0)
        row = (pool.database, pool.target.user, active - min(waiting, active), waiting)
        rows.append((*row, len(pool.busy), len(pool.idle), 0, pool.max_wait, "transaction"))
    columns = ("database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "maxwait", "pool_mode")
    return Result("SHOW", columns, rows)


async def show_stats(conn: Caller, args: list[str]) -> Result:
    rows: list[tuple[object, ...]] = []
    for label, st in sorted(conn.proxy.metrics.tenant_stats().items()):
        avg = st.avg_seconds
        rows.append((label, st.statements, st.refused, st.bytes_in, st.bytes_out, None if avg is None else avg * 1000))
    return Result("SHOW", ("tenant", "statements", "refused", "bytes_in", "bytes_out", "avg_statement_ms"), rows)


async def show_config(conn: Caller, args: list[str]) -> Result:
    rows: list[tuple[object, ...]] = list(flatten(conn.proxy.config.redacted()))
    return Result("SHOW", ("key", "value"), rows)


async def show_keys(conn: Caller, args: list[str]) -> Result:
    keyring = getattr(conn.proxy, "keyring", None)
    rows: list[tuple[object, ...]] = []
    if keyring is not None:
        for k in await keyring.list_keys():
            destroyed = k.destroyed_at.isoformat(sep=" ", timespec="seconds") if k.destroyed_at else None
            rows.append((k.tenant, k.version, k.created_at.isoformat(sep=" ", timespec="seconds"), destroyed))
    return Result("SHOW", ("tenant", "version", "created_at", "destroyed_at"), rows)


async def show_audit(conn: Caller, args: list[str]) -> Result:
    columns = ("sink", "path", "queue_depth", "last_seq", "records_written", "records_dropped", "lag_s")
    audit = getattr(conn.proxy, "audit", None)
    if audit is None:
        return Result("SHOW", columns, [("disabled", None, None, None, None, None, None)])
    settings, st = audit.settings, audit.stats()
    # the postgres sink is named by its table: its DSN may hold a password
    where = str(settings.path) if settings.sink == "file" else settings.table
    row = (settings.sink, where, st.queue_depth, st.last_seq, st.records_written, st.records_dropped, float(st.lag))
    return Result("SHOW", columns, [row])


def _monitor(proxy: Proxy) -> Monitor:
    if proxy.monitor is None:
        raise AdminError("55000", "security monitoring is off: add a [monitoring] section to the config")
    return proxy.monitor


ALERT_COLUMNS = ("id", "at", "detector", "severity", "tenant", "user", "observed", "threshold", "baseline",
                 "evidence", "response", "until", "undone")


async def show_alerts(conn: Caller, args: list[str]) -> Result:
    rows: list[tuple[object, ...]] = []
    for a in reversed(_monitor(conn.proxy).alerts):  # newest first
        f = a.finding
        until = _timestamp(a.until) if a.until is not None else None
        rows.append((a.id, _timestamp(a.at), f.detector, f.severity, f.tenant, f.user, f.observed, f.threshold,
                     f.center, json.dumps(dict(f.evidence), sort_keys=True), a.response, until, a.undone))
    return Result("SHOW", ALERT_COLUMNS, rows)


async def undo_alert(conn: Caller, args: list[str]) -> Result:
    if not args[0].isdigit():
        raise AdminError("22P02", f'invalid alert id "{args[0]}": SHOW ALERTS lists the ids')
    try:
        alert = _monitor(conn.proxy).undo(int(args[0]), getattr(conn, "user", "") or "admin")
    except KeyError:
        raise AdminError("42704", f"alert {args[0]} has no response in effect: SHOW ALERTS lists them") from None
    return Result("UNDO ALERT", notices=[f"alert {alert.id}: {alert.response} undone"])


async def reload(conn: Caller, args: list[str]) -> Result:
    applied, messages = conn.proxy.reload()
    if not applied:
        raise AdminError("F0000", "reload refused, the old configuration stays in effect:\n" + "\n".join(messages))
    return Result("RELOAD", notices=messages)


async def pause(conn: Caller, args: list[str]) -> Result:
    conn.proxy.pause(_tenant_arg(conn.proxy, args[0]) if args else None)
    return Result("PAUSE")


async def resume(conn: Caller, args: list[str]) -> Result:
    conn.proxy.resume(_tenant_arg(conn.proxy, args[0]) if args else None)
    return Result("RESUME")


async def kill_session(conn: Caller, args: list[str]) -> Result:
    if not args[0].isdigit():
        raise AdminError("22P02", f'invalid session id "{args[0]}": SHOW SESSIONS lists the ids')
    wanted = int(args[0])
    clients = [c for c in conn.proxy.sessions if c.id == wanted]
    if not clients:
        raise AdminError("42704", f"no session with id {wanted}: SHOW SESSIONS lists the ids")
    return Result(f"KILL {conn.proxy.kill(clients)}")


async def kill_tenant(conn: Caller, args: list[str]) -> Result:
    tenant = _tenant_arg(conn.proxy, args[0])
    return Result(f"KILL {conn.proxy.kill(conn.proxy.sessions_of(tenant))}")


async def rotate_key(conn: Caller, args: list[str]) -> Result:
    keyring = getattr(conn.proxy, "keyring", None)
    if keyring is None:
        raise AdminError("0A000", "no keyring configured")
    tenant = _tenant_arg(conn.proxy, args[0])
    try:
        new_version = await keyring.rotate(tenant)
    except KeyringError as exc:  # its messages name tenants and versions, never key material
        raise AdminError(exc.sqlstate, str(exc)) from None
    return Result("ROTATE", ("tenant", "version"), [(tenant, new_version)])


# CREATE TENANT's key=value options: `tenant create`'s placement options (never a password: the
# audit log records every admin command's text, so the dedicated server's password is named by
# password_env / password_file, as in the config)
CREATE_OPTIONS = ("host", "port", "database", "user", "password_env", "password_file", "sslmode", "schema", "region")


def create_arguments(args: list[str]) -> list[str]:
    """``tenant create``'s command-line arguments for ``CREATE TENANT tenant [tier] [region|key=value...]``.

    >>> create_arguments(["acme", "dedicated", "host=127.0.0.1", "port=5433", "password_env=PW"])
    ['acme', '--tier', 'dedicated', '--host', '127.0.0.1', '--port', '5433', '--password-env', 'PW']
    >>> create_arguments(["acme", "shared", "eu"])
    ['acme', '--tier', 'shared', '--region', 'eu']
    """
    tier = args[1].lower() if len(args) > 1 else "shared"
    if tier not in ("shared", "schema", "dedicated"):
        raise AdminError("22023", f"CREATE TENANT: tier must be shared, schema or dedicated, not {args[1]!r}")
    out = [args[0], "--tier", tier]
    for i, arg in enumerate(args[2:]):
        key, eq, value = arg.partition("=")
        if not eq and i == 0 and len(args) == 3:
            key, value = "region", arg  # CREATE TENANT t shared eu
        elif key.lower() == "password":
            raise AdminError(
                "22023", "CREATE TENANT: no password on the console (the audit log records commands): "
                "give password_env=VARIABLE or password_file=PATH",
            )  # fmt: skip
        elif key.lower() not in CREATE_OPTIONS or not value:
            raise AdminError("42601", f"CREATE TENANT: {arg!r}: options are {', '.join(CREATE_OPTIONS)} as key=value")
        out += [f"--{key.lower().replace('_', '-')}", value]
    return out


async def create_tenant(conn: Caller, args: list[str]) -> Result:
    """Onboard a tenant in any tier with ``tenantgate tenant create`` (proxy/ops, which the console
    may not import: it runs as a child process on this config), then reload here."""
    tenant = args[0]
    cmd = [
        sys.executable,
        "-m",
        "tenantgate.proxy.cli",
        "tenant",
        "create",
        *create_arguments(args),
        "--config",
        str(conn.proxy.config.source),
        "--no-reload",
    ]
    child = await asyncio.create_subprocess_exec(*cmd, stdout=PIPE, stderr=PIPE, stdin=DEVNULL)
    try:
        out, err = await asyncio.wait_for(child.communicate(), CREATE_TIMEOUT)
    except TimeoutError:
        child.kill()
        raise AdminError("57014", f"CREATE TENANT {tenant}: not done after {CREATE_TIMEOUT:g}s; re-run it") from None
    if child.returncode != 0:
        why = err.decode(errors="replace").strip().splitlines() or ["no message"]
        raise AdminError("22023" if child.returncode == 2 else "58000", f"CREATE TENANT {tenant}: {why[-1]}")
    applied, messages = conn.proxy.reload()
    if not applied:
        raise AdminError(
            "F0000", f"CREATE TENANT {tenant}: written, but the reload was refused:\n" + "\n".join(messages)
        )
    return Result("CREATE TENANT", notices=[*out.decode(errors="replace").splitlines(), *messages])


NOTE_EVENTS = ("deleted", "exported", "restored", "created")


async def note(conn: Caller, args: list[str]) -> Result:
    """A lifecycle tool's event for the audit log, where every admin command is recorded with its text."""
    event, tenant, digest = args
    if event.lower() not in NOTE_EVENTS:
        raise AdminError("22023", f"NOTE: event must be one of {', '.join(NOTE_EVENTS)}")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise AdminError("22023", "NOTE: the third argument is a document's SHA-256 (64 lower-case hex digits)")
    return Result("NOTE", notices=[f"recorded: {event.lower()} {tenant} {digest}"])


async def shutdown(conn: Caller, args: list[str]) -> Result:
    if args and args[0].upper() != "WAIT":
        raise AdminError("42601", "usage is SHUTDOWN [WAIT]")
    wait = bool(args)
    return Result("SHUTDOWN", after=lambda: conn.proxy.request_stop(wait))


COMMANDS: tuple[Command, ...] = (
    Command("SHOW HELP", "", "this list", show_help),
    Command("SHOW VERSION", "", "the tenantgate version", show_version),
    Command("SHOW TENANTS", "", "configured tenants, their open sessions and pause state", show_tenants),
    Command("SHOW USERS", "", "tenant and trusted users from the config", show_users),
    Command("SHOW SESSIONS", "", "open client sessions", show_sessions),
    Command("SHOW CLIENTS", "", "same as SHOW SESSIONS", show_sessions),
    Command("SHOW SERVERS", "", "backend connections, one per session", show_servers),
    Command("SHOW POOLS", "", "sessions and backends per (database, user)", show_pools),
    Command("SHOW STATS", "", "cumulative statements, refusals, bytes, average time per tenant", show_stats),
    Command("SHOW CONFIG", "", "the running configuration, secrets masked", show_config),
    Command("SHOW KEYS", "", "data key versions per tenant (no key material)", show_keys),
    Command("SHOW AUDIT", "", "audit sink and writer counters", show_audit),
    Command("SHOW ALERTS", "", "security monitoring alerts, newest first, and their responses", show_alerts),
    Command("UNDO ALERT", "<id>", "end an alert's response now (throttle, pause, login block)", undo_alert),
    Command("RELOAD", "", "re-read the config file; a bad file is refused and the old one kept", reload),
    Command("PAUSE", "[tenant]", "hold new statements of a tenant (or everyone) until RESUME", pause),
    Command("RESUME", "[tenant]", "release what PAUSE held", resume),
    Command("KILL SESSION", "<id>", "end one session (57P01)", kill_session),
    Command("KILL TENANT", "<tenant>", "end every session of a tenant (57P01)", kill_tenant),
    Command("ROTATE KEY", "<tenant>", "add a new data key version for a tenant's new writes", rotate_key),
    Command(
        "CREATE TENANT",
        "<tenant> [tier] [region|key=value...]",
        "onboard a tenant in any tier (tenant create; dedicated: host= port= database= user= password_env=)",
        create_tenant,
    ),
    Command("NOTE", "<event> <tenant> <sha256>", "record a lifecycle event (deletion certificate, ...)", note),
    Command("SHUTDOWN", "[WAIT]", "stop the proxy now, or after draining sessions (WAIT)", shutdown),
)
