"""Autoscaling signals per pool: what an autoscaler needs for inference, which is queued and
outstanding work, not CPU.

    queue_depth        calls waiting: in the gateway's admission queue, plus what the backends
                       report pending (Triton's pending count, vLLM's waiting; every caller's),
                       or, where a backend reports none, our calls beyond its slots
    outstanding_units  complexity units in flight or waiting: ours in flight, ours waiting in
                       admission, and other callers' (other gateway replicas, other clients)
                       running or queued there as the load probe splits them (each of the pool's
                       mean size); so one gateway replica's answer covers the whole pool
    predicted_wait_s   how long a call of the pool's mean size would wait before it runs: the
                       admission queue's expected wait, plus the best endpoint's predicted
                       queueing (the scheduler's own model, in seconds)
    desired_replicas   ceil(outstanding_units / target), target = autoscaling.
                       target_units_per_replica for the pool, or its mean slots x mean units
                       per call (a replica with every slot busy)

Read at scrape time (Prometheus) and per KEDA call; nothing here runs on the request path.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ..config import AutoscalingConfig
from ..endpoints import EndpointState
from ..policy.admission.stage import AdmissionStage
from ..routing.plugins import Context, RequestInfo, predicted_seconds, service_seconds
from ..routing.scheduler import Scheduler

SIGNALS = ("queue_depth", "outstanding_units", "predicted_wait_seconds", "desired_replicas")


class PoolSignals(NamedTuple):
    queue_depth: float
    outstanding_units: float
    predicted_wait_seconds: float
    desired_replicas: float
    replicas: int  # endpoints in rotation now (live, not drained or ejected)


class Autoscaling:
    def __init__(
        self,
        config: AutoscalingConfig,
        pools: Callable[[], dict[str, list[EndpointState]]],
        scheduler: Scheduler,
        admission: AdmissionStage,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """`registry`: where the meshgate_pool_* gauges are served (AutoscalingCollector)."""
        self.config = config
        self._pools = pools
        self._scheduler = scheduler
        self._admission = admission
        if registry is not None:
            registry.register(AutoscalingCollector(self))

    def pools(self) -> list[str]:
        return sorted(self._pools())

    def signals(self, pool: str) -> PoolSignals | None:
        """The pool's signals now; None for a pool no source lists."""
        states = self._pools().get(pool)
        return None if states is None else self.signals_of(pool, states)

    def all_signals(self) -> Iterator[tuple[str, PoolSignals]]:
        """Every pool's signals, from one read of the endpoint table (the metrics scrape)."""
        for pool, states in sorted(self._pools().items()):
            yield pool, self.signals_of(pool, states)

    def signals_of(self, pool: str, states: list[EndpointState]) -> PoolSignals:
        now = time.monotonic()
        sched = self._scheduler
        ctx = Context(now, sched.max_age_s, sched.pool_units.get(pool, 0.0))
        mean_units = ctx.mean_units or 1.0
        queued = outstanding = 0.0
        best_wait: float | None = None
        usable = [s for s in states if s.health.live and not s.drained and s.ejection.ejected_until <= now]
        probe = RequestInfo("", "", mean_units, "", 0.0)
        for s in states:
            outstanding += s.calls.units
            load = s.scrape.load
            fresh = load is not None and now - load.at <= ctx.max_age_s
            reported = load.queue if fresh and load is not None else None
            queued += reported if reported is not None else max(0, s.calls.in_flight - s.endpoint.slots)
            shared = s.scrape.shared
            if shared is not None and now - shared.at <= ctx.max_age_s:
                theirs = shared.others + max(0.0, (reported or 0.0) - s.scrape.queued_at_scrape)
                outstanding += theirs * mean_units
        for s in usable:
            wait = predicted_seconds(s, probe, ctx) - service_seconds(s, probe, ctx)
            best_wait = wait if best_wait is None else min(best_wait, wait)
        admitted_wait = 0.0
        queue = self._admission.queue_of(pool)
        if queue is not None:
            queued += queue.waiting
            outstanding += queue.waiting * mean_units
            admitted_wait = queue.waiting * queue.hold_s / max(queue.capacity(), 1e-9)
        scale = sched.pool_slowness.get(pool, 0.0)  # seconds per predicted unit-time
        wait_s = admitted_wait + max(0.0, best_wait or 0.0) * scale
        target = self._target(pool, states)
        return PoolSignals(queued, outstanding, wait_s, float(math.ceil(outstanding / target)), len(usable))

    def target_for(self, pool: str) -> float:
        """Units one replica of `pool` should carry: the configured target (first matching glob),
        else its mean slots x the pool's mean units per call."""
        return self._target(pool, self._pools().get(pool) or [])

    def _target(self, pool: str, states: list[EndpointState]) -> float:
        for glob, target in self.config.target_units_per_replica.items():
            if fnmatch.fnmatchcase(pool, glob):
                return target
        slots = sum(s.endpoint.slots for s in states) / len(states) if states else 1.0
        return max(1e-9, slots * (self._scheduler.pool_units.get(pool) or 1.0))


class AutoscalingCollector(Collector):
    """meshgate_pool_* gauges, one series per pool."""

    def __init__(self, autoscaling: Autoscaling) -> None:
        self._autoscaling = autoscaling

    def collect(self) -> Iterator[Any]:
        families = {
            "queue_depth": GaugeMetricFamily(
                "meshgate_pool_queue_depth",
                "Calls waiting for the pool: in the gateway's admission queue plus what its backends"
                " report pending (every caller's).",
                labels=["pool"],
            ),
            "outstanding_units": GaugeMetricFamily(
                "meshgate_pool_outstanding_units",
                "Complexity units in flight or waiting for the pool: ours, and other callers' as the"
                " load probe sees them.",
                labels=["pool"],
            ),
            "predicted_wait_seconds": GaugeMetricFamily(
                "meshgate_pool_predicted_wait_seconds",
                "How long a call of the pool's mean size would wait before it runs.",
                labels=["pool"],
            ),
            "desired_replicas": GaugeMetricFamily(
                "meshgate_pool_desired_replicas",
                "Backend replicas the pool's outstanding work asks for (outstanding units over the"
                " per-replica target).",
                labels=["pool"],
            ),
            "replicas": GaugeMetricFamily(
                "meshgate_pool_replicas", "Endpoints of the pool in rotation now.", labels=["pool"]
            ),
        }
        for pool, signals in self._autoscaling.all_signals():
            for name, family in families.items():
                family.add_metric([pool], float(getattr(signals, name)))
        yield from families.values()
