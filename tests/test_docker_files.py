"""docker/ checked as data (no Docker engine here): compose, Prometheus, the sample config, the
Dockerfile and the Grafana dashboard agree with each other and with the code."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tenantgate.config import Config, load_config
from tenantgate.proxy.counters import Metrics

DOCKER = Path(__file__).resolve().parents[1] / "docker"
CONFIG_PATH = "/etc/tenantgate/tenantgate.toml"
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def data(name: str) -> Any:
    """A JSON-compatible YAML file (JSON after its leading # comments)."""
    lines = (DOCKER / name).read_text().splitlines()
    return json.loads("\n".join(line for line in lines if not line.startswith("#")))


def compose() -> dict[str, Any]:
    return data("compose.yaml")  # type: ignore[no-any-return]


def environment(service: str) -> dict[str, str]:
    """A service's environment with compose's ${VAR:-default} resolved to the defaults."""
    env = compose()["services"][service].get("environment", {})
    out = {}
    for key, value in env.items():
        match = _DEFAULTED.fullmatch(value)
        assert match is not None, f"{service}.{key} must be ${{VAR:-default}} so `compose up` runs as is"
        assert match.group(1) == key, f"{service}.{key} is filled from another variable ({match.group(1)})"
        out[key] = match.group(2)
    return out


@pytest.fixture
def sample(monkeypatch: pytest.MonkeyPatch) -> Config:
    for key, value in environment("tenantgate").items():
        monkeypatch.setenv(key, value)
    return load_config(DOCKER / "tenantgate.toml")


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def instruction(name: str) -> list[str]:
    return [args for word, args in dockerfile() if word == name]


def test_sample_config_loads_with_the_compose_environment(sample: Config) -> None:
    assert sample.listen.admin is not None and sample.listen.metrics is not None
    assert sample.backend.host == "postgres" and sample.backend.port == 5432
    assert "dba" in sample.admins and sample.backend.password is not None
    # every password_env the config names is set by compose
    raw = tomllib.loads((DOCKER / "tenantgate.toml").read_text())
    wanted = {v["password_env"] for section in ("users", "admins") for v in raw[section].values()}
    wanted.add(raw["backend"]["password_env"])
    assert wanted <= set(environment("tenantgate"))


def test_dockerfile_matches_the_sample_config_and_the_package(sample: Config) -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    exposed = {int(p) for args in instruction("EXPOSE") for p in args.split()}
    assert sample.listen.admin and sample.listen.metrics
    assert exposed == {sample.listen.address[1], sample.listen.admin[1], sample.listen.metrics[1]}
    (user,) = instruction("USER")
    assert user not in ("root", "0")
    (entrypoint,) = instruction("ENTRYPOINT")
    assert json.loads(entrypoint) == ["tenantgate", "serve", "--config", CONFIG_PATH]
    pyproject = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
    assert "tenantgate" in pyproject["project"]["scripts"]
    # the image gets every package folder the wheel is built from (a subpackage with its parent)
    copied = {args.split()[0] for args in instruction("COPY")}
    assert {d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()} <= copied
    assert any(f":{sample.listen.metrics[1]}/healthz" in args for args in instruction("HEALTHCHECK"))


def test_compose_wires_postgres_tenantgate_and_prometheus(sample: Config) -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "tenantgate", "prometheus"}
    assert services["postgres"]["image"] == "postgres:15"
    build = services["tenantgate"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
    assert services["tenantgate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # the database the sample config uses is the one the healthcheck waits for
    assert f"-d {sample.backend.database}" in services["postgres"]["healthcheck"]["test"][1]
    # the backend role's password reaches both containers with the same default
    key = "TENANTGATE_BACKEND_PASSWORD"
    assert environment("postgres")[key] == environment("tenantgate")[key]
    initdb = (DOCKER / "initdb.sh").read_text()
    assert f"CREATE ROLE {sample.backend.user} LOGIN" in initdb
    assert f"CREATE DATABASE {sample.backend.database} OWNER {sample.backend.user}" in initdb
    for table in sample.scoping.tables:
        assert f"CREATE TABLE {table.name} (" in initdb and f"{table.column} text NOT NULL" in initdb

    mounts = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (DOCKER / source).is_file(), f"{name} mounts a missing {source}"
                mounts[target] = source
    assert mounts[CONFIG_PATH] == "./tenantgate.toml"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"

    published = {int(p.split(":")[-1]) for p in services["tenantgate"]["ports"]}
    exposed = {int(p) for args in instruction("EXPOSE") for p in args.split()}
    assert published == exposed
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))


def test_prometheus_scrapes_the_metrics_port(sample: Config) -> None:
    (job,) = data("prometheus.yml")["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert sample.listen.metrics is not None
    assert job["static_configs"][0]["targets"] == [f"tenantgate:{sample.listen.metrics[1]}"]


def exposed_series() -> tuple[set[str], dict[str, set[str]]]:
    """Every sample name Metrics can expose, and the labels of each metric family."""
    names: set[str] = set()
    for family, kind in Metrics().families().items():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
        names.update(family + s for s in suffixes)
    m = Metrics()
    m.statement("acme", "select", "allowed")
    m.timing("acme", 0.01, 0.001)
    m.session_ended("acme", 1, 1)
    m.client_refused("28P01")
    m.admin_auth_failed()
    m.crypto("encrypt", ok=False)
    m.error("42501")
    m.admin_command("RELOAD", True)
    labels: dict[str, set[str]] = {}
    for family in m.registry.collect():
        for s in family.samples:
            labels.setdefault(s.name, set()).update(s.labels)
    labels["tenantgate_sessions"] = {"tenant"}
    return names, labels


def test_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((DOCKER / "grafana-dashboard.json").read_text())
    names, labels = exposed_series()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 20
    used: set[str] = set()
    for expr in exprs:
        metrics = set(re.findall(r"\btenantgate_\w+", expr))
        assert metrics, expr
        assert metrics <= names, f"{expr}: unknown {metrics - names}"
        used |= metrics
        known = set().union(*(labels.get(m, set()) for m in metrics))
        grouped = {g.strip() for by in re.findall(r"by \(([^)]*)\)", expr) for g in by.split(",")}
        selected = set(re.findall(r"(\w+)=\"", expr))
        if all(m in labels for m in metrics):
            assert grouped | selected <= known, f"{expr}: labels {(grouped | selected) - known} do not exist"
    # every metric family is on the dashboard somewhere
    assert set(Metrics().families()) <= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
