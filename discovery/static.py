"""Static discovery: the endpoints listed in the config file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .base import PoolSnapshot


class StaticSource:
    """Yields the configured pools once, then waits until closed."""

    name = "static"

    def __init__(self, snapshots: tuple[PoolSnapshot, ...]) -> None:
        self._snapshots = snapshots
        self._closed = asyncio.Event()

    async def watch(self) -> AsyncIterator[PoolSnapshot]:
        for snap in self._snapshots:
            yield snap
        await self._closed.wait()

    async def aclose(self) -> None:
        self._closed.set()
