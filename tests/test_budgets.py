"""Budgets at the stage, over both stores (memory, a real Redis): windows (calendar-aligned in a
time zone, a monthly window across a month end, fixed lengths) with the clock injected; the
refusal names the budget and its reset; concurrent calls that race for the last of a budget never
overspend it (hypothesis over waves of calls, two replicas sharing Redis); settlement gives back
what a call did not use. Through the front door: tests/test_budgets_e2e.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from adapters.llm import Usage
from gateway.errors import GatewayError
from gateway.ledger.config import PricesConfig
from gateway.ledger.prices import Prices
from gateway.pipeline.context import Principal, RequestContext
from gateway.pipeline.stages import Call, Estimate, Outcome
from gateway.policy.budgets.config import BudgetsConfig
from gateway.policy.budgets.stage import BudgetMetrics, BudgetStage
from gateway.policy.budgets.windows import window
from gateway.stores.counters import Counters, MemoryCounters
from gateway.stores.redis_store import RedisCounters
from tests.redis_server import RedisServer

UTC = dt.UTC


def at(*args: int, tz: dt.tzinfo = UTC) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, UTC).isoformat()


def test_calendar_windows() -> None:
    w = window("monthly", None, "UTC", at(2026, 12, 31, 23, 59, 59))
    assert (iso(w.start), iso(w.end)) == ("2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00")
    w = window("monthly", None, "UTC", at(2027, 1, 1, 0, 0, 0))
    assert iso(w.start) == "2027-01-01T00:00:00+00:00"
    w = window("monthly", None, "UTC", at(2028, 2, 10))  # a leap February
    assert (w.end - w.start) / 86400 == 29
    w = window("weekly", None, "UTC", at(2026, 12, 2, 15))  # a Wednesday: from Monday
    assert (iso(w.start), iso(w.end)) == ("2026-11-30T00:00:00+00:00", "2026-12-07T00:00:00+00:00")
    # in a time zone, across the spring daylight-saving change: that day has 23 hours
    w = window("daily", None, "Europe/Paris", at(2026, 3, 29, 12))
    assert (iso(w.start), (w.end - w.start) / 3600) == ("2026-03-28T23:00:00+00:00", 23.0)
    w = window(None, 3600.0, "UTC", at(2026, 12, 2, 10, 30))
    assert (iso(w.start), iso(w.end)) == ("2026-12-02T10:00:00+00:00", "2026-12-02T11:00:00+00:00")


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Counters]:
    store: Counters = (
        MemoryCounters()
        if request.param == "memory"
        else RedisCounters(redis_server.url, prefix=f"b-{uuid.uuid4().hex[:8]}:")
    )
    yield store
    await store.aclose()


def stage(counters: Counters, limits: list[dict[str, Any]], clock: Any = None, **extra: Any) -> BudgetStage:
    config = BudgetsConfig.model_validate({"limits": limits, **extra})
    prices = Prices(PricesConfig.model_validate({"models": {"m": {"in_per_1k": 1.0, "out_per_1k": 2.0}}}))
    kw = {"clock": clock} if clock is not None else {}
    return BudgetStage(
        config, counters, prices, lambda m, v: [], BudgetMetrics(CollectorRegistry()), None, **kw
    )


def call(principal: Principal, prompt: int, max_tokens: int) -> Call:
    ctx = RequestContext.new(uuid.uuid4().hex, "Generate", 10.0, principal=principal)
    c = Call(ctx, "generate", "m", "", None)
    c.estimate = Estimate((prompt + max_tokens) / 1000, prompt, max_tokens)
    return c


async def test_a_monthly_window_rolls_over_at_the_month_end(counters: Counters) -> None:
    now = [at(2026, 12, 31, 23, 59, 0)]
    project = f"p-{uuid.uuid4().hex[:6]}"
    s = stage(
        counters, [{"name": "monthly", "scope": "project", "limit": 100, "unit": "tokens"}], lambda: now[0]
    )
    bob = Principal(user="bob", project=project)
    first = call(bob, 50, 50)
    ticket = await s.admit(first)
    await s.settle(first, ticket, Outcome(grpc.StatusCode.OK, Usage(50, 50), 0.1))
    await s.flush()
    with pytest.raises(GatewayError) as err:
        await s.admit(call(bob, 1, 1))
    e = err.value
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"budget monthly (project {project}, 100 tokens per month)" in e.message
    assert "100 of 100 tokens spent" in e.message and "resets at 2027-01-01T00:00:00Z" in e.message
    assert e.retry_after == pytest.approx(60.0)
    now[0] = at(2027, 1, 1, 0, 0, 1)  # a new month: a new window, spend starts from zero
    assert await s.admit(call(bob, 50, 50)) is not None


async def test_settlement_gives_back_what_was_not_used_and_charges_money(counters: Counters) -> None:
    user = f"u-{uuid.uuid4().hex[:6]}"
    # money: 1.0 per 1k in, 2.0 per 1k out; a call reserves 100 in + 400 out = 0.9
    s = stage(counters, [{"name": "cap", "scope": "user", "limit": 1.0, "window": "daily"}])
    p = Principal(user=user)
    c = call(p, 100, 400)
    ticket = await s.admit(c)
    assert ticket is not None and ticket.held[0].reserved == pytest.approx(0.9)
    with pytest.raises(GatewayError, match=r"0\.9 of 1 USD spent, this call may cost up to 0\.7"):
        await s.admit(call(p, 100, 300))  # 0.1 left while the first runs
    await s.settle(c, ticket, Outcome(grpc.StatusCode.OK, Usage(100, 50), 0.1))  # it cost 0.2
    await s.flush()
    assert await s.admit(call(p, 100, 300)) is not None  # 0.8 left: 0.7 fits now
    with pytest.raises(GatewayError, match="more than the whole budget"):
        await s.admit(call(p, 100, 10_000))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    waves=st.lists(
        st.lists(
            st.tuples(st.integers(1, 300), st.integers(1, 300), st.floats(0.0, 1.0)), min_size=1, max_size=20
        ),
        min_size=1,
        max_size=4,
    )
)
async def test_concurrent_calls_never_overspend(
    counters: Counters, waves: list[list[tuple[int, int, float]]]
) -> None:
    """Two stages (two replicas) on one store; waves of calls race for a 1,000-token project
    budget, then settle from usage: the tokens the admitted calls used never exceed it."""
    limits = [{"name": "tokens", "scope": "project", "limit": 1000, "unit": "tokens", "window_s": 86400}]
    replicas = [stage(counters, limits), stage(counters, limits)]
    p = Principal(user="u", project=f"p-{uuid.uuid4().hex}")
    used = 0
    for wave in waves:
        calls = [(call(p, prompt, out), prompt, int(out * share)) for prompt, out, share in wave]

        async def one(i: int, c: Call) -> Any:
            try:
                return await replicas[i % 2].admit(c)
            except GatewayError:
                return None

        tickets = await asyncio.gather(*(one(i, c) for i, (c, _, _) in enumerate(calls)))
        for i, ((c, prompt, completion), ticket) in enumerate(zip(calls, tickets, strict=True)):
            if ticket is not None:
                used += prompt + completion
                await replicas[i % 2].settle(
                    c, ticket, Outcome(grpc.StatusCode.OK, Usage(prompt, completion), 0.01)
                )
        assert used <= 1000


async def test_a_stream_that_outgrows_its_reservation_is_charged_as_it_runs(counters: Counters) -> None:
    user = f"u-{uuid.uuid4().hex[:6]}"
    s = stage(counters, [{"name": "t", "scope": "user", "limit": 100, "unit": "tokens", "window_s": 3600}])
    p = Principal(user=user)
    stream = call(p, 10, 10)
    ticket = await s.admit(stream)  # reserves 20
    assert await s.admit(call(p, 10, 30)) is not None  # 40 of 60 left: fits (and stays reserved)
    await s.progress(stream, ticket, 60)  # the stream has used 60: 40 more taken now
    await s.flush()
    with pytest.raises(GatewayError, match="100 of 100 tokens spent"):
        await s.admit(call(p, 1, 1))
    await s.settle(stream, ticket, Outcome(grpc.StatusCode.CANCELLED, None, 1.0, events=55))  # 10 + 55
    await s.flush()
    with pytest.raises(GatewayError, match="105 of 100 tokens spent"):  # a debt: 40 + 65
        await s.admit(call(p, 1, 1))
