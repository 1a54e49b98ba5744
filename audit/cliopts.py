"""Command-line options shared by `tenantgate audit ...` and the commands that read the audit log
from above (proxy/ops/compliance may import audit, never the reverse): one spelling of --config,
--format and --since/--until, and one ISO 8601 parser.

>>> parse_utc("2026-12-03T08:00:00Z").isoformat()
'2026-12-03T08:00:00+00:00'
>>> parse_utc("2026-12-03").isoformat()
'2026-12-03T00:00:00+00:00'
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime


def parse_utc(text: str) -> datetime:
    """An ISO 8601 time (a trailing Z allowed); without a zone it is UTC. ValueError otherwise."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso_time(value: str) -> datetime:
    """argparse `type=` for an ISO 8601 option."""
    try:
        return parse_utc(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_config(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--config", "-c", metavar="FILE", required=required,
                   help="tenantgate TOML file" + ("" if required else " with an [audit] section"))


def add_format(p: argparse.ArgumentParser, *choices: str) -> None:
    """--format, the first choice being the default."""
    p.add_argument("--format", choices=choices, default=choices[0])


def add_period(p: argparse.ArgumentParser) -> None:
    """--since/--until as ISO 8601 times (UTC unless they name a zone); either may be left open."""
    p.add_argument("--since", type=iso_time, metavar="ISO")
    p.add_argument("--until", type=iso_time, metavar="ISO")
