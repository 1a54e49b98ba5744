"""The ``tenantgate`` command line.

The imports inside the ``cmd_*`` functions (and uvloop in ``_run``) are lazy on purpose, for
start-up time: ``tenantgate hash-password`` or ``check-config`` must not load the serving process,
the console and uvloop. None of them dodges a cycle (tests/test_layout.py checks the graph).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Coroutine
from importlib.metadata import version
from typing import Any

from tenantgate.audit.cli import register as register_audit
from tenantgate.keyring.cli import register as register_keys

from . import log
from .ops.admin_cli import register as register_admin
from .ops.compliance.cli import register as register_compliance
from .ops.rls import register as register_rls
from .ops.tenant_cli import register as register_tenant


def _version() -> str:
    return version("tenantgate")


def _run(coro: Coroutine[Any, Any, int]) -> int:
    import uvloop

    return uvloop.run(coro)


def cmd_serve(args: argparse.Namespace) -> int:
    from tenantgate.config import ConfigError

    from .console.serve import serve
    from .oidc import load_serving_config

    try:
        cfg, _ = load_serving_config(args.config)  # as the serving process loads it: a dead jwks_url stops here
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    level, json_lines = args.log_level or cfg.logging.level, args.log_json or cfg.logging.json
    log.setup(level, json_lines)
    if args.worker is not None:  # started by the supervisor below
        from .console.workers import WorkerSpec, run_worker

        return _run(run_worker(args.config, WorkerSpec.from_json(args.worker)))
    if cfg.listen.workers > 1:
        from .console.workers import supervise

        return _run(supervise(args.config, level, json_lines))
    return _run(serve(args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    from tenantgate.config import ConfigError

    from .oidc import load_serving_config

    try:
        cfg, _ = load_serving_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{args.config}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    print(
        f"{args.config}: OK ({len(cfg.tenants)} tenants, {len(cfg.users)} users, "
        f"{len(cfg.scoping.tables)} scoped tables, {len(cfg.scoping.reference)} reference tables)"
    )
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    from tenantgate.keyring.auth.scram import make_verifier, md5_hash

    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("passwords do not match", file=sys.stderr)
            return 1
    if not password:
        print("empty password refused", file=sys.stderr)
        return 1
    if args.md5:
        if not args.user:
            print("--md5 needs --user (the md5 hash is salted with the user name)", file=sys.stderr)
            return 1
        print(md5_hash(args.user, password))
    else:
        print(make_verifier(password, iterations=args.iterations))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .ops.rls import install_configured
    from .process import Proxy
    from .sandbox.demo import run_demo

    log.setup(args.log_level or "info", False)
    return _run(run_demo(Proxy, port=args.port, secure=install_configured))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tenantgate",
        description="Transparent PostgreSQL proxy that scopes, encrypts and audits every tenant statement.",
    )
    p.add_argument("--version", action="version", version=f"tenantgate {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the proxy with a config file (SIGTERM drains, SIGHUP reloads)")
    s.add_argument("--config", "-c", required=True, help="the TOML config file")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides [logging] level")
    s.add_argument("--log-json", action="store_true", help="JSON log lines (overrides [logging] json)")
    s.add_argument("--worker", help=argparse.SUPPRESS)  # internal: the supervisor's worker processes
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser(
        "demo",
        help="start a throwaway PostgreSQL with two sample tenants and the proxy in front; Ctrl-C removes it",
    )
    d.add_argument("--port", type=int, default=6432, help="proxy port (default 6432; 0 picks a free one)")
    d.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("check-config", help="validate a config file and report every problem at once")
    c.add_argument("config")
    c.set_defaults(func=cmd_check_config)

    h = sub.add_parser("hash-password", help="print a SCRAM-SHA-256 verifier (or md5 hash) for a user's password")
    h.add_argument("--stdin", action="store_true", help="read the password from standard input")
    h.add_argument("--md5", action="store_true", help="print an md5 hash instead (legacy clients)")
    h.add_argument("--user", help="user name (needed for --md5)")
    h.add_argument("--iterations", type=int, default=4096)
    h.set_defaults(func=cmd_hash_password)

    register_audit(sub)
    register_keys(sub)
    register_rls(sub)
    register_tenant(sub)
    register_compliance(sub)
    register_admin(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
