"""Run the real proxy (``tenantgate serve``) as a subprocess in front of the test server."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import listening_or_stopped
from bench.procs import wait_listening as wait_port
from tenantgate.keyring.auth.scram import ScramClient
from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import AuthMethod, PgServer, free_port

# A small two-tenant table, and the scoping that covers it (audit and pooling tests).
ORDERS_SETUP = """
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
INSERT INTO orders VALUES ('acme', 1, 'a1'), ('acme', 2, 'a2'), ('globex', 1, 'g1');
"""
ORDERS_SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["orders"]\n'

USERS = {
    # name: (tenant or None for a trusted service user, password)
    "alice": ("acme", "alice-pw"),
    "bob": ("globex", "bob-pw"),
    "svc": (None, "svc-pw"),
}


@dataclass
class Backend:
    """A database with an unprivileged application role, as the proxy's backend."""

    pg: PgServer
    database: str
    role: str
    password: str

    @classmethod
    def create(
        cls,
        pg: PgServer,
        database: str,
        setup_sql: str = "",
        *,
        owner: bool = True,
        method: AuthMethod = "scram-sha-256",
    ) -> Backend:
        role = f"app_{database}"
        password = secrets.token_urlsafe(12)
        pg.create_role(role, password, method=method)
        pg.create_database(database, owner=role if owner else None)
        if setup_sql:
            pg.execute(setup_sql, dbname=database)
        if not owner:
            pg.execute(
                f'GRANT USAGE ON SCHEMA public TO "{role}"; '
                f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"',
                dbname=database,
            )
        return cls(pg, database, role, password)

    def direct_dsn(self) -> str:
        return self.pg.dsn(self.role, self.password, self.database)


@dataclass
class ProxyProcess:
    config_path: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    users: dict[str, tuple[str | None, str]] = field(default_factory=lambda: dict(USERS))

    def dsn(self, user: str = "svc", dbname: str = "", **params: str) -> str:
        password = self.users[user][1]
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}?sslmode=disable{extra}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


PREFER = 'sslmode = "prefer"'


def config_text(
    backend: Backend,
    port: int,
    *,
    extra: str = "",
    scoping: str = "",
    tls: str = "",
    server: str = "",
    backend_extra: str = "",
    listen: str = "",
) -> str:
    """A config file's text; ``listen`` adds lines to [listen], where ``workers = 1`` (one process,
    as most tests want) stands unless the caller's text sets workers."""
    if not re.search(r"^\s*workers\s*=", listen + extra, re.M):
        listen += "workers = 1\n"
    users = []
    for name, (tenant, password) in USERS.items():
        owner = f'tenant = "{tenant}"' if tenant else "trusted = true"
        users.append(f'[users.{name}]\n{owner}\npassword = "{password}"\n')
    return "\n".join(
        [
            f'[listen]\naddress = "127.0.0.1:{port}"\n{listen}',
            f'[backend]\nhost = "{backend.pg.host}"\nport = {backend.pg.port}\nuser = "{backend.role}"\n'
            f'password = "{backend.password}"\ndatabase = "{backend.database}"\n{backend_extra or PREFER}\n',
            tls,
            server or "[server]\nstartup_timeout = 3.0\nshutdown_timeout = 10.0\nmax_message_size = 8388608\n",
            '[tenants.acme]\ntier = "shared"\n\n[tenants.globex]\ntier = "shared"\n',
            *users,
            '[admins.dba]\npassword = "dba-pw"\n',
            scoping or '[scoping]\ncolumn = "tenant_id"\ntables = []\n',
            extra,
        ]
    )


def start_proxy(tmp: Path, text: str, port: int) -> ProxyProcess:
    config_path = tmp / "tenantgate.toml"
    config_path.write_text(text)
    log_path = tmp / "proxy.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tenantgate.proxy.cli",
                "serve",
                "--config",
                str(config_path),
                "--log-level",
                "debug",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return listening_or_stopped(ProxyProcess(config_path, port, proc, log_path), port, proc, log_path)


def launch(tmp: Path, backend: Backend, **kw: str) -> ProxyProcess:
    port = free_port()
    return start_proxy(tmp, config_text(backend, port, **kw), port)


class RawClient:
    """A hand-driven frontend over a plain socket, for bad input the real drivers never send."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.framer = codec.Framer("server")
        self.pending: list[object] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_message(self) -> object:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("proxy closed the connection")
            buf, frames = self.framer.feed(data)
            self.pending += [codec.decode_backend(t, buf[s + 5 : e]) for t, s, e in frames]
        return self.pending.pop(0)

    def until_ready(self) -> list[object]:
        """Messages up to and including the next ReadyForQuery (or until the proxy closes)."""
        out = []
        while True:
            try:
                msg = self.recv_message()
            except ConnectionError:
                return out
            out.append(msg)
            if isinstance(msg, codec.ReadyForQuery):
                return out

    def closed_now(self) -> bool:
        """True when the proxy has already closed the socket (does not wait)."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            self.sock.setblocking(True)

    def closed(self) -> bool:
        """True once the proxy has closed the socket (after reading what it sent)."""
        try:
            while self.sock.recv(65536):
                pass
        except (ConnectionError, TimeoutError):
            return False
        return True

    def login(self, user: str, password: str, database: str = "", **startup: str) -> list[object]:
        """SCRAM login; ``startup`` adds startup parameters (client_encoding, options, ...)."""
        params = {"user": user, **({"database": database} if database else {}), **startup}
        self.send(codec.StartupMessage(params).encode())
        request = self.recv_message()
        if isinstance(request, codec.ErrorResponse):
            return [request]
        assert isinstance(request, codec.Authentication) and request.code == codec.AUTH_SASL, request
        scram = ScramClient(password)
        self.send(codec.sasl_initial_response("SCRAM-SHA-256", scram.first()).encode())
        cont = self.recv_message()
        if isinstance(cont, codec.ErrorResponse):
            return [cont]
        assert isinstance(cont, codec.Authentication)
        self.send(codec.PasswordMessage(scram.final(cont.data)).encode())
        final = self.recv_message()
        if isinstance(final, codec.ErrorResponse):
            return [final]
        return self.until_ready()

    def query(self, sql: str) -> list[object]:
        self.send(codec.Query(sql).encode())
        return self.until_ready()

    def close(self) -> None:
        self.sock.close()


def errors(messages: list[object]) -> list[codec.ErrorResponse]:
    return [m for m in messages if type(m) is codec.ErrorResponse]


def launch_with_ports(tmp: Path, backend: Backend, *names: str, **kw: str) -> tuple[ProxyProcess, dict[str, int]]:
    """Like launch(), plus more [listen] addresses on free ports: e.g. ("admin", "metrics") -> their ports."""
    port = free_port()
    extra: dict[str, int] = {}
    while len(extra) < len(names):  # free_port() may hand out the same port twice in a row
        candidate = free_port()
        if candidate != port and candidate not in extra.values():
            extra[names[len(extra)]] = candidate
    listen = "".join(f'{name} = "127.0.0.1:{p}"\n' for name, p in extra.items())
    text = config_text(backend, port, **kw).replace("[listen]\n", "[listen]\n" + listen, 1)
    proxy = start_proxy(tmp, text, port)
    for p in extra.values():
        wait_port(p, proxy.proc, proxy.log_path)
    return proxy, extra
