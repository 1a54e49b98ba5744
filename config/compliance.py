"""Compliance frameworks as data: control files, the config facts they test, and load-time enforcement.

A framework is a TOML file (``config/frameworks/*.toml`` in the package, or an operator's own file
in one of ``[compliance] controls_dirs``)::

    framework = "pci-dss-4.0"
    title = "PCI DSS v4.0"
    [[control]]
    id = "10.2.2"
    requirement = "Each audit record says who, what, when, where from and whether it succeeded."
    config = [{ fact = "audit.enabled", equals = true }]       # checked at config load
    runtime = ["audit_chain"]                                  # checked by `compliance check`
    evidence = ["statements"]                                  # audit-log queries shown as evidence
    manual = "A person reviews ..."                            # optional: no software can prove it

A config requirement names a fact (FACT_NAMES; config/controls.py computes each and names its key) and one of
``equals``, ``one_of``, ``at_least``, ``at_most``. Loading a config with ``[compliance]`` checks every
requirement of every enabled framework (config/controls.py): a weaker setting is a config problem naming
the control and the key (``enforce = false``: a warning instead, kept in ``ComplianceSettings.warnings``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "EVIDENCE_QUERIES",
    "FACT_NAMES",
    "RUNTIME_CHECKS",
    "ComplianceSettings",
    "Control",
    "ControlFileError",
    "Framework",
    "Requirement",
    "builtin_frameworks",
    "load_framework_file",
    "parse_compliance",
]

# Config facts a requirement may test; config/controls.py computes each (and names its key).
FACT_NAMES = frozenset({
    "tls.mode", "backend.sslmode", "backend.allow_superuser", "audit.enabled", "audit.durability",
    "audit.flush_interval_ms", "audit.on_failure", "audit.log_parameters", "audit.checkpoint_every", "audit.signed",
    "audit.retention.hot_days", "audit.retention.archive_days",
    "encryption.enabled", "encryption.unencrypted_sensitive", "server.auth_method", "users.md5_logins",
    "users.trusted_writers", "limits.unlimited_tenants",
})

# What `compliance check` can measure on a live system (tenantgate.proxy.ops.compliance.runtime).
RUNTIME_CHECKS = frozenset({"rls", "backend_role", "audit_chain", "clock", "keys"})
# Audit-log queries a control may cite as evidence (tenantgate.proxy.ops.compliance.auditlog).
EVIDENCE_QUERIES = frozenset(
    {"statements", "auth_failures", "refusals", "admin_actions", "trusted_access", "encrypted_access",
     "key_events", "reloads", "limit_hits", "reviews", "retention"}
)
OPS = ("equals", "one_of", "at_least", "at_most")
_SECTION_KEYS = frozenset({"frameworks", "enforce", "controls_dirs", "sensitive_columns", "max_key_age_days",
                           "max_clock_skew"})
_CONTROL_KEYS = frozenset({"id", "requirement", "config", "runtime", "evidence", "manual"})


class ControlFileError(ValueError):
    """A framework file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class Requirement:
    """One config requirement of a control; a missing value (None) never holds.

    >>> r = Requirement("backend.sslmode", "one_of", ["require", "verify-full"])
    >>> r.holds("verify-full"), r.holds("prefer"), r.holds(None), r.describe()
    (True, False, False, "backend.sslmode one of ['require', 'verify-full']")
    >>> Requirement("audit.flush_interval_ms", "at_most", 200).holds(50)
    True
    """

    fact: str
    op: str
    value: Any

    def holds(self, actual: Any) -> bool:
        if actual is None:
            return False
        if self.op == "equals":
            return bool(actual == self.value)
        if self.op == "one_of":
            return actual in self.value
        if self.op == "at_least":
            return bool(actual >= self.value)
        return bool(actual <= self.value)

    def describe(self) -> str:
        words = {"equals": "=", "one_of": "one of", "at_least": ">=", "at_most": "<="}
        return f"{self.fact} {words[self.op]} {self.value!r}"


@dataclass(frozen=True, slots=True)
class Control:
    framework: str
    id: str
    requirement: str
    config: tuple[Requirement, ...] = ()
    runtime: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    manual: str | None = None

    @property
    def name(self) -> str:
        return f"{self.framework} {self.id}"


@dataclass(frozen=True, slots=True)
class Framework:
    name: str
    title: str
    controls: tuple[Control, ...]
    source: str


@dataclass(frozen=True, slots=True)
class ComplianceSettings:
    frameworks: tuple[Framework, ...]
    enforce: bool = True
    sensitive_columns: tuple[str, ...] = ()  # [schema.]table.column that must be in [[encryption.columns]]
    max_key_age_days: int = 365
    max_clock_skew: float = 1.0  # seconds between this host and the backend
    warnings: tuple[str, ...] = field(default=())

    def controls(self) -> list[Control]:
        return [c for fw in self.frameworks for c in fw.controls]


# ---------------------------------------------------------------- framework files


def builtin_frameworks() -> dict[str, str]:
    """Name -> TOML text of every preset shipped in the package."""
    folder = resources.files("tenantgate.config").joinpath("frameworks")
    out = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name.removesuffix(".toml")] = entry.read_text(encoding="utf-8")
    return out


