"""RateLimitStage: requests per second, tokens per minute and calls in flight, per user,
project, department, API key or model, on the shared Counters (stores/counters.py).

Admission takes every applicable bucket in one atomic step (all or nothing):
    requests  1 token per call
    tokens    the call's estimate (prompt characters / 4 + max_tokens, or
              routing.expected_output_tokens when unset), reserved before it is routed
    in flight a slot, held until the call ends (a slot whose holder died frees itself after
              server.max_timeout_s plus a minute)
Settlement gives back what the reservation over-estimated, or charges the rest as a debt that
later calls wait out: the usage the backend reported; for a stream that broke or was cancelled,
the usage seen so far (or the prompt plus one token per delta delivered); nothing for a call that
never reached a backend. A refused call gets RESOURCE_EXHAUSTED naming the limit, with
google.rpc.RetryInfo (when the budget will allow it), and takes nothing from the other buckets.
Every call a limit applies to carries the tightest limit's state in its trailing metadata:
x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset (seconds until full) and
x-ratelimit-policy (limit/kind).

Only calls that reach a model are limited: Infer, Generate, GenerateStream, Embed, ModelInfer
and ModelStreamInfer (per request), not metadata. Tokens limits apply to LLM calls.

When the store cannot be reached (Redis down or slow), each limit does as configured: `open`
lets the call through, `closed` refuses it (UNAVAILABLE, retry in a second); counted in
meshgate_ratelimit_store_errors_total and logged at most once per 10 s.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import itertools
import logging
import re
from collections.abc import Callable
from typing import NamedTuple

import grpc

from ...errors import GatewayError
from ...observe.metrics import Metrics
from ...observe.ratelog import RateLimitedLog
from ...pipeline.context import Principal
from ...pipeline.stages import Call, Outcome, settled_usage
from ...stores.counters import Bucket, Counters, Decision, StoreUnavailable
from .config import RateLimit

log = logging.getLogger("meshgate.limits")
_LIMITED_KINDS = frozenset({"infer", "generate", "embed"})
_MAX_CACHED = 50_000


class _Rule(NamedTuple):
    limit: RateLimit
    models: re.Pattern[str]


class _Applied(NamedTuple):
    """One call's share of one limit."""

    rule: RateLimit
    key: str  # the limit's key for this principal and model, e.g. "per-user|user=alice"


class Ticket(NamedTuple):
    buckets: tuple[Bucket, ...]
    tokens: tuple[int, ...]  # indexes into buckets of the tokens buckets
    reserved_tokens: int
    slots: tuple[tuple[str, str], ...]  # (key, slot id) held
    charged: list[int]  # [tokens taken so far]: the reservation, then more as a stream outgrows it


