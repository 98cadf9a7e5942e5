"""The director: the one place that knows the order of a call's stages.

    stages admit (stages.build_stages: validate -> complexity -> [identity, limits, budgets,
    cache] -> usage) -> the attempt loop (attempts.py: schedule, call the adapter, retry,
    fallback, spill) -> stages settle, in reverse, however the call ended

Authentication happens before this, in the server interceptor, because it needs the transport
(the TLS peer); it hands over the principal in the RequestContext.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar

import grpc

from adapters import Adapter, BackendError, InferCall, InferResult, LLMAdapter, ModelMetadata
from adapters.llm import EmbedCall, EmbedResult, GenerateCall, GenerateResult, StreamEvent, TextDelta, Usage

from ..config import Config
from ..endpoints import EndpointState, EndpointTable
from ..errors import GatewayError
from ..observe.metrics import Metrics
from ..routing.aliases import Alias, Policies, Target
from ..routing.outlier import OutlierPolicy, RetryBudget
from ..routing.scheduler import ProfileSpec, Scheduler
from .attempts import Attempts, Opener, Route
from .context import RequestContext
from .stages import Call, Kind, Outcome, Stage, build_stages

log = logging.getLogger("meshgate.director")

T = TypeVar("T")
E = TypeVar("E")
_OK = grpc.StatusCode.OK


class Routed(NamedTuple, Generic[T]):
    value: T
    route: Route


class Director:
    def __init__(
        self,
        config: Config,
        table: EndpointTable,
        metrics: Metrics,
        on_endpoint_down: Callable[[EndpointState, str], None],
        *,
        on_eject: Callable[[EndpointState, float], None] = lambda state, seconds: None,
        stages: tuple[Stage, ...] | None = None,
    ) -> None:
        self._table = table
        self._metrics = metrics
        r = config.routing
        self.scheduler = Scheduler(
            {n: ProfileSpec(tuple(p.filters), p.scorers, p.picker) for n, p in r.profiles.items()},
            r.profile,
            r.pool_profiles,
            max_age_s=r.load_probe.max_age_s,
            outlier=OutlierPolicy(**r.outlier.model_dump()),
            pool_states=table.pool_states,
            on_eject=on_eject,
        )
        self.retry_budget = RetryBudget(r.retry_budget.percent, r.retry_budget.min_per_s)
        self.policies = Policies(
            {
                name: Alias(
                    tuple((Target(t.model, t.version, t.pool), t.weight) for t in a.split),
                    tuple(Target(t.model, t.version, t.pool) for t in a.fallback),
                    a.spill_on_deadline,
                )
                for name, a in r.aliases.items()
            }
        )
        self.attempts = Attempts(
            table,
            self.scheduler,
            self.policies,
            self.retry_budget,
            metrics,
            costs=r.model_costs,
            retry_unavailable=r.retry_unavailable,
            on_endpoint_down=on_endpoint_down,
        )
        self.stages = build_stages(config, metrics) if stages is None else stages

    # -- the calls ------------------------------------------------------------------------
    async def infer(self, ctx: RequestContext, call: InferCall) -> Routed[InferResult]:
        def open_(adapter: Adapter, timeout: float, target: Target) -> AsyncIterator[InferResult]:
            if (target.model, target.version) != (call.model, call.version):  # an alias's target
                retargeted = call._replace(model=target.model, version=target.version, wire=None)
                return _once(adapter.infer(retargeted, timeout))
            return _once(adapter.infer(call, timeout))

        return await self._unary(Call(ctx, "infer", call.model, call.version, call), open_)

    async def generate(self, ctx: RequestContext, call: GenerateCall) -> Routed[GenerateResult]:
        def open_(adapter: Adapter, timeout: float, target: Target) -> AsyncIterator[GenerateResult]:
            return _once(_llm(adapter, target.model).generate(call._replace(model=target.model), timeout))

        return await self._unary(Call(ctx, "generate", call.model, "", call), open_, _result_usage)

    def generate_stream(
        self, ctx: RequestContext, call: GenerateCall
    ) -> AsyncIterator[tuple[StreamEvent, Route]]:
        """Events with their route; close it (aclose) when done. Retried elsewhere only before
        its first event; a stream that breaks later raises, and settles the usage seen so far."""

        def open_(adapter: Adapter, timeout: float, target: Target) -> AsyncIterator[StreamEvent]:
            return _llm(adapter, target.model).generate_stream(call._replace(model=target.model), timeout)

        return self._run(Call(ctx, "generate", call.model, "", call, stream=True), open_, _event_usage)

    async def embed(self, ctx: RequestContext, call: EmbedCall) -> Routed[EmbedResult]:
        def open_(adapter: Adapter, timeout: float, target: Target) -> AsyncIterator[EmbedResult]:
            return _once(_llm(adapter, target.model).embed(call._replace(model=target.model), timeout))

        return await self._unary(Call(ctx, "embed", call.model, "", call), open_, _result_usage)

    async def model_metadata(self, ctx: RequestContext, model: str, version: str) -> Routed[ModelMetadata]:
        def open_(adapter: Adapter, timeout: float, target: Target) -> AsyncIterator[ModelMetadata]:
            return _once(adapter.model_metadata(target.model, target.version, timeout))

        kind: Kind = "metadata"
        return await self._unary(Call(ctx, kind, model, version, None), open_)

    def model_ready(self, model: str, version: str) -> bool:
        try:
            states = self._table.candidates(model, version)
        except GatewayError:
            return False
        return any(s.ready_for(model, version) for s in states)

    def models(self) -> dict[str, list[EndpointState]]:
        """Every model the table knows, with its endpoints (the Models service's view)."""
        return self._table.models()

    # -- the pipeline ---------------------------------------------------------------------
    async def _unary(
        self, call: Call, open_: Opener[T], usage_of: Callable[[T], Usage | None] | None = None
    ) -> Routed[T]:
        routed: Routed[T] | None = None
        async for value, route in self._run(call, open_, usage_of):
            routed = Routed(value, route)
        if routed is None:  # the attempt loop yields or raises; this is a bug
            raise GatewayError(grpc.StatusCode.INTERNAL, "no answer from the attempt loop")
        return routed

    async def _run(
        self, call: Call, open_: Opener[E], usage_of: Callable[[E], Usage | None] | None
    ) -> AsyncIterator[tuple[E, Route]]:
        """Admit through every stage, run the attempt loop, settle every admitted stage."""
        start = time.monotonic()
        record = call.ctx.record
        admitted: list[tuple[Stage, Any]] = []
        code = grpc.StatusCode.CANCELLED  # until the call ends another way
        events = 0
        try:
            for stage in self.stages:
                admitted.append((stage, await stage.admit(call)))
            async for event, route in self.attempts.run(call, open_):
                events += 1
                if usage_of is not None:
                    usage = usage_of(event)
                    if usage is not None:
                        record.usage = usage
                yield event, route
            code = _OK
        except GatewayError as err:
            code = err.code
            raise
        finally:
            if admitted:
                await self._settle(
                    call, admitted, Outcome(code, record.usage, time.monotonic() - start, events)
                )

    async def _settle(self, call: Call, admitted: list[tuple[Stage, Any]], outcome: Outcome) -> None:
        for stage, ticket in reversed(admitted):
            try:
                await stage.settle(call, ticket, outcome)
            except Exception:  # one stage's bug must not skip the others' settlement
                self._metrics.background_error(f"settle:{stage.name}")
                log.exception("stage %s failed to settle request %s", stage.name, call.ctx.request_id)


async def _once(answer: Awaitable[T]) -> AsyncIterator[T]:
    """A unary answer as a stream of one event (the attempt loop serves both)."""
    yield await answer


def _result_usage(result: GenerateResult | EmbedResult) -> Usage | None:
    return result.usage


def _event_usage(event: StreamEvent) -> Usage | None:
    return None if isinstance(event, TextDelta) else event.usage


def _llm(adapter: Adapter, model: str) -> LLMAdapter:
    if not isinstance(adapter, LLMAdapter):
        raise BackendError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"model {model!r} is served by a tensor backend: use Infer, not Generate/Embed",
            retryable=False,
        )
    return adapter
