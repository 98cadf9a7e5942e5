"""Session fixtures: real model servers, started once, in parallel, torn down by process group."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.procs import Gateway, MLServer, TorchServe, Triton, pool_config
from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, Triton | MLServer]]:
    """Two Tritons (a, b) and one MLServer, started side by side."""
    # Triton a also serves a decoupled model (countdown) and one that always raises (fail).
    procs: dict[str, Triton | MLServer] = {
        "a": Triton(models=(*MODELS, "countdown", "fail")),
        "b": Triton(),
        "mlserver": MLServer(),
    }
    try:
        for p in procs.values():
            p.start()
        for p in procs.values():
            p.wait_ready()
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture(scope="session")
def triton_a(servers: dict[str, Triton | MLServer]) -> Triton:
    t = servers["a"]
    assert isinstance(t, Triton)
    return t


@pytest.fixture(scope="session")
def triton_b(servers: dict[str, Triton | MLServer]) -> Triton:
    t = servers["b"]
    assert isinstance(t, Triton)
    return t


@pytest.fixture(scope="session")
def mlserver(servers: dict[str, Triton | MLServer]) -> MLServer:
    m = servers["mlserver"]
    assert isinstance(m, MLServer)
    return m


@pytest.fixture(scope="session")
def torchserve() -> Iterator[TorchServe]:
    """A real TorchServe on CPU (Predictions and Open Inference Protocol on one port)."""
    ts = TorchServe().start()
    try:
        ts.wait_ready()
        yield ts
    finally:
        ts.stop()


MODELS = ["add_sub", "echo_text", "sleep"]


@pytest.fixture(scope="module")
def gateway(triton_a: Triton, triton_b: Triton, mlserver: MLServer) -> Iterator[Gateway]:
    """A gateway with pool `tritons` (a, b) and pool `mlservers` (sum)."""
    config = pool_config(
        {
            "tritons": [("triton-a", triton_a.address, MODELS), ("triton-b", triton_b.address, MODELS)],
            "mlservers": [("mlserver-1", mlserver.address, ["sum"])],
        }
    )
    gw = Gateway(config).start()
    try:
        gw.wait_serving("tritons").wait_serving("mlservers")
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def channel(gateway: Gateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real Redis for one test module (stopped and started again by outage tests)."""
    server = RedisServer().start()
    yield server
    server.stop()
