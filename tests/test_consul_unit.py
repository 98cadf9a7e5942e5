"""ConsulSource's rules in isolation: index handling, Meta parsing, address and token resolution."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from discovery import ModelRef
from discovery.consul import ConsulConfig, RateLimiter, next_index, resolve_address, resolve_token
from discovery.consul_meta import InvalidEntry, endpoint_from_entry

KINDS = {"triton", "kserve_v2"}


def entry(
    meta: dict[str, str], address: str = "", port: object = 8001, node: str = "10.0.0.9"
) -> dict[str, object]:
    return {
        "Node": {"Node": "n1", "Address": node},
        "Service": {"ID": "s1", "Address": address, "Port": port, "Meta": meta},
    }


def test_index_rules() -> None:
    assert next_index(0, "15") == 15
    assert next_index(15, "15") == 15
    assert next_index(15, "9") == 0  # went backwards (e.g. a Consul restart): start over
    assert next_index(0, "0") == 1  # never 0 once we have an answer
    assert next_index(7, None) == 0
    assert next_index(7, "junk") == 0


def test_meta_parsing() -> None:
    ep = endpoint_from_entry(
        entry(
            {
                "backend": "triton",
                "models": "resnet50, bert:2",
                "gpu": "a100-80g",
                "capacity": "4",
                "region": "eu",
                "metrics_url": "http://10.0.0.9:8002/metrics",
                "cost_per_hour": "3.5",
            }
        ),
        "gpu-pool",
        KINDS,
    )
    assert (ep.id, ep.pool, ep.host, ep.port, ep.backend) == ("s1", "gpu-pool", "10.0.0.9", 8001, "triton")
    assert ep.models == (ModelRef("resnet50"), ModelRef("bert", "2"))
    assert (ep.gpu, ep.capacity, ep.region) == ("a100-80g", 4.0, "eu")
    assert ep.meta["cost_per_hour"] == "3.5"
    assert (
        endpoint_from_entry(entry({"backend": "triton", "models": "m"}, address="10.1.1.1"), "p", KINDS).host
        == "10.1.1.1"
    )


@pytest.mark.parametrize(
    ("meta", "port", "reason"),
    [
        ({"models": "m"}, 1, "missing_backend"),
        ({"backend": "tgi", "models": "m"}, 1, "unknown_backend"),
        ({"backend": "triton"}, 1, "bad_models"),
        ({"backend": "triton", "models": ":2"}, 1, "bad_models"),
        ({"backend": "triton", "models": "m", "capacity": "0"}, 1, "bad_capacity"),
        ({"backend": "triton", "models": "m", "capacity": "inf"}, 1, "bad_capacity"),
        ({"backend": "triton", "models": "m"}, "80", "bad_address"),
        ({"backend": "triton", "models": "m"}, 0, "bad_address"),
    ],
)
def test_invalid_meta(meta: dict[str, str], port: object, reason: str) -> None:
    with pytest.raises(InvalidEntry) as caught:
        endpoint_from_entry(entry(meta, port=port), "p", KINDS)
    assert caught.value.reason == reason
    assert "service 's1'" in str(caught.value)


def test_malformed_entries() -> None:
    for bad in (None, [], {"Service": "x"}, {"Service": {"ID": "s", "Meta": "x"}}):
        with pytest.raises(InvalidEntry):
            endpoint_from_entry(bad, "p", KINDS)


def test_address_and_token_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN_FILE", raising=False)
    assert resolve_address(ConsulConfig()) == ("http", "127.0.0.1", 8500)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "https://consul.internal:8501")
    assert resolve_address(ConsulConfig()) == ("https", "consul.internal", 8501)
    assert resolve_address(ConsulConfig(address="10.0.0.2:8500")) == ("http", "10.0.0.2", 8500)
    assert resolve_token(ConsulConfig()) is None
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    assert resolve_token(ConsulConfig()) == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert resolve_token(ConsulConfig(token_file=str(token_file))) == "from-file"  # config wins over env


def test_rate_limiter_allows_a_burst_of_two_then_paces() -> None:
    async def run() -> float:
        limiter = RateLimiter(0.1)
        start = time.monotonic()
        for _ in range(4):
            await limiter.wait()
        return time.monotonic() - start

    elapsed = asyncio.run(run())
    assert 0.18 <= elapsed < 0.4  # two free, then two at 0.1 s each


async def test_example_service_definitions_follow_the_conventions() -> None:
    import json

    from adapters import REGISTRY

    files = sorted((Path(__file__).parent.parent / "deploy" / "consul").glob("*.json"))
    assert [f.name for f in files] == [
        "demo-triton.json",  # the compose stack's (deploy/compose.yaml)
        "openai.json",
        "torchserve.json",
        "triton.json",
        "vllm.json",
    ]
    for f in files:
        svc = {k.lower(): v for k, v in json.loads(f.read_text())["service"].items()}
        assert "inference" in svc["tags"]
        entry = {
            "Node": {},
            "Service": {"ID": svc["id"], "Address": svc["address"], "Port": svc["port"], "Meta": svc["meta"]},
        }
        ep = endpoint_from_entry(entry, svc["name"], set(REGISTRY))
        assert ep.models and ep.capacity > 0
        # The adapter accepts the example's options (e.g. torchserve's protocol).
        adapter = REGISTRY[ep.backend](ep.id, ep.address, max_message_bytes=1 << 20, options=ep.meta)
        await adapter.aclose()
