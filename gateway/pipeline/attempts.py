"""The attempt loop: the one place where a call meets endpoints, for unary calls and streams.

Per target of the model's chain (an alias: its split pick, then its fallbacks; a plain model: one
target): the scheduler picks by the pool's profile; when nothing is usable the next target is
tried ("down"); with spill-over, a pick whose predicted completion misses the deadline also moves
on ("deadline"). A call is never sent once its deadline has passed. A retryable failure is tried
once more on another endpoint (this target's, else the next one's) while `retry_unavailable` is
on, the pool's retry budget allows and time remains. Every attempt reports to the scheduler
(units, latency, outlier faults) and to metrics; an UNAVAILABLE endpoint is reported down.

Unary calls and streams run the same loop, one coroutine: an attempt returns the answer, and a
stream's attempt also hands each event to the caller as it comes (`CallRecord.delivered` counts
them). The single difference between them is stated once, in `_retry`: a call is never retried
once an event has reached the caller, because the caller has already seen part of the answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

import grpc

from adapters import Adapter, BackendError

from ..endpoints import EndpointState, EndpointTable
from ..errors import GatewayError, echo
from ..observe.metrics import Metrics
from ..observe.tracing import CallTrace, failed, passed_on
from ..routing.aliases import Policies, Target
from ..routing.outlier import RetryBudget
from ..routing.plugins import RequestInfo
from ..routing.scheduler import Scheduler
from .stages import Call

E = TypeVar("E")
# One attempt at one endpoint: (adapter, seconds left, target, route) -> the answer. A stream's
# attempt delivers its events on the way and counts them in ctx.record.delivered.
Attempt = Callable[[Adapter, float, Target, "Route"], Awaitable[E]]

MAX_ATTEMPTS = 2  # the first try plus one retry on another endpoint
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
    cache_hit: bool = False  # answered from the response cache (the rest: where that answer came from)
    # Metadata or headers for the backend with this attempt: the W3C trace context (its span's,
    # or with tracing off the caller's as it came). The attempt adds them to the call's own.
    trace: tuple[tuple[str, str], ...] = ()


class Attempts:
    def __init__(
        self,
        table: EndpointTable,
        scheduler: Scheduler,
        policies: Policies,
        retry_budget: RetryBudget,
        metrics: Metrics,
        *,
        costs: dict[str, float],
        retry_unavailable: bool,
        on_endpoint_down: Callable[[EndpointState, str], None],
    ) -> None:
        self._table = table
        self._scheduler = scheduler
        self._policies = policies
        self._retry_budget = retry_budget
        self._metrics = metrics
        self._costs = costs
        self._retry_unavailable = retry_unavailable
        self._on_endpoint_down = on_endpoint_down

    def reconfigure(self, policies: Policies, costs: dict[str, float], retry_unavailable: bool) -> None:
        """A config reload's aliases, model costs and retry switch (calls under way keep theirs)."""
        self._policies, self._costs, self._retry_unavailable = policies, costs, retry_unavailable

    async def run(self, call: Call, attempt: Attempt[E]) -> tuple[E, Route]:
        """`call`'s answer and the route that produced it. Raises GatewayError when no target
        can answer. `call.ctx.record` follows the attempts."""
        ctx = call.ctx
        record, trace = ctx.record, ctx.trace
        passed = passed_on(ctx) if trace is None else ()
        chain, spill = self._policies.chain(call.model, call.version)
        tried: list[EndpointState] = []
        skipped: list[str] = []
        last_error: BackendError | None = None
        first: list[EndpointState] | None = None
        for i, target in enumerate(chain):
            candidates = self._candidates(target, alone=len(chain) == 1)
            if candidates is None:
                skipped.append(f"{target.model}: not found")
                continue
            if first is None:
                first = candidates
                self._retry_budget.request(candidates[0].endpoint.pool if candidates else "")
            units = self._cost(target.model, candidates) * call.estimate.size
            while True:
                chosen = self._choose(
                    call, target, candidates, units, tried, skipped, spill and i < len(chain) - 1
                )
                if chosen is None:
                    break
                state, req = chosen
                ep = state.endpoint
                tried.append(state)
                span = trace.attempt(call.kind, target.model, ep, len(tried)) if trace is not None else None
                headers = passed if span is None else trace.headers(span)
                route = Route(
                    ep.pool, ep.id, ep.backend, len(tried), target.model, tuple(skipped), trace=headers
                )
                record.model, record.pool, record.endpoint, record.attempts = (
                    target.model,
                    ep.pool,
                    ep.id,
                    len(tried),
                )
                predicted = self._scheduler.started(state, req)
                start = time.monotonic()
                ok = fault = False
                try:
                    value = await attempt(state.adapter, req.timeout_s, target, route)
                    ok = True
                except BackendError as err:
                    if span is not None:
                        failed(span, err.code, err.message)
                    fault = _endpoint_fault(err)
                    self._metrics.backend_done(ep.pool, ep.id, err.code, time.monotonic() - start)
                    if err.usage is not None:
                        record.usage = err.usage
                    if err.code == _UNAVAILABLE and not record.delivered:
                        self._on_endpoint_down(state, f"call failed: {err.message}")
                    if not self._retry(err, record.delivered, len(tried), ctx.deadline, ep.pool):
                        raise GatewayError(err.code, err.message, retry_after=err.retry_after) from None
                    self._metrics.retries.labels(ep.pool).inc()
                    last_error = err
                    continue
                finally:  # answered, failed, or cancelled by the caller: the attempt is over
                    held = time.monotonic() - start
                    record.held.append((ep, held))
                    self._scheduler.finished(state, req, predicted, held, ok, fault)
                    if span is not None:
                        span.end()
                self._metrics.backend_done(ep.pool, ep.id, _OK, time.monotonic() - start)
                if i > 0 and skipped:
                    self._metrics.spills.labels(ep.pool, "fallback").inc()
                return value, route
        raise _no_endpoint(call.model, call.version, first or [], last_error, skipped)

    def _choose(
        self,
        call: Call,
        target: Target,
        candidates: list[EndpointState],
        units: float,
        tried: list[EndpointState],
        skipped: list[str],
        spill: bool,
    ) -> tuple[EndpointState, RequestInfo] | None:
        """The endpoint of `target` to try next, or None to move on to the next target (the
        reason is added to `skipped`). Raises DEADLINE_EXCEEDED once no time is left."""
        ctx = call.ctx
        remaining = ctx.deadline - time.monotonic()
        req = RequestInfo(target.model, target.version, units, ctx.region, remaining, ctx.prefer)
        if ctx.trace is None:
            state = self._scheduler.pick(candidates, req, tried)
        else:
            state = self._traced_pick(ctx.trace, candidates, req, tried)
        if state is None:
            skipped.append(f"{target.model}: down")
            return None
        if remaining <= 0:
            raise GatewayError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded before calling {state.endpoint.id}"
            )
        if spill:
            expected = self._scheduler.predicted_real_seconds(state, req)
            if expected is not None and expected > remaining:
                skipped.append(f"{target.model}: deadline")
                self._metrics.spills.labels(state.endpoint.pool, "deadline").inc()
                return None
        return state, req

    def _traced_pick(
        self, trace: CallTrace, candidates: list[EndpointState], req: RequestInfo, tried: list[EndpointState]
    ) -> EndpointState | None:
        """The scheduler's pick in a `schedule` span: what it chose from, and the complexity units."""
        span = trace.child("schedule", {"meshgate.candidates": len(candidates), "meshgate.units": req.units})
        try:
            state = self._scheduler.pick(candidates, req, tried)
            if state is not None:
                span.set_attributes(
                    {"meshgate.pool": state.endpoint.pool, "meshgate.endpoint": state.endpoint.id}
                )
            return state
        finally:
            span.end()

    def _retry(self, err: BackendError, delivered: int, tried: int, deadline: float, pool: str) -> bool:
        """Try `err`'s call again elsewhere? Never once an event has reached the caller."""
        if delivered or not (err.retryable and self._retry_unavailable and tried < MAX_ATTEMPTS):
            return False
        if deadline <= time.monotonic():
            return False
        if self._retry_budget.try_retry(pool):
            return True
        self._metrics.retry_budget_exhausted.labels(pool).inc()
        return False

    def _cost(self, model: str, candidates: list[EndpointState]) -> float:
        """Units per unit of size: endpoint Meta `costs`, else routing.model_costs, else 1."""
        for state in candidates:
            cost = state.endpoint.costs.get(model)
            if cost is not None:
                return cost
        return self._costs.get(model, 1.0)

    def _candidates(self, target: Target, alone: bool) -> list[EndpointState] | None:
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