def load_framework_file(text: str, source: str) -> Framework:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ControlFileError(f"{source}: invalid TOML: {exc}") from None
    name, title = raw.get("framework"), raw.get("title", raw.get("framework"))
    if not isinstance(name, str) or not name or not isinstance(title, str):
        raise ControlFileError(f"{source}: framework: required, a name such as \"internal-policy\"")
    entries = raw.get("control", [])
    if not isinstance(entries, list) or not entries:
        raise ControlFileError(f"{source}: control: at least one [[control]] table is required")
    controls, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{source}: control[{i}]"
        if not isinstance(entry, dict):
            raise ControlFileError(f"{where}: must be a table")
        unknown = sorted(set(entry) - _CONTROL_KEYS)
        if unknown:
            allowed = ", ".join(sorted(_CONTROL_KEYS))
            raise ControlFileError(f"{where}.{unknown[0]}: unknown key (expected one of: {allowed})")
        cid, text_ = entry.get("id"), entry.get("requirement")
        if not isinstance(cid, str) or not cid or not isinstance(text_, str) or not text_:
            raise ControlFileError(f"{where}: id and requirement are required strings")
        if cid in seen:
            raise ControlFileError(f"{where}.id: {cid} is listed twice")
        seen.add(cid)
        runtime = _names(entry.get("runtime", []), RUNTIME_CHECKS, f"{where}.runtime")
        evidence = _names(entry.get("evidence", []), EVIDENCE_QUERIES, f"{where}.evidence")
        manual = entry.get("manual")
        if manual is not None and (not isinstance(manual, str) or not manual):
            raise ControlFileError(f"{where}.manual: must be a non-empty string (the human step)")
        config = tuple(_requirement(r, f"{where}.config[{j}]") for j, r in enumerate(entry.get("config", [])))
        if not (config or runtime or manual):
            raise ControlFileError(f"{where}: a control needs config, runtime or manual checks")
        controls.append(Control(name, cid, text_, config, runtime, evidence, manual))
    return Framework(name, title, tuple(controls), source)


def _names(value: object, allowed: frozenset[str], where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ControlFileError(f"{where}: must be a list of names")
    bad = [v for v in value if v not in allowed]
    if bad:
        raise ControlFileError(f"{where}: unknown {bad[0]!r} (expected one of: {', '.join(sorted(allowed))})")
    return tuple(value)


def _requirement(raw: object, where: str) -> Requirement:
    if not isinstance(raw, dict) or raw.get("fact") not in FACT_NAMES:
        raise ControlFileError(f"{where}: needs fact = one of {', '.join(sorted(FACT_NAMES))}")
    ops = [op for op in OPS if op in raw]
    if len(ops) != 1 or len(raw) != 2:
        raise ControlFileError(f"{where}: give the fact and exactly one of {', '.join(OPS)}")
    value = raw[ops[0]]
    if ops[0] == "one_of" and not isinstance(value, list):
        raise ControlFileError(f"{where}.one_of: must be a list")
    if ops[0] in ("at_least", "at_most") and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ControlFileError(f"{where}.{ops[0]}: must be a number")
    return Requirement(raw["fact"], ops[0], value)


# ---------------------------------------------------------------- [compliance] and enforcement


def parse_compliance(raw: Mapping[str, Any], base_dir: Path) -> tuple[ComplianceSettings | None, list[tuple[str, str]]]:
    """``raw["compliance"]`` -> settings, or None and (key, message) problems."""
    section = raw.get("compliance")
    if section is None:
        return None, []
    problems: list[tuple[str, str]] = []
    if not isinstance(section, dict):
        return None, [("compliance", "expected a table")]
    for key in sorted(set(section) - _SECTION_KEYS):
        problems.append((f"compliance.{key}", f"unknown key (expected one of: {', '.join(sorted(_SECTION_KEYS))})"))

    def strings(key: str) -> list[str]:
        value = section.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append((f"compliance.{key}", "must be a list of strings"))
            return []
        return list(value)

    presets = builtin_frameworks()
    frameworks: list[Framework] = []
    for name in strings("frameworks"):
        if name not in presets:
            known = ", ".join(sorted(presets))
            problems.append(("compliance.frameworks", f"unknown framework {name!r} (built in: {known})"))
            continue
        frameworks.append(load_framework_file(presets[name], f"tenantgate/config/frameworks/{name}.toml"))
    for folder in strings("controls_dirs"):
        path = Path(folder) if Path(folder).is_absolute() else base_dir / folder
        if not path.is_dir():
            problems.append(("compliance.controls_dirs", f"{path}: not a directory"))
            continue
        for file in sorted(path.glob("*.toml")):
            try:
                frameworks.append(load_framework_file(file.read_text(encoding="utf-8"), str(file)))
            except (ControlFileError, OSError, UnicodeDecodeError) as exc:
                problems.append(("compliance.controls_dirs", str(exc)))
    enforce_ = section.get("enforce", True)
    if not isinstance(enforce_, bool):
        problems.append(("compliance.enforce", "must be true or false"))
    age = section.get("max_key_age_days", 365)
    if isinstance(age, bool) or not isinstance(age, int) or age < 1:
        problems.append(("compliance.max_key_age_days", "must be an integer >= 1"))
    skew = section.get("max_clock_skew", 1.0)
    if isinstance(skew, bool) or not isinstance(skew, int | float) or skew <= 0:
        problems.append(("compliance.max_clock_skew", "must be a number of seconds > 0"))
    sensitive = strings("sensitive_columns")
    for name in sensitive:
        if "." not in name:
            problems.append(("compliance.sensitive_columns", f"{name!r}: expected [schema.]table.column"))
    if problems:
        return None, problems
    return ComplianceSettings(tuple(frameworks), bool(enforce_), tuple(sensitive), int(age), float(skew)), []
