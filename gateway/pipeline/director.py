"""The director: the one place that knows the order of a call's stages.

    stages admit (stages.build_stages says the order) -> the attempt loop (attempts.py:
    schedule, call the adapter, retry, fallback, spill) -> stages settle, in reverse, however the
    call ended

Authentication happens before this, in the server interceptor, because it needs the transport
(the TLS peer); it hands over the principal in the RequestContext.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar, cast

import grpc

from adapters import (
    Adapter,
    BackendError,
    InferCall,
    InferResult,
    InferStreams,
    ModelConfigs,
    ModelMetadata,
)
from adapters.llm import (
    EmbedCall,
    EmbedResult,
    GenerateCall,
    GenerateResult,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)

from ..config import Config
from ..endpoints import EndpointState, EndpointTable
from ..errors import GatewayError
from ..observe.metrics import Metrics
from ..routing.aliases import Alias, Policies, Target
from ..routing.outlier import OutlierPolicy, RetryBudget
from ..routing.scheduler import ProfileSpec, Scheduler
from .attempts import Attempt, Attempts, Route
from .context import RequestContext
from .forward import identity_headers
from .stages import (
    Call,
    Outcome,
    Stage,
    build_stages,
    plan,
    report_progress,
    settle_all,
    watch_progress,
)
from .targets import for_target, llm_adapter, retarget, speaks

log = logging.getLogger("meshgate.director")

T = TypeVar("T")
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
            pool_states=table.pool_states,
            on_eject=on_eject,
        )
        self.retry_budget = RetryBudget()
        self.policies = Policies({})
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
        self.reconfigure(config, build_stages(config, metrics) if stages is None else stages)

    def reconfigure(self, config: Config, stages: tuple[Stage, ...]) -> None:
        """Apply `config`'s routing (profiles, aliases, costs, retries) and this stage list: at
        start, and on a config reload. A call takes the stages and aliases current when it
        starts; what the scheduler learned (latency, ejections, loads) stays. ValueError
        (an unknown profile) changes nothing."""
        r = config.routing
        self.scheduler.configure(
            {n: ProfileSpec(tuple(p.filters), p.scorers, p.picker) for n, p in r.profiles.items()},
            r.profile,
            r.pool_profiles,
            r.load_probe.max_age_s,
            OutlierPolicy(**r.outlier.model_dump()),
        )
        self.retry_budget.percent, self.retry_budget.min_per_s = (
            r.retry_budget.percent,
            r.retry_budget.min_per_s,
        )
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
        self.attempts.reconfigure(self.policies, r.model_costs, r.retry_unavailable)
        self._forward = tuple(config.auth.forward.items())
        self.stages = stages
        authorize = next((s for s in stages if s.name == "authorize"), None)
        self._rules: Any = getattr(authorize, "rules", None)  # policy.auth.authorize.Rules
        self._plan, self._traced_plan = plan(stages), plan(stages, traced=True)

    # -- the calls ------------------------------------------------------------------------
    async def infer(self, ctx: RequestContext, call: InferCall) -> Routed[InferResult]:
        if self._forward:
            call = call._replace(headers=self._headers(ctx))

        def attempt(adapter: Adapter, timeout: float, target: Target, route: Route) -> Awaitable[InferResult]:
            return adapter.infer(retarget(call, target, route), timeout)

        async def replay(cached: InferResult, route: Route) -> InferResult:
            return cached.for_request(call.request_id)

        return await self._run(Call(ctx, "infer", call.model, call.version, call), attempt, replay=replay)

    async def infer_stream(
        self, ctx: RequestContext, call: InferCall, send: Callable[[InferResult, Route], Awaitable[None]]
    ) -> None:
        """Each response to `call` goes to `send` as it comes: all of a streaming backend's
        (a decoupled model may send any number), a unary backend's one. Retried elsewhere only
        before the first response reached `send`, as for every stream."""
        record = ctx.record
        if self._forward:
            call = call._replace(headers=self._headers(ctx))

        pc = Call(ctx, "infer", call.model, call.version, call, stream=True)

        async def attempt(adapter: Adapter, timeout: float, target: Target, route: Route) -> None:
            retargeted = retarget(call, target, route)
            if speaks(adapter, InferStreams):
                results = cast(InferStreams, adapter).infer_stream(retargeted, timeout)
                async with contextlib.aclosing(results):
                    async for result in results:
                        await self._deliver(pc, send, result, route)
            else:
                await self._deliver(pc, send, await adapter.infer(retargeted, timeout), route)

        async def replay(cached: tuple[InferResult, ...], route: Route) -> None:
            for result in cached:
                record.delivered += 1
                await send(result.for_request(call.request_id), route)

        await self._run(pc, attempt, replay=replay)

    async def model_config(
        self, ctx: RequestContext, model: str, version: str
    ) -> Routed[bytes | ModelMetadata]:
        """A ready endpoint's configuration of `model`: the backend's own (a serialized
        inference.ModelConfig) where it keeps one, else its metadata to describe it from."""

        async def attempt(
            adapter: Adapter, timeout: float, target: Target, route: Route
        ) -> bytes | ModelMetadata:
            if isinstance(adapter, ModelConfigs):
                try:
                    return await adapter.model_config(target.model, target.version, timeout)
                except BackendError as err:
                    if err.code != grpc.StatusCode.UNIMPLEMENTED:
                        raise
            return await adapter.model_metadata(target.model, target.version, timeout)

        return await self._run(Call(ctx, "metadata", model, version, None), attempt)

    async def generate(self, ctx: RequestContext, call: GenerateCall) -> Routed[GenerateResult]:
        if self._forward:
            call = call._replace(headers=self._headers(ctx))

        def attempt(
            adapter: Adapter, timeout: float, target: Target, route: Route
        ) -> Awaitable[GenerateResult]:
            return llm_adapter(adapter, target.model).generate(for_target(call, target, route), timeout)

        return await self._run(Call(ctx, "generate", call.model, "", call), attempt, _result_usage, _as_is)

    async def generate_stream(
        self, ctx: RequestContext, call: GenerateCall, send: Callable[[StreamEvent, Route], Awaitable[None]]
    ) -> Routed[StreamEnd | None]:
        """Each event goes to `send` as it comes; returns the end (None if the backend sent
        none). Retried elsewhere only before its first event reached `send`; a stream that breaks
        later raises, and settles the usage seen so far. If the caller goes away, `send` raises
        (CancelledError) and the upstream stream is closed at once."""
        record = ctx.record
        if self._forward:
            call = call._replace(headers=self._headers(ctx))

        pc = Call(ctx, "generate", call.model, "", call, stream=True)

        async def attempt(adapter: Adapter, timeout: float, target: Target, route: Route) -> StreamEnd | None:
            events = llm_adapter(adapter, target.model).generate_stream(
                for_target(call, target, route), timeout
            )
            end: StreamEnd | None = None
            async with contextlib.aclosing(events):  # closes the upstream request on any exit
                async for event in events:
                    if not isinstance(event, TextDelta):
                        end = event
                        record.usage, record.finish = event.usage, event.finish_reason
                    await self._deliver(pc, send, event, route)
            return end

        async def replay(cached: tuple[StreamEvent, ...], route: Route) -> StreamEnd | None:
            end: StreamEnd | None = None
            for event in cached:
                record.delivered += 1
                if not isinstance(event, TextDelta):
                    end = event
                await send(event, route)
            return end

        return await self._run(pc, attempt, replay=replay)

    async def embed(self, ctx: RequestContext, call: EmbedCall) -> Routed[EmbedResult]:
        if self._forward:
            call = call._replace(headers=self._headers(ctx))

        def attempt(adapter: Adapter, timeout: float, target: Target, route: Route) -> Awaitable[EmbedResult]:
            return llm_adapter(adapter, target.model).embed(for_target(call, target, route), timeout)

        return await self._run(Call(ctx, "embed", call.model, "", call), attempt, _result_usage, _as_is)

    async def model_metadata(self, ctx: RequestContext, model: str, version: str) -> Routed[ModelMetadata]:
        def attempt(
            adapter: Adapter, timeout: float, target: Target, route: Route
        ) -> Awaitable[ModelMetadata]:
            return adapter.model_metadata(target.model, target.version, timeout)

        return await self._run(Call(ctx, "metadata", model, version, None), attempt)

    def pools_for(self, model: str, version: str) -> set[str]:
        """The pools that would serve `model` first (an alias: its first target)."""
        target = self.policies.chain(model, version)[0][0]
        try:
            states = self._table.candidates(target.model, target.version)
        except GatewayError:
            return set()
        return {s.endpoint.pool for s in states if not target.pool or s.endpoint.pool == target.pool}

    def model_ready(self, model: str, version: str) -> bool:
        """A ready endpoint can answer `model` (an alias: one of its targets, in its pool)."""
        for target in self.policies.chain(model, version)[0]:
            try:
                states = self._table.candidates(target.model, target.version)
            except GatewayError:
                continue
            if any(
                s.ready_for(target.model, target.version) and target.pool in ("", s.endpoint.pool)
                for s in states
            ):
                return True
        return False

    def models(self) -> dict[str, list[EndpointState]]:
        """Every model the table knows, with its endpoints (the Models service's view)."""
        return self._table.models()

    # -- what a caller may see of the models (the calls that describe them, not route to one)
    def authorize(self, ctx: RequestContext, model: str) -> None:
        """PERMISSION_DENIED unless `ctx`'s principal may call `ctx.method` on `model`."""
        if self._rules is not None:
            self._rules.check(ctx.principal, ctx.method, model)

    def visible(self, ctx: RequestContext) -> dict[str, list[EndpointState]]:
        """The models `ctx`'s principal may call `ctx.method` on (a list method: ListModels,
        RepositoryIndex): only those are listed. PERMISSION_DENIED when it may see none of them."""
        models = self._table.models()
        rules = self._rules
        if rules is None:
            return models
        shown = {
            name: states for name, states in models.items() if rules.allowed(ctx.principal, ctx.method, name)
        }
        if models and not shown:
            rules.check(ctx.principal, ctx.method, None)  # says who may not call what
        return shown

    def _headers(self, ctx: RequestContext) -> tuple[tuple[str, str], ...]:
        return identity_headers(self._forward, ctx)

    # -- the pipeline ---------------------------------------------------------------------
    @staticmethod
    async def _deliver(
        call: Call, send: Callable[[Any, Route], Awaitable[None]], message: Any, route: Route
    ) -> None:
        """One stream message to the caller (and to the cache, when it keeps this stream)."""
        record = call.ctx.record
        if not record.delivered:
            record.first_at = time.monotonic()
        record.delivered += message.pieces if type(message) is TextDelta else 1
        if call.collect is not None:
            call.collect.append(message)
        if call.progress is not None and record.delivered >= call.progress_at:
            await report_progress(call)
        await send(message, route)

    async def _run(
        self,
        call: Call,
        attempt: Attempt[T],
        usage_of: Callable[[T], Usage | None] | None = None,
        replay: Callable[[Any, Route], Awaitable[T]] | None = None,
    ) -> Routed[T]:
        """Admit through every stage in order, run the attempt loop (or, for an answer from the
        cache, `replay` it), settle every admitted stage in reverse, however the call ended
        (answered, refused, failed, cancelled, broken)."""
        start = time.monotonic()
        record = call.ctx.record
        record.requested = call.model
        to_settle: list[tuple[Stage, Any, bool, Any]] = []  # (stage, settle, is async, ticket)
        code = grpc.StatusCode.CANCELLED  # until the call ends another way
        try:
            for stage, admit, admit_async, settle, settle_async in (
                self._plan if call.ctx.trace is None else self._traced_plan
            ):
                ticket = admit(call)
                if admit_async:
                    ticket = await ticket
                if settle is not None:
                    to_settle.append((stage, settle, settle_async, ticket))
                watch_progress(call, stage, ticket)
            if call.hit is not None and replay is not None:
                cached, route = call.hit
                route = route._replace(cache_hit=True, attempts=0)
                record.model, record.pool, record.endpoint = route.model, route.pool, route.endpoint
                value = await replay(cached, route)
                code = _OK
                return Routed(value, route)
            value, route = await self.attempts.run(call, attempt)
            if usage_of is not None:
                record.usage, record.finish = usage_of(value), getattr(value, "finish_reason", "")
            call.result = (tuple(call.collect), route) if call.collect is not None else (value, route)
            code = _OK
            return Routed(value, route)
        except GatewayError as err:
            code = err.code
            raise
        finally:
            if to_settle:
                first = record.first_at - start if record.first_at else None
                outcome = Outcome(code, record.usage, time.monotonic() - start, record.delivered, first)
                await settle_all(call, to_settle, outcome, self._metrics)
            cost = record.charge.cost if record.charge is not None else 0.0  # priced by the ledger or budgets
            self._metrics.call_done(
                call.ctx.method, record.requested, record.pool, code, call.ctx.principal, cost
            )


async def _as_is(cached: T, route: Route) -> T:
    return cached


def _result_usage(result: GenerateResult | EmbedResult) -> Usage | None:
    return result.usage
