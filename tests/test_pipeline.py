"""The request pipeline with fake adapters: one attempt loop for unary calls and streams, and the
policy stages around it.

Every routing rule is tested on both paths (`mode` is "unary" or "stream"): the two used to be
separate loops, and they drifted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from adapters import BackendError, InferCall, InferResult, ModelMetadata
from adapters.llm import (
    ChatMessage,
    EmbedCall,
    EmbedResult,
    GenerateCall,
    GenerateResult,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)
from discovery import Endpoint, ModelRef, PoolSnapshot
from gateway.config import Config
from gateway.endpoints import EndpointState, EndpointTable
from gateway.errors import GatewayError
from gateway.observe.metrics import Metrics
from gateway.pipeline.context import RequestContext
from gateway.pipeline.director import Director
from gateway.pipeline.stages import Call, Outcome, build_stages

MODES = ["unary", "stream"]
USAGE = Usage(5, 3)


class FakeLLM:
    """Answers "<id>: ok" in three deltas; `error` fails every call (after `fail_after` deltas
    for streams); `delay` waits before answering."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: BackendError | None = None
        self.fail_after = 0
        self.delay = 0.0
        self.calls = 0

    async def generate(self, call: GenerateCall, timeout: float | None) -> GenerateResult:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return GenerateResult(call.model, f"{self.name}: ok", "stop", USAGE)

    async def generate_stream(
        self, call: GenerateCall, timeout: float | None
    ) -> AsyncGenerator[StreamEvent, None]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        for i, text in enumerate((f"{self.name}", ": ", "ok")):
            if self.error is not None and i == self.fail_after:
                self.error.usage = Usage(5, i)
                raise self.error
            yield TextDelta(text)
        yield StreamEnd(call.model, "stop", USAGE)

    async def embed(self, call: EmbedCall, timeout: float | None) -> EmbedResult:
        return EmbedResult(call.model, ((0.0,),), USAGE)

    async def infer(self, call: InferCall, timeout: float | None) -> InferResult:
        return InferResult(call.model, "", "", ())

    async def server_live(self, timeout: float) -> bool:
        return True

    async def model_ready(self, model: str, version: str, timeout: float) -> bool:
        return True

    async def model_metadata(self, model: str, version: str, timeout: float | None) -> ModelMetadata:
        return ModelMetadata(model, (), "fake", (), ())

    async def aclose(self) -> None:
        return None


class RecordingStage:
    """A test stage: refuses calls for model `refuse`, records every settlement."""

    name = "recording"

    def __init__(self) -> None:
        self.admitted: list[str] = []
        self.settled: list[Outcome] = []

    async def admit(self, call: Call) -> str:
        if call.model == "refuse":
            raise GatewayError(grpc.StatusCode.PERMISSION_DENIED, "model: refused by the test stage")
        self.admitted.append(call.ctx.request_id)
        return call.ctx.request_id

    async def settle(self, call: Call, ticket: Any, outcome: Outcome) -> None:
        assert ticket == call.ctx.request_id
        self.settled.append(outcome)


def unavailable(msg: str = "HTTP 503", retry_after: float | None = None) -> BackendError:
    return BackendError(grpc.StatusCode.UNAVAILABLE, msg, retryable=True, retry_after=retry_after)


async def _discard(event: StreamEvent, route: Any) -> None:
    return None


