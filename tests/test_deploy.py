"""deploy/ checked by the ecosystem's own tools: promtool (config, rules, rule unit tests),
yamllint, kubernetes-validate (the manifests against Kubernetes' schemas), the KEDA
ScaledObjects against KEDA's own CRD schema, the compose file against the compose spec, hadolint
for the Dockerfile, and the gateway configs shipped there through `meshgate check-config`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from tests.procs import ROOT, Gateway, free_ports

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}:\n{done.stdout}\n{done.stderr}"
    return done


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(BIN))
    assert found, f"{name} is missing: make test installs it"
    return found


def test_prometheus_config_rules_and_rule_unit_tests() -> None:
    promtool = tool("promtool")
    run(promtool, "check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    out = run(promtool, "check", "rules", DEPLOY / "prometheus" / "alerts.yml").stdout
    assert "SUCCESS: 5 rules found" in out
    run(promtool, "test", "rules", DEPLOY / "prometheus" / "alerts_test.yml")


def test_yaml_files_pass_yamllint() -> None:
    run(tool("yamllint"), "--strict", "-c", DEPLOY / ".yamllint.yaml", DEPLOY)


def test_kubernetes_manifests_validate_against_kubernetes_schemas() -> None:
    manifests = sorted(p for p in (DEPLOY / "k8s").glob("*.yaml") if "keda" not in p.name)
    out = run(tool("kubernetes-validate"), "--strict", "-k", "1.31.0", *manifests).stdout
    kinds = {"configmap", "deployment", "service", "poddisruptionbudget", "horizontalpodautoscaler"}
    assert all(f"resource {k}/" in out for k in kinds), out
    assert "WARN" not in out and "ERROR" not in out, out


def test_keda_scaled_objects_validate_against_kedas_crd(tmp_path: Path) -> None:
    crd = yaml.safe_load((ROOT / "tests" / "schemas" / "keda.sh_scaledobjects.yaml").read_text())
    schema = tmp_path / "scaledobject.json"
    schema.write_text(json.dumps(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
    objects = sorted((DEPLOY / "k8s").glob("keda-*.yaml"))
    assert len(objects) == 2
    run(tool("check-jsonschema"), "--schemafile", schema, *objects)
    bad = tmp_path / "bad.yaml"
    bad.write_text(objects[0].read_text().replace("scaleTargetRef", "scaleTarget"))
    assert subprocess.run([tool("check-jsonschema"), "--schemafile", str(schema), str(bad)]).returncode != 0


def test_the_compose_file_follows_the_compose_spec() -> None:
    run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", DEPLOY / "compose.yaml")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {
        "gateway",
        "triton",
        "consul",
        "redis",
        "postgres",
        "prometheus",
        "grafana",
        "jaeger",
    }
    # the gateway's traces go where Jaeger takes OTLP/gRPC
    config = yaml.safe_load((DEPLOY / "docker" / "config.yaml").read_text())
    assert config["tracing"]["endpoint"] == "http://jaeger:4317"
    assert compose["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for name, service in compose["services"].items():  # nothing published beyond loopback
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), name


def test_the_dockerfile_passes_hadolint_and_installs_as_make_does() -> None:
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    run(tool("hadolint"), dockerfile)
    text = dockerfile.read_text()
    assert "RUN make venv VENV=/opt/venv EXTRAS=" in text  # `make run`'s own install steps
    assert "USER 10001" in text and "HEALTHCHECK" in text
    make = (ROOT / "Makefile").read_text()
    assert "-e '.$(if $(EXTRAS),[$(EXTRAS)],)'" in make


@pytest.mark.parametrize("where", ["docker/config.yaml", "k8s/configmap.yaml"])
def test_the_shipped_gateway_configs_are_valid(where: str, tmp_path: Path) -> None:
    path = DEPLOY / where
    if path.parent.name == "k8s":
        text = yaml.safe_load(path.read_text())["data"]["config.yaml"]
        path = tmp_path / "config.yaml"
        path.write_text(text)
    env = {
        **os.environ,
        "MESHGATE_REDIS_URL": "redis://:pw@redis:6379/0",
        "MESHGATE_LEDGER_URL": "postgresql://meshgate:pw@postgres:5432/meshgate",
    }
    out = run(sys.executable, "-m", "gateway", "check-config", path, env=env).stdout
    assert "OK" in out
    missing = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")},
        cwd=ROOT,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "environment variable(s) not set: MESHGATE_LEDGER_URL, MESHGATE_REDIS_URL" in missing.stderr


def test_liveness_stays_serving_while_readiness_says_no_pool_can_serve() -> None:
    """The Deployment's probes: readiness on "" fails while every backend is down; liveness on
    meshgate.liveness does not, so Kubernetes does not restart a healthy gateway for it."""
    dead = free_ports(1)[0]
    gw = Gateway(
        {
            "pools": {
                "p": {
                    "endpoints": [
                        {"id": "x", "address": f"127.0.0.1:{dead}", "backend": "triton", "models": ["m"]}
                    ]
                }
            }
        }
    ).start()
    try:
        gw.wait_serving("", serving=False)
        assert gw.health("meshgate.liveness") == 1  # SERVING
        cli = [sys.executable, "-m", "gateway", "health", "--target", gw.address]
        live = subprocess.run(
            [*cli, "--service", "meshgate.liveness"], capture_output=True, text=True, cwd=ROOT
        )
        assert live.returncode == 0 and "SERVING" in live.stdout
        ready = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
        assert ready.returncode == 1 and "NOT_SERVING" in ready.stdout
    finally:
        gw.stop()
    down = subprocess.run([*cli], capture_output=True, text=True, cwd=ROOT)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr
    assert grpc.StatusCode.UNAVAILABLE.name in down.stderr


def test_a_wheel_carries_every_package_and_its_data(tmp_path: Path) -> None:
    """The image and any non-editable install get what the tree has: every package under
    gateway/, adapters/, discovery/ and the generated meshgate stubs, with their data files."""
    src = tmp_path / "src"  # a clean copy: a stale build/ in the tree would hide what is missing
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "bench")
    shutil.copytree(ROOT, src, ignore=skip)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "-w", str(tmp_path), "."], cwd=src, check=True, capture_output=True, timeout=300)
    import zipfile

    (wheel,) = tmp_path.glob("meshgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {
        str(init.parent.relative_to(ROOT))
        for top in ("gateway", "adapters", "discovery")
        for init in (ROOT / top).rglob("__init__.py")
    }
    packages |= {"meshgate", "meshgate/v1"}
    assert {p for p in packages if f"{p}/__init__.py" not in names} == set()
    for data in ("gateway/default.yaml", "gateway/load/metric_names.yaml", "meshgate/v1/inference.proto"):
        assert data in names, data