class RateLimitStage:
    name = "rate_limit"

    def __init__(
        self,
        limits: list[RateLimit],
        counters: Counters,
        metrics: Metrics,
        slot_ttl_s: float,
        pressure: Callable[[str, str], float] = lambda model, version: 0.0,
    ) -> None:
        self._pressure = pressure
        self._rules = [_Rule(r, re.compile("|".join(fnmatch.translate(m) for m in r.models))) for r in limits]
        self._counters = counters
        self._metrics = metrics
        self._slot_ttl_s = slot_ttl_s
        self._cache: dict[tuple[Principal, str], tuple[_Applied, ...]] = {}
        self._slot_ids = itertools.count()
        self._store_log = RateLimitedLog(log, 10.0)

    def _applied(self, principal: Principal, model: str) -> tuple[_Applied, ...]:
        cached = self._cache.get((principal, model))
        if cached is None:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            cached = self._cache[(principal, model)] = tuple(
                _Applied(r.limit, _key(r.limit, principal, model))
                for r in self._rules
                if r.limit.who.matches(principal) and r.models.fullmatch(model)
            )
        return cached

    async def admit(self, call: Call) -> Ticket | None:
        if call.kind not in _LIMITED_KINDS:
            return None
        applied = self._applied(call.ctx.principal, call.model)
        if not applied:
            return None
        est = call.estimate
        tokens = est.prompt_tokens + est.output_tokens if call.kind != "infer" else 0
        buckets: list[Bucket] = []
        costs: list[float] = []
        token_idx: list[int] = []
        pressure = -1.0
        for a in applied:
            r = a.rule
            f = 1.0  # the adaptive factor: < 1 while the serving pool is under pressure
            if r.adaptive is not None:
                if pressure < 0:
                    pressure = self._pressure(call.model, call.version)
                if pressure > r.adaptive.pressure:
                    f = max(r.adaptive.min_factor, r.adaptive.pressure / pressure)
            if r.requests_per_s is not None:
                burst = r.burst or max(1.0, r.requests_per_s)
                buckets.append(Bucket(f"rl:{a.key}:requests", r.requests_per_s * f, max(1.0, burst * f)))
                costs.append(1.0)
            if r.tokens_per_min is not None and tokens:
                token_idx.append(len(buckets))
                burst = r.tokens_burst or r.tokens_per_min
                buckets.append(Bucket(f"rl:{a.key}:tokens", r.tokens_per_min / 60.0 * f, max(1.0, burst * f)))
                costs.append(float(tokens))
        if buckets:
            try:
                decision = await self._counters.take(buckets, costs)
            except StoreUnavailable as err:
                self._store_failed(applied, err)
                return None
            if not decision.allowed:
                raise self._refused(call, applied, buckets, decision)
            call.ctx.record.ratelimit = _tightest(buckets, decision)
        slots = await self._acquire(call, applied, buckets, costs)
        return Ticket(tuple(buckets), tuple(token_idx), tokens, slots, [tokens])

    async def _acquire(
        self, call: Call, applied: tuple[_Applied, ...], buckets: list[Bucket], costs: list[float]
    ) -> tuple[tuple[str, str], ...]:
        held: list[tuple[str, str]] = []
        for a in applied:
            if a.rule.concurrent is None:
                continue
            key, slot = f"rl:{a.key}:in_flight", f"{call.ctx.request_id}:{next(self._slot_ids)}"
            try:
                got, in_use = await self._counters.acquire(key, a.rule.concurrent, slot, self._slot_ttl_s)
            except StoreUnavailable as err:
                self._store_failed((a,), err)
                continue
            if not got:
                for k, s in held:  # give back what this call took: it does not run
                    await self._release(k, s)
                if buckets:
                    await self._adjust(buckets, costs)
                self._metrics.ratelimit_refusals.labels(a.rule.name, "concurrency").inc()
                raise GatewayError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"rate limit {a.rule.name}: {in_use} calls in flight for {_who(a)}, the most allowed"
                    f" is {a.rule.concurrent}",
                    retry_after=1.0,
                )
            held.append((key, slot))
        return tuple(held)

    async def settle(self, call: Call, ticket: Ticket | None, outcome: Outcome) -> None:
        if ticket is None:
            return
        for key, slot in ticket.slots:
            await self._release(key, slot)
        if ticket.tokens:
            used = _used_tokens(call, outcome, ticket.reserved_tokens)
            delta = float(ticket.charged[0] - used)
            if delta:
                await self._adjust([ticket.buckets[i] for i in ticket.tokens], [delta] * len(ticket.tokens))

    async def progress(self, call: Call, ticket: Ticket, tokens: int) -> None:
        """A chat stream that has used more tokens than it reserved takes the excess now, so
        concurrent calls see it (it is not cut: the debt makes the next calls wait)."""
        extra = tokens - ticket.charged[0]
        if extra > 0 and ticket.tokens:
            ticket.charged[0] = tokens
            await self._adjust(
                [ticket.buckets[i] for i in ticket.tokens], [-float(extra)] * len(ticket.tokens)
            )

    # -- helpers ---------------------------------------------------------------------------------
    def _refused(
        self, call: Call, applied: tuple[_Applied, ...], buckets: list[Bucket], d: Decision
    ) -> GatewayError:
        bucket = buckets[d.refused_by]
        _, key, kind = bucket.key.split(":")
        a = next(x for x in applied if x.key == key)
        self._metrics.ratelimit_refusals.labels(a.rule.name, kind).inc()
        call.ctx.record.ratelimit = (
            f"{a.rule.name}/{kind}",
            bucket.burst,
            d.remaining[d.refused_by],
            d.retry_after,
        )
        if kind == "requests":
            what = f"{a.rule.requests_per_s:g} requests/s (burst {bucket.burst:g})"
            if a.rule.requests_per_s and bucket.rate < a.rule.requests_per_s:
                what += (
                    f", tightened to {bucket.rate / a.rule.requests_per_s:.0%} while its pool is under load"
                )
        else:
            what = f"{a.rule.tokens_per_min:g} tokens/min (this call reserves {call.estimate.prompt_tokens + call.estimate.output_tokens})"
        if d.retry_after == float("inf") or d.retry_after > 86400:
            return GatewayError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit {a.rule.name}: {what} for {_who(a)}; this call is larger than the limit allows",
            )
        return GatewayError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"rate limit {a.rule.name}: {what} for {_who(a)}; retry in {d.retry_after:.2f} s",
            retry_after=d.retry_after,
        )

    def _store_failed(self, applied: tuple[_Applied, ...], err: StoreUnavailable) -> None:
        closed = [a for a in applied if a.rule.on_store_error == "closed"]
        self._metrics.ratelimit_store_errors.labels("closed" if closed else "open").inc()
        self._store_log.warning(
            "store",
            "rate-limit store unreachable (%s): calls %s",
            err,
            "refused" if closed else "let through",
        )
        if closed:
            raise GatewayError(
                grpc.StatusCode.UNAVAILABLE,
                f"rate limit {closed[0].rule.name} cannot be checked now (its store is unreachable); retry shortly",
                retry_after=1.0,
            )

    async def _adjust(self, buckets: list[Bucket], deltas: list[float]) -> None:
        try:
            await self._counters.adjust(buckets, deltas)
        except StoreUnavailable as err:
            self._store_log.warning("settle", "rate-limit store unreachable, usage not settled: %s", err)

    async def _release(self, key: str, slot: str) -> None:
        with contextlib.suppress(StoreUnavailable):  # else the slot expires on its own
            await self._counters.release(key, slot)


