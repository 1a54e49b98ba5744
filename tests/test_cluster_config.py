"""Deployment files for several instances and the [cluster] section, checked as data.

docker/k8s/tenantgate.yaml is validated against the Kubernetes API schemas (kubernetes-validate,
which ships them: no network), then checked for what the README promises of it; its config
loads for every instance; docker/haproxy.cfg passes ``haproxy -c``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tenantgate.config import ConfigError, load_config

DOCKER = Path(__file__).resolve().parents[1] / "docker"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are meant for; the schemas ship with the validator
SECRET = "s" * 40


def manifests() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DOCKER / "k8s" / "tenantgate.yaml").read_text()) if d]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind]


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError


def test_a_broken_manifest_is_caught() -> None:
    doc = of_kind("Deployment")[0]
    broken = {**doc, "spec": {**doc["spec"], "replicas": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_manifests_have_every_piece_and_agree() -> None:
    kinds = {d["kind"] for d in manifests()}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"} <= kinds
    deployments = of_kind("Deployment")
    assert len(deployments) == 3
    pdb = of_kind("PodDisruptionBudget")[0]["spec"]
    for dep in deployments:
        pod = dep["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert "preStop" in container["lifecycle"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert pod["spec"]["terminationGracePeriodSeconds"] > 30 + 5  # shutdown_timeout + preStop
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in pdb["selector"]["matchLabels"].items())
        assert all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    client = next(s for s in of_kind("Service") if s["metadata"]["name"] == "tenantgate")
    assert all(
        all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in client["spec"]["selector"].items())
        for d in deployments
    )


@pytest.mark.parametrize("instance", ["a", "b", "c"])
def test_the_configmap_loads_for_every_instance(instance: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = of_kind("ConfigMap")[0]["data"]["tenantgate.toml"]
    (tmp_path / "tenantgate.toml").write_text(text)
    secrets = of_kind("Secret")[0]["stringData"]
    for name in secrets:
        monkeypatch.setenv(name, SECRET)
    monkeypatch.setenv("TENANTGATE_AUDIT_KEY", "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=")
    monkeypatch.setenv("TENANTGATE_INSTANCE", instance)
    cfg = load_config(tmp_path / "tenantgate.toml")
    assert cfg.cluster is not None and cfg.cluster.instance == instance and cfg.cluster.size == 3
    assert cfg.cluster.bind == ("0.0.0.0", 7000) and cfg.listen.workers == 1


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_config_is_valid() -> None:
    done = subprocess.run(["haproxy", "-c", "-f", str(DOCKER / "haproxy.cfg")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


BASE = '[backend]\nuser = "app"\n\n[listen]\naddress = "127.0.0.1:6432"\n'


@pytest.mark.parametrize(
    ("cluster", "key", "message"),
    [
        ('peers = { a = "127.0.0.1:7000" }\npassword = "' + SECRET + '"\n', "cluster", "instance or instance_env"),
        ('instance = "z"\npeers = { a = "127.0.0.1:7000" }\npassword = "' + SECRET + '"\n', "cluster.instance",
         "not one of"),
        ('instance = "a"\npeers = { a = "127.0.0.1:7000" }\npassword = "short"\n', "cluster.password", "32 bytes"),
        ('instance = "a"\npeers = { a = "127.0.0.1:7000" }\n', "cluster", "exactly one of"),
        ('instance = "a"\npassword = "' + SECRET + '"\n', "cluster.peers", "is required"),
        ('instance = "a"\npeers = { a = "127.0.0.1:6432" }\npassword = "' + SECRET + '"\n', "cluster.peers.a",
         "same host and port"),
        ('instance = "a"\npeers = { a = { address = "127.0.0.1:1" } }\npassword = "' + SECRET + '"\n',
         "cluster.peers.a.peer", "is required"),
        ('instance_env = "TG_UNSET_INSTANCE"\npeers = { a = "127.0.0.1:7000" }\npassword = "' + SECRET + '"\n',
         "cluster.instance_env", "not set"),
    ],
)  # fmt: skip
def test_cluster_config_errors_name_the_key(tmp_path: Path, cluster: str, key: str, message: str) -> None:
    path = tmp_path / "tg.toml"
    path.write_text(BASE + "\n[cluster]\n" + cluster)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(p.key == key and message in p.message for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(("workers", "expected"), [("", 1), ("workers = 4\n", 4)])
def test_cluster_workers_default_to_one_and_may_be_set(tmp_path: Path, workers: str, expected: int) -> None:
    """Issue 19: an instance of a [cluster] is one process unless [listen] workers says otherwise."""
    path = tmp_path / "tg.toml"
    path.write_text(BASE + workers + '\n[cluster]\ninstance = "a"\npeers = { a = "127.0.0.1:7000" }\n'
                    f'password = "{SECRET}"\n')  # fmt: skip
    assert load_config(path).listen.workers == expected
