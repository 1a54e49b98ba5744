"""``python -m bench [--quick | --profile] [--out DIR]`` from the repository root; see bench/README.md.

``python -m bench audit-volume [--records N]``: write/verify/report throughput and bytes per record
of the audit log (bench/audit_volume.py).

``python -m bench monitor-eval [--tenants N] [--days D]``: security monitoring's detectors on a
simulated week with injected attacks (bench/monitor_eval.py).

``python -m bench monitor-cost [--rounds N]``: pgbench -S TPS and proxy CPU per statement with security
monitoring on vs off, interleaved rounds of one run (bench/monitor_cost.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from . import profile
from .runner import ALL_TARGETS, Options, main
from .targets import PROTOCOLS
from .workload import WORKLOADS, Scale


def _names(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated)")
        return names

    return parse


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated integers, e.g. 8,64") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("every value must be at least 1")
    return values


def _positive(text: str) -> int:
    (value,) = _ints(text)
    return value


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="5 s points, select-only, simple/extended, 8/64 clients")
    mode.add_argument("--profile", action="store_true",
                      help=f"py-spy profile of {profile.TARGET} (one worker) under pgbench select-only -M simple "
                           f"{profile.CLIENTS} clients; writes profile.md")
    parser.add_argument("--out", type=Path, help="output folder (default bench/results/<timestamp>/)")
    tune = parser.add_argument_group("overrides of the preset (for smoke tests and focused runs)")
    tune.add_argument("--duration", type=_positive, help="seconds per point")
    tune.add_argument("--targets", type=_names(ALL_TARGETS), help=", ".join(ALL_TARGETS))
    tune.add_argument("--workloads", type=_names(WORKLOADS), help=", ".join(WORKLOADS))
    tune.add_argument("--protocols", type=_names(PROTOCOLS), help=", ".join(PROTOCOLS))
    tune.add_argument("--clients", type=_ints, help="e.g. 8,64,512")
    tune.add_argument("--tenants", type=_positive, help="tenants loaded")
    tune.add_argument("--accounts", type=_positive, help="accounts per tenant")
    tune.add_argument("--warmup", type=int, help="warm-up seconds per target (0: none)")
    tune.add_argument("--workers", type=_positive, help="[listen] workers of every tenantgate (default: the proxy's)")
    tune.add_argument("--idle-clients", type=_positive, help="idle clients for the memory measurement (10,000)")
    tune.add_argument("--no-memory", action="store_true", help="skip the idle-client memory measurement")
    tune.add_argument("--no-micro", action="store_true", help="skip the library micro-benchmarks")
    tune.add_argument("--no-encryption", action="store_true", help="skip the encrypted copy and its variant")
    args = parser.parse_args(argv)
    opts = Options.preset(quick=args.quick, out=args.out)
    overrides = []
    for name in ("duration", "targets", "workloads", "protocols", "clients", "warmup", "workers"):
        if getattr(args, name) is not None:
            setattr(opts, name, getattr(args, name))
            overrides.append(name)
    if args.idle_clients is not None:
        opts.memory_requested = args.idle_clients
        overrides.append("idle-clients")
    if args.tenants or args.accounts:
        opts.scale = Scale(tenants=args.tenants or opts.scale.tenants, accounts=args.accounts or opts.scale.accounts)
        overrides.append("scale")
    for name in ("memory", "micro", "encryption"):
        if getattr(args, f"no_{name}"):
            setattr(opts, name, False)
            overrides.append(f"no-{name}")
    opts.overrides = tuple(overrides)
    if args.profile:
        profile.adjust(opts)
    return opts


if __name__ == "__main__":
    if sys.argv[1:2] == ["audit-volume"]:  # the audit log at volume: its own options (bench/audit_volume.py)
        from .audit_volume import main as audit_volume

        sys.exit(audit_volume(sys.argv[2:]))
    if sys.argv[1:2] == ["monitor-eval"]:  # detectors on a simulated week (bench/monitor_eval.py)
        from .monitor_eval import main as monitor_eval

        sys.exit(monitor_eval(sys.argv[2:]))
    if sys.argv[1:2] == ["monitor-cost"]:  # monitoring on vs off under pgbench -S (bench/monitor_cost.py)
        from .monitor_cost import main as monitor_cost

        sys.exit(monitor_cost(sys.argv[2:]))
    options = parse_args(sys.argv[1:])
    sys.exit(profile.main(options) if options.mode == "profile" else main(options))
