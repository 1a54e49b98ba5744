"""PgBouncer as the reference pooler: found or installed, run unprivileged in transaction mode.

>>> print(ini_text(port=6000, pg_port=5432, database="bench", workdir=Path("/w"), prepared=False))
... # doctest: +ELLIPSIS
[databases]
bench = host=127.0.0.1 port=5432 dbname=bench
<BLANKLINE>
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6000
unix_socket_dir =
auth_type = scram-sha-256
auth_file = /w/userlist.txt
pool_mode = transaction
...
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import listening_or_stopped
from .targets import POOL_SIZE

OS_USER = "postgres"
# Protocol-level prepared statements in transaction mode arrived in PgBouncer 1.21.
PREPARED_SINCE = (1, 21)


def locate(notes: list[str]) -> str | None:
    """The pgbouncer binary: PATH, else ``apt-get install -y pgbouncer`` (root only); None if neither works."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if found:
        return found
    if os.geteuid() != 0:
        notes.append("pgbouncer unavailable: not on PATH and not root, so not installed")
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(["apt-get", "install", "-y", "-q", "pgbouncer"], capture_output=True, text=True,
                            env=env, check=False)
    if result.returncode != 0:
        update = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env, check=False)
        if update.returncode == 0:
            result = subprocess.run(["apt-get", "install", "-y", "-q", "pgbouncer"], capture_output=True,
                                    text=True, env=env, check=False)
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        notes.append(f"pgbouncer unavailable: apt-get install failed ({tail[0]})")
        return None
    notes.append("pgbouncer installed with apt-get")
    return found


def version(binary: str) -> tuple[int, ...]:
    """PgBouncer's version as a tuple, e.g. (1, 18, 0)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if not match:
        raise RuntimeError(f"cannot read the version of {binary}: {out.strip()!r}")
    return tuple(int(part) for part in match.groups() if part is not None)


def ini_text(*, port: int, pg_port: int, database: str, workdir: Path, prepared: bool) -> str:
    lines = [
        "[databases]",
        f"{database} = host=127.0.0.1 port={pg_port} dbname={database}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = scram-sha-256",
        f"auth_file = {workdir / 'userlist.txt'}",
        "pool_mode = transaction",
        f"default_pool_size = {POOL_SIZE}",
        "max_client_conn = 1000",
        f"logfile = {workdir / 'pgbouncer.log'}",
        f"pidfile = {workdir / 'pgbouncer.pid'}",
        "log_connections = 0",
        "log_disconnections = 0",
        "server_tls_sslmode = disable",
    ]
    if prepared:
        lines.append("max_prepared_statements = 200")
    return "\n".join(lines) + "\n"


@dataclass
class PgBouncer:
    binary: str
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes]
    version: tuple[int, ...]

    @property
    def supports_prepared(self) -> bool:
        return self.version >= PREPARED_SINCE

    @classmethod
    def start(cls, binary: str, workdir: Path, *, port: int, pg_port: int, database: str, user: str,
              password: str) -> PgBouncer:
        """Run PgBouncer as the unprivileged ``postgres`` OS user with its files in ``workdir`` (handed to it).

        ``password``: the plaintext, or the role's SCRAM secret from ``pg_authid`` (then PgBouncer
        logs into the server with the client's SCRAM proof).
        """
        account = pwd.getpwnam(OS_USER) if os.geteuid() == 0 else None
        ver = version(binary)
        (workdir / "pgbouncer.ini").write_text(
            ini_text(port=port, pg_port=pg_port, database=database, workdir=workdir, prepared=ver >= PREPARED_SINCE))
        # Either kind of auth_file entry lets PgBouncer answer SCRAM and log into the server.
        userlist = workdir / "userlist.txt"
        userlist.write_text(f'"{user}" "{password}"\n')
        for path in (workdir, workdir / "pgbouncer.ini", userlist):
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
            if account is not None:
                os.chown(path, account.pw_uid, account.pw_gid)
        kwargs = {} if account is None else {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        with open(workdir / "pgbouncer.out", "wb") as out:
            proc = subprocess.Popen([binary, str(workdir / "pgbouncer.ini")], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=workdir, **kwargs)  # type: ignore[call-overload]
        return listening_or_stopped(cls(binary, workdir, port, proc, ver), port, proc, workdir / "pgbouncer.log")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
