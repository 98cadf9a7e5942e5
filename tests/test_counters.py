"""The Counters contract, one suite over every implementation: in memory and in a real Redis.

Token buckets: all-or-nothing multi-bucket takes (a refused take charges nothing), refill at the
rate up to the burst, settlement (refund and debt), the wait a refusal names; concurrency slots
with expiry; concurrent takes never overshoot (a hypothesis property over burst shapes); and for
Redis, an outage answered StoreUnavailable at once and recovery without a new client.
"""

from __future__ import annotations

import asyncio
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
from gateway.observe.metrics import Metrics
from gateway.pipeline.context import Principal, RequestContext
from gateway.pipeline.stages import Call, Estimate, Outcome
from gateway.policy.limits.config import RateLimit
from gateway.policy.limits.stage import RateLimitStage
from gateway.stores.counters import Bucket, Counters, MemoryCounters, StoreUnavailable
from gateway.stores.leased import LeasedCounters
from gateway.stores.redis_store import RedisCounters
from tests.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Counters]:
    store: Counters
    if request.param == "memory":
        store = MemoryCounters()
    else:
        store = RedisCounters(redis_server.url, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    yield store
    await store.aclose()


def key() -> str:
    return uuid.uuid4().hex


async def test_take_is_all_or_nothing(counters: Counters) -> None:
    a, b = Bucket(key(), 1.0, 10.0), Bucket(key(), 1.0, 3.0)
    first = await counters.take([a, b], [2, 2])
    assert first.allowed and first.remaining == pytest.approx((8.0, 1.0), abs=0.05)
    refused = await counters.take([a, b], [2, 2])  # b has ~1 left: refused, a not charged
    assert not refused.allowed and refused.refused_by == 1
    assert 0.9 <= refused.retry_after <= 1.05
    assert refused.remaining[0] == pytest.approx(8.0, abs=0.05)
    again = await counters.take([a], [8])
    assert again.allowed


async def test_refill_and_burst_cap(counters: Counters) -> None:
    b = Bucket(key(), 20.0, 4.0)
    assert (await counters.take([b], [4])).allowed
    assert not (await counters.take([b], [1])).allowed
    await asyncio.sleep(0.3)  # 6 tokens' worth of refill, capped at the burst of 4
    d = await counters.take([b], [4])
    assert d.allowed and d.remaining[0] == pytest.approx(0.0, abs=0.5)


async def test_adjust_refunds_and_charges_debt(counters: Counters) -> None:
    b = Bucket(key(), 0.001, 100.0)
    assert (await counters.take([b], [80])).allowed  # reserve 80
    await counters.adjust([b], [50])  # used 30: 50 back
    d = await counters.take([b], [70])
    assert d.allowed and d.remaining[0] == pytest.approx(0.0, abs=0.1)
    await counters.adjust([b], [-40])  # used 40 more than reserved: a debt
    refused = await counters.take([b], [1])
    assert not refused.allowed and refused.remaining[0] == pytest.approx(-40.0, abs=0.1)
    assert refused.retry_after == pytest.approx(41 / 0.001, rel=0.01)
    await counters.adjust([b], [1000])  # a refund never fills past the burst
    assert (await counters.take([b], [100])).allowed
    assert not (await counters.take([b], [1])).allowed


async def test_a_bucket_without_refill_says_never(counters: Counters) -> None:
    b = Bucket(key(), 0.0, 1.0)
    assert (await counters.take([b], [1])).allowed
    refused = await counters.take([b], [1])
    assert not refused.allowed and refused.retry_after == float("inf")


async def test_concurrency_slots(counters: Counters) -> None:
    k = key()
    assert await counters.acquire(k, 2, "s1", 30) == (True, 1)
    assert await counters.acquire(k, 2, "s2", 30) == (True, 2)
    assert await counters.acquire(k, 2, "s3", 30) == (False, 2)
    await counters.release(k, "s1")
    assert await counters.acquire(k, 2, "s3", 30) == (True, 2)
    # a slot never released (its holder died) frees itself after its ttl
    k2 = key()
    assert (await counters.acquire(k2, 1, "lost", 0.2))[0]
    assert not (await counters.acquire(k2, 1, "next", 30))[0]
    await asyncio.sleep(0.3)
    assert (await counters.acquire(k2, 1, "next", 30))[0]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    burst=st.integers(1, 40),
    costs=st.lists(st.integers(1, 7), min_size=1, max_size=60),
)
async def test_concurrent_takes_never_overshoot(counters: Counters, burst: int, costs: list[int]) -> None:
    """Takes racing from many tasks (and, for Redis, many connections) never hand out more than
    the burst when no time passes to refill (rate ~0)."""
    b = Bucket(key(), 1e-9, float(burst))
    results = await asyncio.gather(*(counters.take([b], [c]) for c in costs))
    granted = sum(c for c, d in zip(costs, results, strict=True) if d.allowed)
    assert granted <= burst
    # and nothing that fitted was refused for want of atomicity: greedy order would grant at least
    # the first cost when it fits
    if costs[0] <= burst:
        assert granted > 0


async def test_redis_outage_is_unavailable_at_once_and_recovers(redis_server: RedisServer) -> None:
    server = RedisServer().start()
    store = RedisCounters(server.url, timeout_s=0.2, retry_s=0.3)
    b = Bucket(key(), 1.0, 5.0)
    try:
        assert (await store.take([b], [1])).allowed
        server.stop()
        with pytest.raises(StoreUnavailable):
            await store.take([b], [1])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(StoreUnavailable):  # within retry_s: not even tried
            await store.take([b], [1])
        assert loop.time() - t0 < 0.05
        server.port = server.port  # same port again
        server.start()
        await asyncio.sleep(0.35)
        d = await store.take([b], [1])  # a fresh Redis: the bucket starts full again
        assert d.allowed and d.remaining[0] == pytest.approx(4.0, abs=0.1)
    finally:
        await store.aclose()
        server.stop()


