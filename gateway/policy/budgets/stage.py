"""BudgetStage: what each department, project, user or API key may spend per window (money or
tokens), enforced before routing.

Each call that a budget applies to (its principal matches `who`, its model matches `models`,
and the principal has a value for the budget's scope) is checked against every such budget at
once, all or nothing, in the Counters store (one bucket per budget, scope value and window,
refilling never; a new window is a new key, so spend starts from zero; a shared store is
settled after the answer has gone, so no caller waits for that round trip):
  1. admit: reserve its worst case (prices.py worst_case: the estimated prompt and output
     tokens at the dearest price, plus budgets.gpu_reserve_s, or the deadline if sooner, of
     the dearest self-hosted slot; a cache hit: the cache price);
  2. settle: give back the difference to what it really cost (the ledger's charge: tokens the
     backend reported, or for a cancelled or broken stream what was streamed; GPU-seconds held),
     or charge the excess.
A budget that cannot take the reservation refuses the call: RESOURCE_EXHAUSTED naming the
budget, the scope value, the spend, and when the window resets (RetryInfo: until then).

Replicas share budgets through Redis (exact mode always, never leases): each replica's
overshoot is at most what its calls in flight reserved. With the memory store (one process),
a window's spend is restored from the ledger the first time a key is used after a start, so a
restart loses nothing the ledger holds. The share of each budget used is exported
(meshgate_budget_used_ratio, for the soft-threshold alert), refusals are counted by budget.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from adapters.llm import Usage
from discovery import Endpoint

from ...errors import GatewayError
from ...ledger.prices import Prices
from ...ledger.records import LedgerUnavailable
from ...observe.ratelog import RateLimitedLog
from ...pipeline.context import Principal
from ...pipeline.stages import Call, Outcome, settled_usage
from ...stores.counters import Bucket, Counters, StoreUnavailable
from .config import Budget, BudgetsConfig
from .windows import Window, window

log = logging.getLogger("meshgate.budgets")
_KINDS = frozenset({"infer", "generate", "embed"})
_SCOPE = {"department": "department", "project": "project", "user": "user", "api_key": "credential_id"}
_MAX_SERIES = 1000

# (budget, scope value, window) -> what the ledger says was spent in it
Restore = Callable[[Budget, str, Window], Awaitable[float]]


class _Held(NamedTuple):
    budget: Budget
    value: str
    window: Window
    bucket: Bucket
    reserved: float
    charged: list[float]  # [taken so far]: the reservation, then more as a stream outgrows it


class BudgetState(NamedTuple):
    budget: Budget
    value: str
    window: Window
    spent: float
    over_soft: bool


class Ticket(NamedTuple):
    held: tuple[_Held, ...]


class BudgetMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.used = Gauge(
            "meshgate_budget_used_ratio",
            "Share of each budget spent in its current window (including reservations of calls in"
            " flight), by budget and scope value; alert on budgets.soft_threshold.",
            ["budget", "key"],
            registry=registry,
        )
        self.refusals = Counter(
            "meshgate_budget_refusals_total",
            "Calls refused by an exhausted budget, by budget.",
            ["budget"],
            registry=registry,
        )
        self.series: set[tuple[str, str]] = set()  # (budget, "scope=value") exported so far
        self.store_errors = Counter(
            "meshgate_budget_store_errors_total",
            "Budget checks that could not reach the store (Redis), by the policy applied (open, closed).",
            ["policy"],
            registry=registry,
        )


class BudgetStage:
    name = "budget"

    def __init__(
        self,
        config: BudgetsConfig,
        counters: Counters,
        prices: Prices,
        endpoints: Callable[[str, str], Sequence[Endpoint]],
        metrics: BudgetMetrics,
        restore: Restore | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._counters = counters
        self._prices = prices
        self._endpoints = endpoints
        self._metrics = metrics
        self._restore = restore
        self._clock = clock
        self._models = [re.compile("|".join(fnmatch.translate(m) for m in b.models)) for b in config.limits]
        self._applies: dict[Principal, tuple[int, ...]] = {}
        self._restored: dict[str, asyncio.Future[None]] = {}
        self._store_log = RateLimitedLog(log, 10.0)
        self._pending: set[asyncio.Task[None]] = set()

    async def admit(self, call: Call) -> Ticket | None:
        if call.kind not in _KINDS or not self._config.limits:
            return None
        p = call.ctx.principal
        indexes = self._applies.get(p)
        if indexes is None:
            indexes = tuple(i for i, b in enumerate(self._config.limits) if b.who.matches(p))
            if len(self._applies) > 50_000:
                self._applies.clear()
            self._applies[p] = indexes
        now = self._clock()
        held: list[_Held] = []
        money: float | None = None
        for i in indexes:
            budget = self._config.limits[i]
            value = getattr(p, _SCOPE[budget.scope])
            if not value or not self._models[i].fullmatch(call.model):
                continue
            if budget.unit == "money":
                if money is None:
                    money = self._worst_money(call, now)
                cost = money
            else:
                cost = (
                    0.0
                    if call.hit is not None
                    else float(call.estimate.prompt_tokens + call.estimate.output_tokens)
                )
            w = window(budget.window, budget.window_s, self._config.timezone, now)
            held.append(_Held(budget, value, w, self._bucket(budget, value, w), cost, [cost]))
        if not held:
            return None
        try:
            if self._restore is not None:
                for h in held:
                    await self._restored_once(h)
            decision = await self._counters.take([h.bucket for h in held], [h.reserved for h in held])
        except StoreUnavailable as err:
            self._store_failed(held, err)
            return None
        if not decision.allowed:
            raise self._refused(held[decision.refused_by], decision.remaining[decision.refused_by], now)
        for h, level in zip(held, decision.remaining, strict=True):
            self._export(h, level)
        return Ticket(tuple(held))

    async def settle(self, call: Call, ticket: Ticket | None, outcome: Outcome) -> None:
        if ticket is None:
            return
        usage = settled_usage(call, outcome)
        charge = self._prices.of_call(call, outcome)
        tokens = float(usage.prompt_tokens + usage.completion_tokens) if usage is not None else 0.0
        deltas = [h.charged[0] - (charge.cost if h.budget.unit == "money" else tokens) for h in ticket.held]
        if any(deltas):
            await self._adjust_soon([h.bucket for h in ticket.held], deltas)

    async def _adjust_soon(self, buckets: list[Bucket], deltas: list[float]) -> None:
        """Settle: in this process's memory at once; in a shared store (a round trip) after the
        answer has gone, so the caller does not wait for it (flush() waits for those)."""
        if getattr(self._counters, "local", False):
            await self._adjust(buckets, deltas)
            return
        task = asyncio.get_running_loop().create_task(self._adjust(buckets, deltas))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _adjust(self, buckets: list[Bucket], deltas: list[float]) -> None:
        try:
            await self._counters.adjust(buckets, deltas)
        except StoreUnavailable as err:
            self._store_log.warning("settle", "budget store unreachable (%s): a settlement was lost", err)

    async def flush(self) -> None:
        """Wait for the settlements still on their way to the store."""
        while self._pending:
            await asyncio.gather(*list(self._pending))

    @property
    def budgets(self) -> list[Budget]:
        return self._config.limits

    async def states(self, name: str = "", key: str = "") -> list[BudgetState]:
        """Budgets in their current window, for the scope values charged since start (and `key`)."""
        now = self._clock()
        out = []
        for budget in self._config.limits:
            if name and budget.name != name:
                continue
            values = {k.partition("=")[2] for b, k in self._metrics.series if b == budget.name}
            if key:
                values.add(key)
            for value in sorted(values):
                w = window(budget.window, budget.window_s, self._config.timezone, now)
                h = _Held(budget, value, w, self._bucket(budget, value, w), 0.0, [0.0])
                if self._restore is not None:
                    await self._restored_once(h)
                level = (await self._counters.take([h.bucket], [0.0])).remaining[0]
                spent = budget.limit - level
                out.append(
                    BudgetState(budget, value, w, spent, spent >= self._config.soft_threshold * budget.limit)
                )
        return out

    async def progress(self, call: Call, ticket: Ticket, tokens: int) -> None:
        """A chat stream that has used more than it reserved takes the excess now (its tokens at
        the token price; its GPU time is settled at the end)."""
        prompt = call.estimate.prompt_tokens
        money: float | None = None
        buckets, deltas = [], []
        for h in ticket.held:
            if h.budget.unit == "money":
                if money is None:
                    usage = Usage(prompt, max(0, tokens - prompt), 0)
                    money = self._prices.charge(call.ctx.record.model or call.model, usage, (), False).cost
                used = money
            else:
                used = float(tokens)
            if used > h.charged[0]:
                buckets.append(h.bucket)
                deltas.append(h.charged[0] - used)
                h.charged[0] = used
        if buckets:
            await self._adjust_soon(buckets, deltas)

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _bucket(budget: Budget, value: str, w: Window) -> Bucket:
        return Bucket(f"bg:{budget.name}:{budget.scope}={value}:{int(w.start)}", 0.0, budget.limit)

    def _worst_money(self, call: Call, now: float) -> float:
        if call.hit is not None:
            return self._prices.config.cache_hit
        hold = min(self._config.gpu_reserve_s, max(0.0, call.ctx.deadline - time.monotonic()))
        est = call.estimate
        endpoints = self._endpoints(call.model, call.version)
        return self._prices.worst_case(call.model, est.prompt_tokens, est.output_tokens, endpoints, hold)

    async def _restored_once(self, h: _Held) -> None:
        """The first use of a key in this process: charge what the ledger holds for its window."""
        assert self._restore is not None
        key = h.bucket.key
        done = self._restored.get(key)
        if done is None:
            done = self._restored[key] = asyncio.get_running_loop().create_future()
            try:
                spent = await self._restore(h.budget, h.value, h.window)
                if spent:
                    await self._counters.adjust([h.bucket], [-spent])
            except (LedgerUnavailable, TimeoutError) as err:  # tried again by the next call
                del self._restored[key]
                self._store_log.warning(
                    "restore", "budget %s: spend not restored from the ledger yet: %s", h.budget.name, err
                )
            except BaseException:
                del self._restored[key]
                raise
            finally:
                done.set_result(None)
        await asyncio.shield(done)

    def _refused(self, h: _Held, level: float, now: float) -> GatewayError:
        self._metrics.refusals.labels(h.budget.name).inc()
        self._export(h, level)
        b = h.budget
        unit = self._prices.config.currency if b.unit == "money" else "tokens"
        spent = b.limit - level
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.window.end))
        why = (
            f"this call may cost up to {h.reserved:.4g} {unit}, more than the whole budget"
            if h.reserved > b.limit
            else f"{spent:.4g} of {b.limit:g} {unit} spent, this call may cost up to {h.reserved:.4g}"
        )
        return GatewayError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"budget {b.name} ({b.scope} {h.value}, {b.limit:g} {unit} per {b.period}) is exhausted:"
            f" {why}; it resets at {reset}",
            retry_after=max(h.window.end - now, 0.001),
        )

    def _store_failed(self, held: list[_Held], err: StoreUnavailable) -> None:
        """Fail open (return) or closed (raise UNAVAILABLE) as the budgets say."""
        closed = [h for h in held if h.budget.on_store_error == "closed"]
        self._metrics.store_errors.labels("closed" if closed else "open").inc()
        self._store_log.warning(
            "store", "budget store unreachable (%s): calls %s", err, "refused" if closed else "let through"
        )
        if closed:
            raise GatewayError(
                grpc.StatusCode.UNAVAILABLE,
                f"budget {closed[0].budget.name} cannot be checked now (its store is unreachable); try again",
                retry_after=1.0,
            )

    def _export(self, h: _Held, level: float) -> None:
        series = (h.budget.name, f"{h.budget.scope}={h.value}")
        if series not in self._metrics.series:
            if len(self._metrics.series) >= _MAX_SERIES:
                return
            self._metrics.series.add(series)
        self._metrics.used.labels(*series).set(max(0.0, (h.budget.limit - level) / h.budget.limit))


def ledger_restore(usage: Callable[..., Awaitable[Any]], flush: Callable[[], Awaitable[bool]]) -> Restore:
    """A Restore over the ledger: the budget's unit summed over its window, for its scope value
    and models (rows grouped by scope and model, filtered here)."""

    async def restore(budget: Budget, value: str, w: Window) -> float:
        await asyncio.wait_for(flush(), 5.0)
        rows = await usage(w.start, w.end, [_SCOPE[budget.scope], "model"])
        models = re.compile("|".join(fnmatch.translate(m) for m in budget.models))
        total = 0.0
        for row in rows:
            if row.group[0] == value and models.fullmatch(row.group[1]):
                total += row.cost if budget.unit == "money" else row.tokens_in + row.tokens_out
        return total

    return restore
