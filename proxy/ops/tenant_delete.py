"""``tenantgate tenant delete T``: offboard a tenant and prove it with a signed certificate.

Steps (progress in ``.tenantgate-delete-<tenant>.json`` beside the config; a re-run continues):

1. PAUSE the tenant at a transaction boundary;
2. with ``--export FILE``, export it first (a backup-mode archive, tenant_export.py);
3. end its sessions, remove ``[tenants.T]`` and its users from the config (backup kept,
   validated, atomic), RELOAD. A failure up to here resumes the tenant and restores the
   config: it stays served as before. From here on it is no longer served;
4. purge: its rows in the shared tables (every tier: rows left behind by a move too), its
   schema (DROP SCHEMA ... CASCADE), or its dedicated database (DROP DATABASE, after the RELOAD
   closed the proxy's pooled backends to it; only its tables when another tenant or the shared
   backend uses that database too), counted first;
5. crypto-shred its DEKs (the key store keeps tombstones);
6. write the deletion certificate (tenant, tier, rows deleted per table, objects dropped, key
   versions destroyed, the export's SHA-256, time), signed with the audit signing key, to a
   file (0600), and record its SHA-256 in the audit log (``NOTE deleted T <sha256>``).

``tenant verify-certificate FILE`` checks a certificate offline.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from tenantgate.audit.keys import Verifier
from tenantgate.config import Config
from tenantgate.keyring.errors import KeyringError
from tenantgate.keyring.private_file import read_private_json, write_private_json
from tenantgate.keyring.quoting import quote_ident

from .admin_client import AdminClient
from .lifecycle import (
    Checkpoint,
    LifecycleError,
    Progress,
    UsageError,
    admin_of,
    command,
    keyring_of,
    load,
    no_checkpoint,
    note,
    quiesce,
    scoped_tables,
    served,
    sign,
    signer_of,
    tenant_endpoint,
    verify_signature,
)
from .move import MoveError, _shared_endpoint, drop_own_database, moved_tables
from .placement_config import PlacementSpec, replace_config, rewrite_config, without_tenant
from .placement_copy import MovedTable, delete_tenant_rows, fk_order, qualified
from .placement_purge import others_in
from .tenant_export import export_tenant

__all__ = ["CERTIFICATE_FORMAT", "DeleteRequest", "delete_tenant", "verify_certificate"]

CERTIFICATE_FORMAT = "tenantgate-deletion-certificate/1"
PHASES = ("started", "exported", "unconfigured", "purged", "shredded")


@dataclass(frozen=True)
class DeleteRequest:
    config: pathlib.Path
    tenant: str
    export: pathlib.Path | None = None
    certificate: pathlib.Path | None = None
    admin_user: str | None = None
    pause_timeout: float = 30.0
    batch_rows: int = 10000


@dataclass
class DeleteState:
    tenant: str
    tier: str
    schema: str | None
    phase: str = "started"
    backup: str | None = None  # the config as it was: the dedicated server's settings stay readable
    rows: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    export: dict[str, Any] | None = None

    @staticmethod
    def path(config: pathlib.Path, tenant: str) -> pathlib.Path:
        return config.absolute().parent / f".tenantgate-delete-{tenant}.json"

    @classmethod
    def load(cls, path: pathlib.Path) -> DeleteState | None:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(f"{path}: unreadable delete state ({exc})") from None

    def save(self, path: pathlib.Path) -> None:
        write_private_json(path, asdict(self))

    def at_least(self, phase: str) -> bool:
        return PHASES.index(self.phase) >= PHASES.index(phase)


class Deleter:
    def __init__(self, req: DeleteRequest, cfg: Config, state: DeleteState, out: Progress, checkpoint: Checkpoint):
        self.req, self.cfg, self.state, self.out, self.checkpoint = req, cfg, state, out, checkpoint
        self.tenant = req.tenant
        self.state_path = DeleteState.path(req.config, req.tenant)

    def step(self, phase: str) -> None:
        self.state.phase = phase
        self.state.save(self.state_path)

    async def run(self) -> dict[str, Any]:
        st = self.state
        if not st.at_least("unconfigured"):
            async with admin_of(self.cfg, self.req.admin_user).session() as admin:
                await self.stop_serving(admin)
        old = load(pathlib.Path(st.backup)) if st.backup else self.cfg
        try:
            if not st.at_least("purged"):
                self.checkpoint("purge")
                await self.purge(old)
                self.step("purged")
            if not st.at_least("shredded"):
                self.checkpoint("shred")
                await self.shred(old)
                self.step("shredded")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, KeyringError) as exc:
            raise LifecycleError(
                f"delete {self.tenant} ({st.phase}): {type(exc).__name__}: {exc}; the tenant is no longer served: "
                "re-run to finish"
            ) from None
        return await self.certify(old)

    async def stop_serving(self, admin: AdminClient) -> None:
        """Pause (and export); then take it out of the config. Any failure: served as before."""
        st = self.state
        path = self.req.config.absolute()
        known = await served(admin, self.tenant)
        try:
            if known:
                await quiesce(admin, self.tenant, self.req.pause_timeout, self.out)
            if self.req.export is not None and not st.at_least("exported"):
                self.checkpoint("export")
                manifest = await export_tenant(self.cfg, self.tenant, self.req.export, out=self.out)
                st.export = {"file": str(self.req.export), "manifest_sha256": manifest["signature"]["sha256"]}
                self.step("exported")
            self.checkpoint("config")
            if known:
                await command(admin, f"KILL TENANT {self.tenant}")
            st.backup = str(rewrite_config(path, without_tenant(path.read_text(encoding="utf-8"), self.tenant)))
            st.save(self.state_path)
            try:
                self.checkpoint("reload")
                await command(admin, "RELOAD")
            except BaseException:
                replace_config(path, pathlib.Path(st.backup).read_text(encoding="utf-8"))
                st.backup = None
                st.save(self.state_path)
                with contextlib.suppress(LifecycleError):
                    await command(admin, "RELOAD")
                raise
            self.step("unconfigured")
            self.out(f"config: tenant {self.tenant} removed from {path} (backup {st.backup}); the proxy reloaded")
        except BaseException:
            if known:
                with contextlib.suppress(LifecycleError):
                    await command(admin, f"RESUME {self.tenant}")
                    self.out(f"resume: tenant {self.tenant} resumed; nothing was deleted")
            raise

    def _count(self, label: str, n: int) -> None:
        self.state.rows[label] = self.state.rows.get(label, 0) + n
        self.state.save(self.state_path)

    async def purge(self, old: Config) -> None:
        st = self.state
        shared = _shared_endpoint(old)
        conn = await shared.connect(self.tenant)
        try:
            tables = await fk_order(conn, scoped_tables(old, self.tenant, "shared"))
            for t in reversed(tables):  # children first
                n = await delete_tenant_rows(conn, t, self.tenant, self.req.batch_rows, self.out)
                self._count(f"{shared.database}/{t.label}", n)
            if st.tier == "schema" and st.schema is not None:
                await self._drop(
                    conn, shared.database, scoped_tables(old, self.tenant), f"SCHEMA {quote_ident(st.schema)} CASCADE"
                )
        finally:
            await conn.close()
        if st.tier == "dedicated":
            await self.purge_dedicated(old)

    async def purge_dedicated(self, old: Config) -> None:
        """Its tables counted; its database dropped when it is the tenant's alone (else its tables)."""
        st = self.state
        endpoint = tenant_endpoint(old, self.tenant)
        what = endpoint.where.describe()
        if what in st.dropped:
            return
        others = others_in(old, endpoint.where, self.tenant)
        conn = await endpoint.connect(self.tenant)
        try:
            tables = await self._present(conn, moved_tables(old, PlacementSpec("dedicated")))
            scoped = [t for t in tables if t.column is not None]
            if others:  # not its own: other rows live there, only the tenant's go
                for t in reversed(await fk_order(conn, scoped)):
                    n = await delete_tenant_rows(conn, t, self.tenant, self.req.batch_rows, self.out)
                    self._count(f"{endpoint.database}/{t.label}", n)
            else:  # its tables first: no row stays even if the database cannot be dropped
                names = ", ".join(qualified(t.target) for t in tables)
                await self._drop(conn, endpoint.database, scoped, f"TABLE {names} CASCADE" if tables else "")
        finally:
            await conn.close()
        if others:
            self.out(f"purge: {what} kept: {', '.join(others)} keep data there too")
            return
        try:
            ended = await drop_own_database(endpoint, self.tenant)
        except MoveError as exc:
            raise LifecycleError(
                f"delete {self.tenant}: {exc}; the tenant is no longer served: re-run to finish"
            ) from None
        st.dropped.append(what)
        st.save(self.state_path)
        self.out(f"purge: dropped {what} ({ended} sessions still open were ended)")

    async def _present(self, conn: asyncpg.Connection, tables: list[MovedTable]) -> list[MovedTable]:
        return [t for t in tables if await conn.fetchval("SELECT to_regclass($1)", qualified(t.target))]

    async def _drop(self, conn: asyncpg.Connection, database: str, tables: list[MovedTable], what: str) -> None:
        """Count the tenant's rows in ``tables`` (those that exist), then DROP ``what``."""
        for t in await self._present(conn, tables):
            n = await conn.fetchval(
                f"SELECT count(*) FROM {qualified(t.target)} WHERE {quote_ident(t.column or '')} = $1", self.tenant
            )
            self.state.rows[f"{database}/{t.target[0]}.{t.target[1]}"] = n  # all of them go at once: not summed
            self.state.save(self.state_path)
        if what:
            await conn.execute(f"DROP {what}")
            self.state.dropped.append(what.removesuffix(" CASCADE"))
            self.state.save(self.state_path)
            self.out(f"purge: dropped {what}")

    async def shred(self, old: Config) -> None:
        keyring = keyring_of(old)
        if keyring is None:
            return
        try:
            versions = await keyring.shred(self.tenant, confirm=self.tenant)
        finally:
            await keyring.close()
        self.out(f"shred: destroyed key versions {versions or 'none left'} of tenant {self.tenant}")

    async def certify(self, old: Config) -> dict[str, Any]:
        st = self.state
        keyring = keyring_of(old)
        destroyed: list[int] = []
        if keyring is not None:
            try:
                records = await keyring.store.load(self.tenant)
            finally:
                await keyring.close()
            if any(not r.destroyed for r in records):
                raise LifecycleError(f"tenant {self.tenant} still has live keys after the shred; re-run")
            destroyed = [r.version for r in records]
        cert = sign(
            signer_of(old),
            {
                "format": CERTIFICATE_FORMAT,
                "tenant": self.tenant,
                "tier": st.tier,
                "deleted_at": datetime.now(UTC).isoformat(),
                "rows_deleted": st.rows,
                "objects_dropped": st.dropped,
                "key_versions_destroyed": destroyed,
                "export": st.export,
                "config_backup": st.backup,
            },
        )
        path = self.req.certificate or self.req.config.absolute().parent / f"tenantgate-deletion-{self.tenant}.json"
        write_private_json(path, cert)
        sha = cert["signature"]["sha256"]
        await note(self.cfg, self.req.admin_user, "deleted", self.tenant, sha, self.out)  # the file stands anyway
        self.state_path.unlink(missing_ok=True)
        self.out(f"certificate: {path} (sha256 {sha})")
        return cert


async def delete_tenant(
    req: DeleteRequest, out: Progress = print, checkpoint: Checkpoint = no_checkpoint
) -> dict[str, Any]:
    """Offboard a tenant (or finish doing so); its signed deletion certificate."""
    cfg = load(req.config)
    path = DeleteState.path(req.config, req.tenant)
    state = DeleteState.load(path)
    if state is None:
        t = cfg.tenants.get(req.tenant)
        if t is None:
            raise UsageError(f"{cfg.source}: no tenant {req.tenant!r} in [tenants]")
        state = DeleteState(req.tenant, t.tier, t.schema)
        state.save(path)
    else:
        out(f"continue: delete of {req.tenant} from phase {state.phase}")
    return await Deleter(req, cfg, state, out, checkpoint).run()


def verify_certificate(path: pathlib.Path, verifier: Verifier) -> dict[str, Any]:
    """A certificate's content when its signature holds; LifecycleError saying what does not."""
    cert = read_private_json(path, CERTIFICATE_FORMAT, "deletion certificate", LifecycleError)
    verify_signature(cert, verifier)
    return cert
