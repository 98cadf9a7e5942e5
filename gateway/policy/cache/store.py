"""The cache's store seam (CacheStore) and its memory implementation: entries with a time to
live, bounded in bytes, least recently used evicted first. Event loop thread only. The Redis
implementation, shared by replicas, is redis_store.py."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, NamedTuple, Protocol

from adapters import InferResult
from adapters.llm import EmbedResult, GenerateResult, TextDelta


class CacheStore(Protocol):
    """Entries are (answer, route) under a key (bytes). `get` is a miss (None) when the store
    cannot answer; `put` may finish after it returns, and keeps nothing larger than
    max_entry_bytes."""

    async def get(self, key: bytes) -> Any | None: ...

    def put(self, key: bytes, value: Any, ttl_s: float, max_entry_bytes: int) -> None: ...

    def resize(self, max_bytes: int) -> None: ...

    async def aclose(self) -> None: ...


class Entry(NamedTuple):
    value: Any
    size: int
    expires: float


class MemoryCache:
    def __init__(self, max_bytes: int, clock: Any = time.monotonic) -> None:
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._max_bytes = max_bytes
        self._clock = clock
        self.bytes = 0
        self.evictions = 0

    async def get(self, key: bytes) -> Any | None:
        return self.lookup(key)

    def put(self, key: bytes, value: Any, ttl_s: float, max_entry_bytes: int) -> None:
        size = entry_size(value[0])
        if size <= max_entry_bytes:
            self.set(key, value, size, ttl_s)

    def lookup(self, key: bytes) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.value

    def set(self, key: bytes, value: Any, size: int, ttl_s: float) -> None:
        if key in self._entries:
            self._drop(key)
        if size > self._max_bytes:
            return
        self._entries[key] = Entry(value, size, self._clock() + ttl_s)
        self.bytes += size
        while self.bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1

    def resize(self, max_bytes: int) -> None:
        """A config reload's cache.max_bytes (0: the cache is off); the oldest go first."""
        self._max_bytes = max_bytes
        while self.bytes > max_bytes and self._entries:
            self._drop(next(iter(self._entries)))
            self.evictions += 1

    def _drop(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key).size

    def __len__(self) -> int:
        return len(self._entries)

    async def aclose(self) -> None:
        self._entries.clear()
        self.bytes = 0


def entry_size(value: Any) -> int:
    """Bytes an entry holds, about: what its answer carries, plus a fixed overhead."""
    if isinstance(value, InferResult):
        wire = value.wire
        if wire is not None and hasattr(wire, "ByteSize"):
            return int(wire.ByteSize()) + 256
        return sum(len(t.raw or t.contents or b"") for t in value.outputs) + 256
    if isinstance(value, GenerateResult):
        return len(value.text) * 2 + 256
    if isinstance(value, EmbedResult):
        return sum(len(v) for v in value.vectors) * 8 + 256
    if isinstance(value, tuple):  # a stream's messages
        return sum(len(e.text) * 2 + 64 if isinstance(e, TextDelta) else entry_size(e) for e in value) + 256
    return 256
