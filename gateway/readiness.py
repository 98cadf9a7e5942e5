"""Background readiness checks: server live + each declared model ready, per endpoint.

Runs off the request path, every `interval_s` with jitter; a check that fails or times out marks
the endpoint not ready with the reason, and a later success revives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from adapters import BackendError

from .config import ReadinessConfig
from .endpoints import EndpointState, EndpointTable

log = logging.getLogger("meshgate.readiness")


class ReadinessChecker:
    def __init__(self, table: EndpointTable, config: ReadinessConfig) -> None:
        self._table = table
        self._config = config
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Check now (new endpoints arrived, or a call saw one fail)."""
        self._wake.set()

    async def run(self, on_round: Callable[[], None]) -> None:
        """Check every endpoint, call `on_round`, sleep; forever (cancel to stop)."""
        while True:
            states = list(self._table.states())
            await asyncio.gather(*(self.check(s) for s in states))
            on_round()
            self._wake.clear()
            delay = self._config.interval_s * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def check(self, state: EndpointState) -> None:
        timeout = self._config.timeout_s
        ep = state.endpoint
        was_ready = state.ready_models
        try:
            live = await state.adapter.server_live(timeout)
            ready = set()
            reasons = []
            if live:
                results = await asyncio.gather(
                    *(state.adapter.model_ready(ref.name, ref.version, timeout) for ref in ep.models)
                )
                for ref, ok in zip(ep.models, results, strict=True):
                    if ok:
                        ready.add(ref)
                    else:
                        reasons.append(f"model {ref.name!r} not ready")
            message = "ready" if live and not reasons else ("; ".join(reasons) or "server not live")
        except BackendError as err:
            live, ready, message = False, set(), err.message
        state.live = live
        state.ready_models = frozenset(ready)
        state.status_message = message
        state.checked_at = time.monotonic()
        if state.ready_models != was_ready:
            log.info(
                "endpoint %s/%s: ready models %s (%s)",
                ep.pool,
                ep.id,
                sorted(r.name for r in state.ready_models) or "none",
                message,
            )