def _key(r: RateLimit, p: Principal, model: str) -> str:
    values = {
        "user": p.user,
        "project": p.project,
        "department": p.department,
        "api_key": p.credential_id,
        "model": model,
    }
    key = "|".join(f"{field}={values[field]}" for field in r.key)
    if len(key) > 200 or ":" in key:  # bounded, and ':' separates the parts of a bucket key
        key = "h=" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{r.name}|{key}"


def _who(a: _Applied) -> str:
    part = a.key.split("|", 1)[1]
    return part.replace("|", ", ") if not part.startswith("h=") else "this caller"


def _tightest(buckets: list[Bucket], d: Decision) -> tuple[str, float, float, float]:
    """(policy, limit, remaining, seconds until full) of the bucket with the least room left."""
    i = min(range(len(buckets)), key=lambda j: d.remaining[j] / buckets[j].burst)
    b = buckets[i]
    _, key, kind = b.key.split(":")
    full_in = (b.burst - d.remaining[i]) / b.rate if b.rate > 0 else 0.0
    return (f"{key.split('|', 1)[0]}/{kind}", b.burst, d.remaining[i], full_in)


def _used_tokens(call: Call, outcome: Outcome, reserved: int) -> int:
    """What the call used: the backend's count; for a stream that ended without one, the prompt
    and ~1 token per delta delivered; nothing for a call that failed before any output; the
    reservation for an answer without a count."""
    if call.ctx.record.cache == "hit":
        return 0  # answered from the cache: no backend produced a token
    usage = settled_usage(call, outcome)
    if usage is not None:
        return int(usage.prompt_tokens + usage.completion_tokens)
    return reserved if outcome.code == grpc.StatusCode.OK else 0


__all__ = ["RateLimitStage", "Ticket"]
