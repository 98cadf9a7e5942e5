"""The response cache in Redis, shared by every replica that uses the same Redis (cache.store:
redis): one tenant's answer, filled by any replica, is a hit on all of them.

Entries are bytes (codec.py: data, never pickle). Each entry is a key with Redis's own time to
live. The byte bound is kept by Redis as well, by two scripts (called by SHA, like the
counters'): a read touches the entry in an index ordered by last use, and a write adds its size
to a byte total and, while the total is over cache.max_bytes, deletes the least recently used.
Index records of entries that expired on their own are cleared as writes come. The keys live on
one server (not a Redis Cluster).

Reads wait for Redis (at most redis.timeout_s); writes leave the request path (a background task,
at most 64 at once: more are dropped, counted). Redis unreachable is a miss, never an error:
counted in meshgate_cache_store_errors_total{op} and logged at most every 10 s; the cache works
again when Redis returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ...observe.metrics import Metrics
from ...stores.counters import StoreUnavailable
from ...stores.redis_store import Script, ScriptClient
from . import codec

log = logging.getLogger("meshgate.cache")

# KEYS: entry, index; ARGV: -. -> the entry's bytes or nil
GET = """
local v = redis.call('GET', KEYS[1])
if v then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(t[2]) / 1000000, KEYS[1])
end
return v
"""

# KEYS: entry, index, sizes, total; ARGV: bytes, ttl ms, max bytes. -> entries evicted
SET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function forget(k)
  local s = tonumber(redis.call('HGET', KEYS[3], k) or '0')
  redis.call('HDEL', KEYS[3], k)
  redis.call('ZREM', KEYS[2], k)
  return redis.call('DECRBY', KEYS[4], s)
end
local ttl = tonumber(ARGV[2])
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl / 1000, 'LIMIT', 0, 64)) do
  if redis.call('EXISTS', k) == 0 then forget(k) end
end
if redis.call('HEXISTS', KEYS[3], KEYS[1]) == 1 then forget(KEYS[1]) end
local size = string.len(ARGV[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
local total = redis.call('INCRBY', KEYS[4], size)
local evicted = 0
while total > tonumber(ARGV[3]) do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then break end
  redis.call('DEL', oldest[1])
  total = forget(oldest[1])
  evicted = evicted + 1
end
return evicted
"""

_MAX_WRITES = 64


class RedisCache:
    def __init__(
        self,
        url: str,
        metrics: Metrics,
        *,
        max_bytes: int,
        timeout_s: float = 0.25,
        retry_s: float = 1.0,
        prefix: str = "meshgate:",
    ) -> None:
        self._redis = ScriptClient(url, timeout_s=timeout_s, retry_s=retry_s, binary=True)
        self._metrics = metrics
        self._max_bytes = max_bytes
        p = f"{prefix}cache".encode()
        self._prefix = p + b":"
        self._index, self._sizes, self._total = p + b"#lru", p + b"#sizes", p + b"#bytes"
        self._get, self._set = Script(GET), Script(SET)
        self._writes: set[asyncio.Task[None]] = set()
        self._logged = 0.0
        self.evictions = 0

    def _key(self, key: bytes) -> bytes:
        scope, _, digest = key.partition(b"\0")
        return self._prefix + scope + b":" + digest.hex().encode()

    async def get(self, key: bytes) -> Any | None:
        try:
            data = await self._redis.run(self._get, [self._key(key), self._index], [])
        except StoreUnavailable as err:
            self._failed("get", err)
            return None
        return codec.decode(data) if isinstance(data, bytes) else None

    def put(self, key: bytes, value: Any, ttl_s: float, max_entry_bytes: int) -> None:
        if self._max_bytes <= 0:
            return
        data = codec.encode(value)
        if len(data) > max_entry_bytes or len(data) > self._max_bytes:
            return
        if len(self._writes) >= _MAX_WRITES:
            self._failed("set", StoreUnavailable("redis: too many cache writes waiting"))
            return
        task = asyncio.get_running_loop().create_task(self._write(self._key(key), data, ttl_s))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: bytes, data: bytes, ttl_s: float) -> None:
        keys = [key, self._index, self._sizes, self._total]
        try:
            evicted = await self._redis.run(
                self._set, keys, [data, max(1, int(ttl_s * 1000)), self._max_bytes]
            )
        except StoreUnavailable as err:
            self._failed("set", err)
            return
        self.evictions += int(evicted)

    def resize(self, max_bytes: int) -> None:
        """A reload's cache.max_bytes: applies from the next write (0: nothing more is written)."""
        self._max_bytes = max_bytes

    def _failed(self, op: str, err: Exception) -> None:
        self._metrics.cache_store_errors.labels(op).inc()
        now = time.monotonic()
        if now - self._logged >= 10.0:
            self._logged = now
            log.warning("response cache: %s (a miss; the cache is used again when Redis answers)", err)

    async def aclose(self) -> None:
        for task in list(self._writes):
            task.cancel()
        await self._redis.aclose()
