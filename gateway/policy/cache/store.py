"""The cache's memory store: entries with a time to live, bounded in bytes, least recently used
evicted first. Event loop thread only."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, NamedTuple


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

    def get(self, key: bytes) -> Any | None:
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
