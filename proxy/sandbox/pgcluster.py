"""Throwaway PostgreSQL clusters (and handles on existing servers) for the demo, tests and bench.

Longer than most modules on purpose: PgServer's one API (roles, databases, hba, DSNs) with its two
backings, an existing server and a throwaway cluster, which share everything but start and stop.

A :class:`ThrowawayCluster` is a private cluster made with the machine's ``initdb``: it
listens on 127.0.0.1 only, keeps its unix socket and data in a fresh temporary
directory, and runs with durability switched off (``fsync``, ``synchronous_commit``,
``full_page_writes``) because everything is deleted at :meth:`ThrowawayCluster.stop`.
When the interpreter runs as root the server runs as the unprivileged ``postgres``
OS user, since ``initdb`` and ``postgres`` refuse to run as root.

Every started cluster is stopped at interpreter exit and on SIGTERM.

>>> try:
...     find_pg_bin("no-such-pg-program")
... except PgBinaryNotFound as exc:
...     print(exc)  # doctest: +ELLIPSIS
PostgreSQL program 'no-such-pg-program' not found ...; install the server with: apt-get install postgresql
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import asyncpg

from tenantgate.keyring.quoting import quote_literal

__all__ = [
    "AuthMethod",
    "ExternalServer",
    "PgBinaryNotFound",
    "PgServer",
    "ThrowawayCluster",
    "find_pg_bin",
    "free_port",
]

AuthMethod = Literal["scram-sha-256", "md5", "password", "trust"]
_AUTH_METHODS: frozenset[str] = frozenset({"scram-sha-256", "md5", "password", "trust"})
# Role names are restricted so they can be written unambiguously into SQL and pg_hba.conf.
_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SETTING_NAME = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")
_OS_USER = "postgres"
_SUPERUSER = "postgres"
_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0

T = TypeVar("T")


class PgBinaryNotFound(FileNotFoundError):
    """A PostgreSQL server program is not installed."""


def find_pg_bin(name: str) -> str:
    """Path of PostgreSQL program ``name``: PATH first, then the highest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = [p for p in glob.glob(f"/usr/lib/postgresql/*/bin/{name}") if os.access(p, os.X_OK)]

    def version(path: str) -> tuple[int, ...]:
        label = Path(path).parent.parent.name
        return tuple(int(part) for part in label.split(".") if part.isdigit())

    if candidates:
        return max(candidates, key=version)
    raise PgBinaryNotFound(
        f"PostgreSQL program {name!r} not found on PATH nor under /usr/lib/postgresql/*/bin; "
        "install the server with: apt-get install postgresql"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion, also when called from inside a running event loop."""

    async def main() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def _check_role_name(name: str) -> None:
    if not _ROLE_NAME.fullmatch(name):
        raise ValueError(f"role name {name!r} must match {_ROLE_NAME.pattern}")


def _url(user: str, password: str | None, host: str, port: int, dbname: str, query: str = "") -> str:
    auth = quote(user, safe="")
    if password is not None:
        auth += ":" + quote(password, safe="")
    netloc_host = f"[{host}]" if ":" in host else host
    url = f"postgresql://{auth}@{netloc_host}:{port}/{quote(dbname, safe='')}"
    return f"{url}?{query}" if query else url


class PgServer:
    """A PostgreSQL server we hold superuser credentials for (the tests' ``pg`` fixture).

    Subclasses provide the address, the superuser connection and, when they control
    the server's pg_hba.conf, :meth:`_install_hba`.
    """

    host: str
    port: int
    superuser: str = _SUPERUSER
    #: Client address written into per-role pg_hba.conf lines.
    hba_client_address: str = "127.0.0.1/32"
    #: CA certificate that signed the server's certificate, when the server speaks TLS.
    ssl_ca: str | None = None

    def __init__(self) -> None:
        self._role_hba: list[str] = []
        self._lock = threading.Lock()

    @property
    def supports_hba(self) -> bool:
        """Whether :meth:`create_role` can install a pg_hba.conf line for the role."""
        return False

    def dsn(self, user: str = _SUPERUSER, password: str | None = None, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL for ``user`` over TCP."""
        raise NotImplementedError

    @property
    def admin_dsn(self) -> str:
        """Superuser URL over TCP."""
        return self.dsn(self.superuser, None, "postgres")

    def _admin_connect_args(self, dbname: str) -> dict[str, Any]:
        return {"dsn": self.dsn(self.superuser, None, dbname)}

    def _install_hba(self, role_lines: list[str]) -> None:
        raise NotImplementedError

    async def _connect(self, dbname: str) -> asyncpg.Connection:
        return await asyncpg.connect(**self._admin_connect_args(dbname), statement_cache_size=0)

    def execute(self, sql: str, dbname: str = "postgres") -> str:
        """Run an SQL script (one or more statements) as superuser; returns the last command tag."""

        async def go() -> str:
            conn = await self._connect(dbname)
            try:
                status: str = await conn.execute(sql)
                return status
            finally:
                await conn.close()

        return _run_async(go)

    def fetch(self, sql: str, *args: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement (``$1``… parameters) as superuser and return its rows."""

        async def go() -> list[tuple[Any, ...]]:
            conn = await self._connect(dbname)
            try:
                return [tuple(row) for row in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        return _run_async(go)

    def create_database(self, name: str, owner: str | None = None) -> None:
        """CREATE DATABASE ``name`` (optionally owned by role ``owner``)."""
        _check_role_name(name)
        sql = f'CREATE DATABASE "{name}"'
        if owner is not None:
            _check_role_name(owner)
            sql += f' OWNER "{owner}"'
        self.execute(sql)

    def create_role(
        self,
        name: str,
        password: str | None = None,
        *,
        method: AuthMethod = "scram-sha-256",
        superuser: bool = False,
        bypassrls: bool = False,
    ) -> None:
        """Create a LOGIN role that authenticates over TCP with ``method``.

        With an md5 ``method`` the password is stored md5-hashed, otherwise the server
        would answer md5 lines with SCRAM. When :attr:`supports_hba` the role gets its
        own ``host all NAME 127.0.0.1/32 METHOD`` line (address: :attr:`hba_client_address`)
        ahead of the catch-all rules.
        """
        _check_role_name(name)
        if method not in _AUTH_METHODS:
            raise ValueError(f"auth method {method!r} is not one of {sorted(_AUTH_METHODS)}")
        if password is None and method != "trust":
            raise ValueError(f"auth method {method!r} needs a password for role {name!r}")
        options = ["LOGIN", "SUPERUSER" if superuser else "NOSUPERUSER"]
        if bypassrls:
            options.append("BYPASSRLS")
        if password is not None:
            options.append("PASSWORD " + quote_literal(password))
        encryption = "md5" if method == "md5" else "scram-sha-256"
        # One session: password_encryption must be in effect when CREATE ROLE hashes the password.
        self.execute(f"SET password_encryption = '{encryption}'; CREATE ROLE \"{name}\" " + " ".join(options))
        if self.supports_hba:
            with self._lock:
                self._role_hba.append(f'host all "{name}" {self.hba_client_address} {method}')
                self._install_hba(list(self._role_hba))

    def _reload_and_wait(self) -> None:
        """Reload the configuration and wait until new sessions see it.

        pg_reload_conf() only signals the postmaster; a session forked after the
        postmaster re-read its files reports a newer pg_conf_load_time().
        """

        async def go() -> None:
            conn = await self._connect("postgres")
            try:
                before = await conn.fetchval("SELECT pg_conf_load_time()")
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()
            deadline = time.monotonic() + _READY_TIMEOUT
            while True:
                conn = await self._connect("postgres")
                try:
                    if await conn.fetchval("SELECT pg_conf_load_time()") > before:
                        return
                finally:
                    await conn.close()
                if time.monotonic() > deadline:
                    raise TimeoutError("PostgreSQL did not reload its configuration")
                await asyncio.sleep(0.02)

        _run_async(go)


class ExternalServer(PgServer):
    """An existing server reached with a superuser ``postgresql://`` URL.

    ``hba_installer``, when given, writes the per-role pg_hba.conf lines ahead of the
    server's own rules (e.g. inside a container); the server is then reloaded. Those
    lines match any client address: a container sees the Docker gateway, not loopback.

    >>> srv = ExternalServer("postgresql://admin:s3cret@127.0.0.1:5433/app?sslmode=require")
    >>> (srv.host, srv.port, srv.superuser, srv.supports_hba)
    ('127.0.0.1', 5433, 'admin', False)
    >>> srv.dsn("alice", "pw", "shop")
    'postgresql://alice:pw@127.0.0.1:5433/shop?sslmode=require'
    >>> srv
    ExternalServer(host='127.0.0.1', port=5433, superuser='admin')
    """

    def __init__(
        self,
        dsn: str,
        *,
        hba_installer: Callable[[list[str]], None] | None = None,
        ssl_ca: str | None = None,
    ) -> None:
        super().__init__()
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError("server DSN must be a postgresql://USER:PASSWORD@HOST:PORT/DB URL")
        self.host = parts.hostname
        self.port = parts.port or 5432
        self.superuser = unquote(parts.username or _SUPERUSER)
        self._password = unquote(parts.password) if parts.password is not None else None
        self._query = urlencode(parse_qsl(parts.query))
        self._hba_installer = hba_installer
        self.hba_client_address = "all"
        self.ssl_ca = ssl_ca

    def __repr__(self) -> str:
        return f"ExternalServer(host={self.host!r}, port={self.port}, superuser={self.superuser!r})"

    @property
    def supports_hba(self) -> bool:
        return self._hba_installer is not None

    def dsn(self, user: str = _SUPERUSER, password: str | None = None, dbname: str = "postgres") -> str:
        if user == self.superuser and password is None:
            password = self._password
        return _url(user, password, self.host, self.port, dbname, self._query)

    def _install_hba(self, role_lines: list[str]) -> None:
        assert self._hba_installer is not None
        self._hba_installer(role_lines)
        self._reload_and_wait()


# Clusters started and not yet stopped; stopped at exit and on SIGTERM.
_LIVE: set[ThrowawayCluster] = set()
_LIVE_LOCK = threading.Lock()
_handlers_installed = False


def _stop_all() -> None:
    with _LIVE_LOCK:
        clusters = list(_LIVE)
    for cluster in clusters:
        cluster.stop()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    # Then die of SIGTERM as the default disposition would have.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_cleanup_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_stop_all)
    # Only replace the default disposition: a program with its own SIGTERM handler
    # shuts down through it (and the atexit hook).
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


class _PortTaken(RuntimeError):
    """The server could not bind its TCP port."""


def _render_setting(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return quote_literal(str(value))


class ThrowawayCluster(PgServer):
    """A private PostgreSQL cluster in a temporary directory, deleted by :meth:`stop`.

    ``ssl`` is a (certificate, key) pair for the server; ``ssl_ca`` the CA certificate
    that signed it (exposed as :attr:`ssl_ca`, also used to verify client certificates).
    ``settings`` are extra postgresql.conf parameters; ``hba`` extra pg_hba.conf lines
    placed after the per-role lines and before the catch-all rules (local: trust,
    host: scram-sha-256). ``log_to`` receives the server log (default: inside the
    temporary directory).

    >>> ThrowawayCluster(port=5499, superuser_password="hunter2")
    ThrowawayCluster(port=5499, datadir=None)
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        ssl: tuple[str, str] | None = None,
        ssl_ca: str | None = None,
        superuser_password: str | None = None,
        settings: Mapping[str, object] | None = None,
        hba: list[str] | None = None,
        log_to: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.host = "127.0.0.1"
        self._fixed_port = port
        self.port = port or 0
        self._ssl = ssl
        self.ssl_ca = ssl_ca
        self._password = superuser_password or secrets.token_urlsafe(24)
        self._settings = dict(settings or {})
        for key in self._settings:
            if not _SETTING_NAME.fullmatch(key):
                raise ValueError(f"PostgreSQL setting name {key!r} is not valid")
        self._extra_hba = list(hba or [])
        self._log_to = Path(log_to) if log_to is not None else None
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._bindir: str | None = None

    def __repr__(self) -> str:
        return f"ThrowawayCluster(port={self.port or None}, datadir={str(self.datadir) if self._tmp else None})"

    def __enter__(self) -> ThrowawayCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def supports_hba(self) -> bool:
        return True

    @property
    def datadir(self) -> Path:
        return self._require_started() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._require_started()

    @property
    def log_path(self) -> Path:
        return self._log_to or self._require_started() / "postgres.log"

    def dsn(self, user: str = _SUPERUSER, password: str | None = None, dbname: str = "postgres") -> str:
        if user == _SUPERUSER and password is None:
            password = self._password
        return _url(user, password, self.host, self.port, dbname)

    def _admin_connect_args(self, dbname: str) -> dict[str, Any]:
        # The unix socket is "local all all trust": no password, no TLS.
        return {"host": str(self.socket_dir), "port": self.port, "user": _SUPERUSER, "database": dbname}

    def _require_started(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("the cluster is not started")
        return self._tmp

    # -- running programs as the server's OS user -------------------------------------------

    def _os_user(self) -> pwd.struct_passwd | None:
        """The unprivileged account the server runs as when we are root (created if missing)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(_OS_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--user-group", _OS_USER], check=True)
            return pwd.getpwnam(_OS_USER)

    def _give(self, path: Path, mode: int) -> None:
        os.chmod(path, mode)
        account = self._os_user()
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)

    def _run_kwargs(self) -> dict[str, Any]:
        tmp = self._require_started()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["HOME"] = str(tmp)
        kwargs: dict[str, Any] = {"cwd": tmp, "env": env, "stdin": subprocess.DEVNULL}
        account = self._os_user()
        if account is not None:
            kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
        return kwargs

    def _bin(self, name: str) -> str:
        # Take every program from initdb's directory so the versions match.
        if self._bindir is None:
            self._bindir = str(Path(os.path.realpath(find_pg_bin("initdb"))).parent)
        return str(Path(self._bindir) / name)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self._bin(args[0]), *args[1:]], capture_output=True, text=True, check=False, **self._run_kwargs()
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Create, configure and start the cluster; returns once it accepts connections."""
        if self._tmp is not None:
            raise RuntimeError("the cluster is already started")
        _install_cleanup_handlers()
        self._tmp = Path(tempfile.mkdtemp(prefix="tenantgate-pg-"))
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._give(self._tmp, 0o700)
            self._initdb()
            self._write_hba()
            for attempt in range(3):
                self.port = self._fixed_port or free_port(self.host)
                try:
                    self._launch()
                    break
                except _PortTaken:
                    # Another process took the free port between our probe and the bind.
                    if self._fixed_port or attempt == 2:
                        raise
        except BaseException:
            self.stop()
            raise

    def _initdb(self) -> None:
        tmp = self._require_started()
        pwfile = tmp / "pwfile"
        pwfile.write_text(self._password + "\n")
        self._give(pwfile, 0o600)
        try:
            self._run(
                "initdb", "-D", str(tmp / "data"), "-U", _SUPERUSER, "-E", "UTF8", "--locale=C",
                "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync",
            )  # fmt: skip
        finally:
            pwfile.unlink()
        datadir = tmp / "data"
        lines = [
            "",
            "# tenantgate throwaway cluster: durability is off on purpose, the data dies at stop().",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = {quote_literal(str(tmp))}",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 300",
        ]
        if self._ssl is not None:
            cert, key = self._ssl
            for src, dest in ((cert, "server.crt"), (key, "server.key")):
                shutil.copyfile(src, datadir / dest)
                self._give(datadir / dest, 0o600)
            lines += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
            if self.ssl_ca is not None:
                shutil.copyfile(self.ssl_ca, datadir / "root.crt")
                self._give(datadir / "root.crt", 0o600)
                lines.append("ssl_ca_file = 'root.crt'")
        lines += [f"{key} = {_render_setting(value)}" for key, value in self._settings.items()]
        with open(datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")

    def _write_hba(self) -> None:
        lines = [
            "# Written by tenantgate.proxy.sandbox.pgcluster; first match wins.",
            *self._role_hba,
            *self._extra_hba,
            "local all all trust",
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ]
        (self.datadir / "pg_hba.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _install_hba(self, role_lines: list[str]) -> None:
        self._write_hba()
        self._reload_and_wait()

    def _launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            # Our own file handle, so the log may live where the server's OS user cannot write.
            self._proc = subprocess.Popen(
                [self._bin("postgres"), "-D", str(self.datadir), "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._run_kwargs(),
            )
        deadline = time.monotonic() + _READY_TIMEOUT
        isready = [self._bin("pg_isready"), "-q", "-h", str(self.socket_dir), "-p", str(self.port)]
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                with open(self.log_path, "rb") as log_file:
                    log_file.seek(offset)
                    tail = log_file.read().decode("utf-8", "replace").strip()[-2000:]
                if "could not bind" in tail or "already in use" in tail:
                    raise _PortTaken(tail)
                raise RuntimeError(f"PostgreSQL exited during startup; log {self.log_path}:\n{tail}")
            if subprocess.run(isready, check=False, **self._run_kwargs()).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL did not accept connections; see {self.log_path}")
            time.sleep(0.05)

    def halt(self) -> None:
        """Stop the postmaster (fast shutdown) but keep the cluster: :meth:`restart` brings it back on
        the same port (a server outage in tests)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            subprocess.run(
                [self._bin("pg_ctl"), "stop", "-D", str(self.datadir), "-m", "fast", "-w"],
                capture_output=True, check=False, **self._run_kwargs(),
            )  # fmt: skip
            proc.wait(timeout=_STOP_TIMEOUT)

    def restart(self) -> None:
        """Start a :meth:`halt`-ed postmaster again; returns once it accepts connections."""
        self._require_started()
        if self._proc is None:
            self._launch()

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the directory; a no-op when not running."""
        tmp = self._tmp
        if tmp is None:
            return
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            subprocess.run(
                [self._bin("pg_ctl"), "stop", "-D", str(tmp / "data"), "-m", "fast", "-w",
                 "-t", str(int(_STOP_TIMEOUT))],
                capture_output=True, check=False, **self._run_kwargs(),
            )  # fmt: skip
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        self._tmp = None
        self._role_hba.clear()
        with _LIVE_LOCK:
            _LIVE.discard(self)
