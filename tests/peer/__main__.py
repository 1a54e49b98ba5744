"""``python -m tests.peer`` (``make peer``): real clients and their own suites, direct and through the proxy.

Starts a throwaway PostgreSQL with a multi-tenant database (RLS installed) and the real proxy in
session and in transaction pooling, runs every suite against each target of its roles (trusted
user: fidelity; tenant user: a scoped app), and prints what fails only through the proxy. Opt-in,
never part of ``make test``. Exit status 1 when there is any difference, 0 when there is none.

    python -m tests.peer --list
    python -m tests.peer --quick                      # our programs + small slices of the big suites
    python -m tests.peer --suite jdbc --suite node
    python -m tests.peer --suite psycopg --psycopg-src ~/src/psycopg   # a checkout: tests/ + pyproject.toml
    python -m tests.peer --suite psycopg --psycopg-args "-m 'not slow and not timing' --ignore=tests/pool"
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import suites
from .env import POOL_MODES, PeerEnv, peer_env
from .suites import SUITES, Outcomes, Suite, SuiteUnavailable

FAILED = ("ok", "skip")


def bad(outcome: str | None) -> bool:
    return outcome is not None and outcome not in FAILED


def differences(direct: Outcomes, proxied: Outcomes) -> dict[str, str]:
    """Checks that pass (or are skipped) directly and fail through the proxy, or exist only there.

    >>> differences({"a": "ok", "b": "x", "c": "ok"}, {"a": "boom", "b": "x", "c": "ok", "d": "late"})
    {'a': 'boom', 'd': 'late'}
    """
    return {k: v for k, v in proxied.items() if bad(v) and not bad(direct.get(k, "ok"))}


def run_suite(env: PeerEnv, suite: Suite, quick: bool, timeout: float | None, modes: tuple[str, ...]) -> list[str]:
    """Runs ``suite`` on its targets and returns the report lines of its table and differences."""
    rows: list[str] = []
    budget = timeout or suite.timeout
    for role in suite.roles:
        results: dict[str, Outcomes] = {}
        for target in env.targets(role, modes):
            env.reset_data()
            started = time.monotonic()
            results[target.name] = suite.run(target, budget, quick)
            took = time.monotonic() - started
            failed = sum(bad(v) for v in results[target.name].values())
            print(f"  {suite.name:13} {target.name:20} {len(results[target.name]):5} checks, {failed:4} failing"
                  f"  ({took:.0f} s)", flush=True)
        direct = results[f"direct/{role}"]
        for name, outcomes in results.items():
            if name.startswith("direct"):
                continue
            diff = differences(direct, outcomes)
            rows.append(f"| {suite.name} | {name} | {len(outcomes)} | {sum(map(bad, direct.values()))} | "
                        f"{sum(map(bad, outcomes.values()))} | {len(diff)} | "
                        f"{', '.join(sorted(diff)[:8]) + (' ...' if len(diff) > 8 else '') or '-'} |")
            rows += [f"    {suite.name} {name} {k}: {v}" for k, v in sorted(diff.items())]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.peer", description=__doc__.splitlines()[0])
    p.add_argument("--suite", action="append", choices=sorted(SUITES), help="run only this suite (repeatable)")
    p.add_argument("--quick", action="store_true", help="our programs and small slices of psycopg's/Django's suites")
    p.add_argument("--mode", action="append", choices=POOL_MODES, help="only this pool mode (repeatable)")
    p.add_argument("--timeout", type=float, help="seconds per suite and target (default: each suite's own)")
    p.add_argument("--psycopg-src", type=Path, help="a psycopg source checkout (tests/ and pyproject.toml)")
    p.add_argument("--psycopg-args", default="", help="more pytest arguments for psycopg's suite (one string)")
    p.add_argument("--work", type=Path, help="where logs go (default: a temporary folder, kept)")
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    args = p.parse_args(argv)
    if args.list:
        for s in SUITES.values():
            print(f"{s.name:13} roles={','.join(s.roles):15} {'heavy' if s.heavy else ''}")
        return 0
    suites.PSYCOPG_ARGS[:] = shlex.split(args.psycopg_args)
    # SIGTERM unwinds like Ctrl-C: the proxies and the cluster are stopped, the running suite killed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.psycopg_src:
        os.environ["PEER_PSYCOPG_SRC"] = str(args.psycopg_src.resolve())
    # Default: everything; --quick: everything too, with the heavy suites cut to their slices.
    chosen = [SUITES[n] for n in args.suite] if args.suite else list(SUITES.values())
    modes = tuple(args.mode or POOL_MODES)
    work = args.work or Path(tempfile.mkdtemp(prefix="tenantgate-peer-"))
    suites.LOGS = work / "logs"
    ready: list[Suite] = []
    unavailable: list[str] = []
    for suite in chosen:
        try:
            suite.prepare(args.quick)
            ready.append(suite)
        except (SuiteUnavailable, OSError) as exc:
            unavailable.append(f"{suite.name}: {exc}")
        except Exception as exc:  # an install step failed: report it, run the others
            unavailable.append(f"{suite.name}: preparing failed: {exc}")
    rows: list[str] = []
    with peer_env(work) as env:
        print(f"peer database {env.backend.database} on port {env.cluster.port}; proxies "
              + ", ".join(f"{m}:{env.proxies[m].port}" for m in modes) + f"; logs in {work}", flush=True)
        for suite in ready:
            rows += run_suite(env, suite, args.quick, args.timeout, modes)
    print("\n| suite | through the proxy | checks | failing direct | failing via proxy | only via proxy | ids |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(r for r in rows if r.startswith("|")))
    details = [r for r in rows if not r.startswith("|")]
    if details:
        print("\nfailing only through the proxy:")
        print("\n".join(details))
    for line in unavailable:
        print(f"not run: {line}")
    return 1 if details else 0


if __name__ == "__main__":
    sys.exit(main())
