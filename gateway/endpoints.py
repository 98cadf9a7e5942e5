"""The live endpoint table: what discovery found, with adapters and runtime state.

Only the event loop thread touches it, so plain attributes are safe: no await happens between
reading and writing a field (in_flight += 1 is atomic with respect to other tasks).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

import grpc

from adapters import REGISTRY, Adapter
from discovery import Endpoint, ModelRef, PoolSnapshot

from .errors import GatewayError

if TYPE_CHECKING:
    from .routing.probe import LoadSample

log = logging.getLogger("meshgate.endpoints")

AdapterMaker = Callable[[Endpoint], Adapter]


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


def default_adapter_maker(max_message_bytes: int) -> AdapterMaker:
    def make(ep: Endpoint) -> Adapter:
        return REGISTRY[ep.backend](ep.id, ep.address, max_message_bytes=max_message_bytes, options=ep.meta)

    return make


class EndpointTable:
    """Merges snapshots from every source into pools; indexes endpoints by model."""

    def __init__(
        self,
        make_adapter: AdapterMaker,
        on_change: Callable[[list[EndpointState]], None] = lambda added: None,
        gpu_capacity: Mapping[str, float] | None = None,
    ) -> None:
        self._make_adapter = make_adapter
        self._on_change = on_change
        # GPU class -> capacity, for endpoints that name their GPU (Meta `gpu`) but no capacity.
        self._gpu_capacity = dict(gpu_capacity or {})
        self._by_source: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
        self._health_checked: set[tuple[str, str]] = set()  # (source, pool) snapshots that vouch
        self._states: dict[tuple[str, str], EndpointState] = {}  # (pool, id) -> state
        self._by_model: dict[str, list[EndpointState]] = {}
        self._retired: list[tuple[EndpointState, float]] = []  # (state, time retired)

    def apply(self, snap: PoolSnapshot) -> None:
        """Replace what `snap.source` said about `snap.pool`; `on_change` gets the new endpoints."""
        self._by_source[(snap.source, snap.pool)] = snap.endpoints
        if snap.health_checked:
            self._health_checked.add((snap.source, snap.pool))
        else:
            self._health_checked.discard((snap.source, snap.pool))
        wanted: dict[tuple[str, str], Endpoint] = {}
        vouched: set[tuple[str, str]] = set()
        for (source, pool), eps in sorted(self._by_source.items()):
            checked = (source, pool) in self._health_checked
            for ep in eps:
                if checked:
                    vouched.add((pool, ep.id))
                if "capacity" not in ep.meta and ep.gpu in self._gpu_capacity:
                    ep = dataclasses.replace(ep, capacity=self._gpu_capacity[ep.gpu])
                wanted.setdefault((pool, ep.id), ep)
        for key in [k for k in self._states if k not in wanted]:
            state = self._states.pop(key)
            self._retired.append((state, time.monotonic()))
            log.info("endpoint removed: pool=%s id=%s", key[0], key[1])
        added: list[EndpointState] = []
        for key, ep in wanted.items():
            old = self._states.get(key)
            if old is not None and old.endpoint == ep:
                continue
            if old is not None and (old.endpoint.address, old.endpoint.backend) == (ep.address, ep.backend):
                old.endpoint = ep  # metadata change only: keep the connection and state
                continue
            try:
                adapter = self._make_adapter(ep)
            except ValueError as err:  # backend-specific options (Meta) that the adapter refuses
                log.error("endpoint skipped: pool=%s id=%s backend=%s: %s", ep.pool, ep.id, ep.backend, err)
                continue
            if old is not None:
                self._retired.append((old, time.monotonic()))
            self._states[key] = state = EndpointState(ep, adapter)
            added.append(state)
            log.info(
                "endpoint added: pool=%s id=%s address=%s backend=%s", ep.pool, ep.id, ep.address, ep.backend
            )
        for key, state in self._states.items():
            state.health_checked = key in vouched
        self._reindex()
        self._on_change(added)

    def _reindex(self) -> None:
        by_model: dict[str, list[EndpointState]] = {}
        for state in self._states.values():
            for name in {ref.name for ref in state.endpoint.models}:
                by_model.setdefault(name, []).append(state)
        self._by_model = by_model

    def take_retired(self, linger_s: float = 60.0) -> list[Adapter]:
        """Adapters of removed endpoints whose in-flight calls have ended (or that lingered
        `linger_s`), for the caller to close. Removed endpoints get no new calls at once."""
        now = time.monotonic()
        done = [s for s, at in self._retired if s.in_flight == 0 or now - at > linger_s]
        self._retired = [(s, at) for s, at in self._retired if not (s.in_flight == 0 or now - at > linger_s)]
        return [s.adapter for s in done]

    def candidates(self, model: str, version: str) -> list[EndpointState]:
        """Endpoints that serve model/version, ready or not. NOT_FOUND when none does."""
        states = self._by_model.get(model)
        if not states:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                f"model: {model!r} is not served by any pool",
                field="model",
            )
        if version:
            matching = [s for s in states if s.serves(model, version)]
            if not matching:
                known = sorted({r.version for s in states for r in s.endpoint.models if r.name == model})
                raise GatewayError(
                    grpc.StatusCode.NOT_FOUND,
                    f"model_version: model {model!r} version {version!r} is not served by any pool"
                    f" (served versions: {', '.join(known)})",
                    field="model_version",
                )
            return matching
        return states

    def states(self) -> Iterable[EndpointState]:
        return self._states.values()

    def models(self) -> dict[str, list[EndpointState]]:
        return self._by_model

    def pool_states(self, pool: str) -> list[EndpointState]:
        return [s for (p, _), s in self._states.items() if p == pool]

    def pool_ready(self) -> dict[str, bool]:
        ready: dict[str, bool] = {}
        for (pool, _), state in self._states.items():
            ready[pool] = ready.get(pool, False) or (state.live and bool(state.ready_models))
        for _, pool in self._by_source:
            ready.setdefault(pool, False)
        return ready


def now() -> float:
    return time.monotonic()
