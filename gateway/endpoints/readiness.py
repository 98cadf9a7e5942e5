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
from collections.abc import Callable, Iterable

from adapters import BackendError

from ..config import ReadinessConfig
from .state import EndpointState
from .table import EndpointTable

log = logging.getLogger("meshgate.readiness")


class ReadinessChecker:
    """Full rounds over every endpoint each `interval_s` (those with a longer `interval` only
    when it has passed); in between, only endpoints asked for.

    New endpoints and endpoints that just failed a call are checked at once (`check_soon`),
    without a full round: with 1,000 endpoints and 10 discovery changes a second, waking a full
    round per change cost a whole core (bench/discovery.py).
    """

    def __init__(self, table: EndpointTable, config: ReadinessConfig) -> None:
        self._table = table
        self._config = config
        self._wake = asyncio.Event()
        self._pending: set[EndpointState] = set()

    def report_down(self, state: EndpointState, reason: str) -> None:
        """Passive health: a call found `state` unavailable. It leaves rotation now and is checked
        again at once; a passing check revives it. Event loop thread only."""
        state.health.mark_down(reason)
        self.check_soon([state])

    def check_soon(self, states: Iterable[EndpointState]) -> None:
        """Check these endpoints now (new ones, or one a call saw fail). Event loop thread only."""
        self._pending.update(states)
        if self._pending:
            self._wake.set()

    async def run(self, on_round: Callable[[], None]) -> None:
        """Check, call `on_round`, wait for the next round or a `check_soon`; forever (cancel to stop)."""
        next_full = 0.0
        while True:
            now = time.monotonic()
            if now >= next_full:
                batch = [
                    s for s in self._table.states() if now - s.health.checked_at >= self.interval(s) * 0.9
                ]
                next_full = now + self._config.interval_s * random.uniform(0.8, 1.2)
            else:
                current = set(self._table.states())
                batch = [s for s in self._pending if s in current]
            self._pending.clear()
            self._wake.clear()
            await asyncio.gather(*(self.check(s) for s in batch))
            on_round()
            if self._pending:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, next_full - time.monotonic()))

    def interval(self, state: EndpointState) -> float:
        """Seconds between background checks of `state`: interval_s, or its backend kind's own
        (interval_by_backend); at least health_checked_interval_s while a health-checking source
        (Consul) vouches for it and all its models are ready. A failed call checks it at once."""
        cfg = self._config
        seconds = cfg.interval_by_backend.get(state.endpoint.backend, cfg.interval_s)
        if (
            state.health_checked
            and state.health.live
            and len(state.health.ready_models) == len(state.endpoint.models)
        ):
            seconds = max(seconds, cfg.health_checked_interval_s)
        return seconds

    async def check(self, state: EndpointState) -> None:
        timeout = self._config.timeout_s
        ep = state.endpoint
        was_ready = state.health.ready_models
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
        except Exception as err:  # an adapter bug: this endpoint is not ready, the loop goes on
            live, ready, message = False, set(), f"readiness check failed: {type(err).__name__}: {err}"
            if state.health.message != message:  # one line per endpoint and problem
                log.error("endpoint %s/%s: %s", ep.pool, ep.id, message, exc_info=True)
        state.health.live = live
        state.health.ready_models = frozenset(ready)
        state.health.message = message
        state.health.checked_at = time.monotonic()
        if state.health.ready_models != was_ready:
            log.info(
                "endpoint %s/%s: ready models %s (%s)",
                ep.pool,
                ep.id,
                sorted(r.name for r in state.health.ready_models) or "none",
                message,
            )
