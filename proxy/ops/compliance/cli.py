"""``tenantgate compliance check|report`` and ``tenantgate advise``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import asyncpg

from tenantgate.audit.cliopts import add_config, add_format, add_period
from tenantgate.config import Config, ConfigError, load_config


def _config(path: str) -> Config:
    # weaker settings are reported per control by the check, not refused at load
    return load_config(path, enforce_compliance=False)


def cmd_check(args: argparse.Namespace) -> int:
    from . import check

    config = _config(args.config)
    if config.compliance is None or not config.compliance.frameworks:
        print(f"{args.config}: no [compliance] frameworks enabled", file=sys.stderr)
        return 2
    results = asyncio.run(check.run(config, tenant=args.tenant))
    sys.stdout.write(check.render_json(results) if args.format == "json" else check.render_text(results))
    return 1 if any(r.status == check.FAIL for r in results) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import evidence

    config = _config(args.config)
    pack = asyncio.run(evidence.build(config, args.tenant, args.since, args.until, args.audit_log))
    data, page = evidence.write(pack, Path(args.output))
    print(f"evidence pack for tenant {args.tenant}: {page} and {data}")
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    from .advise import advise
    from .advise_apply import apply, emit_toml

    config = _config(args.config)
    proposals = asyncio.run(advise(config, sample=args.sample))
    if args.emit_toml:
        sys.stdout.write(emit_toml(proposals))
    else:
        for p in proposals:
            print(f"[{p.category}] {p.subject}: {p.reason}" + (f"  ({', '.join(p.controls)})" if p.controls else ""))
        print(f"{len(proposals)} proposal(s); advise is rule- and statistics-based and runs locally")
    if args.apply:
        answer = "y" if args.yes else input(f"apply these proposals to {args.config}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("not applied")
            return 0
        done, backup = apply(Path(args.config), proposals)
        print("\n".join(done) + f"\napplied {len(done)} change(s); previous file kept as {backup}")
    return 0


def _guard(handler):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"{args.command}: {exc}", file=sys.stderr)
            return 2

    return run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = subparsers.add_parser("compliance", help="check the enabled frameworks' controls; per-tenant evidence packs")
    sub = c.add_subparsers(dest="compliance_command", required=True)
    ch = sub.add_parser("check", help="every control: pass/fail/manual with evidence (exit 1 on a fail)")
    add_config(ch, required=True)
    add_format(ch, "text", "json")
    ch.add_argument("--tenant", help="audit-log evidence of this tenant only")
    ch.set_defaults(func=_guard(cmd_check))
    rp = sub.add_parser("report", help="one tenant's evidence pack: self-contained HTML + JSON")
    add_config(rp, required=True)
    rp.add_argument("--tenant", required=True)
    add_period(rp)
    rp.add_argument("-o", "--output", required=True, help="directory for evidence.html and evidence.json")
    rp.add_argument("--audit-log", action="append", default=[], metavar="PATH",
                    help="one instance's audit log (file or folder), repeated per instance: each verified on its own, "
                         "counts over all (default: the configured log, every [cluster] peer's under {instance})")
    rp.set_defaults(func=_guard(cmd_report))
    a = subparsers.add_parser("advise", help="propose scoping, encryption, roles and limits from the live schema")
    add_config(a, required=True)
    a.add_argument("--sample", type=int, default=200, help="rows sampled per column (default 200)")
    a.add_argument("--emit-toml", action="store_true", help="print the proposals as a config fragment")
    a.add_argument("--apply", action="store_true", help="edit the config file (asks first; keeps FILE.bak)")
    a.add_argument("--yes", action="store_true", help="with --apply: do not ask")
    a.set_defaults(func=_guard(cmd_advise))
