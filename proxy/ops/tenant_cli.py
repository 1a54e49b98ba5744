"""``tenantgate tenant ...``: the command group of the lifecycle tools (move.py registers ``move``).

Exit codes, as for ``tenant move``: 0 done, 1 failed (the message says what stands), 2 usage or
config error. Progress lines go to stdout, errors to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from .lifecycle import LifecycleError, UsageError, load, verifier_of
from .move import ADMIN_PASSWORD_ENV, MoveError, add_move_parser, add_placement_arguments, placement_of
from .tenant_archive import verify_export
from .tenant_create import CreateRequest, create_tenant
from .tenant_delete import DeleteRequest, delete_tenant, verify_certificate
from .tenant_export import export_tenant
from .tenant_restore import RestoreRequest, restore_tenant

__all__ = ["register"]


def _out(line: str) -> None:
    print(line, flush=True)


def _run(name: str, work: Callable[[], Coroutine[Any, Any, object]]) -> int:
    try:
        asyncio.run(work())
    except UsageError as exc:
        print(f"tenant {name}: {exc}", file=sys.stderr)
        return 2
    except MoveError as exc:  # LifecycleError included
        print(f"tenant {name}: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


def _create_request(args: argparse.Namespace, tenant: str, tier: str) -> CreateRequest:
    return CreateRequest(
        config=pathlib.Path(args.config),
        tenant=tenant,
        target=placement_of(args, tier, args.region if tier == "dedicated" else None),
        region=args.region,
        login=getattr(args, "login", None),
        login_password_env=getattr(args, "login_password_env", None),
        admin_user=args.admin_user,
        reload=not getattr(args, "no_reload", False),
    )


def cmd_create(args: argparse.Namespace) -> int:
    return _run("create", lambda: create_tenant(_create_request(args, args.tenant, args.tier), _out))


def cmd_export(args: argparse.Namespace) -> int:
    async def work() -> None:
        await export_tenant(
            load(pathlib.Path(args.config)), args.tenant, pathlib.Path(args.output), portable=args.portable, out=_out
        )

    return _run("export", work)


def _verify(name: str, check: Callable[[pathlib.Path, Any], dict[str, Any]], args: argparse.Namespace) -> int:
    try:
        doc = check(pathlib.Path(args.file), verifier_of(args.public_key, args.config))
    except UsageError as exc:
        print(f"tenant {name}: {exc}", file=sys.stderr)
        return 2
    except LifecycleError as exc:
        print(f"tenant {name}: {args.file}: NOT VALID: {exc}", file=sys.stderr)
        return 1
    body = {k: v for k, v in doc.items() if k not in ("signature", "keys", "tables")}
    if "tables" in doc:
        body["tables"] = {t["table"]: t["rows"] for t in doc["tables"]}
    print(f"{args.file}: signature and checksums OK (key {doc['signature']['key']})")
    print(json.dumps(body, indent=1, sort_keys=True))
    return 0


def cmd_verify_export(args: argparse.Namespace) -> int:
    return _verify("verify-export", verify_export, args)


def cmd_verify_certificate(args: argparse.Namespace) -> int:
    return _verify("verify-certificate", verify_certificate, args)


def cmd_restore(args: argparse.Namespace) -> int:
    target = args.as_tenant or args.tenant
    req = RestoreRequest(
        _create_request(args, target, args.tier or "shared"),
        args.tenant,
        pathlib.Path(args.file),
        tier_given=args.tier is not None,
        pause_timeout=args.pause_timeout,
    )
    return _run("restore", lambda: restore_tenant(req, _out))


def cmd_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        print(
            f"This deletes every row, object and key of tenant {args.tenant!r}.\nType the tenant name to confirm: ",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if sys.stdin.readline().strip() != args.tenant:
            print("not confirmed; nothing deleted", file=sys.stderr)
            return 1
    req = DeleteRequest(
        pathlib.Path(args.config),
        args.tenant,
        export=pathlib.Path(args.export) if args.export else None,
        certificate=pathlib.Path(args.certificate) if args.certificate else None,
        admin_user=args.admin_user,
        pause_timeout=args.pause_timeout,
    )
    return _run("delete", lambda: delete_tenant(req, _out))


def _placement_options(p: argparse.ArgumentParser) -> None:
    add_placement_arguments(p, region="the tenant's residency region (dedicated: also the server's)")
    p.add_argument("--login", help="also add this tenant user (stored as a SCRAM verifier)")
    p.add_argument("--login-password-env", help="variable holding the --login user's password")
    p.add_argument("--no-reload", action="store_true", help="do not RELOAD the proxy (the admin console does it)")


def _common(p: argparse.ArgumentParser, admin: bool = True) -> None:
    p.add_argument("--config", "-c", required=True, help="the TOML config file the proxy runs with")
    if admin:
        p.add_argument("--admin-user", help=f"admin user for PAUSE/RELOAD/RESUME (password from ${ADMIN_PASSWORD_ENV})")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenant = subparsers.add_parser("tenant", help="tenant lifecycle: create, move, export, restore, delete")
    sub = tenant.add_subparsers(dest="tenant_command", required=True)
    add_move_parser(sub)

    p = sub.add_parser("create", help="onboard a tenant: config, schema or database objects, key, reload")
    p.add_argument("tenant")
    p.add_argument("--tier", choices=["shared", "schema", "dedicated"], default="shared")
    _common(p)
    _placement_options(p)
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("export", help="one signed archive of the tenant's rows (consistent snapshot)")
    p.add_argument("tenant")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--portable", action="store_true", help="decrypt encrypted columns (GDPR art. 20)")
    _common(p, admin=False)
    p.set_defaults(func=cmd_export)

    for name, what, func in (
        ("verify-export", "an export archive", cmd_verify_export),
        ("verify-certificate", "a deletion certificate", cmd_verify_certificate),
    ):
        p = sub.add_parser(name, help=f"check {what} offline: signature and checksums")
        p.add_argument("file")
        p.add_argument("--public-key", help="the audit signing key's public key (PEM), or give --config")
        p.add_argument("--config", "-c", help="take the public key from this config's audit.signing_key")
        p.set_defaults(func=func)

    p = sub.add_parser("restore", help="load an export back (verified, in one transaction), or --as another tenant")
    p.add_argument("tenant", help="the tenant the archive holds")
    p.add_argument("file")
    p.add_argument("--as", dest="as_tenant", help="restore into this tenant (created when new)")
    p.add_argument("--tier", choices=["shared", "schema", "dedicated"], help="the tier of a tenant it creates")
    p.add_argument("--pause-timeout", type=float, default=30.0)
    _common(p)
    _placement_options(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("delete", help="offboard: pause, export, delete rows and objects, shred keys, certificate")
    p.add_argument("tenant")
    p.add_argument("--export", help="export the tenant to this archive first")
    p.add_argument("--certificate", help="where to write the deletion certificate")
    p.add_argument("--pause-timeout", type=float, default=30.0)
    p.add_argument("--yes", action="store_true", help="do not ask to type the tenant name")
    _common(p)
    p.set_defaults(func=cmd_delete)