def _no_endpoint(
    model: str,
    version: str,
    candidates: list[EndpointState],
    last_error: BackendError | None,
    skipped: list[str],
) -> GatewayError:
    if last_error is not None:
        return GatewayError(last_error.code, last_error.message, retry_after=last_error.retry_after)
    if not candidates:  # every target of the alias's chain is unknown
        return GatewayError(
            grpc.StatusCode.NOT_FOUND,
            f"model: no target of alias {echo(model)} is served by any pool ({'; '.join(skipped)})",
            field="model",
        )
    if len(skipped) > 1:
        return GatewayError(
            grpc.StatusCode.UNAVAILABLE, f"no target of {echo(model)} can serve now ({'; '.join(skipped)})"
        )
    pools = sorted({s.endpoint.pool for s in candidates})
    what = f"model {echo(model)}" + (f" version {echo(version)}" if version else "")
    reasons = "; ".join(
        f"{s.endpoint.id}: {'drained by an operator' if s.drained else s.health.message}"
        for s in candidates[:5]
    )
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        f"no ready endpoint for {what} in pool(s) {', '.join(pools)} ({reasons})",
    )


def _endpoint_fault(err: BackendError) -> bool:
    """Does this failure say the endpoint is unwell (toward outlier ejection)?"""
    return err.code in _ENDPOINT_FAULTS and not err.model_error
