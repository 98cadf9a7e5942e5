"""EndpointState: one endpoint and what the gateway knows about it now.

Only the event loop thread touches it, so plain attributes are safe: no await happens between
reading and writing a field (in_flight += 1 is atomic with respect to other tasks).
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from adapters import Adapter
from discovery import Endpoint, ModelRef

if TYPE_CHECKING:
    from ..load.parse import LoadSample
    from ..load.split import Mark

HISTORY = 120  # scrapes of counts kept per endpoint (load/split.py reads its windows from them)


class Shared(NamedTuple):
    """What the last scrape says of an endpoint beyond our own calls (load/split.py)."""

    background: float  # 0..1: GPU share taken by work outside the server (slows every request)
    others: float  # requests of other callers executing there on average (hold batch slots)
    at: float  # time.monotonic() of the scrape
    share: float  # our share of the requests it answered lately (1 = we are the only caller)
    in_flight: int  # our requests in flight there at the scrape
    completed: int  # our requests answered there, up to the scrape
    seen_ours: float  # answers of ours there, recent windows (decayed), behind `share`
    seen_all: float  # all its answers, same windows
    herd: float  # calls other gateway replicas send per call of ours, pool-wide (herd_factors)


class Health:
    """Is it up: written by readiness only (endpoints/readiness.py: its checks, and the calls
    that found the endpoint unavailable, reported through ReadinessChecker.report_down)."""

    __slots__ = ("_ready_models", "checked_at", "live", "message", "ready_names")

    def __init__(self) -> None:
        self.live = False
        self._ready_models: frozenset[ModelRef] = frozenset()
        # Names of ready models declared without a version: the request path's O(1) check.
        self.ready_names: frozenset[str] = frozenset()
        self.checked_at = 0.0  # time.monotonic() of the last check; 0 = never
        self.message = "not checked yet"

    @property
    def ready_models(self) -> frozenset[ModelRef]:
        return self._ready_models

    @ready_models.setter
    def ready_models(self, refs: frozenset[ModelRef]) -> None:
        self._ready_models = refs
        self.ready_names = frozenset(r.name for r in refs if not r.version)

    def mark_down(self, reason: str) -> None:
        self.live = False
        self.ready_models = frozenset()
        self.message = reason


class Calls:
    """Our calls there: written by the scheduler only (routing/scheduler.py started/finished,
    its pickers' last score, and the per-scrape fade of the latency feedback)."""

    __slots__ = (
        "busy_area",
        "busy_since",
        "completed",
        "faded_at",
        "in_flight",
        "latency",
        "score",
        "slowdown",
        "units",
    )

    def __init__(self) -> None:
        self.in_flight = 0
        self.units = 0.0  # complexity units sent and not yet answered
        self.completed = 0  # calls answered (counted like a server's request counter)
        self.latency: dict[str, float] = {}  # model -> EWMA seconds per complexity unit
        self.score = -1.0  # at the last scheduling decision that scored it
        # Our own busy share of the endpoint's slots, integrated over time (slot-seconds / slots),
        # so that a GPU utilisation averaged over a scrape window can be split into ours and
        # everyone else's (load/split.py).
        self.busy_area = 0.0
        self.busy_since = time.monotonic()
        # EWMA of (observed / predicted time) over the pool's: > 1 = slower than the metrics
        # explain (see Scheduler.finished).
        self.slowdown = 1.0
        self.faded_at = time.monotonic()  # when the probe last faded `slowdown` (Scheduler.scraped)

    def account(self, now: float, slots: int) -> None:
        """Add our busy share since the last change; call before in_flight changes."""
        share = self.in_flight / slots
        self.busy_area += (share if share < 1.0 else 1.0) * (now - self.busy_since)
        self.busy_since = now

    def area_at(self, now: float, slots: int) -> float:
        """busy_area as it stands at `now` (read-only: for the load probe's scrape windows)."""
        share = self.in_flight / slots
        return self.busy_area + (share if share < 1.0 else 1.0) * (now - self.busy_since)


class Scrape:
    """What its metrics page said: written by the load probe only (load/probe.py, split.py)."""

    __slots__ = ("busy_mark", "intrinsic", "load", "marks", "queued_at_scrape", "shared")

    def __init__(self) -> None:
        self.load: LoadSample | None = None  # the latest sample; None before the first
        self.shared: Shared | None = None  # the sample split into ours and everyone else's
        self.queued_at_scrape = 0  # our calls waiting at the endpoint when it was scraped
        self.busy_mark = (0.0, time.monotonic())  # (Calls.busy_area, time) at the last scrape
        self.marks: deque[Mark] = deque(maxlen=HISTORY)  # cumulative counts per scrape (split.py)
        self.intrinsic: dict[str, float] = {}  # model -> compute seconds per answer with no background


class Ejection:
    """Passive outlier ejection: written by the outlier detector only (routing/outlier.py)."""

    __slots__ = ("consecutive_failures", "ejected_until", "ejections")

    def __init__(self) -> None:
        self.consecutive_failures = 0
        self.ejections = 0  # how often it was ejected recently (the ejection time doubles)
        self.ejected_until = 0.0  # time.monotonic(); in rotation again after it


class EndpointState:
    """One endpoint and what the gateway knows about it now, in groups of one writer each:

        endpoint, adapter, health_checked,  the endpoint table (what discovery says, and the
        drained                             operator's drains, Admin.DrainEndpoint)
        health                              readiness
        calls                               the scheduler
        scrape                              the load probe
        ejection                            the outlier detector

    Everyone else reads."""

    __slots__ = ("adapter", "calls", "drained", "ejection", "endpoint", "health", "health_checked", "scrape")

    def __init__(self, endpoint: Endpoint, adapter: Adapter) -> None:
        self.endpoint = endpoint
        self.adapter = adapter
        self.health_checked = False  # listed by a source that health-checks it (PoolSnapshot)
        self.drained = False  # out of rotation by an operator: finishes its calls, gets no new ones
        self.health = Health()
        self.calls = Calls()
        self.scrape = Scrape()
        self.ejection = Ejection()

    def serves(self, model: str, version: str) -> bool:
        return any(_matches(ref, model, version) for ref in self.endpoint.models)

    def ready_for(self, model: str, version: str) -> bool:
        """Live, the model ready at the last check, and not drained."""
        h = self.health
        if not h.live or self.drained:
            return False
        if not version and model in h.ready_names:
            return True
        return any(_matches(ref, model, version) for ref in h.ready_models)


def _matches(ref: ModelRef, model: str, version: str) -> bool:
    # An endpoint declared without a version serves whatever version the caller asks for.
    return ref.name == model and (not version or not ref.version or ref.version == version)