class World:
    """Pools `big` (endpoints big-0.., model `big`) and `small` (model `small`); alias `chat`
    falls back from big to small."""

    def __init__(self, big: int = 1, small: int = 1, spill: bool = False, **routing: Any) -> None:
        self.fakes: dict[str, FakeLLM] = {}
        self.down: list[str] = []

        def make(ep: Endpoint) -> FakeLLM:
            self.fakes[ep.id] = FakeLLM(ep.id)
            return self.fakes[ep.id]

        self.table = EndpointTable(make)  # type: ignore[arg-type]
        for pool, n in (("big", big), ("small", small)):
            eps = tuple(
                Endpoint(f"{pool}-{i}", pool, "127.0.0.1", 1000 + i, "openai", (ModelRef(pool),))
                for i in range(n)
            )
            self.table.apply(PoolSnapshot("static", pool, eps))
        for s in self.table.states():
            s.health.live, s.health.ready_models = True, frozenset(s.endpoint.models)
        aliases = {"chat": {"fallback": [{"model": "big"}, {"model": "small"}], "spill_on_deadline": spill}}
        config = Config.model_validate({"routing": {"aliases": aliases, **routing}})
        self.metrics = Metrics(CollectorRegistry())
        self.stage = RecordingStage()
        self.director = Director(
            config,
            self.table,
            self.metrics,
            self._down,
            stages=build_stages(config, self.metrics, (self.stage,)),
        )

    def _down(self, state: EndpointState, reason: str) -> None:
        state.health.mark_down(reason)
        self.down.append(state.endpoint.id)

    def state(self, endpoint: str) -> EndpointState:
        return next(s for s in self.table.states() if s.endpoint.id == endpoint)

    async def ask(self, mode: str, model: str = "chat", timeout: float = 5.0) -> tuple[str, Any]:
        """(text, route) of one Generate or GenerateStream call."""
        ctx = RequestContext.new(f"r{len(self.stage.admitted)}", mode, timeout)
        call = GenerateCall(model, (ChatMessage("user", "hi"),), max_tokens=1000)
        if mode == "unary":
            routed = await self.director.generate(ctx, call)
            return routed.value.text, routed.route
        text = ""

        async def send(event: StreamEvent, route: Any) -> None:
            nonlocal text
            if isinstance(event, TextDelta):
                text += event.text

        routed = await self.director.generate_stream(ctx, call, send)
        assert routed.value is not None and routed.value.usage == USAGE
        return text, routed.route


@pytest.mark.parametrize("mode", MODES)
async def test_fallback_walks_past_a_target_whose_endpoint_fails(mode: str) -> None:
    """`chat` = [big, small]; big's only endpoint answers 503 to every call: small answers, on
    the unary path and the stream path alike, and the spill is counted."""
    w = World()
    w.fakes["big-0"].error = unavailable()
    text, route = await w.ask(mode)
    assert text == "small-0: ok"
    assert (route.pool, route.model, route.attempts) == ("small", "small", 2)
    assert route.skipped == ("big: down",)
    assert w.down == ["big-0"]
    assert w.metrics.spills.labels("small", "fallback")._value.get() == 1


@pytest.mark.parametrize("mode", MODES)
async def test_a_retryable_failure_is_retried_once_on_another_endpoint(mode: str) -> None:
    w = World(big=3)
    for i in range(3):
        w.fakes[f"big-{i}"].error = unavailable(f"big-{i} down")
    with pytest.raises(GatewayError) as caught:
        await w.ask(mode, "big")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert sum(f.calls for f in w.fakes.values()) == 2  # the first try and one retry, no third
    assert w.metrics.retries.labels("big")._value.get() == 1


@pytest.mark.parametrize("mode", MODES)
async def test_retry_unavailable_off_means_no_retry(mode: str) -> None:
    w = World(big=2, retry_unavailable=False)
    w.fakes["big-0"].error = w.fakes["big-1"].error = unavailable()
    with pytest.raises(GatewayError):
        await w.ask(mode, "big")
    assert sum(f.calls for f in w.fakes.values()) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_the_backend_hint_to_retry_later_survives(mode: str) -> None:
    """The one endpoint says 503 with Retry-After 7 s: after the (failed) retry search, the
    caller still gets the hint, as google.rpc.RetryInfo."""
    w = World()
    w.fakes["big-0"].error = unavailable(retry_after=7.0)
    with pytest.raises(GatewayError) as caught:
        await w.ask(mode, "big")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize("mode", MODES)
async def test_no_call_is_sent_after_the_deadline(mode: str) -> None:
    w = World()
    with pytest.raises(GatewayError) as caught:
        await w.ask(mode, "big", timeout=-0.001)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert w.fakes["big-0"].calls == 0


