"""Config validation: errors name the file, the key path and what was expected; no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import Config, ConfigError, load_config, parse_config
from tests.procs import ROOT


def _error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml", env or {})
    return str(caught.value)


def test_embedded_default_is_valid() -> None:
    config, name = load_config(None, env={})
    assert name == "<embedded default>"
    assert config.server.listen.startswith("127.0.0.1:")
    assert [s.pool for s in config.static_snapshots()] == ["demo"]


def test_unknown_key_is_named_with_its_path() -> None:
    msg = _error("server:\n  listen: 127.0.0.1:1\n  listne: x\n")
    assert msg.startswith("gw.yaml: invalid configuration")
    assert "server.listne: unknown key" in msg


def test_wrong_type_says_what_was_expected() -> None:
    msg = _error("server:\n  shutdown_grace_s: soon\n")
    assert "server.shutdown_grace_s: Input should be a valid number" in msg
    assert "'soon'" in msg


def test_endpoint_errors_point_into_the_list() -> None:
    text = """
pools:
  gpu:
    endpoints:
      - address: 10.0.0.1:8001
        backend: triton
        models: [a]
      - address: nohost
        backend: tensorflow
        models: []
"""
    msg = _error(text)
    assert "pools.gpu.endpoints.1.address: expected 'host:port'" in msg
    assert (
        "pools.gpu.endpoints.1.backend: unknown backend 'tensorflow'; expected one of anthropic, kserve_v2, openai, tfserving, torchserve, triton, vllm"
        in msg
    )
    assert "pools.gpu.endpoints.1.models: List should have at least 1 item" in msg


def test_duplicate_endpoint_ids() -> None:
    text = "pools:\n  p:\n    endpoints:\n" + "      - {address: 'h:1', backend: triton, models: [m]}\n" * 2
    assert "pools.p: Value error" not in _error(text)
    assert "repeated: h:1" in _error(text)


def test_yaml_syntax_error_has_line_and_column() -> None:
    msg = _error("server:\n  listen: [\n")
    assert msg.startswith("gw.yaml: not valid YAML at line")


def test_top_level_must_be_a_mapping() -> None:
    assert "expected a mapping at the top level, got list" in _error("- a\n- b\n")


def test_environment_overrides_listen_addresses() -> None:
    config = parse_config(
        "server: {allow_unauthenticated: true}",
        "gw.yaml",
        {"MESHGATE_LISTEN": "0.0.0.0:9000", "MESHGATE_METRICS_LISTEN": "off"},
    )
    assert config.server.listen == "0.0.0.0:9000"
    assert config.metrics.listen is None
    assert "server.listen: expected 'host:port'" in _error("{}", {"MESHGATE_LISTEN": "bad"})


def test_environment_variables_fill_secrets_into_the_config() -> None:
    """A Kubernetes Secret passed as env: the password never sits in the ConfigMap."""
    text = 'redis: {url: "${REDIS_URL}", prefix: "$${kept}:"}\nrate_limits: {store: redis, limits: []}'
    config = parse_config(text, "gw.yaml", {"REDIS_URL": "redis://:s3cret@redis:6379/0"})
    assert config.redis is not None and config.redis.url == "redis://:s3cret@redis:6379/0"
    assert config.redis.prefix == "${kept}:"  # $$ escapes
    with pytest.raises(ConfigError) as err:
        parse_config('redis: {url: "${REDIS_URL}"}\nledger: {url: "${PG_URL}"}', "gw.yaml", {})
    assert str(err.value) == "gw.yaml: environment variable(s) not set: PG_URL, REDIS_URL"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=ROOT, timeout=30
    )


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("pools:\n  p:\n    endpoints:\n      - {address: 'h:1', backend: triton, models: [m]}\n")
    ok = _cli("check-config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "OK (1 pool(s), 1 endpoint(s)" in ok.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  max_message_bytes: 10\n")
    out = _cli("check-config", str(bad))
    assert out.returncode == 2
    assert f"{bad}: invalid configuration" in out.stderr
    assert "server.max_message_bytes: Input should be greater than or equal to 4096" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_refuses_bad_config_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: {p: {endpoints: [{address: 'h:1', backend: triton, models: [m], colour: red}]}}\n")
    out = _cli("serve", "--config", str(bad))
    assert out.returncode == 2
    assert "pools.p.endpoints.0.colour: unknown key" in out.stderr
    assert "Traceback" not in out.stderr
    missing = _cli("serve", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "nope.yaml: cannot read config: No such file or directory" in missing.stderr


def test_serve_reports_a_busy_port_without_traceback(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "busy.yaml"
        cfg.write_text(f"server: {{listen: '127.0.0.1:{port}'}}\nmetrics: {{listen: null}}\n")
        out = _cli("serve", "--config", str(cfg))
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_readme_configuration_reference_is_a_valid_config(tmp_path: Path) -> None:
    """README's configuration block lists every section: it must stay a config the gateway accepts."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(block)
    assert {"server", "routing", "readiness", "discovery", "pools"} <= set(config)
    Config.model_validate(config)
