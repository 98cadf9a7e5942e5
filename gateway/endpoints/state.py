"""EndpointState: one endpoint and what the gateway knows about it now.

Only the event loop thread touches it, so plain attributes are safe: no await happens between
reading and writing a field (in_flight += 1 is atomic with respect to other tasks).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

from adapters import Adapter
from discovery import Endpoint, ModelRef

if TYPE_CHECKING:
    from ..load.parse import LoadSample


class Shared(NamedTuple):
    """What the last scrape says of an endpoint beyond our own calls (routing/probe.split_load)."""

    background: float  # 0..1: GPU share taken by work outside the server (slows every request)
    others: float  # requests of other callers executing there on average (hold batch slots)
    at: float  # time.monotonic() of the scrape
    share: float  # our share of the requests it answered lately (1 = we are the only caller)
    in_flight: int  # our requests in flight there at the scrape
    completed: int  # our requests answered there, up to the scrape
    seen_ours: float  # answers of ours there, recent windows (decayed), behind `share`
    seen_all: float  # all its answers, same windows
    herd: float  # calls other gateway replicas send per call of ours, pool-wide (herd_factors)


class EndpointState:
    """One endpoint and what the gateway knows about it now."""

    __slots__ = (
        "_ready_models",
        "adapter",
        "busy_area",
        "busy_mark",
        "busy_since",
        "checked_at",
        "completed",
        "consecutive_failures",
        "ejected_until",
        "ejections",
        "endpoint",
        "health_checked",
        "in_flight",
        "latency",
        "live",
        "load",
        "outstanding_units",
        "queued_at_scrape",
        "ready_names",
        "score",
        "shared",
        "slowdown",
        "status_message",
    )

    def __init__(self, endpoint: Endpoint, adapter: Adapter) -> None:
        self.endpoint = endpoint
        self.adapter = adapter
        self.live = False
        self._ready_models: frozenset[ModelRef] = frozenset()
        # Names of ready models declared without a version: the request path's O(1) check.
        self.ready_names: frozenset[str] = frozenset()
        self.in_flight = 0
        # Scheduler state: complexity units sent and not yet answered; the latest scrape
        # (a LoadSample from the load probe, None before the first); EWMA latency per model
        # (seconds per complexity unit); passive outlier ejection; the last score computed.
        self.outstanding_units = 0.0
        self.completed = 0  # calls answered (counted like a server's request counter)
        self.load: LoadSample | None = None
        self.latency: dict[str, float] = {}
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.score = -1.0
        # Our own busy share of the endpoint's slots, integrated over time (slot-seconds / slots),
        # so that a GPU utilisation averaged over a scrape window can be split into ours and
        # everyone else's: `shared` from the last scrape (see routing/probe.split_load).
        self.busy_area = 0.0
        self.busy_since = time.monotonic()
        self.busy_mark = (0.0, self.busy_since)
        self.shared: Shared | None = None
        # EWMA of (observed / predicted time) over the pool's: > 1 = slower than the metrics
        # explain (see Scheduler.finished).
        self.slowdown = 1.0
        self.queued_at_scrape = 0  # our calls waiting at the endpoint when it was last scraped
        self.checked_at = 0.0  # time.monotonic() of the last readiness check; 0 = never
        self.health_checked = False  # listed by a source that health-checks it (PoolSnapshot)
        self.status_message = "not checked yet"

    def serves(self, model: str, version: str) -> bool:
        return any(_matches(ref, model, version) for ref in self.endpoint.models)

    @property
    def ready_models(self) -> frozenset[ModelRef]:
        return self._ready_models

    @ready_models.setter
    def ready_models(self, refs: frozenset[ModelRef]) -> None:
        self._ready_models = refs
        self.ready_names = frozenset(r.name for r in refs if not r.version)

    def ready_for(self, model: str, version: str) -> bool:
        if not self.live:
            return False
        if not version and model in self.ready_names:
            return True
        return any(_matches(ref, model, version) for ref in self._ready_models)

    def account_busy(self, now: float) -> None:
        """Add our busy share since the last change; call before in_flight changes."""
        share = self.in_flight / self.endpoint.slots
        self.busy_area += (share if share < 1.0 else 1.0) * (now - self.busy_since)
        self.busy_since = now

    def mark_down(self, reason: str) -> None:
        """Passive health: a call saw the endpoint unavailable; the readiness loop revives it."""
        self.live = False
        self.ready_models = frozenset()
        self.status_message = reason


def _matches(ref: ModelRef, model: str, version: str) -> bool:
    # An endpoint declared without a version serves whatever version the caller asks for.
    return ref.name == model and (not version or not ref.version or ref.version == version)
