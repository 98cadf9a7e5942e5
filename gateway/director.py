"""The director: the one place that knows the order of a request's stages.

validate -> estimate the request's complexity units -> resolve the model to endpoints -> the
scheduler picks one by the pool's profile (routing/scheduler.py) -> call the adapter with the
caller's remaining deadline -> on a retryable failure, retry once on another endpoint when the
pool's retry budget allows and time remains -> report to the scheduler (units, latency, outlier
ejection) and to metrics. Authentication, limits, budgets and caching slot in here.
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
from .routing.outlier import OutlierPolicy, RetryBudget
from .routing.plugins import RequestInfo
from .routing.policy import Alias, Policies, Target
from .routing.scheduler import ProfileSpec, Scheduler
from .validation import validate_embed, validate_generate, validate_infer

T = TypeVar("T")
_MAX_ATTEMPTS = 2  # the first try plus one retry on another endpoint
_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# Failures that say the endpoint is unwell (they count toward outlier ejection).
_ENDPOINT_FAULTS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


class Route(NamedTuple):
    """Where a call went: `model` answered it (the target of an alias); `skipped` says why
    earlier targets of the alias's chain were passed over ("llama-70b: deadline")."""

    pool: str
    endpoint: str
    backend: str
    attempts: int
    model: str = ""
    skipped: tuple[str, ...] = ()


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
        self._on_endpoint_down = on_endpoint_down
        r = config.routing
        self.scheduler = Scheduler(
            {n: ProfileSpec(tuple(p.filters), p.scorers, p.picker) for n, p in r.profiles.items()},
            r.profile,
            r.pool_profiles,
            max_age_s=r.load_probe.max_age_s,
            outlier=OutlierPolicy(**r.outlier.model_dump()),
        )
        self.scheduler.outliers.pool_states = table.pool_states
        self.retry_budget = RetryBudget(r.retry_budget.percent, r.retry_budget.min_per_s)
        self._costs = r.model_costs
        self._expected_output = r.expected_output_tokens
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

    # -- complexity ---------------------------------------------------------------------
    def _cost(self, model: str, candidates: list[EndpointState]) -> float:
        """Units per item (or per 1k tokens): endpoint Meta `costs`, else routing.model_costs, else 1."""
        for state in candidates:
            cost = state.endpoint.costs.get(model)
            if cost is not None:
                return cost
        return self._costs.get(model, 1.0)

    def _infer_units(self, call: InferCall, model: str, candidates: list[EndpointState]) -> float:
        """cost x batch: the first dimension of the first input (a batch of 32 costs 32x)."""
        shape = call.inputs[0].shape if call.inputs else ()
        items = shape[0] if shape and shape[0] > 0 else 1
        return self._cost(model, candidates) * items

    def _generate_units(self, call: GenerateCall, model: str, candidates: list[EndpointState]) -> float:
        """cost x (prompt tokens + expected output tokens) / 1000; prompt tokens estimated as
        characters / 4 (no tokenizer on the request path), output = max_tokens or the default."""
        prompt = sum(len(m.text) for m in call.messages) / 4.0
        output = call.max_tokens or self._expected_output
        return self._cost(model, candidates) * (prompt + output) / 1000.0

    async def infer(
        self, call: InferCall, timeout: float, region: str = "", prefer: str = ""
    ) -> Routed[InferResult]:
        """Validate and run `call`; `timeout` is the caller's remaining time in seconds."""
        validate_infer(call, self._config.limits)

        def op(adapter: Adapter, t: float, target: Target) -> Awaitable[InferResult]:
            if (target.model, target.version) != (call.model, call.version):  # an alias's target
                return adapter.infer(call._replace(model=target.model, version=target.version, wire=None), t)
            return adapter.infer(call, t)

        return await self._route(
            call.model, call.version, region, timeout, lambda m, c: self._infer_units(call, m, c), op, prefer
        )

    async def model_metadata(self, model: str, version: str, timeout: float) -> Routed[ModelMetadata]:
        if not model:
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "name: required", field="name")
        return await self._route(
            model,
            version,
            "",
            timeout,
            lambda m, c: 0.0,
            lambda a, t, g: a.model_metadata(g.model, g.version, t),
        )

    async def generate(
        self, call: GenerateCall, timeout: float, region: str = "", prefer: str = ""
    ) -> Routed[GenerateResult]:
        validate_generate(call)
        routed = await self._route(
            call.model,
            "",
            region,
            timeout,
            lambda m, c: self._generate_units(call, m, c),
            lambda a, t, g: _llm(a, g.model).generate(call._replace(model=g.model), t),
            prefer,
        )
        self._metrics.tokens(routed.route.pool, routed.value.usage)
        return routed

    async def embed(
        self, call: EmbedCall, timeout: float, region: str = "", prefer: str = ""
    ) -> Routed[EmbedResult]:
        validate_embed(call)
        chars = sum(len(t) for t in call.inputs)
        routed = await self._route(
            call.model,
            "",
            region,
            timeout,
            lambda m, c: self._cost(m, c) * chars / 4000.0,
            lambda a, t, g: _llm(a, g.model).embed(call._replace(model=g.model), t),
            prefer,
        )
        self._metrics.tokens(routed.route.pool, routed.value.usage)
        return routed

    async def generate_stream(
        self, call: GenerateCall, timeout: float, region: str = "", prefer: str = ""
    ) -> AsyncGenerator[tuple[StreamEvent, Route], None]:
        """Stream events with their route. A stream that fails before its first event is retried
        once on another endpoint (when retryable); one that fails later raises, and the usage
        seen so far is counted. For an alias, the stream goes to the first target of its chain
        that has a usable endpoint."""
        validate_generate(call)
        target, candidates, skipped = self._stream_target(call.model)
        if target.model != call.model:
            call = call._replace(model=target.model)
        req = RequestInfo(
            call.model, "", self._generate_units(call, call.model, candidates), region, timeout, prefer
        )
        deadline = time.monotonic() + timeout
        tried: list[EndpointState] = []
        last_error: BackendError | None = None
        self.retry_budget.request(_pool_of(candidates))
        while True:
            state = self.scheduler.pick(candidates, req, tried)
            if state is None:
                raise self._no_endpoint(call.model, "", candidates, last_error)
            ep = state.endpoint
            tried.append(state)
            route = Route(ep.pool, ep.id, ep.backend, len(tried), call.model, skipped)
            started = False
            predicted = self.scheduler.started(state, req)
            start = time.monotonic()
            outcome = grpc.StatusCode.CANCELLED  # until the stream ends or fails
            fault = False
            try:
                async for event in _llm(state.adapter, call.model).generate_stream(call, deadline - start):
                    started = True
                    if not isinstance(event, TextDelta):
                        self._metrics.tokens(ep.pool, event.usage)
                    yield event, route
                outcome = _OK
                self._metrics.backend_done(ep.pool, ep.id, _OK, time.monotonic() - start)
                return
            except BackendError as err:
                outcome, fault = err.code, _endpoint_fault(err)
                self._metrics.backend_done(ep.pool, ep.id, err.code, time.monotonic() - start)
                if err.usage is not None:
                    self._metrics.tokens(ep.pool, err.usage)
                if err.code == _UNAVAILABLE and not started:
                    state.mark_down(f"call failed: {err.message}")
                    self._on_endpoint_down(state)
                if started or not (
                    err.retryable
                    and len(tried) < _MAX_ATTEMPTS
                    and deadline > time.monotonic()
                    and self._retry_allowed(ep.pool)
                ):
                    raise GatewayError(err.code, err.message, retry_after=err.retry_after) from None
                self._metrics.retries.labels(ep.pool).inc()
                last_error = err
            finally:
                self.scheduler.finished(
                    state,
                    req,
                    predicted,
                    time.monotonic() - start,
                    outcome == _OK,
                    fault,
                )

    def _stream_target(self, model: str) -> tuple[Target, list[EndpointState], tuple[str, ...]]:
        chain, _ = self.policies.chain(model, "")
        skipped: list[str] = []
        for i, target in enumerate(chain):
            candidates = self._target_candidates(target, alone=len(chain) == 1)
            if candidates is None:
                skipped.append(f"{target.model}: not found")
                continue
            if i == len(chain) - 1 or any(s.ready_for(target.model, target.version) for s in candidates):
                return target, candidates, tuple(skipped)
            skipped.append(f"{target.model}: down")
        raise GatewayError(grpc.StatusCode.NOT_FOUND, f"no target of alias {model!r} exists")

    def _target_candidates(self, target: Target, alone: bool) -> list[EndpointState] | None:
        """The endpoints of one target (in its pool, when it names one). An unknown model is
        NOT_FOUND for a plain request (`alone`), and None (skip it) within an alias's chain."""
        try:
            candidates = self._table.candidates(target.model, target.version)
        except GatewayError:
            if alone:
                raise
            return None
        if target.pool:
            candidates = [s for s in candidates if s.endpoint.pool == target.pool]
        return candidates

    def model_ready(self, model: str, version: str) -> bool:
        try:
            states = self._table.candidates(model, version)
        except GatewayError:
            return False
        return any(s.ready_for(model, version) for s in states)

    def _retry_allowed(self, pool: str) -> bool:
        if self.retry_budget.try_retry(pool):
            return True
        self._metrics.retry_budget_exhausted.labels(pool).inc()
        return False

    async def _route(
        self,
        model: str,
        version: str,
        region: str,
        timeout: float,
        units_for: Callable[[str, list[EndpointState]], float],
        op: Callable[[Adapter, float, Target], Awaitable[T]],
        prefer: str = "",
    ) -> Routed[T]:
        """Run `op` on the best endpoint for model/version, walking an alias's fallback chain.

        Per target: pick by the pool's profile; spill to the next target when none is usable or
        (spill-over) the pick's predicted completion misses the deadline; retry a retryable
        failure once on another endpoint (this target's, else the next target's) when the retry
        budget allows and time remains."""
        chain, spill = self.policies.chain(model, version)
        deadline = time.monotonic() + timeout
        tried: list[EndpointState] = []
        skipped: list[str] = []
        last_error: BackendError | None = None
        first_candidates: list[EndpointState] | None = None
        budgeted = False
        for i, target in enumerate(chain):
            last = i == len(chain) - 1
            candidates = self._target_candidates(target, alone=len(chain) == 1)
            if candidates is None:
                skipped.append(f"{target.model}: not found")
                continue
            if first_candidates is None:
                first_candidates = candidates
            req = RequestInfo(
                target.model, target.version, units_for(target.model, candidates), region, timeout, prefer
            )
            if not budgeted:
                self.retry_budget.request(_pool_of(candidates))
                budgeted = True
            while True:
                state = self.scheduler.pick(candidates, req, tried)
                if state is None:
                    skipped.append(f"{target.model}: down")
                    break
                ep = state.endpoint
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GatewayError(
                        grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded before calling {ep.id}"
                    )
                if spill and not last:
                    expected = self.scheduler.predicted_real_seconds(state, req)
                    if expected is not None and expected > remaining:
                        skipped.append(f"{target.model}: deadline")
                        self._metrics.spills.labels(ep.pool, "deadline").inc()
                        break
                tried.append(state)
                predicted = self.scheduler.started(state, req)
                start = time.monotonic()
                try:
                    value = await op(state.adapter, remaining, target)
                except BackendError as err:
                    elapsed = time.monotonic() - start
                    self.scheduler.finished(state, req, predicted, elapsed, False, _endpoint_fault(err))
                    self._metrics.backend_done(ep.pool, ep.id, err.code, elapsed)
                    if err.code == grpc.StatusCode.UNAVAILABLE:
                        state.mark_down(f"call failed: {err.message}")
                        self._on_endpoint_down(state)
                    retry = (
                        err.retryable
                        and self._config.routing.retry_unavailable
                        and len(tried) < _MAX_ATTEMPTS
                        and deadline - time.monotonic() > 0
                        and self._retry_allowed(ep.pool)
                    )
                    if not retry:
                        raise GatewayError(err.code, err.message, retry_after=err.retry_after) from None
                    self._metrics.retries.labels(ep.pool).inc()
                    last_error = err
                    continue
                except BaseException:  # cancelled by the caller: the call is over, count it out
                    self.scheduler.finished(state, req, predicted, time.monotonic() - start, False, False)
                    raise
                elapsed = time.monotonic() - start
                self.scheduler.finished(state, req, predicted, elapsed, True, False)
                self._metrics.backend_done(ep.pool, ep.id, _OK, elapsed)
                if skipped and i > 0:
                    self._metrics.spills.labels(ep.pool, "fallback").inc()
                return Routed(
                    value, Route(ep.pool, ep.id, ep.backend, len(tried), target.model, tuple(skipped))
                )
        raise self._no_endpoint(model, version, first_candidates or [], last_error, skipped)

    def _no_endpoint(
        self,
        model: str,
        version: str,
        candidates: list[EndpointState],
        last_error: BackendError | None,
        skipped: list[str] | None = None,
    ) -> GatewayError:
        if last_error is not None:
            return GatewayError(last_error.code, last_error.message)
        if skipped and len(skipped) > 1:
            return GatewayError(
                grpc.StatusCode.UNAVAILABLE, f"no target of {model!r} can serve now ({'; '.join(skipped)})"
            )
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


def _pool_of(candidates: list[EndpointState]) -> str:
    return candidates[0].endpoint.pool if candidates else ""


def _endpoint_fault(err: BackendError) -> bool:
    """Does this failure say the endpoint is unwell (toward outlier ejection)?"""
    return err.code in _ENDPOINT_FAULTS and not err.model_error
