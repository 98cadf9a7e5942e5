"""The director and picker with fake adapters: retry rules, deadlines, least in-flight."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import grpc
import pytest
from prometheus_client import CollectorRegistry

from adapters import BackendError, InferCall, InferResult, ModelMetadata, Tensor
from discovery import Endpoint, ModelRef, PoolSnapshot
from gateway.config import Config
from gateway.endpoints import EndpointTable
from gateway.errors import GatewayError
from gateway.observe.metrics import Metrics
from gateway.pipeline.context import RequestContext
from gateway.pipeline.director import Director

OK = InferResult("m", "1", "", ())


class FakeAdapter:
    """Answers with whatever was set: a result, an error, or a wait."""

    def __init__(self) -> None:
        self.result: InferResult = OK
        self.error: BackendError | None = None
        self.delay = 0.0
        self.calls = 0
        self.timeouts: list[float | None] = []

    def set_err(self, code: grpc.StatusCode, retryable: bool = False) -> None:
        self.error = BackendError(code, f"fake {code.name}", retryable=retryable)

    async def infer(self, call: InferCall, timeout: float | None) -> InferResult:
        self.calls += 1
        self.timeouts.append(timeout)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error:
            raise self.error
        return self.result

    async def server_live(self, timeout: float) -> bool:
        return True

    async def model_ready(self, model: str, version: str, timeout: float) -> bool:
        return True

    async def model_metadata(self, model: str, version: str, timeout: float | None) -> ModelMetadata:
        return ModelMetadata(model, (), "fake", (), ())

    async def aclose(self) -> None:
        return None


def _setup(n: int, regions: tuple[str, ...] = ()) -> tuple[Director, EndpointTable, dict[str, FakeAdapter]]:
    fakes: dict[str, FakeAdapter] = {}

    def make(ep: Endpoint) -> FakeAdapter:
        fakes[ep.id] = FakeAdapter()
        return fakes[ep.id]

    table = EndpointTable(make)  # type: ignore[arg-type]
    eps = tuple(
        Endpoint(
            f"e{i}", "p", "127.0.0.1", 1000 + i, "triton", (ModelRef("m"),), region=(regions or ("",) * n)[i]
        )
        for i in range(n)
    )
    table.apply(PoolSnapshot("static", "p", eps))
    for s in table.states():
        s.health.live, s.health.ready_models = True, frozenset(s.endpoint.models)
    director = Director(
        Config(), table, Metrics(CollectorRegistry()), lambda s, reason: s.health.mark_down(reason)
    )
    return director, table, fakes


def ctx(timeout: float = 5.0, **hints: str) -> RequestContext:
    return RequestContext.new("test", "Infer", timeout, **hints)


CALL = InferCall("m", "", "", (Tensor("x", "FP32", (1,), raw=b"\0\0\0\0"),))


async def test_unavailable_is_retried_once_on_another_endpoint() -> None:
    director, _table, fakes = _setup(2)
    fakes["e0"].set_err(grpc.StatusCode.UNAVAILABLE, retryable=True)
    fakes["e1"].set_err(grpc.StatusCode.UNAVAILABLE, retryable=True)
    with pytest.raises(GatewayError) as caught:
        await director.infer(ctx(5.0), CALL)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert fakes["e0"].calls + fakes["e1"].calls == 2  # once each, no third try
    # Both are now marked down: the next call fails fast without calling anyone.
    with pytest.raises(GatewayError) as again:
        await director.infer(ctx(5.0), CALL)
    assert again.value.code == grpc.StatusCode.UNAVAILABLE
    assert fakes["e0"].calls + fakes["e1"].calls == 2


async def test_retry_succeeds_on_the_healthy_endpoint() -> None:
    director, _, fakes = _setup(2)
    fakes["e0"].set_err(grpc.StatusCode.UNAVAILABLE, retryable=True)
    results = [await director.infer(ctx(5.0), CALL) for _ in range(4)]
    assert all(r.route.endpoint == "e1" for r in results)
    assert max(r.route.attempts for r in results) == 2


async def test_non_retryable_errors_are_not_retried() -> None:
    director, _, fakes = _setup(2)
    for f in fakes.values():
        f.set_err(grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(GatewayError) as caught:
        await director.infer(ctx(5.0), CALL)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sum(f.calls for f in fakes.values()) == 1


async def test_backend_gets_the_remaining_deadline() -> None:
    director, _, fakes = _setup(1)
    await director.infer(ctx(0.25), CALL)
    (timeout,) = fakes["e0"].timeouts
    assert timeout is not None and 0.2 < timeout <= 0.25


async def test_least_in_flight_and_rotation_on_ties() -> None:
    director, table, fakes = _setup(3)
    for f in fakes.values():
        f.delay = 0.2
    slow = asyncio.ensure_future(director.infer(ctx(5.0), CALL))
    await asyncio.sleep(0.01)
    (busy,) = [s.endpoint.id for s in table.states() if s.calls.in_flight]
    for f in fakes.values():
        f.delay = 0.0
    picked = [(await director.infer(ctx(5.0), CALL)).route.endpoint for _ in range(6)]
    assert busy not in picked  # it has a call in flight, the others have none
    assert len(set(picked)) == 2  # ties rotate between the two idle ones
    assert (await slow).route.endpoint == busy


async def test_preferred_region_wins_while_it_has_a_ready_endpoint() -> None:
    director, table, _ = _setup(3, regions=("us", "eu", "eu"))
    picked = {(await director.infer(ctx(5.0, region="us"), CALL)).route.endpoint for _ in range(4)}
    assert picked == {"e0"}
    next(s for s in table.states() if s.endpoint.id == "e0").health.mark_down("test")
    fallback = {(await director.infer(ctx(5.0, region="us"), CALL)).route.endpoint for _ in range(4)}
    assert fallback <= {"e1", "e2"}


async def test_model_errors_do_not_eject_but_endpoint_faults_do() -> None:
    """A model failing on its input (TorchServe's "Prediction failed") is the caller's problem,
    not the endpoint's: ten in a row leave it in rotation. Five INTERNAL server faults eject it."""
    director, table, fakes = _setup(2)
    bad = next(s for s in table.states() if s.endpoint.id == "e0")
    fakes["e0"].error = BackendError(
        grpc.StatusCode.INTERNAL, "Prediction failed", retryable=False, model_error=True
    )
    fakes["e1"].error = fakes["e0"].error
    for _ in range(20):
        with pytest.raises(GatewayError):
            await director.infer(ctx(5.0), CALL)
    assert bad.ejection.ejected_until == 0 and bad.ejection.consecutive_failures == 0
    fakes["e0"].error = BackendError(grpc.StatusCode.INTERNAL, "CUDA error", retryable=False)
    fakes["e1"].error = None
    for _ in range(20):
        with contextlib.suppress(GatewayError):
            await director.infer(ctx(5.0), CALL)
    assert bad.ejection.ejected_until > 0
    assert fakes["e0"].calls == 10 + 5  # ejected after its fifth fault: no calls since


async def test_prefer_cost_reaches_the_scheduler() -> None:
    """RoutingHints.prefer=cost: the cheaper of two equal endpoints takes every call."""
    director, table, _ = _setup(2)
    dear = next(s for s in table.states() if s.endpoint.id == "e0")
    dear.endpoint = dataclasses.replace(dear.endpoint, meta={"price_in_per_1k": "1", "price_out_per_1k": "1"})
    routed = [(await director.infer(ctx(5.0, prefer="cost"), CALL)).route.endpoint for _ in range(10)]
    assert routed == ["e1"] * 10
    either = {(await director.infer(ctx(5.0), CALL)).route.endpoint for _ in range(10)}
    assert either == {"e0", "e1"}
