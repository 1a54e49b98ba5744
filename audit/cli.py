"""`tenantgate audit ...` commands: verify, report, review, ship, tail, checkpoints, keygen.

`register(subparsers)` adds the group to the main CLI; every subcommand sets `func(args) -> int`
(exit status: 0 success, 1 verification failed, 2 bad usage/config/keys).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from .checkpoints import export_checkpoints, load_checkpoints
from .cliopts import add_config, add_format, add_period
from .columnar import Group, scan
from .errors import AuditError
from .keys import generate_hmac_key_file, generate_signing_key_files, load_hmac_key, load_public_key
from .multi import verify_instances
from .reader import FileSource, LogSource, iter_records, open_sources
from .record import AuditEvent
from .report import group_records, render_html, render_markdown, summarise
from .retention import configured_sources, ship
from .review import Review, build_review, review_log_path, review_period
from .settings import AuditSettings, parse_audit_settings
from .tail import tail
from .verify import verify_log
from .writer import AuditLog


class _Usage(Exception):
    pass


def _settings(args: argparse.Namespace) -> AuditSettings | None:
    if not getattr(args, "config", None):
        return None
    path = Path(args.config)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise _Usage(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise _Usage(f"{path}: invalid TOML: {exc}") from None
    return parse_audit_settings(raw, source=str(path), base_dir=path.parent)


def _sources(args: argparse.Namespace, settings: AuditSettings | None) -> list[LogSource]:
    table = settings.table if settings else args.table
    if args.paths:
        try:
            return open_sources(args.paths, table)
        except FileNotFoundError as exc:
            raise _Usage(str(exc)) from None
    if settings is None:
        raise _Usage("give log PATH(s) or --config FILE")
    found = configured_sources(settings)
    if not found:
        raise _Usage(f"{settings.path}: no audit log files")
    return found


def _key(args: argparse.Namespace, settings: AuditSettings | None, required: bool) -> bytes | None:
    uri = args.key or (settings.key if settings else None)
    if uri is None:
        if required:
            raise _Usage("the audit key is needed: --key file:PATH|env:VAR or --config FILE")
        return None
    return load_hmac_key(uri)


def cmd_verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    key = _key(args, settings, required=True)
    assert key is not None
    verifier = load_public_key(args.public_key) if args.public_key else None
    exported = load_checkpoints(Path(args.checkpoints)) if args.checkpoints else []
    if args.allow_open and not exported:
        raise _Usage("--allow-open needs --checkpoints FILE (exported checkpoints kept elsewhere)")
    expired_ok = args.expired_ok or (settings is not None and settings.retention is not None)
    if args.per_instance:
        if not args.paths or exported or verifier is not None:
            raise _Usage("--per-instance needs PATHs (one per instance) and no --checkpoints/--public-key")
        try:
            results = verify_instances([(p, open_sources([p], args.table)) for p in args.paths], hmac_key=key,
                                        allow_expired=expired_ok)
        except FileNotFoundError as exc:
            raise _Usage(str(exc)) from None
        for one in results:
            print(one.summary(), file=sys.stdout if one.result.ok else sys.stderr)
        return 0 if all(one.result.ok for one in results) else 1
    result = verify_log(_sources(args, settings), hmac_key=key, verifier=verifier, exported=exported,
                        allow_open=args.allow_open, allow_expired=expired_ok)
    print(result.summary(), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def _groups(sources: Sequence[LogSource], *, tenant: str | None, since: datetime | None,
            until: datetime | None) -> list[Group]:
    """Files through DuckDB; a PostgreSQL source record by record."""
    files = [s.path for s in sources if isinstance(s, FileSource)]
    groups = scan(files, tenant=tenant, since=since, until=until)
    others = [s for s in sources if not isinstance(s, FileSource)]
    if others:
        records = (rec for _raw, rec in iter_records(others) if rec is not None)
        groups += group_records(records, tenant=tenant, since=since, until=until)
    return groups


def cmd_report(args: argparse.Namespace) -> int:
    settings = _settings(args)
    sources = _sources(args, settings)
    key = _key(args, settings, required=False)
    integrity = None
    if key is not None:
        integrity = verify_log(sources, hmac_key=key).status
    groups = _groups(sources, tenant=args.tenant, since=args.since, until=args.until)
    data = summarise(groups, tenant=args.tenant, since=args.since, until=args.until, integrity=integrity)
    text = render_html(data) if args.format == "html" else render_markdown(data)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    settings = _settings(args)
    sources = _sources(args, settings)
    key = _key(args, settings, required=True)
    assert key is not None
    since, until = review_period(args.since, args.until)
    verifier = load_public_key(args.public_key) if args.public_key else None
    result = verify_log(sources, hmac_key=key, verifier=verifier, allow_expired=True)
    review = build_review(_groups(sources, tenant=None, since=since, until=until), since=since, until=until,
                          verification=result.status, verified=result.ok)
    form = review.as_dict()
    if settings is not None and settings.sink == "file":
        log_path, seq = asyncio.run(_record_review(settings, review))
        form["recorded"] = {"log": str(log_path), "seq": seq, "sha256": review.digest()}
    text = json.dumps(form, indent=2) + "\n" if args.format == "json" else review.render_text() + (
        f"recorded: seq {form['recorded']['seq']} of {form['recorded']['log']}\n"  # type: ignore[index]
        if "recorded" in form else "not recorded (give --config to record the review in the review log)\n")
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0 if result.ok else 1


async def _record_review(settings: AuditSettings, review: Review) -> tuple[Path, int | None]:
    """Append "audit review ran" to the review log (its own chain: the live log has one writer)."""
    path = review_log_path(settings.path)
    log = AuditLog(replace(settings, path=path, durability="strict", rotate_bytes=0, rotate_seconds=0))
    await log.start()
    try:
        seq = await log.record(AuditEvent(
            "admin", user=getpass.getuser(), sql="audit review", decision="allowed", reason=review.verification,
            details={"since": review.as_dict()["since"], "until": review.as_dict()["until"],
                     "verified": review.verified, "review_sha256": review.digest()}))
    finally:
        await log.close()
    return path, seq


def cmd_ship(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None or settings.retention is None:
        raise _Usage("give --config FILE with an [audit.retention] table")
    key = _key(args, settings, required=True)
    assert key is not None
    verifier = load_public_key(args.public_key) if args.public_key else None
    report = ship(settings, key, verifier=verifier)
    print("\n".join(report.lines()), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def cmd_tail(args: argparse.Namespace) -> int:
    settings = _settings(args)
    path = Path(args.path) if args.path else (settings.path if settings else None)
    if path is None:
        raise _Usage("give the log PATH or --config FILE")
    try:
        tail(path, sys.stdout, lines=args.lines, follow=args.follow)
    except KeyboardInterrupt:
        pass
    except FileNotFoundError:
        raise _Usage(f"{path}: no such audit log") from None
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    settings = _settings(args)
    count = export_checkpoints(_sources(args, settings), Path(args.output))
    print(f"exported {count} signed marker(s) to {args.output}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    if not args.hmac and not args.ed25519:
        raise _Usage("give --hmac PATH and/or --ed25519 PATH")
    try:
        if args.hmac:
            generate_hmac_key_file(Path(args.hmac))
            print(f"wrote HMAC key {args.hmac} (0600): key = \"file:{args.hmac}\"")
        if args.ed25519:
            pub = generate_signing_key_files(Path(args.ed25519))
            print(f"wrote Ed25519 key {args.ed25519} (0600) and public key {pub}")
    except FileExistsError as exc:
        raise _Usage(f"{exc.filename or exc}: already exists (refusing to overwrite a key)") from None
    return 0


def _guard(handler):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = handler(args)
            return result
        except (_Usage, AuditError, ValueError, OSError) as exc:
            print(f"tenantgate audit {args.audit_command}: {exc}", file=sys.stderr)
            return 2
    return run


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `audit` command group to tenantgate's CLI."""
    audit = subparsers.add_parser("audit", help="verify, report on and follow the audit log")
    sub = audit.add_subparsers(dest="audit_command", required=True)

    def common(p: argparse.ArgumentParser, paths: bool = True) -> None:
        add_config(p)
        if paths:
            p.add_argument("paths", nargs="*", metavar="PATH",
                           help="log files, directories of *.jsonl, or a postgresql:// DSN")
            p.add_argument("--table", default="tenantgate_audit", help="table of a postgresql:// source")

    p = sub.add_parser("verify", help="check hash chain, HMACs, signatures and markers")
    common(p)
    p.add_argument("--key", metavar="URI", help="HMAC key provider: file:PATH or env:VAR")
    p.add_argument("--public-key", metavar="PEM", help="Ed25519 public key to check marker signatures")
    p.add_argument("--checkpoints", metavar="FILE", help="exported checkpoints kept elsewhere")
    p.add_argument("--allow-open", action="store_true",
                   help="accept a log without chain_end (needs --checkpoints)")
    p.add_argument("--expired-ok", action="store_true",
                   help="the log may begin at a rotate record (older segments expired under retention; "
                        "implied by [audit.retention])")
    p.add_argument("--per-instance", action="store_true",
                   help="each PATH is one instance's log: verify each, report per instance")
    p.set_defaults(func=_guard(cmd_verify))

    p = sub.add_parser("report", help="summarise activity (Markdown or HTML)")
    common(p)
    p.add_argument("--tenant")
    add_period(p)
    add_format(p, "md", "html")
    p.add_argument("-o", "--output", metavar="FILE")
    p.add_argument("--key", metavar="URI", help="verify first and state the result in the report")
    p.set_defaults(func=_guard(cmd_report))

    p = sub.add_parser("review", help="daily log review (PCI DSS 10.4.1): text or JSON; recorded as an event")
    common(p)
    p.add_argument("--since", default="yesterday", metavar="yesterday|today|ISO")
    p.add_argument("--until", metavar="ISO")
    add_format(p, "text", "json")
    p.add_argument("-o", "--output", metavar="FILE")
    p.add_argument("--key", metavar="URI", help="HMAC key provider (file:PATH or env:VAR)")
    p.add_argument("--public-key", metavar="PEM", help="Ed25519 public key to check marker signatures")
    p.set_defaults(func=_guard(cmd_review))

    p = sub.add_parser("ship", help="copy rotated segments to the archive, verify them, apply retention")
    common(p, paths=False)
    p.add_argument("--key", metavar="URI", help="HMAC key provider (default: the config's)")
    p.add_argument("--public-key", metavar="PEM", help="Ed25519 public key to check marker signatures")
    p.set_defaults(func=_guard(cmd_ship))

    p = sub.add_parser("tail", help="print (and follow) the log readably")
    common(p, paths=False)
    p.add_argument("path", nargs="?", metavar="PATH")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--lines", type=int, default=20)
    p.set_defaults(func=_guard(cmd_tail))

    p = sub.add_parser("checkpoints", help="export the signed markers to keep elsewhere")
    common(p)
    p.add_argument("-o", "--output", metavar="FILE", required=True)
    p.set_defaults(func=_guard(cmd_checkpoints))

    p = sub.add_parser("keygen", help="create key files (mode 0600)")
    p.add_argument("--hmac", metavar="PATH", help="new HMAC audit key")
    p.add_argument("--ed25519", metavar="PATH", help="new Ed25519 signing key (+ PATH.pub)")
    p.set_defaults(func=_guard(cmd_keygen))


def main(argv: Sequence[str] | None = None) -> int:
    """Run `audit ...` on its own (e.g. `python -m tenantgate.audit.cli audit verify ...`)."""
    parser = argparse.ArgumentParser(prog="tenantgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
