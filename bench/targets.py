"""What pgbench talks to: PostgreSQL directly, PgBouncer, and tenantgate in several configurations.

>>> t = Target("direct", port=5432, logins={"t01": ("app", "pw")}, predicate=True, max_clients=600)
>>> t.login("t01"), t.runs("select-only", "prepared", 512)
(('app', 'pw'), True)
>>> t
Target(name='direct', port=5432)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .procs import listening_or_stopped, process_tree, raise_nofile
from .workload import SCOPED_TABLES, WORKLOADS

PROTOCOLS = ("simple", "extended", "prepared")
# Backend connections of a transaction-pooled tenantgate, the same as PgBouncer's default_pool_size.
POOL_SIZE = 20
TRUSTED_USER = "svc"


@dataclass(frozen=True)
class Variant:
    """One tenantgate configuration.

    ``scoped``: tenant users log in and the proxy scopes (else the trusted service user, a
    plain relay). ``durability``: the ``[audit]`` durability, None for no audit. ``pooled``:
    ``[backend] pool_mode = "transaction"`` with ``POOL_SIZE`` backends, so clients hold no
    backend between transactions. ``encrypted``: reads ``accounts_enc``, whose ``abalance``
    the proxy must decrypt. ``monitored``: with ``MONITORING`` (security monitoring on).
    """

    scoped: bool
    durability: str | None
    pooled: bool
    encrypted: bool = False
    monitored: bool = False


VARIANTS: dict[str, Variant] = {
    "tenantgate-relay": Variant(scoped=False, durability=None, pooled=False),
    "tenantgate-scoped": Variant(scoped=True, durability=None, pooled=False),
    "tenantgate-scoped-pooled": Variant(scoped=True, durability=None, pooled=True),
    "tenantgate-scoped-audit": Variant(scoped=True, durability="batched", pooled=True),
    "tenantgate-scoped-audit-session": Variant(scoped=True, durability="batched", pooled=False),
    "tenantgate-scoped-audit-strict": Variant(scoped=True, durability="strict", pooled=True),
    "tenantgate-scoped-audit-encrypted": Variant(scoped=True, durability="batched", pooled=True, encrypted=True),
    "tenantgate-scoped-encrypted": Variant(scoped=True, durability=None, pooled=True, encrypted=True),
    # tenantgate-scoped-audit with security monitoring on: `python -m bench monitor-cost` pairs the two
    "tenantgate-scoped-audit-monitored": Variant(scoped=True, durability="batched", pooled=True, monitored=True),
}
# Monitoring of the -monitored variant: every detector on, a fold every second (10x the default's rate).
MONITORING = "[monitoring]\ninterval = 1.0\n"


@dataclass(repr=False)
class Target:
    """One endpoint and how each tenant's pgbench logs in to it.

    ``predicate``: the scripts must carry the tenant predicate themselves (nothing scopes
    for them). ``pid``: the process whose CPU and memory are measured (None: not ours to
    measure, e.g. PostgreSQL itself). ``table``: the accounts table the scripts read.
    ``max_idle``: idle clients it can hold for the memory measurement (0: not measured), and
    ``idle_limit`` what limits that number. ``pid`` covers its descendants too (workers).
    """

    name: str
    port: int
    logins: dict[str, tuple[str, str]]
    predicate: bool
    max_clients: int
    pid: int | None = None
    table: str = "accounts"
    workloads: tuple[str, ...] = WORKLOADS
    protocols: tuple[str, ...] = PROTOCOLS
    max_idle: int = 0
    idle_limit: str = ""
    processes: int | None = None  # the measured process tree's size once warmed up (supervisor + workers)

    def __repr__(self) -> str:
        # logins hold passwords: never print them
        return f"Target(name={self.name!r}, port={self.port})"

    def login(self, tenant: str) -> tuple[str, str]:
        return self.logins[tenant]

    def runs(self, workload: str, protocol: str, clients: int) -> bool:
        return workload in self.workloads and protocol in self.protocols and clients <= self.max_clients


def tenant_user(tenant: str) -> str:
    return f"user_{tenant}"


def tenantgate_config(
    *,
    port: int,
    pg_port: int,
    database: str,
    backend_user: str,
    backend_password_file: Path,
    passwords: dict[str, str],
    service_password: str,
    audit: tuple[str, Path, Path] | None = None,
    encryption: str = "",
    pool_size: int | None = None,
    workers: int | None = None,
    monitored: bool = False,
) -> str:
    """A tenantgate TOML: one user per tenant (``passwords``: tenant -> password) and the trusted
    service user ``TRUSTED_USER``; ``audit`` is (durability, key file, log path); ``pool_size``
    turns on transaction pooling; ``workers`` None leaves the proxy's default; ``monitored`` adds
    ``MONITORING``.

    >>> text = tenantgate_config(port=7000, pg_port=5432, database="bench", backend_user="app",
    ...                          backend_password_file=Path("/w/pw"), passwords={"t01": "x"}, service_password="y",
    ...                          pool_size=20, workers=2)
    >>> print(text.split("\\n\\n")[0])
    [listen]
    address = "127.0.0.1:7000"
    workers = 2
    >>> 'pool_mode = "transaction"\\npool_size = 20' in text
    True
    """
    pooling = f'pool_mode = "transaction"\npool_size = {pool_size}\n' if pool_size is not None else ""
    parts = [
        f'[listen]\naddress = "127.0.0.1:{port}"\n' + (f"workers = {workers}\n" if workers is not None else ""),
        f'[backend]\nhost = "127.0.0.1"\nport = {pg_port}\nuser = "{backend_user}"\n'
        f'password_file = "{backend_password_file}"\ndatabase = "{database}"\nsslmode = "disable"\n{pooling}',
        # 512 clients log in at once, each with a backend connection to make
        "[server]\nstartup_timeout = 60.0\nshutdown_timeout = 5.0\n",
        '[logging]\nlevel = "warning"\n',
    ]
    for tenant, password in passwords.items():
        parts.append(f'[tenants.{tenant}]\ntier = "shared"\n')
        parts.append(f'[users.{tenant_user(tenant)}]\ntenant = "{tenant}"\npassword = "{password}"\n')
    parts.append(f'[users.{TRUSTED_USER}]\ntrusted = true\npassword = "{service_password}"\n')
    tables = ", ".join(f'"{t}"' for t in SCOPED_TABLES)
    parts.append(f'[scoping]\ncolumn = "tenant_id"\ntables = [{tables}]\n')
    if audit is not None:
        durability, key_file, path = audit
        parts.append(f'[audit]\nkey = "file:{key_file}"\npath = "{path}"\ndurability = "{durability}"\n')
    if encryption:
        parts.append(encryption)
    if monitored:
        parts.append(MONITORING)
    return "\n".join(parts)


def write_audit_key(path: Path) -> Path:
    """A fresh 256-bit audit HMAC key as 64 hex digits, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(os.urandom(32).hex() + "\n")
    return path


@dataclass
class ProxyProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, name: str, config_path: Path, port: int) -> ProxyProcess:
        return cls.launch(name, ["tenantgate.proxy.cli", "serve", "--config", str(config_path)], port,
                          config_path.with_suffix(".log"))

    @classmethod
    def launch(cls, name: str, module_args: list[str], port: int, log_path: Path) -> ProxyProcess:
        """``python -m MODULE ARGS...`` (from the repository root), once it listens on ``port``."""
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", *module_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONUNBUFFERED="1"), preexec_fn=raise_nofile,
            )
        return listening_or_stopped(cls(name, port, proc, log_path), port, proc, log_path)

    def stop(self) -> None:
        """SIGTERM (idle sessions close at once); SIGKILL to the whole tree if it does not exit."""
        if self.proc.poll() is None:
            tree = process_tree(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                for pid in tree:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait()
