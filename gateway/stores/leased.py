"""Leased counters: each replica takes a small lease of a bucket's tokens from Redis in one
round trip and spends it locally, so most calls cost no round trip at all (redis.mode: leased).

    take     from the local leases when every bucket's lease holds the cost; otherwise one
             script leases the missing buckets' tokens from Redis (lease = the cost, or
             redis.lease_fraction x the burst if larger; all or nothing), falling back to
             exactly the cost, and refusing as exact mode would when even that is refused
    adjust   settlement deltas are summed per bucket and sent every 100 ms in one script
    leases   live at most redis.lease_s: what is left then is given back to Redis
    refusals once Redis refuses a bucket, this replica refuses it locally until the wait Redis
             named (at most lease_s) has passed: a saturated limit costs no round trips either

The bound on overshoot: tokens are removed from Redis when they are leased, so the total
handed out never exceeds what Redis grants; a lease may be spent up to lease_s after it was
taken, so within any window the calls admitted exceed exact mode's by at most the tokens held
in leases at its start: replicas x lease size per bucket. A replica that dies loses its
leases (they are not given back; the bucket refills). Concurrency slots are not leased: they
go to Redis every time (exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from .counters import Bucket, Decision, StoreUnavailable
from .redis_store import RedisCounters

log = logging.getLogger("meshgate.stores")


class _Lease:
    __slots__ = ("bucket", "expires", "level", "tokens")

    def __init__(self, bucket: Bucket, tokens: float, level: float, expires: float) -> None:
        self.bucket = bucket
        self.tokens = tokens  # held here, not yet spent
        self.level = level  # what Redis said was left after the lease (for x-ratelimit-*)
        self.expires = expires


class LeasedCounters:
    local = False

    def __init__(self, redis: RedisCounters, *, lease_fraction: float = 0.1, lease_s: float = 1.0) -> None:
        self._redis = redis
        self._fraction = lease_fraction
        self._lease_s = lease_s
        self._leases: dict[str, _Lease] = {}
        self._pending: dict[str, tuple[Bucket, float]] = {}  # settlement deltas not yet sent
        # bucket key -> (time.monotonic() until which Redis said it has too few tokens, its level):
        # refused here without a round trip until then (at most lease_s)
        self._blocked: dict[str, tuple[float, float]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.round_trips = 0

    async def take(self, buckets: Sequence[Bucket], costs: Sequence[float]) -> Decision:
        self._start()
        now = time.monotonic()
        missing: list[int] = []
        for i, (b, cost) in enumerate(zip(buckets, costs, strict=True)):
            lease = self._leases.get(b.key)
            if lease is None or lease.expires <= now or lease.tokens < cost:
                missing.append(i)
        for i in missing:
            blocked = self._blocked.get(buckets[i].key)
            if blocked is not None and now < blocked[0]:
                levels = [self._level(b) for b in buckets]
                levels[i] = blocked[1]
                return Decision(False, tuple(levels), blocked[0] - now, i)
        if missing:
            refused = await self._lease([buckets[i] for i in missing], [costs[i] for i in missing], now)
            if refused is not None:
                levels = [self._level(b) for b in buckets]
                for k, i in enumerate(missing):  # Redis's word for the buckets it was asked about
                    levels[i] = refused.remaining[k]
                j = missing[refused.refused_by]
                wait = min(refused.retry_after, self._lease_s)
                self._blocked[buckets[j].key] = (now + wait, levels[j])
                if len(self._blocked) > 10_000:
                    self._blocked = {k: v for k, v in self._blocked.items() if v[0] > now}
                return Decision(False, tuple(levels), refused.retry_after, j)
        for b, cost in zip(buckets, costs, strict=True):
            self._leases[b.key].tokens -= cost
        return Decision(True, tuple(self._level(b) for b in buckets), 0.0)

    def _level(self, b: Bucket) -> float:
        lease = self._leases.get(b.key)
        return b.burst if lease is None else lease.level + lease.tokens

    async def _lease(self, buckets: list[Bucket], costs: list[float], now: float) -> Decision | None:
        """Lease tokens for `buckets` (None when done), or Redis's refusal."""
        sizes = [max(cost, b.burst * self._fraction) for b, cost in zip(buckets, costs, strict=True)]
        for b in buckets:  # what is left of an old lease goes back before the new one is taken
            old = self._leases.get(b.key)
            if old is not None and old.tokens > 0:
                self._defer(b, old.tokens)
                old.tokens = 0.0
        owed = [self._pending.pop(b.key) for b in buckets if b.key in self._pending]
        if owed:  # settlements not yet sent for these buckets: Redis must see them first
            self.round_trips += 1
            await self._redis.adjust([b for b, _ in owed], [d for _, d in owed])
        self.round_trips += 1
        d = await self._redis.take(buckets, sizes)
        if not d.allowed and sizes != costs:
            self.round_trips += 1
            sizes = list(costs)
            d = await self._redis.take(buckets, sizes)
        if not d.allowed:
            return d
        expires = now + self._lease_s
        for b, size, level in zip(buckets, sizes, d.remaining, strict=True):
            lease = self._leases.get(b.key)
            if lease is None:
                self._leases[b.key] = _Lease(b, size, level, expires)
            else:
                lease.tokens, lease.level, lease.expires = lease.tokens + size, level, expires
        return None

    async def adjust(self, buckets: Sequence[Bucket], deltas: Sequence[float]) -> None:
        self._start()
        now = time.monotonic()
        for b, delta in zip(buckets, deltas, strict=True):
            lease = self._leases.get(b.key)
            if delta > 0 and lease is not None and lease.expires > now:
                # a refund is spendable here at once (it was taken from Redis by this replica)
                room = max(0.0, b.burst - lease.level - lease.tokens)
                lease.tokens += min(delta, room)
                delta -= min(delta, room)
            if delta:
                self._defer(b, delta)

    def _defer(self, b: Bucket, delta: float) -> None:
        pending = self._pending.get(b.key)
        self._pending[b.key] = (b, delta + (pending[1] if pending else 0.0))

    async def acquire(self, key: str, limit: int, slot: str, ttl_s: float) -> tuple[bool, int]:
        return await self._redis.acquire(key, limit, slot, ttl_s)

    async def release(self, key: str, slot: str) -> None:
        await self._redis.release(key, slot)

    # -- the background flush ---------------------------------------------------------------------
    def _start(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            await self.flush()

    async def flush(self) -> None:
        """Give back expired leases' tokens and send the summed settlement deltas (one script)."""
        now = time.monotonic()
        for key, lease in list(self._leases.items()):
            if lease.expires <= now:
                if lease.tokens > 0:
                    self._defer(lease.bucket, lease.tokens)
                del self._leases[key]
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        items = [(b, d) for b, d in pending.values() if d]
        if not items:
            return
        try:
            self.round_trips += 1
            await self._redis.adjust([b for b, _ in items], [d for _, d in items])
        except StoreUnavailable as err:
            log.debug("leased counters: settlement not sent (%s); dropped", err)

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for lease in self._leases.values():  # give back what is held
            if lease.tokens > 0:
                self._defer(lease.bucket, lease.tokens)
        self._leases.clear()
        with contextlib.suppress(Exception):
            await self.flush()
        await self._redis.aclose()