@pytest.mark.parametrize("mode", MODES)
async def test_spill_on_deadline_skips_a_target_predicted_too_slow(mode: str) -> None:
    """big's endpoint is predicted to take ~10 s (cost 10 per 1k tokens, a scaled seconds-per-unit
    of 1): a caller with 0.5 s left spills to small; one with a minute stays on big."""
    w = World(spill=True, model_costs={"big": 10.0})
    w.director.scheduler.pool_slowness["big"] = 1.0  # as if big had answered calls before
    text, route = await w.ask(mode, timeout=0.5)
    assert (text, route.skipped) == ("small-0: ok", ("big: deadline",))
    assert w.metrics.spills.labels("big", "deadline")._value.get() == 1
    text, route = await w.ask(mode, timeout=60)
    assert text == "big-0: ok"


async def test_a_stream_is_never_retried_after_its_first_event() -> None:
    w = World(big=2)
    for f in w.fakes.values():
        f.error, f.fail_after = unavailable(), 1
    with pytest.raises(GatewayError) as caught:
        await w.ask("stream", "big")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert sum(f.calls for f in w.fakes.values()) == 1
    assert w.down == []  # it answered; it broke midway: that is not "down"
    (outcome,) = w.stage.settled
    assert outcome.code == grpc.StatusCode.UNAVAILABLE and outcome.events == 1
    assert outcome.usage == Usage(5, 1)  # what it used before it broke is settled


@pytest.mark.parametrize("mode", MODES)
async def test_every_admitted_call_is_settled_once_with_its_outcome(mode: str) -> None:
    w = World()
    await w.ask(mode, "big")
    w.fakes["big-0"].error = BackendError(grpc.StatusCode.INVALID_ARGUMENT, "bad", retryable=False)
    with pytest.raises(GatewayError):
        await w.ask(mode, "big")
    with pytest.raises(GatewayError) as refused:
        await w.ask(mode, "refuse")
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    codes = [o.code for o in w.stage.settled]
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT]  # the refused: not admitted
    assert w.stage.settled[0].usage == USAGE
    assert w.fakes["big-0"].calls == 2  # the refused call reached no backend


@pytest.mark.parametrize("mode", MODES)
async def test_a_cancelled_call_is_settled_and_frees_its_slot(mode: str) -> None:
    w = World()
    w.fakes["big-0"].delay = 10.0
    task = asyncio.ensure_future(w.ask(mode, "big"))
    await asyncio.sleep(0.05)
    assert w.state("big-0").calls.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert w.state("big-0").calls.in_flight == 0
    (outcome,) = w.stage.settled
    assert outcome.code == grpc.StatusCode.CANCELLED


@pytest.mark.parametrize("mode", MODES)
async def test_invalid_requests_are_refused_before_any_stage_spends(mode: str) -> None:
    w = World()
    ctx = RequestContext.new("bad", mode, 5.0)
    call = GenerateCall("big", ())
    with pytest.raises(GatewayError) as caught:
        if mode == "unary":
            await w.director.generate(ctx, call)
        else:
            await w.director.generate_stream(ctx, call, _discard)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and caught.value.field == "messages"
    assert w.stage.admitted == [] and w.fakes["big-0"].calls == 0


async def test_an_alias_whose_targets_all_are_unknown_is_not_found() -> None:
    config = Config.model_validate(
        {"routing": {"aliases": {"ghost": {"fallback": [{"model": "x"}, {"model": "y"}]}}}}
    )
    table = EndpointTable(lambda ep: FakeLLM(ep.id))  # type: ignore[arg-type,return-value]
    director = Director(config, table, Metrics(CollectorRegistry()), lambda s, r: None)
    ctx = RequestContext.new("g", "Generate", 5.0)
    with pytest.raises(GatewayError) as caught:
        await director.generate(ctx, GenerateCall("ghost", (ChatMessage("user", "hi"),)))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
