"""The director: the one place that knows the order of a request's stages.

Today: validate -> resolve model to endpoints -> pick a ready endpoint (least in-flight) -> call
the adapter with the caller's remaining deadline -> on UNAVAILABLE retry an idempotent call once
on another endpoint -> metrics. Authentication, limits, budgets and caching slot in here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, NamedTuple, TypeVar

import grpc

from adapters import Adapter, BackendError, InferCall, InferResult, ModelMetadata

from .config import Config
from .endpoints import EndpointState, EndpointTable
from .errors import GatewayError
from .metrics import Metrics
from .routing.least_inflight import LeastInFlightPicker
from .validation import validate_infer

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
                    raise GatewayError(err.code, err.message) from None
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
