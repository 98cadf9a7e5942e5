"""The director: the one place that knows the order of a request's stages.

Today: validate -> resolve model to endpoints -> pick a ready endpoint (least in-flight) -> call
the adapter with the caller's remaining deadline -> on UNAVAILABLE retry an idempotent call once
on another endpoint -> metrics. Authentication, limits, budgets and caching slot in here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, NamedTuple, TypeVar

import grpc

from adapters import Adapter, BackendError, InferCall, InferResult, LLMAdapter, ModelMetadata
from adapters.llm import EmbedCall, EmbedResult, GenerateCall, GenerateResult, StreamEvent, TextDelta

from .config import Config
from .endpoints import EndpointState, EndpointTable
from .errors import GatewayError
from .metrics import Metrics
from .routing.least_inflight import LeastInFlightPicker
from .validation import validate_embed, validate_generate, validate_infer

T = TypeVar("T")
_MAX_ATTEMPTS = 2  # the first try plus one retry on another endpoint
_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Route(NamedTuple):
    """Where a call went."""

    pool: str
    endpoint: str
    backend: str
    attempts: int


class Routed(NamedTuple, Generic[T]):
    value: T
    route: Route


class Director:
    def __init__(
        self,
        config: Config,
        table: EndpointTable,
        metrics: Metrics,
        on_endpoint_down: Callable[[EndpointState], None],
    ):
        self._config = config
        self._table = table
        self._metrics = metrics
        self._picker = LeastInFlightPicker()
        self._on_endpoint_down = on_endpoint_down

    async def infer(self, call: InferCall, timeout: float, region: str = "") -> Routed[InferResult]:
        """Validate and run `call`; `timeout` is the caller's remaining time in seconds."""
        validate_infer(call, self._config.limits)
        return await self._route(call.model, call.version, timeout, region, lambda a, t: a.infer(call, t))

    async def model_metadata(self, model: str, version: str, timeout: float) -> Routed[ModelMetadata]:
        if not model:
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "name: required", field="name")
        return await self._route(
            model, version, timeout, "", lambda a, t: a.model_metadata(model, version, t)
        )

    async def generate(self, call: GenerateCall, timeout: float, region: str = "") -> Routed[GenerateResult]:
        validate_generate(call)
        routed = await self._route(
            call.model, "", timeout, region, lambda a, t: _llm(a, call.model).generate(call, t)
        )
        self._metrics.tokens(routed.route.pool, routed.value.usage)
        return routed

    async def embed(self, call: EmbedCall, timeout: float, region: str = "") -> Routed[EmbedResult]:
        validate_embed(call)
        routed = await self._route(
            call.model, "", timeout, region, lambda a, t: _llm(a, call.model).embed(call, t)
        )
        self._metrics.tokens(routed.route.pool, routed.value.usage)
        return routed

    async def generate_stream(
        self, call: GenerateCall, timeout: float, region: str = ""
    ) -> AsyncGenerator[tuple[StreamEvent, Route], None]:
        """Stream events with their route. A stream that fails before its first event is retried
        once on another endpoint (when retryable); one that fails later raises, and the usage
        seen so far is counted."""
        validate_generate(call)
        candidates = self._table.candidates(call.model, "")
        deadline = time.monotonic() + timeout
        tried: list[EndpointState] = []
        last_error: BackendError | None = None
        while True:
            state = self._picker.pick(candidates, call.model, "", tried, region)
            if state is None:
                raise self._no_endpoint(call.model, "", candidates, last_error)
            ep = state.endpoint
            tried.append(state)
            route = Route(ep.pool, ep.id, ep.backend, len(tried))
            started = False
            state.in_flight += 1
            start = time.monotonic()
            try:
                async for event in _llm(state.adapter, call.model).generate_stream(call, deadline - start):
                    started = True
                    if not isinstance(event, TextDelta):
                        self._metrics.tokens(ep.pool, event.usage)
                    yield event, route
                self._metrics.backend_done(ep.pool, ep.id, _OK, time.monotonic() - start)
                return
            except BackendError as err:
                self._metrics.backend_done(ep.pool, ep.id, err.code, time.monotonic() - start)
                if err.usage is not None:
                    self._metrics.tokens(ep.pool, err.usage)
                if err.code == _UNAVAILABLE and not started:
                    state.mark_down(f"call failed: {err.message}")
                    self._on_endpoint_down(state)
                if started or not (
                    err.retryable and len(tried) < _MAX_ATTEMPTS and deadline > time.monotonic()
                ):
                    raise GatewayError(err.code, err.message, retry_after=err.retry_after) from None
                self._metrics.retries.labels(ep.pool).inc()
                last_error = err
            finally:
                state.in_flight -= 1

    def model_ready(self, model: str, version: str) -> bool:
        try:
            states = self._table.candidates(model, version)
        except GatewayError:
            return False
        return any(s.ready_for(model, version) for s in states)

    async def _route(
        self,
        model: str,
        version: str,
        timeout: float,
        region: str,
        op: Callable[[Adapter, float], Awaitable[T]],
    ) -> Routed[T]:
        candidates = self._table.candidates(model, version)
        deadline = time.monotonic() + timeout
        tried: list[EndpointState] = []
        last_error: BackendError | None = None
        while True:
            state = self._picker.pick(candidates, model, version, tried, region)
            if state is None:
                raise self._no_endpoint(model, version, candidates, last_error)
            ep = state.endpoint
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GatewayError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded before calling {ep.id}"
                )
            tried.append(state)
            state.in_flight += 1
            start = time.monotonic()
            try:
                value = await op(state.adapter, remaining)
            except BackendError as err:
                self._metrics.backend_done(ep.pool, ep.id, err.code, time.monotonic() - start)
                if err.code == grpc.StatusCode.UNAVAILABLE:
                    state.mark_down(f"call failed: {err.message}")
                    self._on_endpoint_down(state)
                retry = (
                    err.retryable
                    and self._config.routing.retry_unavailable
                    and len(tried) < _MAX_ATTEMPTS
                    and deadline - time.monotonic() > 0
                )
                if not retry:
                    raise GatewayError(err.code, err.message, retry_after=err.retry_after) from None
                self._metrics.retries.labels(ep.pool).inc()
                last_error = err
                continue
            finally:
                state.in_flight -= 1
            self._metrics.backend_done(ep.pool, ep.id, _OK, time.monotonic() - start)
            return Routed(value, Route(ep.pool, ep.id, ep.backend, len(tried)))

    def _no_endpoint(
        self, model: str, version: str, candidates: list[EndpointState], last_error: BackendError | None
    ) -> GatewayError:
        if last_error is not None:
            return GatewayError(last_error.code, last_error.message)
        pools = sorted({s.endpoint.pool for s in candidates})
        what = f"model {model!r}" + (f" version {version!r}" if version else "")
        reasons = "; ".join(f"{s.endpoint.id}: {s.status_message}" for s in candidates[:5])
        return GatewayError(
            grpc.StatusCode.UNAVAILABLE,
            f"no ready endpoint for {what} in pool(s) {', '.join(pools)} ({reasons})",
        )


def _llm(adapter: Adapter, model: str) -> LLMAdapter:
    if not isinstance(adapter, LLMAdapter):
        raise BackendError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"model {model!r} is served by a tensor backend: use Infer, not Generate/Embed",
            retryable=False,
        )
    return adapter