# -- leased mode -------------------------------------------------------------------------------


def _evalsha_calls(url: str) -> int:
    import redis

    with redis.Redis.from_url(url) as r:
        stats = r.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_leased_mode_takes_far_fewer_round_trips(redis_server: RedisServer) -> None:
    counts = {}
    for mode in ("exact", "leased"):
        redis = RedisCounters(redis_server.url, prefix=f"rt-{mode}-{uuid.uuid4().hex[:6]}:")
        store: Counters = LeasedCounters(redis, lease_fraction=0.1) if mode == "leased" else redis
        b = Bucket(key(), 0.001, 1000.0)
        before = _evalsha_calls(redis_server.url)
        for _ in range(200):
            assert (await store.take([b], [1])).allowed
        counts[mode] = _evalsha_calls(redis_server.url) - before
        await store.aclose()
    assert counts["exact"] >= 200
    assert counts["leased"] <= 3  # leases of 100: two of them


async def test_leased_overshoot_stays_within_the_outstanding_leases(redis_server: RedisServer) -> None:
    """Two replicas hammer one bucket (20/s, burst 20) for 1 s. Exact mode admits at most
    burst + rate x time = 40; leased mode at most that plus the leases held (2 x 5)."""
    prefix = f"ov-{uuid.uuid4().hex[:6]}:"
    replicas = [
        LeasedCounters(RedisCounters(redis_server.url, prefix=prefix), lease_fraction=0.25) for _ in range(2)
    ]
    b = Bucket(key(), 20.0, 20.0)
    granted = 0
    stop_at = asyncio.get_running_loop().time() + 1.0

    async def hammer(store: LeasedCounters) -> None:
        nonlocal granted
        while asyncio.get_running_loop().time() < stop_at:
            if (await store.take([b], [1])).allowed:
                granted += 1
            await asyncio.sleep(0.001)

    await asyncio.gather(*(hammer(r) for r in replicas for _ in range(4)))
    for r in replicas:
        await r.aclose()
    assert 20 <= granted <= 20 + 20 * 1.05 + 2 * 5, granted


async def test_leased_settlement_and_all_or_nothing_reach_redis(redis_server: RedisServer) -> None:
    prefix = f"st-{uuid.uuid4().hex[:6]}:"
    leased = LeasedCounters(RedisCounters(redis_server.url, prefix=prefix), lease_fraction=0.1)
    exact = RedisCounters(redis_server.url, prefix=prefix)
    a, b = Bucket(key(), 1e-6, 100.0), Bucket(key(), 1e-6, 100.0)
    try:
        assert (await leased.take([a], [50])).allowed  # a lease of 50
        await leased.adjust([a], [-30])  # a debt, sent with the next flush
        await leased.flush()
        assert not (await exact.take([a], [21])).allowed  # 100 - 50 - 30 = 20 left in Redis
        assert (await exact.take([a], [20])).allowed
        # all or nothing: b exhausted, so a call needing a and b takes nothing from c
        c = Bucket(key(), 1e-6, 100.0)
        assert (await exact.take([b], [100])).allowed
        refused = await leased.take([c, b], [5, 5])
        assert not refused.allowed and refused.refused_by == 1
        assert (await exact.take([c], [100])).allowed  # c untouched
    finally:
        await leased.aclose()
        await exact.aclose()


# -- the token limit as the stage uses it --------------------------------------------------------


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    waves=st.lists(
        st.lists(
            st.tuples(st.integers(1, 400), st.integers(1, 400), st.floats(0.0, 1.0)), min_size=1, max_size=25
        ),
        min_size=1,
        max_size=4,
    )
)
async def test_token_bursts_never_exceed_the_limit(
    counters: Counters, waves: list[list[tuple[int, int, float]]]
) -> None:
    """Waves of concurrent LLM calls (prompt, max_tokens, the share of max_tokens they really
    generate) against one 1,000-token budget with no refill: every wave is admitted at once
    (reservations race), then settled from usage. The tokens the admitted calls used never
    exceed the budget, and a call whose reservation fit when nothing else was held is never refused
    for want of atomicity."""
    limit = RateLimit(name="tpm", key=["project"], tokens_per_min=1e-6, tokens_burst=1000)
    stage = RateLimitStage([limit], counters, Metrics(CollectorRegistry()), 60.0)
    principal = Principal(user="u", project=f"p-{key()}")
    used_total = 0
    for wave in waves:
        calls = []
        for i, (prompt, max_tokens, share) in enumerate(wave):
            ctx = RequestContext.new(f"r{i}", "Generate", 10.0, principal=principal)
            call = Call(ctx, "generate", "m", "", None)
            call.estimate = Estimate((prompt + max_tokens) / 1000, prompt, max_tokens)
            calls.append((call, prompt, int(max_tokens * share)))

        async def one(call: Call) -> Any:
            try:
                return await stage.admit(call)
            except GatewayError:
                return None

        tickets = await asyncio.gather(*(one(c) for c, _, _ in calls))
        if wave is waves[0] and any(p + m <= 1000 for p, m, _ in wave):
            assert any(t is not None for t in tickets)  # an empty budget admits the first that fits
        for (call, prompt, completion), ticket in zip(calls, tickets, strict=True):
            if ticket is not None:
                used_total += prompt + completion
                usage = Usage(prompt, completion)
                await stage.settle(call, ticket, Outcome(grpc.StatusCode.OK, usage, 0.01))
        assert used_total <= 1000
