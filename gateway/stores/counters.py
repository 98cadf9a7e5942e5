"""The Counters seam: token buckets and concurrency slots, shared by whoever enforces limits.

    take(buckets, costs)     all or nothing: every bucket has its cost, and each is charged; or
                             none is charged and the answer says which refused and when the
                             take would succeed
    adjust(buckets, deltas)  settle: add tokens back (a reservation larger than what was used)
                             or take more (may go below zero: a debt the next takes wait out)
    acquire(key, limit, slot, ttl_s) / release(key, slot)
                             concurrency slots; a slot not released (a replica that died)
                             frees itself after ttl_s

A bucket holds up to `burst` tokens and refills at `rate` per second. A refused take charges
nothing, so a caller that retries does not dig itself deeper.

MemoryCounters serves one process (the embedded default); RedisCounters (redis_store.py) several
replicas. tests/test_counters.py runs one contract suite over both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Bucket(NamedTuple):
    key: str  # the store key, e.g. "rl:per-user:requests:alice"
    rate: float  # tokens per second
    burst: float  # capacity


class Decision(NamedTuple):
    allowed: bool
    remaining: tuple[float, ...]  # tokens in each bucket after the take (refused: as they are)
    retry_after: float  # refused: seconds until the take would succeed; allowed: 0
    refused_by: int = -1  # the first bucket that refused


class StoreUnavailable(Exception):
    """The store cannot be reached now (Redis down or slow); the caller applies its policy."""


class Counters(Protocol):
    local: bool  # this process's memory (no I/O): no need to move work off the request path

    async def take(self, buckets: Sequence[Bucket], costs: Sequence[float]) -> Decision: ...

    async def adjust(self, buckets: Sequence[Bucket], deltas: Sequence[float]) -> None: ...

    async def acquire(self, key: str, limit: int, slot: str, ttl_s: float) -> tuple[bool, int]:
        """(got a slot, slots in use after the call)."""
        ...

    async def release(self, key: str, slot: str) -> None: ...

    async def aclose(self) -> None: ...


def refill(tokens: float, updated: float, now: float, bucket: Bucket) -> float:
    return min(bucket.burst, tokens + (now - updated) * bucket.rate)


class MemoryCounters:
    """Counters for one process: plain dicts, touched from the event loop only (no await
    between a read and its write, so every operation is atomic)."""

    local = True

    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float, float]] = {}  # key -> (tokens, updated, full at)
        self._slots: dict[str, dict[str, float]] = {}  # key -> {slot: expires}
        self._takes = 0

    def _now(self) -> float:
        now: float = self._clock()  # type: ignore[operator]
        return now

    async def take(self, buckets: Sequence[Bucket], costs: Sequence[float]) -> Decision:
        now = self._now()
        levels = []
        for i, (bucket, cost) in enumerate(zip(buckets, costs, strict=True)):
            tokens = self._level(bucket, now)
            if tokens < cost:
                wait = (cost - tokens) / bucket.rate if bucket.rate > 0 else float("inf")
                return Decision(False, tuple(self._level(b, now) for b in buckets), wait, i)
            levels.append(tokens - cost)
        for bucket, level in zip(buckets, levels, strict=True):
            self._set(bucket, level, now)
        self._takes += 1
        if self._takes % 4096 == 0:  # buckets full again are dropped: memory follows active keys
            for key in [k for k, (_, _, full_at) in self._buckets.items() if full_at <= now]:
                del self._buckets[key]
        return Decision(True, tuple(levels), 0.0)

    def _level(self, bucket: Bucket, now: float) -> float:
        state = self._buckets.get(bucket.key)
        return bucket.burst if state is None else refill(state[0], state[1], now, bucket)

    def _set(self, bucket: Bucket, tokens: float, now: float) -> None:
        full_in = (bucket.burst - tokens) / bucket.rate if bucket.rate > 0 else float("inf")
        self._buckets[bucket.key] = (tokens, now, now + full_in)

    async def adjust(self, buckets: Sequence[Bucket], deltas: Sequence[float]) -> None:
        now = self._now()
        for bucket, delta in zip(buckets, deltas, strict=True):
            self._set(bucket, min(bucket.burst, self._level(bucket, now) + delta), now)

    async def acquire(self, key: str, limit: int, slot: str, ttl_s: float) -> tuple[bool, int]:
        now = self._now()
        slots = self._slots.setdefault(key, {})
        for s in [s for s, expires in slots.items() if expires <= now]:
            del slots[s]
        if len(slots) >= limit:
            return False, len(slots)
        slots[slot] = now + ttl_s
        return True, len(slots)

    async def release(self, key: str, slot: str) -> None:
        slots = self._slots.get(key)
        if slots is not None:
            slots.pop(slot, None)
            if not slots:
                del self._slots[key]

    async def aclose(self) -> None:
        return None
