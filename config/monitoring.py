"""The ``[monitoring]`` section: security monitoring's detectors, their knobs and responses.

Every detector is on once the section exists; each can be tuned or switched off in its own
table, ``[monitoring.detectors.<name>]``. Responses are off (``"none"``) unless chosen.

>>> settings, problems = parse_monitoring({"monitoring": {"interval": 5,
...     "detectors": {"probing": {"minimum": 20, "response": "throttle"}}}}, Path("/etc"))
>>> problems, settings.interval, settings.detector("probing").minimum, settings.detector("probing").response
([], 5.0, 20.0, 'throttle')
>>> settings.detector("exfiltration").response, settings.detector("exfiltration").minimum
('none', 5000.0)
>>> parse_monitoring({"monitoring": {"detectors": {"nope": {}}}}, Path("/"))[1][0][1][:40]
'unknown detector (expected one of: crede'
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESPONSES = ("none", "throttle", "pause_tenant", "block_user")

# name -> (default minimum, what the minimum counts): the floor below which nothing alerts,
# whatever the baseline says (a quiet user's band is narrow)
DETECTORS: dict[str, tuple[float, str]] = {
    "exfiltration": (5000.0, "rows returned per minute (bytes out: 100x this)"),
    "credential_stuffing": (5.0, "distinct users failing to log in from one address per minute"),
    "password_guessing": (4.0, "distinct addresses failing to log in as one user per minute"),
    "probing": (10.0, "refused statements per minute"),
    "new_shapes": (3.0, "statement shapes new to the tenant per minute"),
    "encrypted_reads": (500.0, "encrypted column values decrypted per minute"),
    "off_hours": (1.0, "statements in an hour the user never worked"),
}
_SECTION_KEYS = frozenset(
    {"enabled", "interval", "state_file", "warmup", "realert_after", "throttle_rate",
     "webhook_url", "webhook_secret_env", "webhook_retries", "webhook_timeout", "detectors"}
)
_DETECTOR_KEYS = frozenset({"enabled", "response", "cooldown", "sensitivity", "minimum"})


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    name: str
    enabled: bool = True
    response: str = "none"  # one of RESPONSES
    cooldown: float = 900.0  # seconds a response lasts (then it is undone on its own)
    sensitivity: float = 6.0  # band width in robust standard deviations (MAD * 1.4826)
    minimum: float = 0.0  # see DETECTORS


@dataclass(frozen=True, slots=True)
class MonitoringSettings:
    enabled: bool = True
    interval: float = 10.0  # seconds between folds of the tallies (alerts come at most this late)
    state_file: str | None = None  # baselines persisted here (JSON), None: in memory only
    warmup: float = 86400.0  # seconds a user is watched before baseline detectors alert on it
    realert_after: float = 600.0  # the same detector, tenant and user alert again only after this
    throttle_rate: float = 1.0  # statements per second of a throttled user
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)  # HMAC key of the webhook body
    webhook_retries: int = 3
    webhook_timeout: float = 5.0
    detectors: Mapping[str, DetectorSettings] = field(default_factory=dict)

    def detector(self, name: str) -> DetectorSettings:
        found = self.detectors.get(name)
        return found if found is not None else DetectorSettings(name, minimum=DETECTORS[name][0])


def parse_monitoring(
    raw: Mapping[str, Any], base_dir: Path
) -> tuple[MonitoringSettings | None, list[tuple[str, str]]]:
    """``raw["monitoring"]`` -> settings, or None and (key, message) problems."""
    section = raw.get("monitoring")
    if section is None:
        return None, []
    if not isinstance(section, dict):
        return None, [("monitoring", "expected a table")]
    problems: list[tuple[str, str]] = []
    _unknown(section, "monitoring", _SECTION_KEYS, problems)

    def number(tbl: Mapping[str, Any], key: str, where: str, default: float, low: float) -> float:
        value = tbl.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
            problems.append((f"{where}.{key}", f"must be a number >= {low:g}"))
            return default
        return float(value)

    def flag(tbl: Mapping[str, Any], key: str, where: str) -> bool:
        value = tbl.get(key, True)
        if not isinstance(value, bool):
            problems.append((f"{where}.{key}", "must be true or false"))
            return True
        return value

    detectors: dict[str, DetectorSettings] = {}
    tables = section.get("detectors", {})
    if not isinstance(tables, dict):
        problems.append(("monitoring.detectors", "expected a table"))
        tables = {}
    for name, tbl in tables.items():
        where = f"monitoring.detectors.{name}"
        if name not in DETECTORS:
            problems.append((where, f"unknown detector (expected one of: {', '.join(sorted(DETECTORS))})"))
            continue
        if not isinstance(tbl, dict):
            problems.append((where, "expected a table"))
            continue
        _unknown(tbl, where, _DETECTOR_KEYS, problems)
        response = tbl.get("response", "none")
        if response not in RESPONSES:
            problems.append((f"{where}.response", f"must be one of {', '.join(RESPONSES)}"))
            response = "none"
        detectors[name] = DetectorSettings(
            name,
            enabled=flag(tbl, "enabled", where),
            response=response,
            cooldown=number(tbl, "cooldown", where, 900.0, 1.0),
            sensitivity=number(tbl, "sensitivity", where, 6.0, 1.0),
            minimum=number(tbl, "minimum", where, DETECTORS[name][0], 1.0),
        )
    state_file = section.get("state_file")
    if state_file is not None:
        if not isinstance(state_file, str) or not state_file:
            problems.append(("monitoring.state_file", "must be a file path"))
            state_file = None
        else:
            state_file = str(base_dir / state_file) if not os.path.isabs(state_file) else state_file
    url = section.get("webhook_url")
    secret = None
    if url is not None:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
            problems.append(("monitoring.webhook_url", "must be an http(s) URL with a host and no credentials"))
            url = None
        env = section.get("webhook_secret_env")
        secret = os.environ.get(env) if isinstance(env, str) and env else None
        if not secret:
            problems.append(("monitoring.webhook_secret_env", "must name a set environment variable (the HMAC key)"))
    retries = section.get("webhook_retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 20:
        problems.append(("monitoring.webhook_retries", "must be an integer from 0 to 20"))
        retries = 3
    settings = MonitoringSettings(
        enabled=flag(section, "enabled", "monitoring"),
        interval=number(section, "interval", "monitoring", 10.0, 0.05),
        state_file=state_file,
        warmup=number(section, "warmup", "monitoring", 86400.0, 0.0),
        realert_after=number(section, "realert_after", "monitoring", 600.0, 0.0),
        throttle_rate=number(section, "throttle_rate", "monitoring", 1.0, 0.01),
        webhook_url=url,
        webhook_secret=secret,
        webhook_retries=retries,
        webhook_timeout=number(section, "webhook_timeout", "monitoring", 5.0, 0.1),
        detectors=detectors,
    )
    return (None, problems) if problems else (settings, [])


def _unknown(tbl: Mapping[str, Any], where: str, allowed: frozenset[str], problems: list[tuple[str, str]]) -> None:
    for key in sorted(set(tbl) - allowed):
        problems.append((f"{where}.{key}", f"unknown key (expected one of: {', '.join(sorted(allowed))})"))
