"""Framework presets at config load: every config requirement of every shipped control refuses a weaker
setting naming the control and the key (or warns with enforce = false); operators' own control files."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from tenantgate.audit.keys import generate_hmac_key_file
from tenantgate.config import ConfigError, load_config
from tenantgate.config.compliance import ControlFileError, builtin_frameworks, load_framework_file
from tenantgate.keyring.kek import create_kek_file

from .certs import Pki

FRAMEWORKS = ["pci-dss-4.0", "hipaa", "soc2", "gdpr"]


def strong(tmp: Path, pki: Pki) -> dict[str, Any]:
    """A config that meets all four frameworks."""
    if not (tmp / "audit.key").exists():
        generate_hmac_key_file(tmp / "audit.key")
        create_kek_file(tmp / "kek.hex")
    return {
        "listen": {"address": "127.0.0.1:6432"},
        "backend": {"host": "127.0.0.1", "port": 5432, "user": "app", "database": "app", "sslmode": "verify-full",
                    "sslrootcert": pki.ca_cert},
        "tls": {"mode": "require", "cert": pki.server[0], "key": pki.server[1]},
        "audit": {"key": f"file:{tmp / 'audit.key'}", "path": str(tmp / "audit" / "log.jsonl")},
        "encryption": {"kek": f"file:{tmp / 'kek.hex'}", "store": f"file:{tmp / 'keys.json'}",
                       "columns": [{"table": "customers", "column": "ssn"}]},
        "limits": {"statements_per_second": 100},
        "tenants": {"acme": {"tier": "shared"}},
        "users": {"alice": {"tenant": "acme", "password": "pw"},
                  "ops": {"trusted": True, "role": "readonly", "password": "pw"}},
        "admins": {"dba": {"password": "pw"}},
        "scoping": {"column": "tenant_id", "tables": ["customers"]},
        "compliance": {"frameworks": FRAMEWORKS, "sensitive_columns": ["customers.ssn"]},
    }


# One way to weaken each fact a control may test; the key the refusal must name.
WEAKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "tls.mode": (lambda c: c["tls"].update(mode="allow"), "tls.mode"),
    "backend.sslmode": (lambda c: c["backend"].update(sslmode="prefer"), "backend.sslmode"),
    "backend.allow_superuser": (lambda c: c["backend"].update(allow_superuser=True), "backend.allow_superuser"),
    "audit.enabled": (lambda c: c["audit"].update(enabled=False), "audit"),
    "audit.durability": (lambda c: c["audit"].update(durability="batched"), "audit.durability"),
    "audit.flush_interval_ms": (lambda c: c["audit"].update(flush_interval_ms=5000), "audit.flush_interval_ms"),
    "audit.on_failure": (lambda c: c["audit"].update(on_failure="drop"), "audit.on_failure"),
    "audit.log_parameters": (lambda c: c["audit"].update(log_parameters="full"), "audit.log_parameters"),
    "audit.checkpoint_every": (lambda c: c["audit"].update(checkpoint_every=0), "audit.checkpoint_every"),
    "audit.signed": (lambda c: c["audit"].pop("signing_key", None), "audit.signing_key"),
    "encryption.enabled": (lambda c: c.pop("encryption"), "encryption.kek"),
    "encryption.unencrypted_sensitive": (lambda c: c["compliance"].update(sensitive_columns=["customers.email"]),
                                         "encryption.columns"),
    "server.auth_method": (lambda c: c.setdefault("server", {}).update(auth_method="md5"), "server.auth_method"),
    "users.md5_logins": (lambda c: c["users"]["alice"].update(auth="md5"), "users.alice.auth"),
    "users.trusted_writers": (lambda c: c["users"]["ops"].update(role="readwrite"), "users.ops.role"),
    "limits.unlimited_tenants": (lambda c: c.pop("limits"), "tenants.acme.statements_per_second"),
}


def requirements() -> list[Any]:
    out = []
    for name, text in sorted(builtin_frameworks().items()):
        for control in load_framework_file(text, name).controls:
            for req in control.config:
                out.append(pytest.param(name, control.id, req.fact, id=f"{name}:{control.id}:{req.fact}"))
    return out


def write(tmp: Path, cfg: dict[str, Any]) -> Path:
    path = tmp / "tenantgate.toml"
    path.write_text(tomlkit.dumps(cfg))
    return path


def test_strong_config_loads(tmp_path: Path, tmp_pki: Pki) -> None:
    config = load_config(write(tmp_path, strong(tmp_path, tmp_pki)))
    assert config.compliance is not None
    assert [f.name for f in config.compliance.frameworks] == FRAMEWORKS
    assert config.compliance.warnings == ()


def test_every_shipped_fact_has_a_weakening() -> None:
    shipped = {p.values[2] for p in requirements()}
    assert shipped <= set(WEAKEN)


@pytest.mark.parametrize(("framework", "control", "fact"), requirements())
def test_preset_refuses_weaker_setting(tmp_path: Path, tmp_pki: Pki, framework: str, control: str, fact: str) -> None:
    cfg = strong(tmp_path, tmp_pki)
    cfg["compliance"]["frameworks"] = [framework]
    weaken, key = WEAKEN[fact]
    weaken(cfg)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, cfg))
    named = [p for p in err.value.problems if f"{framework} {control} requires" in p.message]
    assert named, str(err.value)
    assert key in {p.key for p in named}, str(err.value)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_enforce_false_warns_and_loads(tmp_path: Path, tmp_pki: Pki, framework: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    cfg = strong(tmp_path, tmp_pki)
    cfg["compliance"].update(frameworks=[framework], enforce=False)
    cfg["audit"].update(enabled=False)  # every framework needs the audit log
    cfg["tls"].update(mode="allow")
    with caplog.at_level(logging.WARNING, "tenantgate.config"):
        config = load_config(write(tmp_path, cfg))
    assert config.compliance is not None and config.compliance.warnings
    assert any(w.startswith("audit: weaker than " + framework) for w in config.compliance.warnings)
    assert f"weaker than {framework}" in caplog.text


def test_operator_control_file(tmp_path: Path, tmp_pki: Pki) -> None:
    own = tmp_path / "controls"
    own.mkdir()
    (own / "internal.toml").write_text(
        'framework = "acme-internal"\n[[control]]\nid = "SEC-7"\nrequirement = "Parameters are never logged."\n'
        'config = [{ fact = "audit.log_parameters", equals = "none" }]\n'
    )
    cfg = strong(tmp_path, tmp_pki)
    cfg["compliance"].update(frameworks=[], controls_dirs=["controls"])
    assert load_config(write(tmp_path, cfg)).compliance is not None
    cfg["audit"]["log_parameters"] = "hash"
    with pytest.raises(ConfigError, match=r"audit\.log_parameters: weaker than acme-internal SEC-7 requires"):
        load_config(write(tmp_path, cfg))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"frameworks": ["iso-27001"]}, "unknown framework 'iso-27001'"),
        ({"frameworks": ["soc2"], "enforce": "yes"}, "compliance.enforce: must be true or false"),
        ({"frameworks": ["soc2"], "controls_dirs": ["nowhere"]}, "not a directory"),
        ({"frameworks": ["soc2"], "max_key_age_days": 0}, "max_key_age_days: must be an integer >= 1"),
        ({"frameworks": ["soc2"], "strict": True}, "compliance.strict: unknown key"),
    ],
)
def test_bad_compliance_section(tmp_path: Path, tmp_pki: Pki, section: dict[str, Any], message: str) -> None:
    cfg = strong(tmp_path, tmp_pki)
    cfg["compliance"] = section
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, cfg))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('title = "x"\n[[control]]\nid = "1"\nrequirement = "r"\nmanual = "m"\n', "framework: required"),
        ('framework = "x"\n[[control]]\nid = "1"\nrequirement = "r"\n', "needs config, runtime or manual"),
        ('framework = "x"\n[[control]]\nid = "1"\nrequirement = "r"\nruntime = ["psychic"]\n', "unknown 'psychic'"),
        ('framework = "x"\n[[control]]\nid = "1"\nrequirement = "r"\nconfig = [{ fact = "tls.mode" }]\n',
         "exactly one of"),
        ('framework = "x"\n[[control]]\nid = "1"\nrequirement = "r"\nconfig = [{ fact = "mood", equals = 1 }]\n',
         "needs fact = one of"),
        ('framework = "x"\n[[control]]\nid = "1"\nrequirement = "r"\nmanual = "m"\n'
         '[[control]]\nid = "1"\nrequirement = "r"\nmanual = "m"\n', "listed twice"),
    ],
)
def test_bad_control_file(text: str, message: str) -> None:
    with pytest.raises(ControlFileError, match=message):
        load_framework_file(text, "own.toml")


def test_weakening_only_breaks_its_own_fact(tmp_path: Path, tmp_pki: Pki) -> None:
    """A refusal lists exactly the controls whose requirements the change broke."""
    cfg = copy.deepcopy(strong(tmp_path, tmp_pki))
    cfg["tls"]["mode"] = "allow"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, cfg))
    assert {p.key for p in err.value.problems} == {"tls.mode"}
    assert "pci-dss-4.0 4.2.1" in str(err.value) and "hipaa 164.312(e)(1)" in str(err.value)
