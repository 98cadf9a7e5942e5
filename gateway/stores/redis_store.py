"""Counters in Redis, for several gateway replicas (resp.py: one pipelined connection; Lua
scripts called by SHA, loaded when Redis does not know them: at first use and after a restart).

Each operation is one script, so a multi-bucket take is atomic across replicas: no replica can
take between another's check and its write. Time is Redis's own (TIME), so replicas whose
clocks disagree still share one refill. A bucket's key expires once it would be full again, so
Redis holds only active keys. The keys of one call live on one server: a single Redis (or a
Sentinel-managed primary), not a Redis Cluster.

Failures: a timeout or a refused connection is StoreUnavailable at once, and for `retry_s`
afterwards the store is not tried (each call would otherwise wait out the timeout); then the
next call tries again, so limits resume when Redis returns, without a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Sequence
from typing import Any

from .counters import Bucket, Decision, StoreUnavailable
from .resp import RedisReplyError, RespClient

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

_LEVEL = """
local function level(key, rate, burst, now)
  local s = redis.call('HMGET', key, 't', 'u')
  if not s[1] then return burst end
  return math.min(burst, tonumber(s[1]) + (now - tonumber(s[2])) * rate)
end
local function store(key, tokens, rate, burst, now)
  redis.call('HSET', key, 't', tostring(tokens), 'u', tostring(now))
  if rate > 0 then
    redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
  end
end
"""

# KEYS: bucket keys; ARGV: rate, burst, cost per bucket.
# -> {1, '0', -1, level...} or {0, wait seconds ('-1': never), index refused, level...}
TAKE = (
    _NOW
    + _LEVEL
    + """
local levels = {}
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1])
  levels[i] = level(KEYS[i], rate, burst, now)
end
for i = 1, #KEYS do
  local rate, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i])
  if levels[i] < cost then
    local wait = -1
    if rate > 0 then wait = (cost - levels[i]) / rate end
    local out = {0, tostring(wait), i - 1}
    for j = 1, #KEYS do out[3 + j] = tostring(levels[j]) end
    return out
  end
end
local out = {1, '0', -1}
for i = 1, #KEYS do
  local rate, burst, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  store(KEYS[i], levels[i] - cost, rate, burst, now)
  out[3 + i] = tostring(levels[i] - cost)
end
return out
"""
)

# KEYS: bucket keys; ARGV: rate, burst, delta per bucket.
ADJUST = (
    _NOW
    + _LEVEL
    + """
for i = 1, #KEYS do
  local rate, burst, delta = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  store(KEYS[i], math.min(burst, level(KEYS[i], rate, burst, now) + delta), rate, burst, now)
end
return 1
"""
)

# KEYS[1]: the slot set; ARGV: limit, slot, ttl ms. -> {got (1/0), slots in use}
ACQUIRE = (
    _NOW
    + """
local ms = now * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then return {0, n} end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, n + 1}
"""
)


class Script:
    """A Lua script called by SHA (EVALSHA); loaded (SCRIPT LOAD) the first time Redis does not
    know it: at first use, and after a Redis restart."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class ScriptClient:
    """One Redis connection for scripts, with the failure rule above (StoreUnavailable, then
    not tried for `retry_s`). Shared by the counters and the response cache."""

    def __init__(self, url: str, *, timeout_s: float, retry_s: float, binary: bool = False) -> None:
        self._redis = RespClient(url, timeout_s, binary=binary)
        self._retry_s = retry_s
        self._down_until = 0.0

    async def call(self, *args: Any) -> Any:
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreUnavailable("redis: unreachable (not retried for a moment)")
        try:
            result = await self._redis.execute(*args)
        except (ConnectionError, RedisReplyError, OSError) as err:
            self._down_until = time.monotonic() + self._retry_s
            raise StoreUnavailable(f"redis: {err}") from None
        self._down_until = 0.0
        return result

    async def run(self, script: Script, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any:
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except StoreUnavailable as err:
            if "NOSCRIPT" not in str(err):
                raise
            self._down_until = 0.0
            await self.call("SCRIPT", "LOAD", script.source)
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        await self._redis.aclose()


class RedisCounters:
    local = False

    def __init__(
        self, url: str, *, timeout_s: float = 0.25, retry_s: float = 1.0, prefix: str = "meshgate:"
    ) -> None:
        self._redis = ScriptClient(url, timeout_s=timeout_s, retry_s=retry_s)
        self._prefix = prefix
        self._take = Script(TAKE)
        self._adjust = Script(ADJUST)
        self._acquire = Script(ACQUIRE)

    async def take(self, buckets: Sequence[Bucket], costs: Sequence[float]) -> Decision:
        args: list[Any] = []
        for b, cost in zip(buckets, costs, strict=True):
            args += [repr(b.rate), repr(b.burst), repr(cost)]
        out = await self._redis.run(self._take, [self._prefix + b.key for b in buckets], args)
        wait = float(out[1])
        levels = tuple(float(x) for x in out[3:])
        return Decision(out[0] == 1, levels, float("inf") if wait < 0 else wait, int(out[2]))

    async def adjust(self, buckets: Sequence[Bucket], deltas: Sequence[float]) -> None:
        args: list[Any] = []
        for b, delta in zip(buckets, deltas, strict=True):
            args += [repr(b.rate), repr(b.burst), repr(delta)]
        await self._redis.run(self._adjust, [self._prefix + b.key for b in buckets], args)

    async def acquire(self, key: str, limit: int, slot: str, ttl_s: float) -> tuple[bool, int]:
        out = await self._redis.run(self._acquire, [self._prefix + key], [limit, slot, int(ttl_s * 1000)])
        return out[0] == 1, int(out[1])

    async def release(self, key: str, slot: str) -> None:
        with contextlib.suppress(StoreUnavailable):  # else the slot expires on its own
            await self._redis.call("ZREM", self._prefix + key, slot)

    async def aclose(self) -> None:
        await self._redis.aclose()
